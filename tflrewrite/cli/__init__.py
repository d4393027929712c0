"""The `tflrewrite` command: picks the module that handles a command and turns refusals into
one line and an exit code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from tflrewrite.errors import TflRewriteError

# The module that handles each named command, with parser() and run(args) -> int; anything
# else is a model to rewrite. A module is imported when its command runs, so that a command
# loads only what it uses.
COMMANDS = {
    "audit": "tflrewrite.cli.audit",
    "verify": "tflrewrite.cli.verify",
    "recipes": "tflrewrite.cli.recipes",
    "finetune": "tflrewrite.cli.finetune",
}
DEFAULT = "tflrewrite.cli.rewrite"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tensor names and paths that are not UTF-8 reach us as surrogate escapes; show them as
    # \xNN rather than fail on a strict UTF-8 terminal.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        if argv and argv[0] in COMMANDS:
            module, rest = COMMANDS[argv[0]], argv[1:]
        else:
            module, rest = DEFAULT, argv
        command = importlib.import_module(module)
        return command.run(command.parser().parse_args(rest))
    except TflRewriteError as e:
        print(f"tflrewrite: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tflrewrite: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
