"""The values of a model's largest weights after each step of a rewrite, as histograms on
shared bins with zeros counted: TF Model Optimization's collaborative-optimization density
plots (original, pruned, clustered, int8), for the HTML report."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tflrewrite.model import Model, Tensor
from tflrewrite.weights import find_weights, real_values

# Odd, so that one bin is centred on zero and pruned weights fall in it alone.
BINS = 101
WEIGHTS = 6


@dataclass
class Stage:
    name: str  # "original", then the rewrite's step names
    counts: np.ndarray | None  # per bin; None where the step left no dense weight of its shape
    zeros: int = 0  # values that are exactly zero
    distinct: int = 0  # distinct stored values
    dtype: str = ""


@dataclass
class History:
    """One weight through the rewrite."""

    subgraph: int
    name: str
    shape: tuple[int, ...]
    edges: np.ndarray  # BINS + 1 bin edges, over the original's range
    stages: list[Stage] = field(default_factory=list)


class Stages:
    """Histograms of the `count` largest weights of `original` (the weights a pass may edit);
    pass `add` to pipeline.apply as its on_step, and it adds a stage after each step. Only
    the counts are kept, never the models."""

    def __init__(self, original: Model, *, count: int = WEIGHTS, bins: int = BINS):
        weights, _ = find_weights(original)
        largest = sorted(weights, key=lambda w: (-w.tensor.data.size, w.subgraph, w.name))
        self.weights: list[History] = []
        for w in largest[:count]:
            values = real_values(w.tensor)
            reach = float(np.max(np.abs(values))) * 1.05 or 1.0
            edges = np.linspace(-reach, reach, bins + 1)
            self.weights.append(History(w.subgraph, w.name, w.shape, edges))
        self.add("original", original)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.weights[0].stages] if self.weights else []

    def add(self, name: str, model: Model) -> None:
        """Add the stage `name`: the weights' values in `model`, found by name."""
        for h in self.weights:
            t = _dense(model, h)
            if t is None:
                h.stages.append(Stage(name, None))
                continue
            values = real_values(t).ravel()
            inside = np.clip(values, h.edges[0], h.edges[-1])  # rounding may step out a little
            counts, _ = np.histogram(inside, bins=h.edges)
            distinct = int(np.unique(t.data).size)
            zeros = int(np.count_nonzero(values == 0))
            h.stages.append(Stage(name, counts, zeros=zeros, distinct=distinct, dtype=t.dtype))


def _dense(model: Model, h: History) -> Tensor | None:
    """The constant named as the weight, of its shape, stored densely (a target may have
    encoded it: sparse, or as lookup-table indices)."""
    if h.subgraph >= len(model.subgraphs):
        return None
    for t in model.subgraphs[h.subgraph].tensors:
        if t.name != h.name or not t.is_constant or t.sparsity is not None:
            continue
        if tuple(t.shape or ()) == h.shape and t.np_dtype is not None and t.data is not None:
            if t.data.size == int(np.prod(h.shape)):
                return t
    return None
