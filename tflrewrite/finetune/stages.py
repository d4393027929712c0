"""What each stage holds fixed while it trains, worked out with the post-training path's own
kernels, so that "pruned" and "clustered" mean the same thing on both paths.

    qat    nothing: every weight trains;
    pqat   the pruning mask: pruned weights are zero at every step;
    cqat   the cluster assignment: each weight stays in its cluster, the centroids train;
    pcqat  both: zero is a cluster of its own, fixed at zero.

The mask is magnitude pruning by kernels/prune.py (per output channel, or per tensor), the
same choice the prune pass makes on a .tflite; the clusters are exact optimal 1-D k-means by
kernels/kmeans1d.py, the same as the cluster pass makes on float weights, zeros kept as a
cluster of their own. Everything here is numpy on a kernel's rows (one per output channel);
no TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import kmeans1d, prune

STAGES = ("qat", "pqat", "cqat", "pcqat")
# Kernels with fewer weights than this per output channel (a 3x3 depthwise channel has 9, a
# first 3x3 convolution of one input channel too) are clustered but not pruned, unless
# asked: half of a few taps costs more accuracy than its bytes are worth (the MNIST bench:
# see the README). The post-training data path draws the same line.
MIN_PRUNE_ROW = 16
LOSSES = ("sparse-categorical", "categorical", "binary", "mse")


@dataclass(frozen=True, kw_only=True)
class StageOptions:
    stage: str = "pcqat"
    sparsity: float = 0.5  # pqat, pcqat
    clusters: int = 16  # cqat, pcqat
    granularity: str = "tensor"  # the clustering unit: tensor or channel
    prune_scope: str = "tensor"  # the unit that reaches the sparsity: tensor or channel

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise UsageError(f"stage must be one of {', '.join(STAGES)}, not {self.stage!r}")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"prune: sparsity must be in [0, 1), not {self.sparsity}")
        if not 1 <= self.clusters <= 256:
            raise UsageError(f"cluster: clusters must be 1..256, not {self.clusters}")
        if self.granularity not in ("tensor", "channel"):
            raise UsageError(f"granularity must be tensor or channel, not {self.granularity!r}")
        if self.prune_scope not in ("tensor", "channel"):
            raise UsageError(f"prune scope must be tensor or channel, not {self.prune_scope!r}")

    @property
    def prunes(self) -> bool:
        return self.stage in ("pqat", "pcqat") and self.sparsity > 0

    @property
    def clusters_weights(self) -> bool:
        return self.stage in ("cqat", "pcqat")


@dataclass
class Plan:
    """One kernel's starting point, as rows (channels, n)."""

    rows: np.ndarray  # float32: pruned and clustered starting values
    keep: np.ndarray | None  # bool, False where pruned (held at zero); None: nothing pruned
    assign: np.ndarray | None  # int32 index of each weight's centroid, or None (no clusters)
    centroids: np.ndarray | None  # float32 (units * clusters,): each unit's centroids, padded
    trainable: np.ndarray | None  # bool per centroid: False for zero and padding

    @property
    def units(self) -> int:
        return 0 if self.centroids is None else self.centroids.size


def plan(
    rows: np.ndarray,
    options: StageOptions,
    *,
    keep: np.ndarray | None = None,
    channel_scale: np.ndarray | None = None,
) -> Plan:
    """Prune, then cluster, a kernel's rows as the stage asks. `keep` is a mask an earlier
    phase chose, kept as it is; `channel_scale` is what a batch norm not yet folded will
    multiply each channel by: magnitudes are ranked as they will be stored."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if keep is not None:
        rows = np.where(keep, rows, np.float32(0))
    elif options.prunes:
        ranked = rows if channel_scale is None else rows * np.abs(channel_scale)[:, None]
        mask = prune_mask(ranked, options.sparsity, options.prune_scope)
        rows = np.where(mask, np.float32(0), rows)
        keep = ~mask
    if not options.clusters_weights:
        return Plan(rows, keep, None, None, None)
    assign, centroids = cluster(rows, options.clusters, options.granularity)
    values = centroids[assign]
    return Plan(values, keep, assign, centroids, centroids != 0)


def not_pruned(row_length: int, prune_all: bool) -> str | None:
    """Why a kernel with channels of `row_length` weights is left unpruned, or None."""
    if prune_all or row_length >= MIN_PRUNE_ROW:
        return None
    return f"channels of {row_length} weights (< {MIN_PRUNE_ROW}): clustered, not pruned"


def prune_mask(rows: np.ndarray, sparsity: float, scope: str) -> np.ndarray:
    """True where magnitude pruning zeroes a weight: the prune pass's choice, existing
    zeros first, ties to the lower index."""
    mag = np.abs(rows)
    if scope == "tensor":
        flat = mag.reshape(1, -1)
        k = np.array([prune.prune_count(flat.shape[1], sparsity)], np.int64)
        return prune.smallest_k_mask(flat, k).reshape(rows.shape)
    k = np.full(rows.shape[0], prune.prune_count(rows.shape[1], sparsity), np.int64)
    return prune.smallest_k_mask(mag, k)


def cluster(rows: np.ndarray, clusters: int, granularity: str) -> tuple[np.ndarray, np.ndarray]:
    """(index of each weight's centroid, centroids): optimal k-means per unit with zero a
    cluster of its own; unit u's centroids sit at [u * clusters, (u + 1) * clusters)."""
    units = rows if granularity == "channel" else rows.reshape(1, -1)
    clustered = kmeans1d.cluster_float_rows(units, clusters, True)
    assign = np.empty(units.shape, np.int32)
    centroids = np.zeros(units.shape[0] * clusters, np.float32)
    for u, row in enumerate(clustered):
        values, inverse = np.unique(row, return_inverse=True)
        centroids[u * clusters : u * clusters + values.size] = values
        assign[u] = u * clusters + inverse.reshape(-1)
    return assign.reshape(rows.shape), centroids


def distinct_per_row(rows: np.ndarray) -> np.ndarray:
    s = np.sort(rows, axis=1)
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)
