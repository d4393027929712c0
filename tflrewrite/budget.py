"""Size budgets: per-layer settings of the recipe's pruning and clustering, chosen so that
the output meets `--max-bytes`, `--max-zip-bytes` or `--max-vela-bytes` with the least
estimated output error.

1. Sensitivity. For every weight layer the data-aware passes can fit, and every candidate
   setting (sparsity from SPARSITIES where the recipe prunes; where it clusters, cluster
   count from CLUSTERS, 0 meaning "not clustered", with one codebook per tensor or one per
   channel), the layer's weights are compressed as the
   recipe's steps would compress them (datafit.compress_rows: pruning with weight updates,
   int8 scales where the recipe quantizes, clustering with error feedback; the codebook
   refit, which costs more than the rest, is left out, so clustering scores a little
   worse than it will be) and scored:
     error: tr(dW H dW^T) / tr(W H W^T), the layer's output error relative to its output,
            with H = X X^T of its inputs in the original model over the calibration
            samples (the identity without data: plain weight error);
     size:  the stored weights' share of the budget's measure (deflated bytes for zip;
            for bytes, the target's own estimate of the weight as it lays it down,
            targets.Target.estimate_bytes; Vela's weight codec, by the rate model of
            kernels.palette, for vela).
2. Choice. Every layer starts at its least-error setting; then, while the estimate is over
   the budget, the layer whose next step down its lower convex hull of (size, error) costs
   the least error per byte saved takes it (the greedy answer to the multiple-choice
   knapsack, exact on the hulls). Summing per-layer relative errors is the proxy: each
   layer's relative noise is assumed to reach the output alike.
3. Check. The recipe runs with the choice as per-tensor rules and the output is measured
   for real (zip archive, file bytes, or Vela's own report). What the estimate leaves out
   (the rest of the file, and how deflate spans tensors) is that measure minus the sum of
   the chosen estimates; the choice is made again against the budget less that, until an
   output fits within SLACK of the budget, or ATTEMPTS runs. The fitting run of least
   estimated error is kept.

The choice goes into the report, one record per layer: the setting, its estimated error (as
dB) and bytes, and the setting it was chosen over.
"""

from __future__ import annotations

import dataclasses
import heapq
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from tflrewrite import rewrite, targets, writer
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.kernels import reconstruct as kernels
from tflrewrite.model import Model
from tflrewrite.passes import PASSES, datafit
from tflrewrite.passes.common import Rule, options_for, select
from tflrewrite.progress import Progress
from tflrewrite.recipes import Recipe
from tflrewrite.reports.text import db
from tflrewrite.weights import Weight, real_values, record

# What a budget bounds: the flag's name on the command line, and what it measures.
METRICS = {
    "bytes": ("--max-bytes", "file bytes"),
    "zip": ("--max-zip-bytes", "zipped bytes"),
    "vela": ("--max-vela-bytes", "Vela's encoded weight bytes"),
}
SPARSITIES = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)
CLUSTERS = (0, 64, 32, 16, 8, 4)  # 0: not clustered
GRANULARITIES = ("tensor", "channel")  # one codebook shared (scaled per channel), or one each
ATTEMPTS = 4
HESSIAN_BYTES = 1 << 30  # X X^T of several layers collected in one pass over the samples
SLACK = 0.01  # a run this close under the budget is kept without trying to use the rest


@dataclass(frozen=True)
class Budget:
    metric: str  # a key of METRICS
    limit: int

    @property
    def flag(self) -> str:
        return METRICS[self.metric][0]


class Setting(NamedTuple):
    sparsity: float
    clusters: int  # 0: not clustered
    granularity: str  # of the codebooks

    def __str__(self) -> str:
        pruned = f"{self.sparsity:.0%} sparse" if self.sparsity else "unpruned"
        if not self.clusters:
            return f"{pruned}, unclustered"
        return f"{pruned}, {self.clusters} clusters per {self.granularity}"


@dataclass
class _Layer:
    weight: Weight
    settings: list[Setting]  # the candidates
    sizes: np.ndarray
    errors: np.ndarray  # relative output error of each candidate


