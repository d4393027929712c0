"""The errors tflrewrite raises on purpose: the CLI turns each into one line and its exit code."""

from __future__ import annotations

import os


class TflRewriteError(Exception):
    """Something the user can fix: bad input, bad options, a refused overwrite, an output
    that cannot be written."""

    exit_code = 2


class ModelError(TflRewriteError):
    """A file that is not a model tflrewrite can read, or a model it cannot write."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")

    def __reduce__(self) -> tuple:  # pickled back from the child process that runs models
        return type(self), (self.path, self.problem)


class UsageError(TflRewriteError):
    """Options that do not fit together or do not fit the model."""


class RuntimeCrashError(TflRewriteError):
    """A runtime (LiteRT, tflite-micro) died running a model, in the child process that ran
    it (runtime.Child): a failed check rather than bad usage, so exit code 1."""

    exit_code = 1
