"""Output files that appear whole or not at all, and never in place of an input."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO

from tflrewrite.errors import TflRewriteError


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], None]) -> None:
    """Write a file through `fill` into a temporary file beside `path`, then rename it into
    place, so that readers never see a partial file and a failure leaves nothing behind."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def check_output_path(
    output: str | os.PathLike, inputs: list[str | os.PathLike], force: bool
) -> None:
    """Refuse to write over an input, ever, or over any existing file without `force`."""
    output = os.fspath(output)
    for given in inputs:
        if os.path.exists(output) and os.path.samefile(output, given):
            raise TflRewriteError(f"{output}: is the input file; tflrewrite never overwrites it")
    if os.path.isdir(output):
        raise TflRewriteError(f"{output}: is a directory")
    if os.path.exists(output) and not force:
        raise TflRewriteError(f"{output}: exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise TflRewriteError(f"{output}: directory {parent} does not exist")