def apply(
    model: Model,
    recipe: Recipe,
    budget: Budget,
    *,
    progress: Callable[[str], None] | None = None,
    target: str = "generic",
    data: Any = None,
    method: str = "data",
    accelerator: str | None = None,
    name: str = "model.tflite",
) -> rewrite.Result:
    """rewrite.apply with per-layer settings of `recipe`'s pruning and clustering chosen to
    meet `budget` (see the module's notes). `name` is the output's file name, which a zip
    archive holds too."""
    steps = {s.name: s for s in recipe.steps}
    if "prune" not in steps and "cluster" not in steps:
        raise UsageError(
            f"{budget.flag} chooses --prune and --cluster settings per layer: give one"
        )
    measure = _measure(budget, accelerator, name)
    scored = model
    if "equalize" in steps:  # the recipe equalizes first: score the layers as it leaves them
        step = steps["equalize"]
        scored = PASSES["equalize"].run(model, step.options, step.rules).model
    layers = _sensitivity(
        scored,
        steps,
        budget=budget,
        target=targets.load(target),
        data=data,
        method=method,
        progress=progress,
    )
    if not layers:
        raise TflRewriteError(f"{budget.flag}: no layer whose settings it could choose")
    offset, tried, best, smallest = 0, set(), None, None
    for _ in range(ATTEMPTS):
        chosen = _choose(layers, budget.limit - offset)
        if chosen in tried:
            break  # the same choice again would measure the same
        tried.add(chosen)
        result = rewrite.apply(
            model,
            _with_choice(recipe, layers, chosen),
            progress=progress,
            target=target,
            data=data,
            method=method,
        )
        got = measure(result.model)
        if progress:
            what = METRICS[budget.metric][1]
            progress(f"budget: run {len(tried)}: {got:,} {what} against {budget.limit:,}")
        error = sum(layer.errors[c] for layer, c in zip(layers, chosen))
        if got <= budget.limit and (best is None or error < best[0]):
            best = (error, result, chosen, got)
        smallest = got if smallest is None else min(smallest, got)
        if budget.limit - SLACK * budget.limit <= got <= budget.limit:
            break
        offset = got - sum(int(layer.sizes[c]) for layer, c in zip(layers, chosen))
    if best is None:
        hint = targets.load(target).bytes_hint if budget.metric == "bytes" else ""
        raise TflRewriteError(
            f"{budget.flag} {budget.limit:,}: the smallest settings found give "
            f"{smallest:,} {METRICS[budget.metric][1]}{hint}"
        )
    _, result, chosen, got = best
    step = {
        "pass": "budget",
        "measure": METRICS[budget.metric][1],
        "limit": budget.limit,
        "got": got,
        "runs": len(tried),
        "tensors": _records(layers, chosen),
    }
    result.records.insert(0, step)
    return result


# ------------------------------------------------------------------ sensitivity


def _sensitivity(
    model: Model,
    steps: dict,
    *,
    budget: Budget,
    target: targets.Target,
    data: Any,
    method: str,
    progress: Callable[[str], None] | None,
) -> list[_Layer]:
    pruning, clustering = steps.get("prune"), steps.get("cluster")
    quantize = steps.get("quantize")
    mode = quantize.options.mode if quantize else None
    base = (pruning or clustering).options
    rules = (pruning or clustering).rules
    model_copy, chosen, _ = select(model, base, rules, refuse=lambda w, o: None)
    sg = model_copy.subgraphs[0]
    readers = sg.consumers()
    weights, ops = [], []
    for w, _opts in chosen:
        if datafit.not_fittable(w, readers, "cluster") is None:
            weights.append(w)
            ops.append(readers[id(w.tensor)][0])
    if progress:
        progress(f"budget: sensitivity of {len(weights)} layers")
    use_data = data is not None
    hessians = [None] * len(ops)
    if use_data:  # a few runs over the samples rather than every H in memory at once
        for chunk in _chunks(ops):
            found = datafit.layer_hessians(model_copy, [ops[i] for i in chunk], data.values)
            for i, h in zip(chunk, found):
                hessians[i] = h
    bar = Progress("budget: candidate settings", len(weights))
    layers = []
    for i, (w, op, h) in enumerate(zip(weights, ops, hessians)):
        rows = datafit.layer_rows(op.type, real_values(w.tensor))
        if h is None:
            h = np.broadcast_to(np.eye(rows.shape[2]), (rows.shape[0],) + (rows.shape[2],) * 2)
        fit_h = (
            h if method == "data" and use_data else np.broadcast_to(np.eye(rows.shape[2]), h.shape)
        )
        estimate = _estimator(target, w, sg, readers[id(w.tensor)], mode)
        layers.append(
            _candidates(
                w,
                op,
                rows,
                h,
                fit_h,
                pruning=pruning,
                clustering=clustering,
                mode=mode,
                metric=budget.metric,
                estimate=estimate,
            )
        )
        bar(i + 1)
    return layers


