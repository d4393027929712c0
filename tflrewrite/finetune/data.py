"""Training data for fine-tuning: .npz files, arrays, or a tf.data.Dataset, fed in batches
whose order depends only on the seed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from tflrewrite.errors import TflRewriteError, UsageError


@dataclass
class Arrays:
    """Samples along the first axis: one array per model input, and the targets."""

    xs: list[np.ndarray]
    y: np.ndarray
    teacher: np.ndarray | None = None  # the given model's outputs, for distillation

    def __post_init__(self) -> None:
        sizes = {len(a) for a in self.xs} | {len(self.y)}
        if len(sizes) != 1:
            raise UsageError(f"inputs and targets hold different numbers of samples: {sizes}")
        if not len(self.y):
            raise UsageError("no samples")

    def __len__(self) -> int:
        return len(self.y)

    def _x(self, rows: Any) -> Any:
        parts = [a[rows] for a in self.xs]
        return parts[0] if len(parts) == 1 else parts

    def batches(self, batch: int, seed: int | None) -> Any:
        """epoch -> (x, y) batches; shuffled per epoch from `seed`, in order when None."""

        def epoch_batches(epoch: int) -> Iterator[tuple[Any, np.ndarray]]:
            n = len(self)
            order = (
                np.arange(n)
                if seed is None
                else np.random.default_rng([seed, epoch]).permutation(n)
            )
            for start in range(0, n, batch):
                rows = order[start : start + batch]
                y = self.y[rows] if self.teacher is None else (self.y[rows], self.teacher[rows])
                yield self._x(rows), y

        return epoch_batches

    def samples(self, n: int, seed: int) -> list[list[np.ndarray]]:
        """n samples (each a list of one-sample arrays per input), chosen by `seed`."""
        pick = np.random.default_rng([seed, 1 << 20]).permutation(len(self))[:n]
        return [[a[i : i + 1].astype(np.float32) for a in self.xs] for i in np.sort(pick)]


def load_npz(path: str | os.PathLike, input_names: list[str], what: str) -> Arrays:
    """Arrays from an .npz holding `x` and `y`, or one array per model input (keyed by
    its name) and `y`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise TflRewriteError(f"{path}: no such {what} file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise TflRewriteError(f"{path}: not a readable .npz ({_first_line(e)})") from None
    if "y" not in arrays:
        raise TflRewriteError(f"{path}: no array 'y' (targets); arrays: {_names(arrays)}")
    if len(input_names) == 1 and "x" in arrays:
        xs = [arrays["x"]]
    else:
        missing = [n for n in input_names if n not in arrays]
        if missing:
            want = "'x' or " if len(input_names) == 1 else ""
            raise TflRewriteError(
                f"{path}: no array for model input {missing[0]!r} (want {want}one array per "
                f"input, keyed by name, and 'y'); arrays: {_names(arrays)}"
            )
        xs = [arrays[n] for n in input_names]
    try:
        return Arrays(xs, arrays["y"])
    except UsageError as e:
        raise TflRewriteError(f"{path}: {e}") from None


def from_user(data: Any, n_inputs: int) -> Arrays | None:
    """Arrays from (x, y) given to the API (x: an array, or a list with one per input);
    None when `data` is something else (a tf.data.Dataset)."""
    if isinstance(data, Arrays):
        return Arrays(data.xs, data.y)  # the teacher outputs go on our copy
    if not isinstance(data, tuple | list) or len(data) != 2:
        return None
    x, y = data
    xs = [np.asarray(a) for a in x] if isinstance(x, list | tuple) else [np.asarray(x)]
    if len(xs) != n_inputs:
        raise UsageError(f"the model has {n_inputs} inputs, the data {len(xs)}")
    return Arrays(xs, np.asarray(y))


def _names(arrays: dict) -> str:
    return ", ".join(sorted(arrays)) or "none"


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
