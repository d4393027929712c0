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


def sparsity(values: np.ndarray) -> float:
    return float(np.count_nonzero(values == 0)) / values.size if values.size else 0.0


def distinct_per_row(rows: np.ndarray) -> np.ndarray:
    s = np.sort(rows, axis=1)
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)


def weight_stats(rows: np.ndarray) -> dict[str, Any]:
    """Sparsity and distinct values of a weight given as rows (one per output channel)."""
    per_row_zero = np.count_nonzero(rows == 0, axis=1) / max(rows.shape[1], 1)
    return {
        "sparsity": sparsity(rows),
        "channel_sparsity": [float(per_row_zero.min()), float(per_row_zero.max())],
        "unique": int(np.unique(rows).size),
        "channel_unique": int(distinct_per_row(rows).max()) if rows.size else 0,
    }


def mse(before: np.ndarray, after: np.ndarray) -> float:
    return float(np.mean((before - after) ** 2)) if before.size else 0.0
