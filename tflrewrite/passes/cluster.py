"""Weight clustering: every unit (a tensor, or an output channel) keeps at most K distinct
values, chosen by exact optimal 1-D k-means (least squared error).

Sparsity-preserving: zero is a cluster of its own, fixed at exactly zero, and counts as one
of the K. int8 weights are clustered in the int8 domain (centroids are int8 values, the form
Vela's palettes and TFLite Micro's lookup tables need), over each unit's histogram of at
most 256 levels, so the cost does not grow with the tensor's size. Float weights are
clustered over their sorted values; float16 centroids are rounded to float16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import kmeans1d
from tflrewrite.model import Model
from tflrewrite.passes.common import (
    Data,
    Pass,
    PassResult,
    Rule,
    channel_sq_to_mse,
    check_regex,
    commit,
    map_weights,
    select,
    stats_from_counts,
    stats_of,
    stored_mse,
    weight_stats,
)
from tflrewrite.weights import Weight

INITS = ("optimal", "linear", "kmeans++", "density")


@dataclass(frozen=True, kw_only=True)
class Options:
    clusters: int = 16
    granularity: str = "tensor"  # tensor | channel: the unit that gets at most K values
    init: str = "optimal"  # the others run Lloyd's algorithm, as TF Model Optimization does
    preserve_sparsity: bool = True
    min_size: int = 0
    skip: str | None = None
    seed: int = 0  # for kmeans++ only

    def __post_init__(self) -> None:
        check_regex(self.skip, "--skip")
        if not 1 <= self.clusters <= 256:
            raise UsageError(f"cluster: clusters must be 1..256, not {self.clusters}")
        if self.granularity not in ("tensor", "channel"):
            raise UsageError(
                f"cluster: granularity must be tensor or channel, not {self.granularity!r}"
            )
        if self.init not in INITS:
            raise UsageError(f"cluster: init must be one of {', '.join(INITS)}, not {self.init!r}")


def run(
    model: Model, options: Options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
) -> PassResult:
    model, chosen, records = select(model, options, rules, refuse=lambda w, opts: None)
    edits = map_weights(_edit, chosen, [w.tensor.data.size for w, _ in chosen])
    fields = [
        {"clusters": o.clusters, "granularity": o.granularity, "init": o.init} for _, o in chosen
    ]
    records += commit(model, [w for w, _ in chosen], edits, action="clustered", fields=fields)
    return PassResult(model, records)


PASS = Pass(name="cluster", Options=Options, run=run)


def units(w: Weight, values: np.ndarray, granularity: str) -> np.ndarray:
    """The weight's values as rows, one per clustering unit."""
    return w.channels(values) if granularity == "channel" else values.reshape(1, -1)


def from_units(w: Weight, rows: np.ndarray, granularity: str) -> np.ndarray:
    return w.from_channels(rows) if granularity == "channel" else rows.reshape(w.shape)


def _edit(item: tuple) -> tuple[np.ndarray, float, dict, dict]:
    """(clustered values, weight MSE, statistics before, statistics after) of one weight."""
    w, opts = item
    stored = w.tensor.data
    if opts.init == "optimal" and w.tensor.dtype == "INT8":
        return _edit_int8(w, opts)
    rows = np.ascontiguousarray(units(w, stored, opts.granularity))
    if opts.init != "optimal":
        clustered = _lloyd_rows(rows, opts)
    elif w.tensor.dtype == "INT8":
        clustered = kmeans1d.cluster_int8_rows(rows, opts.clusters, opts.preserve_sparsity)
    else:
        values = kmeans1d.cluster_float_rows(
            rows.astype(np.float32), opts.clusters, opts.preserve_sparsity
        )
        clustered = values.astype(stored.dtype)
    after = from_units(w, clustered, opts.granularity)
    return after, stored_mse(w, stored, after), stats_of(w), weight_stats(w.channels(after))


def _edit_int8(w: Weight, opts: Options) -> tuple[np.ndarray, float, dict, dict]:
    """_edit of int8 weights by the optimal clustering, which also counts what the report
    wants from the histograms it clusters."""
    stored = w.tensor.data
    rows = w.channels(stored)
    clustered, sq, counts = kmeans1d.cluster_int8(
        rows, opts.clusters, opts.preserve_sparsity, per_row=opts.granularity == "channel"
    )
    after = w.from_channels(clustered)
    q = w.tensor.quantization
    if q.per_axis and q.axis != w.out_axis:
        error = stored_mse(w, stored, after)
    else:
        error = channel_sq_to_mse(w, sq)
    now = stats_from_counts(*counts, rows.shape[1]) if rows.size else weight_stats(clustered)
    return after, error, stats_of(w), now


def _lloyd_rows(rows: np.ndarray, opts: Options) -> np.ndarray:
    """TF Model Optimization's way (an initialisation, then Lloyd's iterations), for
    comparison with the optimal default; zeros stay a cluster of their own."""
    out = rows.copy()
    for r, row in enumerate(rows):
        keep = row != 0 if opts.preserve_sparsity else np.ones(row.shape, bool)
        k = opts.clusters - (1 if opts.preserve_sparsity and not keep.all() else 0)
        values, counts = np.unique(row[keep].astype(np.float64), return_counts=True)
        if values.size == 0 or k < 1:
            continue
        init = kmeans1d.initial_centroids(
            values, counts.astype(np.float64), k, method=opts.init, seed=opts.seed
        )
        centroids, _ = kmeans1d.lloyd_1d(values, counts.astype(np.float64), init)
        nearest = np.abs(row[keep, None].astype(np.float64) - centroids[None, :]).argmin(axis=1)
        new = centroids[nearest]
        if rows.dtype == np.int8:
            new = np.clip(np.sign(new) * np.floor(np.abs(new) + 0.5), -128, 127)
        out[r, keep] = new.astype(rows.dtype)
    return out
