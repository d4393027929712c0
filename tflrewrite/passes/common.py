"""What every pass shares: the result type, per-tensor rules, and statistics."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.model import Model


@dataclass
class PassResult:
    model: Model
    records: list[dict] = field(default_factory=list)

    @property
    def modified(self) -> bool:
        return any(r["action"] != "skipped" for r in self.records)


@dataclass(frozen=True)
class Rule:
    """Per-tensor override from a recipe file: tensors whose name matches `match` get
    `options` merged into the pass's options, or are left alone when `options` is None."""

    match: str
    options: dict[str, Any] | None

    def applies(self, name: str) -> bool:
        return re.search(self.match, name) is not None


def options_for(options: Any, rules: tuple[Rule, ...], name: str) -> Any | None:
    """The options a tensor gets: the first matching rule's, else the pass's own; None
    when a rule says to leave it alone."""
    for rule in rules:
        if rule.applies(name):
            if rule.options is None:
                return None
            try:
                return dataclasses.replace(options, **rule.options)
            except TypeError as e:
                raise UsageError(f"rule for {rule.match!r}: {e}") from None
    return options


# Counting distinct float values means sorting; past this many elements the report leaves
# them out rather than spend seconds on a statistic (int8 is counted in one pass).
DISTINCT_FLOAT_LIMIT = 2**20


def distinct_counts(rows: np.ndarray) -> tuple[int, np.ndarray] | None:
    """(distinct values of all rows together, distinct values of each row), or None for
    large float arrays."""
    if rows.dtype == np.int8:
        index = rows.astype(np.int64) + 128 + 256 * np.arange(rows.shape[0])[:, None]
        hist = np.bincount(index.reshape(-1), minlength=256 * rows.shape[0]).reshape(-1, 256)
        return int(np.count_nonzero(hist.sum(axis=0))), np.count_nonzero(hist, axis=1)
    if rows.size > DISTINCT_FLOAT_LIMIT:
        return None
    s = np.sort(rows, axis=1)
    per_row = 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)
    return int(np.unique(s).size), per_row


def weight_stats(rows: np.ndarray) -> dict[str, Any]:
    """Sparsity and distinct values of a weight given as rows (one per output channel)."""
    per_row_zero = np.count_nonzero(rows == 0, axis=1) / max(rows.shape[1], 1)
    counts = distinct_counts(rows) if rows.size else (0, np.zeros(1, np.int64))
    return {
        "sparsity": float(per_row_zero.mean()) if rows.size else 0.0,
        "channel_sparsity": [float(per_row_zero.min()), float(per_row_zero.max())],
        "unique": None if counts is None else counts[0],
        "channel_unique": None if counts is None else int(counts[1].max()),
    }


def mse(before: np.ndarray, after: np.ndarray) -> float:
    """Mean squared difference of two arrays of real values."""
    if before.size == 0:
        return 0.0
    return float(np.mean(np.square(before - after, dtype=np.float64)))
