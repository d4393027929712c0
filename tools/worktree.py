"""Another revision of this repository checked out beside it, for the scripts that compare
this checkout with it (tools/same_outputs.py, tools/bench/command_time.py,
tools/bench/kernel_time.py)."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary git worktree of `rev` (detached, so a branch checked out here works too),
    its kernels/ linked in as tflrewrite/kernels as the package layout maps it; removed on
    exit."""
    with tempfile.TemporaryDirectory() as tmp:
        other = Path(tmp) / "other"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(other), rev],
            check=True,
        )
        try:
            (other / "tflrewrite" / "kernels").symlink_to(other / "kernels")
            yield other
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(other)], check=False
            )
