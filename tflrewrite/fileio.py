"""Output files that appear whole or not at all, and never in place of an input."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

from tflrewrite.errors import TflRewriteError


def atomic_write(path: str | os.PathLike, fill: Callable[[BinaryIO], None]) -> None:
    """Write a file through `fill` into a temporary file beside `path`, then rename it into
    place, so that readers never see a partial file and a failure leaves nothing behind:
    not an error writing it (a full disk, a folder that cannot be written), nor an
    interrupt (KeyboardInterrupt, or whatever a SIGTERM handler raises). An OSError
    becomes a TflRewriteError naming `path`."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    # Named before it is made: an interrupt the moment after os.open returns still knows
    # which file to remove (tempfile.mkstemp would not have returned its name yet).
    tmp: str | None = os.path.join(
        directory, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp"
    )
    try:
        try:
            # 0o666 less the umask, as for any new file (the default ACL, where there is one)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666)
        except FileExistsError:
            tmp = None  # someone else's file: not ours to remove
            raise
        with os.fdopen(fd, "wb") as f:
            fill(f)
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        if isinstance(e, OSError):
            raise TflRewriteError(f"{path}: cannot write it: {_reason(e)}") from None
        raise


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _reason(e: OSError) -> str:
    if e.errno == errno.EFBIG:
        return f"{e.strerror} (over the file size limit, ulimit -f)"
    return e.strerror or str(e)


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
    if os.path.exists(output) and not os.path.isfile(output):  # /dev/null, a named pipe
        raise TflRewriteError(f"{output}: is not a regular file; tflrewrite replaces only files")
    if os.path.exists(output) and not force:
        raise TflRewriteError(f"{output}: exists (use --force to replace it)")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise TflRewriteError(f"{output}: directory {parent} does not exist")