def _chunks(ops) -> list[list[int]]:
    """Indices of `ops` in runs whose X X^T together stay under HESSIAN_BYTES."""
    chunks, size = [[]], 0
    for i, op in enumerate(ops):
        w = op.inputs[1]
        groups = w.shape[3] if op.type == "DEPTHWISE_CONV_2D" else 1
        d = int(np.prod(w.shape)) // (groups if op.type == "DEPTHWISE_CONV_2D" else w.shape[0])
        need = groups * d * d * 8
        if chunks[-1] and size + need > HESSIAN_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(i)
        size += need
    return chunks


def _estimator(
    target: targets.Target, w: Weight, sg, readers: list, mode: str | None
) -> Callable[[np.ndarray], int]:
    """The target's estimate of `w`'s stored bytes, as a function of the values stored."""
    return lambda stored: target.estimate_bytes(
        w, stored, subgraph=sg, readers=readers, quantize_mode=mode
    )


def _candidates(
    w, op, rows, h, fit_h, *, pruning, clustering, mode, metric: str, estimate
) -> _Layer:
    prune_opts = pruning and options_for(pruning.options, pruning.rules, w.name)
    cluster_opts = clustering and options_for(clustering.options, clustering.rules, w.name)
    prunable = (
        prune_opts is not None
        and op.type != "DEPTHWISE_CONV_2D"
        and rows.shape[2] >= datafit.MIN_ROW
    )
    sparsities = SPARSITIES if prunable else (0.0,)
    if prunable and prune_opts.n_of_m:  # the pattern fixes the sparsity
        n, m = prune_opts.n_of_m
        sparsities = (0.0, 1 - n / m)
    counts = CLUSTERS if cluster_opts else (0,)
    shared = GRANULARITIES if rows.shape[0] * rows.shape[1] > 1 else ("tensor",)
    zeros = rows == 0
    stored_scales = datafit.row_scales(op.type, w.tensor)
    quantized = w.tensor.dtype == "INT8" or mode in ("int8", "int16x8", "int8-weights")
    energy = _energy(rows, h)
    dtype = np.dtype(np.float16) if mode == "float16" else w.tensor.np_dtype
    factors = [kernels.inverse_cholesky(x) for x in fit_h]
    settings, sizes, errors = [], [], []
    for s in sparsities:
        if s == 0.0:
            pruned = rows
        else:
            opts = dataclasses.replace(prune_opts, sparsity=s)
            pruned = datafit.compress_rows(
                "prune", rows, fit_h, zeros=zeros, scales=stored_scales, opts=opts, factors=factors
            )
        scales = stored_scales
        if scales is None and quantized:
            peak = np.abs(pruned).max(axis=2)
            scales = np.where(peak > 0, peak / 127.0, 1.0)
        for k, g in [(0, "tensor")] * (0 in counts) + [(k, g) for k in counts if k for g in shared]:
            if k == 0:
                new = (
                    pruned if scales is None else _stored(pruned, scales, dtype) * scales[..., None]
                )
            else:
                opts = dataclasses.replace(cluster_opts, clusters=k, granularity=g)
                new = datafit.compress_rows(
                    "cluster",
                    rows,
                    fit_h,
                    zeros=pruned == 0,
                    scales=scales,
                    opts=opts,
                    factors=factors,
                    refit=False,
                )
            stored = _stored(new, scales, dtype)
            settings.append(Setting(s, k, g))
            sizes.append(_size(metric, stored, estimate))
            errors.append(_energy(new - rows, h) / max(energy, 1e-30))
    return _Layer(w, settings, np.array(sizes, np.int64), np.array(errors))


