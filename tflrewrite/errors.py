"""The errors tflrewrite raises on purpose: the CLI turns each into one line and exit code 2."""

from __future__ import annotations

import os


class TflRewriteError(Exception):
    """Something the user can fix: bad input, bad options, a refused overwrite."""


class ModelError(TflRewriteError):
    """A file that is not a model tflrewrite can read, or a model it cannot write."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")


class UsageError(TflRewriteError):
    """Options that do not fit together or do not fit the model."""
