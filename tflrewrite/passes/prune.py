"""Magnitude pruning: set the smallest weights to zero, unstructured or in the patterns
runtimes exploit (M:N groups along the input channels, 1x16 and 1x4 blocks).

Magnitudes are of real values (|scale * q| for int8), so that a per-tensor or global
threshold compares like with like across channels. Existing zeros have magnitude 0: they
are pruned first, count toward the target, and can never become nonzero.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import prune as kernels
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
    stats_of,
    stored_mse,
    weight_stats,
)
from tflrewrite.weights import Weight

PATTERN = re.compile(r"^(unstructured|(\d+):(\d+)|1x(\d+))$")


@dataclass(frozen=True, kw_only=True)
class Options:
    sparsity: float = 0.5
    pattern: str = "unstructured"  # unstructured | N:M (keep N of every M) | 1xB blocks
    scope: str = "channel"  # channel | tensor | global: the unit that reaches the target
    min_size: int = 0  # weights with fewer elements are left alone
    skip: str | None = None  # regex of tensor names to leave alone

    def __post_init__(self) -> None:
        check_regex(self.skip, "--skip")
        if not 0.0 <= self.sparsity < 1.0:
            raise UsageError(f"prune: sparsity must be in [0, 1), not {self.sparsity}")
        m = PATTERN.match(self.pattern)
        if not m:
            raise UsageError(
                f"prune: pattern must be unstructured, N:M (e.g. 2:4) or 1xB "
                f"(e.g. 1x16), not {self.pattern!r}"
            )
        if m.group(4) and int(m.group(4)) < 2:
            raise UsageError(f"prune: blocks need at least 2 elements, not {self.pattern}")
        if m.group(2) and not 0 < int(m.group(2)) < int(m.group(3)):
            raise UsageError(f"prune: N:M needs 0 < N < M, not {self.pattern}")
        if self.scope not in ("channel", "tensor", "global"):
            raise UsageError(f"prune: scope must be channel, tensor or global, not {self.scope!r}")
        if self.scope == "global" and self.pattern != "unstructured":
            raise UsageError("prune: global scope works with the unstructured pattern only")

    @property
    def n_of_m(self) -> tuple[int, int] | None:
        m = PATTERN.match(self.pattern)
        return (int(m.group(2)), int(m.group(3))) if m.group(2) else None

    @property
    def block(self) -> int | None:
        m = PATTERN.match(self.pattern)
        return int(m.group(4)) if m.group(4) else None


def run(
    model: Model, options: Options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
) -> PassResult:
    model, chosen, records = select(model, options, rules, refuse=_not_prunable)
    if options.scope == "global":
        masks = _global_masks([w for w, _ in chosen], options.sparsity)
        items = [(w, opts, mask) for (w, opts), mask in zip(chosen, masks)]
    else:
        items = [(w, opts, None) for w, opts in chosen]
    edits = map_weights(_edit, items, [w.tensor.data.size for w, _ in chosen])
    fields = [{"pattern": o.pattern, "scope": o.scope, "target": o.sparsity} for _, o in chosen]
    records += commit(model, [w for w, _ in chosen], edits, action="pruned", fields=fields)
    return PassResult(model, records)


PASS = Pass(name="prune", Options=Options, run=run)


def _not_prunable(w: Weight, opts: Options) -> str | None:
    if (opts.n_of_m or opts.block) and w.in_axis is None:
        return f"{w.op_type} has no input-channel axis for the {opts.pattern} pattern"
    if opts.block and w.shape[w.in_axis] % opts.block:
        # A partial block would be pruned whole or not at all, and the sparse kernels
        # that want blocks take only whole ones.
        return f"input depth {w.shape[w.in_axis]} is not a multiple of the block {opts.block}"
    return None


def _magnitudes(w: Weight) -> np.ndarray:
    """|real value| of each weight, float32 (int8: |q| * scale of its channel)."""
    data = w.tensor.data
    if data.dtype != np.int8:
        return np.abs(data, dtype=np.float32)
    q = w.tensor.quantization
    shape = [1] * data.ndim
    if q.per_axis:
        shape[q.axis] = q.scale.size
    return np.abs(data, dtype=np.float32) * q.scale.astype(np.float32).reshape(shape)


def _mask(w: Weight, opts: Options) -> np.ndarray:
    """Where to prune, in the weight's shape."""
    mag = _magnitudes(w)
    if opts.n_of_m or opts.block:
        rows = np.moveaxis(mag, w.in_axis, -1)
        flat = rows.reshape(-1, rows.shape[-1])
        if opts.n_of_m:
            mask = kernels.n_of_m_mask(flat, *opts.n_of_m)
        else:
            nblocks = -(-flat.shape[1] // opts.block)
            k = np.full(flat.shape[0], kernels.prune_count(nblocks, opts.sparsity), np.int64)
            mask = kernels.block_mask(flat, opts.block, k)
        return np.moveaxis(mask.reshape(rows.shape), -1, w.in_axis)
    if opts.scope == "tensor":
        flat = mag.reshape(1, -1)
        k = np.array([kernels.prune_count(flat.shape[1], opts.sparsity)], np.int64)
        return kernels.smallest_k_mask(flat, k).reshape(mag.shape)
    rows = w.channels(mag)
    k = np.full(rows.shape[0], kernels.prune_count(rows.shape[1], opts.sparsity), np.int64)
    return w.from_channels(kernels.smallest_k_mask(np.ascontiguousarray(rows), k))


def _global_masks(weights: list[Weight], sparsity: float) -> list[np.ndarray]:
    mags = [_magnitudes(w).reshape(1, -1) for w in weights]
    total = sum(m.size for m in mags)
    masks = kernels.global_smallest_k_masks(mags, kernels.prune_count(total, sparsity))
    return [m.reshape(w.shape) for m, w in zip(masks, weights)]


def _edit(item: tuple) -> tuple[np.ndarray, float, dict, dict]:
    """(pruned values, weight MSE, statistics before, statistics after) of one weight."""
    w, opts, mask = item
    before = stats_of(w)
    q = w.tensor.quantization
    one_scale_per_row = not (w.tensor.dtype == "INT8" and q.per_axis and q.axis != w.out_axis)
    if (
        mask is None
        and opts.scope == "channel"
        and opts.pattern == "unstructured"
        and one_scale_per_row
    ):
        # The common case, in one pass per channel: within a channel, stored magnitudes
        # order like real ones.
        rows = np.ascontiguousarray(w.channels(w.tensor.data))
        k = np.full(rows.shape[0], kernels.prune_count(rows.shape[1], opts.sparsity), np.int64)
        rows, sq, zeros = kernels.prune_rows(rows, k)
        after = weight_stats(rows, zeros)
        return w.from_channels(rows), channel_sq_to_mse(w, sq), before, after
    if mask is None:
        mask = _mask(w, opts)
    if not one_scale_per_row:
        data = w.tensor.data
        after = np.where(mask, np.zeros((), data.dtype), data)
        return after, stored_mse(w, data, after), before, weight_stats(w.channels(after))
    rows, sq = kernels.apply_mask(w.channels(w.tensor.data), w.channels(mask))
    return w.from_channels(rows), channel_sq_to_mse(w, sq), before, weight_stats(rows)
