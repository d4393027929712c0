"""What the commands' parsers share: one-line refusals, the help layout, argument types, JSON."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from tflrewrite.errors import TflRewriteError


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line and exit code 2, like every other refusal."""

    def error(self, message: str) -> Any:
        raise TflRewriteError(f"{self.prog.split()[-1]}: {message} (see --help)")


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]?)(i?)b?\s*$", re.IGNORECASE)


def size(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 200000, 200k, 64KiB)")
    number, prefix, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    base = 1024 if binary else 1000
    return int(number * base ** " kmg".index(prefix or " "))


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"not a fraction in [0, 1): {text!r}")
    return value


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive whole number: {text!r}")
    return value


def write_json(target: str, doc: Any) -> None:
    """`doc` as JSON to the file `target`, or to stdout for "-"."""
    text = json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n"
    if target == "-":
        sys.stdout.write(text)
        return
    from tflrewrite.fileio import atomic_write

    atomic_write(target, lambda f: f.write(text.encode()))


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def expand_models(paths: list[str]) -> list[str]:
    """The models named: each file as given, and for each folder the .tflite files in it
    (not below it), by name; a folder without one is refused."""
    import os

    found = []
    for path in paths:
        if not os.path.isdir(path):
            found.append(path)
            continue
        inside = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.endswith(".tflite") and os.path.isfile(os.path.join(path, name))
        )
        if not inside:
            raise TflRewriteError(f"{path}: is a directory with no .tflite files in it")
        found.extend(inside)
    return found