def _energy(rows: np.ndarray, h: np.ndarray) -> float:
    """sum over groups of tr(R H R^T)."""
    return sum(kernels.output_error(r, 0.0, x) for r, x in zip(rows, h))


def _stored(rows: np.ndarray, scales, dtype) -> np.ndarray:
    """groups x rows x d as the file would hold them: int8 codes, or the weight's floats."""
    if scales is None:
        return rows.astype(dtype)
    return np.clip(np.round(rows / scales[:, :, None]), -127, 127).astype(np.int8)


def _size(metric: str, stored: np.ndarray, estimate: Callable[[np.ndarray], int]) -> int:
    """The stored weight's estimated share of the budget's measure; `estimate`: the
    target's file bytes of it."""
    if metric == "zip":
        return len(zlib.compress(np.ascontiguousarray(stored).tobytes(), 6))
    if metric == "vela":
        return _vela_bytes(stored)
    return estimate(stored)


def _vela_bytes(stored: np.ndarray) -> int:
    """Bytes of Vela's weight codec for int8 weights by kernels.palette's rate model (one
    stream, one palette of the most frequent values); float weights do not reach the NPU."""
    from tflrewrite.kernels import palette

    if stored.dtype != np.int8:
        return stored.nbytes
    values, counts = np.unique(stored, return_counts=True)
    zeros = float(counts[values == 0].sum())
    nonzero = counts[values != 0].astype(np.float64)
    _, bits = palette.index_bits(nonzero, zeros)
    if zeros > palette.ZERO_RUN_FACTOR * nonzero.max(initial=0.0) and nonzero.size:
        # zeros left for run lengths, which the rate model leaves out: about one
        # Golomb-Rice code of the mean run per nonzero weight
        bits += nonzero.sum() * (1 + np.log2(1 + zeros / nonzero.sum()))
    return int(np.ceil(bits / 8))


# ------------------------------------------------------------------ choice


def _hull(layer: _Layer) -> list[int]:
    """The candidates on the lower convex hull of (size, error), from the least error
    (largest) to the smallest size."""
    order = sorted(range(len(layer.sizes)), key=lambda i: (layer.sizes[i], layer.errors[i], i))
    frontier = []  # increasing size, strictly decreasing error
    for i in order:
        if not frontier or layer.errors[i] < layer.errors[frontier[-1]]:
            if frontier and layer.sizes[i] == layer.sizes[frontier[-1]]:
                frontier[-1] = i
            else:
                frontier.append(i)
    hull: list[int] = []
    for i in frontier:
        while len(hull) >= 2 and _cross(layer, hull[-2], hull[-1], i) <= 0:
            hull.pop()
        hull.append(i)
    return hull[::-1]


def _cross(layer: _Layer, a: int, b: int, c: int) -> float:
    s, e = layer.sizes.astype(np.float64), layer.errors
    return (s[b] - s[a]) * (e[c] - e[a]) - (e[b] - e[a]) * (s[c] - s[a])


