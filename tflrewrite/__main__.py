"""`python -m tflrewrite` and the `tflrewrite` command: main(), then a quick exit."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

# Young objects between collections while a command runs (Python's default: 700).
GC_THRESHOLD = 50_000


def run() -> NoReturn:
    """Run the command and end the process without tearing the interpreter down.

    Start-up imports some 70,000 objects that live as long as the process (Numba's above
    all). With Python's default threshold the cyclic collector walks them over and over
    while they load, about a tenth of a second; a rewrite itself makes little cyclic
    garbage (some 1,300 objects, no arrays, on the data-free and the data-aware paths
    alike), so the collector runs every GC_THRESHOLD allocations instead. `finetune`,
    whose training makes cyclic garbage of its own, keeps Python's default.

    After a rewrite the process holds Numba's compiled kernels, LLVM's modules and the
    arrays of two models; Python's own exit frees them object by object, about 0.3 s that
    nobody waits for on purpose. Once main() has returned, every file it wrote is closed
    and renamed into place, so what is left to do is what an exit does that others can
    see: the atexit handlers (logging's flush among them) and flushing stdout and stderr.
    Then os._exit ends the process with main()'s status (a daemon thread still running
    ends with it, as it would anyway). The usual exit runs instead where a thread main()
    started is still running and is not a daemon, and where a profiler, tracer, debugger or
    coverage tool, or Python's development mode, watches the process (they report after
    the program returns).
    """
    if sys.argv[1:2] != ["finetune"]:
        gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])
    from tflrewrite.cli import main

    code = main()
    if _working() or _watched():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`| head`) or a closed stream
            pass
    os._exit(code)


def _working() -> bool:
    """Whether a thread other than this one is running that the usual exit would wait for."""
    me = threading.current_thread()
    return any(t is not me and not t.daemon and t.is_alive() for t in threading.enumerate())


def _watched() -> bool:
    if sys.getprofile() is not None or sys.gettrace() is not None or sys.flags.dev_mode:
        return True
    monitoring = getattr(sys, "monitoring", None)  # Python 3.12+
    return monitoring is not None and any(monitoring.get_tool(i) for i in range(6))


if __name__ == "__main__":
    run()
