"""What every pass shares: the pass protocol and its result and record types, per-tensor
rules, and statistics."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NotRequired, Protocol, TypedDict

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import stats
from tflrewrite.model import Model
from tflrewrite.weights import BufferMemo, Weight, find_weights, record, replace_data


class TensorRecord(TypedDict):
    """What a pass (or target) did to one tensor, or why it left it alone: JSON as it is,
    so reports and the provenance entry carry it unchanged. Passes add keys of their own
    (the options a weight got, sizes, op versions...)."""

    tensor: str
    action: str  # what was done ("pruned", "clustered", "encoded", ...) or "skipped"
    op: str  # the type of the op that reads it ("" where none applies)
    subgraph: NotRequired[int]
    dtype: NotRequired[str]
    shape: NotRequired[list[int]]
    reason: NotRequired[str]  # why it was skipped, or a note on what was done
    before: NotRequired[dict[str, Any]]  # weight_stats before and after the edit
    after: NotRequired[dict[str, Any]]
    mse: NotRequired[float]  # weight error in real values


# The records of one step of a rewrite: "pass" names the step ("target:NAME" for a target's
# lay-down, "budget" for a budget's choice); "seconds", where the pass timed its phases
# (PassResult.seconds). Functional form: "pass" is a keyword.
StepRecord = TypedDict(
    "StepRecord",
    {"pass": str, "tensors": list[TensorRecord], "seconds": NotRequired[dict[str, float]]},
)


@dataclass
class PassResult:
    """A pass's model and records; `seconds`, seconds by phase of the work where the pass
    times it (calibration, the data-aware fit's capture, propagate and fit): reports show
    them, the model never holds them."""

    model: Model
    records: list[TensorRecord] = field(default_factory=list)
    seconds: dict[str, float] | None = None


# A key of Data.found: the reference model's layer inputs (input 0 of each op of
# LAYER_OPS, float32 activations) summed over the samples, {tensor name: float64 sum in
# sample order, one sample's shape, or None where no run computes it}. Calibration
# records them from its own run of that model where a later step wants them (refine's
# bias correction), so that the model does not run over the samples twice.
INPUT_SUMS = "input sums"
# A key of Data.found: (model, samples, ranges) where a data-aware step ran the model it
# returns over every sample as it fitted it (tflrewrite.propagate.Cursor's `ranges`: the
# low and high of each float32 activation, keyed by id(tensor)), so that a full-integer
# quantize step given that very model takes them rather than calibrate it again. Unlike
# INPUT_SUMS it is about the step's output, named in the value, not about `reference`.
ACTIVATION_RANGES = "activation ranges"
# A key of Data.found: the float model a full-integer quantize step was given, where a
# later step wants it. Refine rounds each layer toward that model's weights: where an
# earlier data-aware step fitted them to the reference's outputs (pruning), they are the
# layer's best float weights, which the reference's own (unpruned) weights are not.
QUANTIZED_FROM = "quantized from"
# The layers that data-aware passes fit.
LAYER_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


@dataclass(frozen=True)
class Data:
    """What a pass gets when calibration samples are given: the samples (calibrate.Samples)
    and the model whose layer outputs data-aware passes aim at (the rewrite's input, or
    that input as the last function-preserving pass left it; None: the model the pass is
    given). `found`: what a step learned on the samples for a later step, by key
    (INPUT_SUMS about `reference`, ACTIVATION_RANGES, QUANTIZED_FROM), shared by the steps of one
    rewrite; a step adds the keys of `wanted` (those the later steps' Pass.wanted name)
    that its own work gives at little cost."""

    samples: Any
    reference: Model | None = None
    wanted: frozenset[str] = frozenset()
    found: dict[str, Any] = field(default_factory=dict)


class Run(Protocol):
    def __call__(
        self, model: Model, options: Any, rules: tuple[Rule, ...] = (), *, data: Data | None = None
    ) -> PassResult: ...


@dataclass(frozen=True)
class Pass:
    """A pass, as a recipe step runs it: each pass module exports one (PASS).

    `run` returns a new model (the input is never changed) with one record per tensor it
    considered. `preserves_function`: the pass changes weights without changing what the
    model computes, so data-aware passes after it aim at its output rather than the input.
    `wants`: keys of Data.found the pass reads where an earlier step has added them, or
    a function of the step's options giving them (see `wanted`).
    """

    name: str
    Options: type  # noqa: N815 -- the pass's frozen, keyword-only options dataclass
    run: Run
    preserves_function: bool = False
    wants: frozenset[str] | Callable[[Any], frozenset[str]] = frozenset()

    def wanted(self, options) -> frozenset[str]:
        """The keys of Data.found a step of this pass with `options` reads: an earlier
        step does the work of one only where a later step reads it."""
        return self.wants(options) if callable(self.wants) else self.wants


def check_regex(pattern: str | None, what: str) -> None:
    """Refuse a regular expression that does not compile, as a usage error."""
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as e:
        raise UsageError(f"{what}: {pattern!r} is not a regular expression ({e})") from None


@dataclass(frozen=True)
class Rule:
    """Per-tensor override from a recipe file: tensors whose name matches `match` get
    `options` merged into the pass's options, or are left alone when `options` is None."""

    match: str
    options: dict[str, Any] | None

    def __post_init__(self) -> None:
        check_regex(self.match, "rule match")

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


def select(
    model: Model,
    options: Any,
    rules: tuple[Rule, ...],
    *,
    refuse: Callable[[Weight, Any], str | None],
) -> tuple[Model, list, list[dict]]:
    """What every pass starts with: a copy of the model, the weights it will edit with their
    options, and a "skipped" record for each weight it leaves alone. `refuse(w, options)`
    gives a pass's own reason to leave a weight alone, or None."""
    model = model.copy()
    weights, records = find_weights(model, options.skip)
    chosen = []
    for w in weights:
        opts = options_for(options, rules, w.name)
        if opts is None:
            reason = "a recipe rule leaves it alone"
        elif w.tensor.data.size < opts.min_size:
            reason = f"fewer than {opts.min_size} elements"
        else:
            reason = refuse(w, opts)
        if reason:
            records.append(record(w, "skipped", reason))
        else:
            chosen.append((w, opts))
    return model, chosen, records


def commit(
    model: Model, weights: list[Weight], edits: list[tuple], *, action: str, fields: list[dict]
) -> list[dict]:
    """Give each weight its edited values, in order, and record what was done. An edit is
    (values, weight MSE, statistics before, statistics after). Pruning and clustering keep
    finite values finite (zeros, and means of values), so the new values need no check."""
    records = []
    for w, (after, error, before, now), extra in zip(weights, edits, fields, strict=True):
        replace_data(model, w, after, finite=True)
        records.append(
            record(w, action, **extra, before=before, after=remember_stats(w, now), mse=error)
        )
    return records


# Counting distinct float values means sorting; past this many elements the report leaves
# them out rather than spend seconds on a statistic (int8 is counted in one pass).
DISTINCT_FLOAT_LIMIT = 2**20


def weight_stats(rows: np.ndarray, zeros: np.ndarray | None = None) -> dict[str, Any]:
    """Sparsity and distinct values of a weight given as rows (one per output channel);
    `zeros`, the zeros per row when the caller has counted them already."""
    if rows.size == 0:
        return {"sparsity": 0.0, "channel_sparsity": [0.0, 0.0], "unique": 0, "channel_unique": 0}
    if rows.dtype == np.int8:
        return stats_from_counts(*stats.int8_counts(rows), rows.shape[1])
    if zeros is None:
        zeros = stats.zeros_per_row(rows)
    distinct, total = None, None
    if rows.size <= DISTINCT_FLOAT_LIMIT:
        s = np.sort(rows, axis=1)
        distinct = 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)
        flat = np.sort(s, axis=None)  # not np.unique, which imports numpy.ma (50 ms)
        total = 1 + int(np.count_nonzero(flat[1:] != flat[:-1]))
    return stats_from_counts(zeros, distinct, total, rows.shape[1])


def stats_from_counts(
    zeros: np.ndarray, distinct: np.ndarray | None, total: int | None, n: int
) -> dict[str, Any]:
    """weight_stats from zeros and distinct values per row (None: not counted), distinct
    values overall, and the row length n (> 0)."""
    per_row = zeros / n
    return {
        "sparsity": float(zeros.sum()) / (zeros.size * n),
        "channel_sparsity": [float(per_row.min()), float(per_row.max())],
        "unique": total,
        "channel_unique": None if distinct is None else int(distinct.max()),
    }


# Statistics of the weights a pass was given, which the pass before it has just computed as
# its "after", remembered for each buffer's bytes.
_STATS = BufferMemo()


def stats_of(w: Weight) -> dict[str, Any]:
    """weight_stats of a weight by output channel, computed once per buffer content."""
    hit = _STATS.get(w.tensor.buffer.data, w.out_axis)
    if hit is not None:
        return hit
    return remember_stats(w, weight_stats(w.channels(w.tensor.data)))


def remember_stats(w: Weight, result: dict[str, Any]) -> dict[str, Any]:
    """Record `result` as the statistics of the weight's current buffer."""
    return _STATS.put(w.tensor.buffer.data, result, w.out_axis)


# Below this many weight elements in a pass, threads cost more than they save.
PARALLEL_MIN = 2**20


def map_weights(fn: Callable[[Any], Any], items: list, sizes: list[int]) -> list:
    """[fn(x) for x in items], on several threads when there is enough work: the kernels
    release the GIL, and each weight's edit is independent (applying the edits to the
    model stays sequential, in order, so the result does not depend on the threads)."""
    workers = min(os.cpu_count() or 1, len(items))
    if workers < 2 or sum(sizes) < PARALLEL_MIN:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def stored_mse(w: Weight, before: np.ndarray, after: np.ndarray) -> float:
    """Mean squared error in real values between two stored forms of a weight that share
    its quantization (pruning and clustering change values, not scales)."""
    q = w.tensor.quantization
    if w.tensor.dtype == "INT8" and q.per_axis and q.axis != w.out_axis:
        return float(np.mean((real_values_of(w, before) - real_values_of(w, after)) ** 2))
    return channel_sq_to_mse(w, stats.sq_diff_per_row(w.channels(before), w.channels(after)))


def channel_sq_to_mse(w: Weight, sq: np.ndarray) -> float:
    """Mean squared error in real values from per-output-channel sums of squared stored
    differences (int8: scaled by each channel's scale squared)."""
    q = w.tensor.quantization
    if w.tensor.dtype == "INT8":
        sq = sq * q.scale.astype(np.float64) ** 2  # one scale, or one per output channel
    return float(sq.sum()) / max(w.tensor.data.size, 1)


def real_values_of(w: Weight, stored: np.ndarray) -> np.ndarray:
    q = w.tensor.quantization
    shape = [1] * stored.ndim
    if q.per_axis:
        shape[q.axis] = q.scale.size
    return stored.astype(np.float64) * q.scale.astype(np.float64).reshape(shape)
