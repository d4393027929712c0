"""The `tflrewrite` command: picks the module that handles a command and turns refusals into
one line and an exit code."""

from __future__ import annotations

import contextlib
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from tflrewrite.errors import TflRewriteError

# The module that handles each named command, with parser() and run(args) -> int; anything
# else is a model to rewrite. A module is imported when its command runs, so that a command
# loads only what it uses.
COMMANDS = {
    "audit": "tflrewrite.cli.audit",
    "verify": "tflrewrite.cli.verify",
    "recipes": "tflrewrite.cli.recipes",
    "finetune": "tflrewrite.cli.finetune",
    "explore": "tflrewrite.cli.explore",
}
DEFAULT = "tflrewrite.cli.rewrite"


class Terminated(BaseException):
    """SIGTERM, raised in the main thread as KeyboardInterrupt is for SIGINT, so that what
    `finally` blocks undo (a half-written output's temporary file) is undone."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tensor names and paths that are not UTF-8 reach us as surrogate escapes; show them as
    # \xNN rather than fail on a strict UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        with _sigterm_raises():
            if argv and argv[0] in COMMANDS:
                module, rest = COMMANDS[argv[0]], argv[1:]
            else:
                module, rest = DEFAULT, argv
            command = importlib.import_module(module)
            return command.run(command.parser().parse_args(rest))
    except TflRewriteError as e:
        print(f"tflrewrite: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("tflrewrite: interrupted", file=sys.stderr)
        return 128 + signal.SIGINT
    except Terminated:
        print("tflrewrite: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    except BrokenPipeError:
        return 0


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM raises Terminated while the command runs, where it would otherwise end the
    process on the spot (its default) and Python can set handlers (the main thread)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL
    ):
        yield
        return

    def terminate(signum: int, frame: Any) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