def _choose(layers: list[_Layer], limit: int) -> tuple[int, ...]:
    """Per layer, the index of its setting: least summed error with estimated sizes
    summing to `limit` or less, by greedy steps along each layer's hull (as small as each
    can go when nothing fits), then steps back up, most error saved first, into what the
    last step left over."""
    hulls = [_hull(layer) for layer in layers]
    at = [0] * len(layers)
    total = sum(int(layer.sizes[h[0]]) for layer, h in zip(layers, hulls))
    heap = []

    def push(i: int) -> None:
        h, layer = hulls[i], layers[i]
        if at[i] + 1 < len(h):
            a, b = h[at[i]], h[at[i] + 1]
            saved = float(layer.sizes[a] - layer.sizes[b])
            heapq.heappush(heap, ((layer.errors[b] - layer.errors[a]) / saved, i))

    for i in range(len(layers)):
        push(i)
    while total > limit and heap:
        _, i = heapq.heappop(heap)
        h, layer = hulls[i], layers[i]
        total -= int(layer.sizes[h[at[i]]] - layer.sizes[h[at[i] + 1]])
        at[i] += 1
        push(i)
    while True:  # the last step may have saved more than needed: step back where it fits
        back = []
        for i, (h, layer) in enumerate(zip(hulls, layers)):
            if at[i] > 0:
                extra = int(layer.sizes[h[at[i] - 1]] - layer.sizes[h[at[i]]])
                gain = float(layer.errors[h[at[i]]] - layer.errors[h[at[i] - 1]])
                if total + extra <= limit:
                    back.append((-gain, i, extra))
        if not back:
            break
        _, i, extra = min(back)
        at[i] -= 1
        total += extra
    return tuple(h[a] for h, a in zip(hulls, at))


def _with_choice(recipe: Recipe, layers: list[_Layer], chosen: tuple[int, ...]) -> Recipe:
    """`recipe` with one rule per planned layer in front of its own rules."""
    prune_rules, cluster_rules = [], []
    for layer, c in zip(layers, chosen):
        s = layer.settings[c]
        match = f"^{re.escape(layer.weight.name)}$"
        prune_rules.append(Rule(match, {"sparsity": s.sparsity} if s.sparsity else None))
        cluster = {"clusters": s.clusters, "granularity": s.granularity}
        cluster_rules.append(Rule(match, cluster if s.clusters else None))
    steps = []
    for step in recipe.steps:
        extra = {"prune": prune_rules, "cluster": cluster_rules}.get(step.name, [])
        steps.append(dataclasses.replace(step, rules=tuple(extra) + step.rules))
    return dataclasses.replace(recipe, name=f"{recipe.name}+budget", steps=tuple(steps))


def _records(layers, chosen) -> list[dict]:
    out = []
    for layer, c in zip(layers, chosen):
        s = layer.settings[c]
        out.append(
            record(
                layer.weight,
                "planned",
                _why(layer, c),
                sparsity=s.sparsity,
                clusters=s.clusters,
                granularity=s.granularity if s.clusters else None,
                estimated_bytes=int(layer.sizes[c]),
                estimated_sqnr_db=_db(layer.errors[c]),
            )
        )
    return out


def _why(layer: _Layer, c: int) -> str:
    """What the choice was made over: the next setting with less error, and what it would
    have cost per dB."""
    better = [i for i in range(len(layer.sizes)) if layer.errors[i] < layer.errors[c]]
    if not better:
        return "least error of its candidates"
    i = min(better, key=lambda j: (layer.sizes[j], layer.errors[j]))
    return (
        f"over {layer.settings[i]} ({db(_db(layer.errors[i]))} dB for "
        f"{int(layer.sizes[i] - layer.sizes[c]):+,} bytes)"
    )


def _db(error: float) -> float | None:
    """SQNR in dB of a relative error; None for none at all (JSON has no infinity)."""
    return None if error <= 0 else float(-10 * np.log10(error))


# ------------------------------------------------------------------ measures


def _measure(budget: Budget, accelerator: str | None, name: str) -> Callable[[Model], int]:
    if budget.metric == "bytes":
        return lambda m: len(writer.to_bytes(m))
    if budget.metric == "zip":
        from tflrewrite.reports.audit import zip_size

        return lambda m: zip_size(writer.to_bytes(m), name)
    from tflrewrite.reports import vela

    accelerator = accelerator or vela.DEFAULT_ACCELERATOR
    vela.require(accelerator)

    def measure(m: Model) -> int:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "budget.tflite")
            writer.write(m, path)
            report = vela.compile_report(path, accelerator)
        if report.error or report.npu_encoded_weights_bytes is None:
            raise TflRewriteError(f"--max-vela-bytes: Vela did not compile it ({report.error})")
        return int(report.npu_encoded_weights_bytes)

    return measure
