"""`python -m tflrewrite` and the `tflrewrite` command: main(), then a quick exit."""

from __future__ import annotations

import atexit
import os
import sys
import threading
from typing import NoReturn

from tflrewrite.cli import main


def run() -> NoReturn:
    """Run the command and end the process without tearing the interpreter down.

    After a rewrite the process holds Numba's compiled kernels, LLVM's modules and the
    arrays of two models; Python's own exit frees them object by object, about 0.3 s that
    nobody waits for on purpose. Once main() has returned, every file it wrote is closed
    and renamed into place, so what is left to do is what an exit does that others can
    see: the atexit handlers (logging's flush among them) and flushing stdout and stderr.
    Then os._exit ends the process with main()'s status. Where a thread main() started is
    still running, the usual exit waits for it instead.
    """
    code = main()
    if threading.active_count() > 1:
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream
            pass
    os._exit(code)


if __name__ == "__main__":
    run()
