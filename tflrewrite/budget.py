"""Size budgets: per-layer settings of the recipe's pruning and clustering, chosen so that
the output meets `--max-bytes`, `--max-zip-bytes` or `--max-vela-bytes` with the least
estimated output error, and never with more than the recipe's own uniform setting has.

0. Steps. The planner chooses the settings of the recipe's prune and cluster steps; a
   recipe with neither gets both (with_planner_steps), which then touch only the layers
   the planner plans, and the default candidate space below. Where the recipe quantizes
   the whole graph, weights behind a DEQUANTIZE of a constant (float16 models) become
   the float32 constants they compute first, as quantize would make them anyway.
1. Sensitivity. For every weight layer the data-aware passes can fit, and every candidate
   setting (sparsity from SPARSITIES where the recipe prunes; where it clusters, cluster
   count from CLUSTERS, 0 meaning "not clustered", with one codebook per tensor or one per
   channel; the recipe's own setting for the layer always among them), the layer's weights
   are compressed as the recipe's steps would compress them (datafit.compress_rows: pruning
   with weight updates, int8 scales where the recipe quantizes, clustering with error
   feedback; the codebook refit, which costs more than the rest, is left out, so
   clustering scores a little worse than it will be) and scored:
     error: tr(dW H dW^T) / tr(W H W^T), the layer's output error relative to its output,
            with H = X X^T of its inputs in the original model over the first calibration
            samples that give 384 positions per input of a row (_sample_counts; the
            identity without data: plain weight error);
     size:  the stored weight's share of the budget's measure (deflated bytes for zip;
            for bytes, the target's own estimate of the weight as it lays it down,
            targets.Target.estimate_bytes; Vela's weight codec, by the rate model of
            kernels.palette, for vela).
   What bounds the cost at the scale of mobile models: the sparsities of COARSE are
   scored first and the others only where a middle one is on the layer's hull (which is
   all the choice walks on); the clustered candidates share column sweeps; a zip budget
   scores a wide layer on evenly spaced rows (_scored_rows), its bytes from values drawn
   from theirs (_Sampled).
2. The uniform run. The recipe runs as given, and its output is measured for real: it is
   the fallback (a budget it meets is never refused) and the first anchor of 3.
3. Choice. Every layer starts at its least-error setting; then, while the estimate is over
   a limit, the layer whose next step down its lower convex hull of (size, error) costs
   the least error per byte saved takes it (the greedy answer to the multiple-choice
   knapsack, exact on the hulls). Summing per-layer relative errors is the proxy: each
   layer's relative noise is assumed to reach the output alike. A choice is priced against
   the last real run (its anchor): for a zip budget, the anchor's file with the changed
   layers' candidate values written in its place, zipped (deflate spans tensors: on the
   MNIST bench the rest of the file, measured this way, moved by 1.2 kB between choices
   whose weights' own deflated sizes were alike, which a constant offset cannot follow);
   for the others, the anchor's measure plus the changed layers' estimated sizes. The
   limit the greedy walk is given is searched (secant steps, then halving) until the
   priced choice fits within SLACK, then single layers step up into what is left.
4. Finer candidates. Where the choice straddles a coarse step of a large layer (its next
   setting with less error costs more than what is left), settings between the two are
   scored and the choice is made again (REFINE_LAYERS layers, once).
5. Check. The choice runs as per-tensor rules and is measured for real; over the budget,
   the run becomes the anchor and 3 repeats, ATTEMPTS runs at most (a zip budget's first
   search aims FIRST_MARGIN under, the fit's values deflating about 1% worse than the
   scorer's; later ones as far under as the last price missed by). The fitting run of
   least estimated error is kept; where the uniform run fits too, the planned choice must
   have no more estimated error, and with calibration data no more output error on the
   samples than the uniform run (both measured), else the uniform run is kept.

The choice goes into the report, one record per layer: the setting, its estimated error (as
dB) and bytes, and the setting it was chosen over.
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import math
import os
import re
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from tflrewrite import pipeline, runtime, targets, writer
from tflrewrite.errors import TflRewriteError
from tflrewrite.kernels import reconstruct as kernels
from tflrewrite.model import Model
from tflrewrite.passes import PASSES, datafit, quantize_graph
from tflrewrite.passes.common import Rule, options_for, select
from tflrewrite.passes.quantize import FULL_INTEGER
from tflrewrite.progress import Progress
from tflrewrite.recipes import Recipe, Step
from tflrewrite.reports.text import db
from tflrewrite.weights import Weight, real_values, record

# What a budget bounds: the flag's name on the command line, and what it measures.
METRICS = {
    "bytes": ("--max-bytes", "file bytes"),
    "zip": ("--max-zip-bytes", "zipped bytes"),
    "vela": ("--max-vela-bytes", "Vela's encoded weight bytes"),
}
SPARSITIES = (0.0, 0.25, 0.5, 0.625, 0.75, 0.825, 0.9)
CLUSTERS = (0, 256, 64, 32, 16, 8, 4)  # 0: not clustered
GRANULARITIES = ("tensor", "channel")  # one codebook shared (scaled per channel), or one each
ATTEMPTS = 4  # real runs of planned choices, after the uniform run
SEARCH_STEPS = 12  # priced choices per search for the greedy walk's limit
FILL_TRIES = 24  # priced single-layer steps up into what a search left over
REFINE_LAYERS = 3  # layers given settings between the two their choice straddles
KEEP_SCORERS = 8  # the largest layers, whose fit inputs stay for that refinement
SCORER_BYTES = 256 << 20  # ... while their X X^T together stay under this
HESSIAN_BYTES = 1 << 30  # X X^T of several layers collected in one pass over the samples
H_PER_INPUT = 384  # output positions per input of a row that the sensitivity's H takes
MIN_H_SAMPLES = 8  # ... over this many samples at least
# A zip budget scores a layer's candidates on some of its rows where it has many: rows x d
# and rows x d^2 (the column sweep's work) are kept under these (a 1,000 x 1,280 FC took
# 77 s for its 77 candidates, most of the budget's time on MobileNetV2, scored whole).
SCORED_WEIGHTS = 1 << 14
SCORED_WORK = 1 << 24
MIN_SCORED_ROWS = 32
COARSE = (0.0, 0.5, 0.9)  # sparsities scored first (see _Scorer.layer)
STACKED = 1 << 20  # weights of the candidates one column sweep scores together (score_all)
SIZE_SAMPLE = 1 << 15  # values whose deflated bytes estimate a row-sampled weight's (_result)
SLACK = 0.01  # a run this close under the budget is kept without trying to use the rest
FIRST_MARGIN = 0.015  # of a zip budget, the first planned search keeps under (see apply)
COMPARE_SAMPLES = 128  # calibration samples on which the planned and uniform runs compete
# The rule that leaves a step the planner added to the planned layers: a regex comment,
# which matches every name, and says in the report's recipe why it is there.
PLANNED_ONLY = "(?#the budget plans this step per layer)"


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
        pruned = f"{self.sparsity:.1%} sparse".replace(".0%", "%") if self.sparsity else "unpruned"
        if not self.clusters:
            return f"{pruned}, unclustered"
        return f"{pruned}, {self.clusters} clusters per {self.granularity}"


@dataclass
class _Layer:
    weight: Weight
    settings: list[Setting]  # the candidates
    sizes: np.ndarray
    errors: np.ndarray  # relative output error of each candidate
    uniform: int = 0  # the candidate the recipe's own setting is
    stored: list | None = None  # per candidate, its values as the file holds them (zip)
    scorer: _Scorer | None = None  # scores more candidates (kept for the largest layers)
    realised: dict = field(default_factory=dict)  # candidate -> its values in a real run

    def add(self, setting: Setting, size: int, error: float, stored: Any) -> None:
        self.settings.append(setting)
        self.sizes = np.append(self.sizes, np.int64(size))
        self.errors = np.append(self.errors, error)
        if self.stored is not None:
            self.stored.append(stored)


@dataclass
class _Run:
    """One real run of the recipe with a choice, and what it measured."""

    chosen: tuple[int, ...]
    result: pipeline.Result
    got: int
    image: Any = None  # writer.FileImage of the output (zip budgets)
    slots: list = field(default_factory=list)  # per layer: (index in image.arrays, dtype)


def with_planner_steps(recipe: Recipe) -> Recipe:
    """`recipe` as a budget runs it: unchanged where it prunes or clusters (the planner
    chooses those steps' settings); else with both added, for the planned layers only
    (clustering not where quantize rounds other than by feedback, which it would undo).
    Its quantize step stays as given."""
    names = {s.name for s in recipe.steps}
    if names & {"prune", "cluster"}:
        return recipe
    quantize = next((s.options for s in recipe.steps if s.name == "quantize"), None)
    added = ["prune"]
    if quantize is None or quantize.rounding == "feedback":
        added.append("cluster")
    steps = {s.name: s for s in recipe.steps}
    for name in added:
        options = PASSES[name].Options()
        if name == "prune":
            options = dataclasses.replace(options, sparsity=0.0)
        options = dataclasses.replace(options, **_given_common(recipe))
        steps[name] = Step(name, options, (Rule(PLANNED_ONLY, None),))
    ordered = tuple(steps[n] for n in PASSES if n in steps)
    return dataclasses.replace(recipe, name=f"{recipe.name}+budget", steps=ordered)


def _given_common(recipe: Recipe) -> dict:
    """`skip` and `min_size` where a step of `recipe` has them other than its pass's
    defaults (--skip and --min-size give them to every step)."""
    out = {}
    for s in recipe.steps:
        defaults = PASSES[s.name].Options()
        for key in ("skip", "min_size"):
            if getattr(s.options, key) != getattr(defaults, key):
                out.setdefault(key, getattr(s.options, key))
    return out


def apply(
    model: Model,
    recipe: Recipe,
    budget: Budget,
    *,
    progress: Callable[[str], None] | None = None,
    target: str = targets.DEFAULT,
    data: Any = None,
    method: str = "data",
    accelerator: str | None = None,
    name: str = "model.tflite",
) -> pipeline.Result:
    """pipeline.apply with per-layer settings of `recipe`'s pruning and clustering chosen to
    meet `budget` (see the module's notes). `name` is the output's file name, which a zip
    archive holds too."""
    recipe = with_planner_steps(recipe)
    steps = {s.name: s for s in recipe.steps}
    model = _float_weights(model, steps)
    measure = _measure(budget, accelerator, name)
    scored = model
    if "equalize" in steps:  # the recipe equalizes first: score the layers as it leaves them
        step = steps["equalize"]
        scored = PASSES["equalize"].run(model, step.options, step.rules).model
    with runtime.one_blas_thread():
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
    what, limit = METRICS[budget.metric][1], budget.limit
    runs: list[_Run] = []

    def run(chosen: tuple[int, ...], planned: Recipe, kind: str) -> _Run:
        result = pipeline.apply(
            model, planned, progress=progress, target=target, data=data, method=method
        )
        done = measure(result.model, layers)
        runs.append(_Run(chosen, result, *done))
        for layer, c, slot in zip(layers, chosen, done[2]):
            if slot is not None:  # what the fit made of the candidate prices it from now on
                layer.realised[c] = done[1].arrays[slot[0]]
        if progress:
            progress(f"budget: run {len(runs)} ({kind}): {done[0]:,} {what} against {limit:,}")
        return runs[-1]

    uniform = run(tuple(layer.uniform for layer in layers), recipe, "the recipe as given")
    # the first planned run's values are the scorer's, which deflate a little better than
    # the fit's (by about 1% on the MNIST bench and on MobileNetV2): it aims that far under
    margin = int(FIRST_MARGIN * limit) if budget.metric == "zip" else 0
    anchor, tried, refined = uniform, {uniform.chosen}, False
    for _ in range(ATTEMPTS):
        chosen, priced = _search(layers, limit - margin, anchor, name)
        if not refined:
            refined = True
            if _refine(layers, chosen, limit - margin - priced):
                chosen, priced = _search(layers, limit - margin, anchor, name)
        if uniform.got <= limit and _error(layers, chosen) > _error(layers, uniform.chosen):
            chosen = uniform.chosen  # never more estimated error than the recipe as given
        if chosen in tried:
            break  # the same choice again would measure the same
        tried.add(chosen)
        anchor = run(chosen, _with_choice(recipe, layers, chosen), f"planned, priced {priced:,}")
        # the next searches price against this run, its chosen layers by the fit's own
        # values: what is left to keep clear of is what this price missed by (the worst
        # miss of all runs, kept, held later runs short of the limit by as much, one run
        # after another: four planned runs of 20 s each on MobileNetV2)
        margin = max(0, anchor.got - priced)
        if limit - SLACK * limit <= anchor.got <= limit:
            break
    kept, note = _keep(runs, layers, limit, model=model, data=data)
    if kept is None:
        hint = targets.load(target).bytes_hint if budget.metric == "bytes" else ""
        smallest = min(r.got for r in runs)
        raise TflRewriteError(
            f"{budget.flag} {limit:,}: the smallest settings found give {smallest:,} {what}{hint}"
        )
    step = {
        "pass": "budget",
        "measure": what,
        "limit": limit,
        "got": kept.got,
        "runs": len(runs),
        "uniform_got": uniform.got,
        "kept": "uniform" if kept is uniform else "planned",
        # the proxy the choice minimises: per-layer relative output errors, summed
        "estimated_error": {
            "kept": _error(layers, kept.chosen),
            "uniform": _error(layers, uniform.chosen),
        },
        **note,
        "tensors": _records(layers, kept.chosen, uniform=kept is uniform),
    }
    kept.result.records.insert(0, step)
    return kept.result


def _float_weights(model: Model, steps: dict) -> Model:
    """`model` with weights behind a DEQUANTIZE of a constant (float16 or int8 storage)
    as the float32 constants they compute, where the recipe quantizes the whole graph,
    which folds them so anyway (quantize_graph): the planner and the data-aware prune,
    which both skip weights read through DEQUANTIZE, then see them before quantize does
    (a float16 MobileNetV2 had no layer they could plan). Else `model` itself."""
    quantize = steps.get("quantize")
    if quantize is None or quantize.options.mode not in FULL_INTEGER:
        return model
    return quantize_graph.dequantized_weights(model)


def _keep(runs: list[_Run], layers: list[_Layer], limit: int, *, model: Model, data: Any):
    """The run to keep and notes for the report: the fitting planned run of least
    estimated error, unless the uniform run (runs[0]) fits and has less error."""
    uniform = runs[0]
    planned = [r for r in runs[1:] if r.got <= limit]
    if not planned:
        if uniform.got > limit:
            return None, {}
        return uniform, {"why": "no planned choice fitted"}
    best = min(planned, key=lambda r: _error(layers, r.chosen))
    if uniform.got > limit:
        return best, {}
    if data is None:  # no samples to compare on: the estimates decided (3.)
        return best, {}
    samples = data.values[:COMPARE_SAMPLES]
    planned_db, uniform_db = _output_sqnr(model, [best.result.model, uniform.result.model], samples)
    note = {"calibration_sqnr_db": {"planned": planned_db, "uniform": uniform_db}}
    if _worse(planned_db, uniform_db):
        note["why"] = (
            f"the planned choice's output SQNR on {len(samples)} calibration samples, "
            f"{db(planned_db)} dB, was below the recipe's own, {db(uniform_db)} dB"
        )
        return uniform, note
    return best, note


def _worse(a: float | None, b: float | None) -> bool:
    """Whether SQNR `a` is below `b` (None: no error at all)."""
    return a is not None and (b is None or a < b)


def _output_sqnr(original: Model, models: list[Model], samples: list) -> list[float | None]:
    """Per model, the SQNR (dB) of its outputs against `original`'s over `samples`: signal
    over noise power, summed over samples and outputs."""
    reference = runtime.load(original, name="the input model")
    runners = [runtime.load(m, name="a budget run") for m in models]
    signal, noise = 0.0, np.zeros(len(models))
    for sample in samples:
        want = [np.asarray(v, np.float64) for v in reference.run(sample)]
        signal += sum(float(np.sum(v * v)) for v in want)
        for i, r in enumerate(runners):
            got = r.run(sample)
            noise[i] += sum(
                float(np.sum((np.asarray(g, np.float64) - v) ** 2)) for g, v in zip(got, want)
            )
    return [_db(n / max(signal, 1e-30)) for n in noise]


def _error(layers: list[_Layer], chosen: tuple[int, ...]) -> float:
    return float(sum(layer.errors[c] for layer, c in zip(layers, chosen)))


def _estimate(layers: list[_Layer], chosen: tuple[int, ...]) -> int:
    return sum(int(layer.sizes[c]) for layer, c in zip(layers, chosen))


# ------------------------------------------------------------------ sensitivity


def _planned_rules(step: Step | None) -> tuple[Rule, ...]:
    """A step's rules without the one that leaves an added step to the planned layers: the
    candidates come from its options."""
    if step is None:
        return ()
    return tuple(r for r in step.rules if r.match != PLANNED_ONLY)


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
    model_copy, chosen, _ = select(
        model, base, _planned_rules(pruning or clustering), refuse=lambda w, o: None
    )
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
        counts = _sample_counts(ops, len(data.values))
        for n in sorted(set(counts)):
            these = [i for i, c in enumerate(counts) if c == n]
            for chunk in _chunks([ops[i] for i in these]):
                found = datafit.layer_hessians(
                    model_copy, [ops[these[j]] for j in chunk], data.values[:n]
                )
                for j, h in zip(chunk, found):
                    hessians[these[j]] = h
    keep = _largest(weights)
    bar = Progress("budget: candidate settings", len(weights))
    layers = []
    for i, (w, op, h) in enumerate(zip(weights, ops, hessians)):
        hessians[i] = None  # this layer's H goes with its scorer, or with this loop
        rows = datafit.layer_rows(op.type, real_values(w.tensor))
        if h is None:
            h = np.broadcast_to(np.eye(rows.shape[2]), (rows.shape[0],) + (rows.shape[2],) * 2)
        fit_h = (
            h if method == "data" and use_data else np.broadcast_to(np.eye(rows.shape[2]), h.shape)
        )
        scorer = _Scorer(
            w,
            op,
            rows,
            h,
            fit_h,
            pruning=_step_options(pruning, w.name),
            clustering=_step_options(clustering, w.name),
            mode=mode,
            metric=budget.metric,
            estimate=_estimator(target, w, sg, readers[id(w.tensor)], mode),
        )
        layer = scorer.layer(_uniform(steps, w.name, scorer))
        if i in keep and h.nbytes <= SCORER_BYTES:
            layer.scorer = scorer
        layers.append(layer)
        bar(i + 1)
    return layers


def _step_options(step: Step | None, name: str) -> Any:
    """The options the planner varies for a weight: the step's, with its own rules (not the
    one that keeps an added step to the planned layers); None where it is not run."""
    if step is None:
        return None
    return options_for(step.options, _planned_rules(step), name)


def _uniform(steps: dict, name: str, scorer: _Scorer) -> Setting:
    """The setting the recipe as given gives weight `name`, as the data-aware passes
    realise it (no pruning where they do not prune)."""
    pruning = steps.get("prune") and options_for(steps["prune"].options, steps["prune"].rules, name)
    clustering = steps.get("cluster") and options_for(
        steps["cluster"].options, steps["cluster"].rules, name
    )
    sparsity = pruning.sparsity if pruning and scorer.prunable else 0.0
    if pruning and scorer.prunable and pruning.n_of_m:
        n, m = pruning.n_of_m
        sparsity = 1 - n / m
    if not clustering:
        return Setting(sparsity, 0, "tensor")
    return Setting(sparsity, clustering.clusters, clustering.granularity)


def _largest(weights: list[Weight]) -> set[int]:
    """Indices of the KEEP_SCORERS weights of most elements."""
    order = sorted(range(len(weights)), key=lambda i: -weights[i].tensor.data.size)
    return set(order[:KEEP_SCORERS])


def _sample_counts(ops, total: int) -> list[int]:
    """Per op, the first samples its X X^T is taken over: enough for H_PER_INPUT output
    positions per input of a row (the least power of two from MIN_H_SAMPLES; all where
    that is more). The scores are relative errors, which H's scale leaves alone, and
    they rank candidates: a 112 x 112 layer of MobileNetV2 has that many from one
    sample, and 128 samples of its first layers took more time than all its scoring."""
    out = []
    for op in ops:
        w, x = op.inputs[1].shape, op.inputs[0].shape
        if op.type == "FULLY_CONNECTED":
            d = w[1]
            per = int(np.prod(x)) // d if x and all(n > 0 for n in x) else 1
        else:
            d = w[1] * w[2] * (1 if op.type == "DEPTHWISE_CONV_2D" else w[3])
            shape = op.outputs[0].shape
            per = int(shape[1] * shape[2]) if shape and all(n > 0 for n in shape) else 1
        n = MIN_H_SAMPLES
        while n < total and n * max(per, 1) < H_PER_INPUT * d:
            n *= 2
        out.append(min(n, total))
    return out


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


class _Scorer:
    """Scores candidate settings of one layer: compresses its weights as the recipe's steps
    would with that setting, and gives the (size, error) of the result."""

    def __init__(
        self, w, op, rows, h, fit_h, *, pruning, clustering, mode, metric: str, estimate
    ) -> None:
        self.w, self.op, self.rows, self.h, self.fit_h = w, op, rows, h, fit_h
        self.pruning, self.clustering = pruning, clustering
        self.metric, self.estimate = metric, estimate
        # as the data-aware prune: depthwise kernels and short rows are not pruned (the
        # magnitude pass prunes them, which a budget without data leaves out of its plan)
        self.prunable = (
            pruning is not None
            and op.type != "DEPTHWISE_CONV_2D"
            and rows.shape[2] >= datafit.MIN_ROW
        )
        self.stored_scales = datafit.row_scales(op.type, w.tensor)
        # a zip budget scores wide layers on a subset of their rows (see _scored_rows)
        self.share = 1.0
        keep = _scored_rows(rows.shape) if metric == "zip" else None
        if keep is not None:
            self.share = rows.shape[1] / keep.size
            self.rows = rows = rows[:, keep]
            if self.stored_scales is not None:
                self.stored_scales = self.stored_scales[:, keep]
        self.zeros = rows == 0
        self.quantized = w.tensor.dtype == "INT8" or mode in ("int8", "int16x8", "int8-weights")
        self.energy = max(_energy(rows, h), 1e-30)
        self.dtype = np.dtype(np.float16) if mode == "float16" else w.tensor.np_dtype
        self.factors = [kernels.inverse_cholesky(x) for x in fit_h]
        self._pruned: dict[float, tuple[np.ndarray, Any]] = {}

    def grid(self, uniform: Setting) -> list[Setting]:
        """The default candidates, and `uniform`."""
        sparsities = SPARSITIES if self.prunable else (0.0,)
        if self.prunable and self.pruning.n_of_m:  # the pattern fixes the sparsity
            n, m = self.pruning.n_of_m
            sparsities = (0.0, 1 - n / m)
        counts = CLUSTERS if self.clustering else (0,)
        out = []
        for s in sparsities:
            out.append(Setting(s, 0, "tensor"))
            out += [Setting(s, k, g) for k in counts if k for g in self.granularities(k)]
        if uniform not in out:
            out.append(uniform)
        return out

    def granularities(self, k: int) -> tuple[str, ...]:
        """The codebook granularities worth scoring at `k` clusters: per channel only where
        a channel has more weights than that and several channels share a tensor, and not
        at all where an int8 tensor cannot hold more values anyway."""
        groups, rows, d = self.rows.shape
        if self.quantized and k >= 255:
            return ()
        shared = ("tensor",)
        if groups * rows > 1 and k < d:
            shared += ("channel",)
        return shared

    def layer(self, uniform: Setting) -> _Layer:
        """The layer's candidates, scored: the grid's sparsities of COARSE first, the others
        only where a middle one of those is on the layer's lower hull (pruning pays
        somewhere between none and the most): where it is not, the greedy walk, which
        steps along hulls, would not take them (on MobileNetV2 with random weights no
        layer's hull held a sparsity between 0 and 0.9: 4 of 7 sparsities left unscored)."""
        settings = self.grid(uniform)
        sparsities = sorted({s.sparsity for s in settings})
        first = {x for x in sparsities if x in COARSE or x in (sparsities[0], sparsities[-1])}
        scored = self._scored([s for s in settings if s.sparsity in first or s == uniform])
        rest = [s for s in settings if s not in scored]
        if rest and self._middle_pays(settings, scored, uniform, sparsities):
            scored.update(self._scored(rest))
        layer = self._layer([s for s in settings if s in scored], scored, uniform)
        self._pruned.clear()
        _thin(layer)
        return layer

    def _scored(self, settings: list[Setting]) -> dict[Setting, tuple]:
        return dict(zip(settings, self.score_all(settings)))

    def _layer(self, settings: list[Setting], scored: dict, uniform: Setting) -> _Layer:
        layer = _Layer(
            self.w,
            [],
            np.zeros(0, np.int64),
            np.zeros(0),
            stored=[] if self.metric == "zip" else None,
        )
        for s in settings:
            layer.add(s, *scored[s])
        layer.uniform = layer.settings.index(uniform)
        return layer

    def _middle_pays(self, settings, scored: dict, uniform: Setting, sparsities) -> bool:
        """Whether the hull of the candidates `scored` holds one of a sparsity other than
        the least and the most."""
        layer = self._layer([s for s in settings if s in scored], scored, uniform)
        ends = (sparsities[0], sparsities[-1])
        return any(layer.settings[i].sparsity not in ends for i in _hull(layer))

    def score(self, setting: Setting) -> tuple[int, float, Any]:
        """(size, relative error, stored values in the file's layout or None)."""
        return self.score_all([setting])[0]

    def score_all(self, settings: list[Setting]) -> list[tuple[int, float, Any]]:
        """score() of each setting, the clustered ones in few column sweeps: their rows
        stacked (kernels.reconstruct.solve's rows are independent, and its cost per column
        is mostly Python's while the rows are few), up to STACKED weights a sweep."""
        out: dict[int, tuple] = {}
        clustered = []  # (index, setting, its zeros, its scales)
        for i, s in enumerate(settings):
            pruned, scales = self._prune(s.sparsity)
            if s.clusters:
                clustered.append((i, s, pruned == 0, scales))
                continue
            new = pruned if scales is None else _stored(pruned, scales, self.dtype)
            out[i] = self._result(new if scales is None else new * scales[..., None], scales)
        per = max(1, STACKED // self.rows.size)
        for a in range(0, len(clustered), per):
            batch = clustered[a : a + per]
            for (i, _, _, scales), new in zip(batch, self._cluster(batch)):
                out[i] = self._result(new, scales)
        return [out[i] for i in range(len(settings))]

    def _cluster(self, batch: list[tuple]) -> list[np.ndarray]:
        """The rows clustered with each (index, setting, zeros, scales) of `batch`, as
        datafit.compress_rows clusters them without the codebook refit."""
        groups, rows, _ = self.rows.shape
        codes, masks, units = [], [], []
        for _, s, zeros, scales in batch:
            opts = dataclasses.replace(
                self.clustering, clusters=s.clusters, granularity=s.granularity
            )
            # one width for every group's codebook (datafit.codebooks): no padding
            codes.append(
                np.stack(
                    datafit.codebooks(self.rows, zeros, scales=scales, opts=opts, step="cluster")
                )
            )
            masks.append(zeros)
            units.append(np.ones((groups, rows)) if scales is None else scales)
        width = max(c.shape[2] for c in codes)
        codes = [np.pad(c, ((0, 0), (0, 0), (0, width - c.shape[2])), mode="edge") for c in codes]
        targets = np.concatenate([self.rows] * len(batch), axis=1)
        mask = np.concatenate(masks, axis=1)
        s = np.concatenate(units, axis=1).astype(np.float64)
        codes = np.concatenate(codes, axis=1)
        if groups > 1:  # depthwise: many 9-tap groups at once
            new = kernels.solve_groups(
                targets, np.stack(self.factors), pruned=mask, scales=s, codes=codes
            )
        else:
            new = kernels.solve(
                targets[0], self.factors[0], pruned=mask[0], scales=s[0], codes=codes[0]
            )[None]
        return [new[:, k * rows : (k + 1) * rows] for k in range(len(batch))]

    def _result(self, new: np.ndarray, scales) -> tuple[int, float, Any]:
        stored = _stored(new, scales, self.dtype)
        error = _energy(new - self.rows, self.h) / self.energy
        if self.share == 1.0:
            laid = None
            if self.metric == "zip":
                laid = _file_layout(self.op.type, stored, self.w.shape)
            return _size(self.metric, stored, self.estimate), error, laid
        # scored on a subset of the rows (zip): the whole weight's deflated bytes are
        # those of its values drawn independently from the subset's (within 0.2% of the
        # fit's weights' on MobileNetV2's 22 largest layers; the subset's own bytes scaled
        # up missed by up to 3.6%, their rows being unlike the rest), from SIZE_SAMPLE of
        # them (smaller buffers deflate a little worse: +0.6% at this size); the values
        # that price a choice are drawn at the whole weight's size (_thin)
        sampled = _Sampled(stored.reshape(-1), self.w.tensor.data.size)
        size = _deflated(sampled.draw(min(sampled.size, SIZE_SAMPLE)))
        return round(size * sampled.size / min(sampled.size, SIZE_SAMPLE)), error, sampled

    def _prune(self, sparsity: float) -> tuple[np.ndarray, Any]:
        if sparsity not in self._pruned:
            pruned = self.rows
            if sparsity:
                opts = dataclasses.replace(self.pruning, sparsity=sparsity)
                pruned = datafit.compress_rows(
                    "prune",
                    self.rows,
                    self.fit_h,
                    zeros=self.zeros,
                    scales=self.stored_scales,
                    opts=opts,
                    factors=self.factors,
                )
            scales = self.stored_scales
            if scales is None and self.quantized:
                peak = np.abs(pruned).max(axis=2)
                scales = np.where(peak > 0, peak / 127.0, 1.0)
            self._pruned[sparsity] = (pruned, scales)
        return self._pruned[sparsity]


def _scored_rows(shape: tuple) -> np.ndarray | None:
    """The rows a zip budget scores a layer of `shape` (groups x rows x d) on: where its
    rows hold more than SCORED_WEIGHTS weights, or its column sweeps cost more than
    SCORED_WORK, evenly spaced rows within both (at least MIN_SCORED_ROWS); None for all.
    A candidate's error is a sum over rows (relative: over the same rows before) and its
    deflated size about proportional to them, so a subset estimates both, at a fraction
    of the cost; the rows' values then price no choice (their estimated sizes do)."""
    groups, rows, d = shape
    keep = max(MIN_SCORED_ROWS, min(SCORED_WEIGHTS // d, SCORED_WORK // (d * d)))
    if groups > 1 or rows <= keep:
        return None
    return np.unique(np.linspace(0, rows - 1, keep).round().astype(np.int64))


def _thin(layer: _Layer) -> None:
    """Drop the stored values of candidates no choice takes (off the Pareto frontier, and
    not the uniform setting): only a choice is ever priced."""
    if layer.stored is None:
        return
    keep = set(_frontier(layer)) | {layer.uniform}
    layer.stored = [
        (v.draw(v.size) if isinstance(v, _Sampled) else v) if i in keep else None
        for i, v in enumerate(layer.stored)
    ]


@dataclass
class _Sampled:
    """A candidate's stored values on a subset of a weight's rows, standing for the whole
    weight's `size` values: as many drawn from them, independently and reproducibly."""

    values: np.ndarray
    size: int

    def draw(self, n: int) -> np.ndarray:
        return np.random.default_rng(0).choice(self.values, size=n)


def _energy(rows: np.ndarray, h: np.ndarray) -> float:
    """sum over groups of tr(R H R^T)."""
    rows = np.asarray(rows, np.float64)
    if rows.shape[0] == 1:  # one group: a plain product (numpy's stacked one is slower)
        return float(np.sum((rows[0] @ h[0]) * rows[0]))
    return float(np.sum(np.matmul(rows, h) * rows))


def _stored(rows: np.ndarray, scales, dtype) -> np.ndarray:
    """groups x rows x d as the file would hold them: int8 codes, or the weight's floats."""
    if scales is None:
        return rows.astype(dtype)
    return np.clip(np.round(rows / scales[:, :, None]), -127, 127).astype(np.int8)


def _file_layout(op_type: str, stored: np.ndarray, shape: tuple) -> np.ndarray:
    """groups x rows x d stored values in the weight's own layout, flat (datafit.layer_rows
    undone)."""
    if op_type == "DEPTHWISE_CONV_2D":
        return np.ascontiguousarray(np.moveaxis(stored[:, 0, :], 0, 1)).reshape(-1)
    return np.ascontiguousarray(stored[0]).reshape(-1)


def _size(metric: str, stored: np.ndarray, estimate: Callable[[np.ndarray], int]) -> int:
    """The stored weight's estimated share of the budget's measure; `estimate`: the
    target's file bytes of it."""
    if metric == "zip":
        return _deflated(stored)
    if metric == "vela":
        return _vela_bytes(stored)
    return estimate(stored)


def _deflated(stored: np.ndarray) -> int:
    return len(zlib.compress(np.ascontiguousarray(stored).tobytes(), 6))


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


# ------------------------------------------------------------------ finer candidates


def _refine(layers: list[_Layer], chosen: tuple[int, ...], left: int) -> bool:
    """Score settings between the chosen one and the next with less error, for the
    REFINE_LAYERS layers (of those that kept a scorer) where that next step costs more
    than `left` bytes and saves the most error. Whether any were added."""
    gaps = []
    for i, (layer, c) in enumerate(zip(layers, chosen)):
        if layer.scorer is None:
            continue
        up = _next_up(layer, c)
        if up is not None and layer.sizes[up] - layer.sizes[c] > left:
            gaps.append((-(layer.errors[c] - layer.errors[up]), i, up))
    added = False
    for _, i, up in sorted(gaps)[:REFINE_LAYERS]:
        layer = layers[i]
        a, b = layer.settings[chosen[i]], layer.settings[up]
        for s in _between(a, b, layer.scorer):
            if s not in layer.settings:
                layer.add(s, *layer.scorer.score(s))
                added = True
        layer.scorer._pruned.clear()
        _thin(layer)
    return added


def _next_up(layer: _Layer, c: int) -> int | None:
    """The candidate of least size among those with less error than `c`."""
    better = [i for i in _frontier(layer) if layer.errors[i] < layer.errors[c]]
    return min(better, key=lambda i: (layer.sizes[i], layer.errors[i])) if better else None


def _between(a: Setting, b: Setting, scorer: _Scorer) -> list[Setting]:
    """Settings between `a` and `b`: sparsities a quarter, half and three quarters of the
    way with either cluster count, and cluster counts geometrically between with either
    sparsity, in the granularities of both."""
    sparsities = {a.sparsity, b.sparsity}
    mids_s = []
    if scorer.prunable and not scorer.pruning.n_of_m and a.sparsity != b.sparsity:
        mids_s = [round(a.sparsity + (b.sparsity - a.sparsity) * f, 4) for f in (0.25, 0.5, 0.75)]
    counts = {a.clusters, b.clusters}
    mids_k = []
    if scorer.clustering is not None and a.clusters != b.clusters:
        lo, hi = sorted(k or 256 for k in (a.clusters, b.clusters))
        mids_k = sorted({round(lo * (hi / lo) ** f) for f in (0.25, 0.5, 0.75)} - {lo, hi})
    grans = {s.granularity for s in (a, b) if s.clusters} or {"tensor"}
    out = []
    for s, ks in [(s, counts) for s in mids_s] + [(s, mids_k) for s in sorted(sparsities)]:
        for k in sorted(ks):
            for g in sorted(grans) if k else ["tensor"]:
                if not k or g in scorer.granularities(k):
                    out.append(Setting(s, k, g))
    return out


# ------------------------------------------------------------------ choice


def _frontier(layer: _Layer) -> list[int]:
    """The candidates no other is both as small and more faithful than, by size."""
    order = sorted(range(len(layer.sizes)), key=lambda i: (layer.sizes[i], layer.errors[i], i))
    frontier = []  # increasing size, strictly decreasing error
    for i in order:
        if not frontier or layer.errors[i] < layer.errors[frontier[-1]]:
            if frontier and layer.sizes[i] == layer.sizes[frontier[-1]]:
                frontier[-1] = i
            else:
                frontier.append(i)
    return frontier


def _hull(layer: _Layer) -> list[int]:
    """The candidates on the lower convex hull of (size, error), from the least error
    (largest) to the smallest size."""
    hull: list[int] = []
    for i in _frontier(layer):
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


def _search(
    layers: list[_Layer], limit: int, anchor: _Run, name: str
) -> tuple[tuple[int, ...], int]:
    """(choice, its price): the greedy walk's choice whose price against `anchor` fits
    `limit` with least estimated error, the walk's own limit found by secant steps
    (doubled while nothing fits) and halving, then single layers stepped up into what is
    left; the smallest choice when none fits."""
    prices: dict[tuple[int, ...], int] = {}

    def price(chosen: tuple[int, ...]) -> int:
        if chosen not in prices:
            prices[chosen] = _price(layers, chosen, anchor, name)
        return prices[chosen]

    walk = limit - (anchor.got - _estimate(layers, anchor.chosen))
    fits, over, best, push = None, None, None, 1
    for _ in range(SEARCH_STEPS):
        chosen = _choose(layers, walk)
        got = price(chosen)
        if got <= limit:
            if best is None or _error(layers, chosen) < _error(layers, best):
                best = chosen
            fits = walk if fits is None else max(fits, walk)
            if got >= limit - SLACK * limit:
                break
        else:
            over = walk if over is None else min(over, walk)
        step = walk + (limit - got)
        if fits is not None and over is not None:
            if over - fits <= 1:
                break
            if not fits < step < over:
                step = (fits + over) // 2
        elif got > limit:  # nothing fits yet: the price may move less than the estimate
            step = walk - (got - limit) * push
            push *= 2
        walk = step
    if best is None:
        return _choose(layers, 0), price(_choose(layers, 0))
    best = _fill(layers, best, limit, price)
    return best, price(best)


def _fill(layers: list[_Layer], chosen: tuple[int, ...], limit: int, price) -> tuple[int, ...]:
    """`chosen` with single layers stepped to frontier settings of less error while the
    priced choice still fits: the most error saved first, among steps whose estimated
    bytes come near what is left (FILL_TRIES prices at most)."""
    tries = 0
    while tries < FILL_TRIES:
        left = limit - price(chosen)
        steps = []
        for i, (layer, c) in enumerate(zip(layers, chosen)):
            for j in _frontier(layer):
                extra = int(layer.sizes[j] - layer.sizes[c])
                if layer.errors[j] < layer.errors[c] and extra <= left + left // 4 + 16:
                    steps.append((-(layer.errors[c] - layer.errors[j]), i, j))
        moved = False
        for _, i, j in sorted(steps):
            if tries >= FILL_TRIES:
                break
            tries += 1
            trial = chosen[:i] + (j,) + chosen[i + 1 :]
            if price(trial) <= limit:
                chosen, moved = trial, True
                break
        if not moved:
            break
    return chosen


def _price(layers: list[_Layer], chosen: tuple[int, ...], anchor: _Run, name: str) -> int:
    """What `chosen` would measure, from the real run `anchor`: for a zip budget, its file
    with each changed layer's candidate values in place of its own, zipped; the changed
    layers' estimated sizes added to its measure otherwise (and for layers the anchor does
    not hold as plain arrays of the candidate's bytes: a target's own encoding)."""
    extra, arrays = 0, None
    for i, (layer, c, r) in enumerate(zip(layers, chosen, anchor.chosen)):
        if c == r:
            continue
        stored = layer.realised.get(c)
        if stored is None and layer.stored is not None:
            stored = layer.stored[c]
        slot = anchor.slots[i] if anchor.slots else None
        if (
            stored is None
            or slot is None
            or stored.dtype != slot[1]
            or stored.nbytes != anchor.image.arrays[slot[0]].size
        ):
            extra += int(layer.sizes[c] - layer.sizes[r])
            continue
        if arrays is None:
            arrays = list(anchor.image.arrays)
        arrays[slot[0]] = stored.view(np.uint8)
    if arrays is None:
        return anchor.got + extra
    from tflrewrite.reports.audit import zip_size

    image = copy.copy(anchor.image)
    image.arrays = arrays
    return zip_size(image.to_bytes(), name) + extra


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
    name = recipe.name if recipe.name.endswith("+budget") else f"{recipe.name}+budget"
    return dataclasses.replace(recipe, name=name, steps=tuple(steps))


def _records(layers, chosen, *, uniform: bool) -> list[dict]:
    out = []
    for layer, c in zip(layers, chosen):
        s = layer.settings[c]
        out.append(
            record(
                layer.weight,
                "planned",
                "the recipe's own setting" if uniform else _why(layer, c),
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
    i = _next_up(layer, c)
    if i is None:
        return "least error of its candidates"
    return (
        f"over {layer.settings[i]} ({db(_db(layer.errors[i]))} dB for "
        f"{int(layer.sizes[i] - layer.sizes[c]):+,} bytes)"
    )


def _db(error: float) -> float | None:
    """SQNR in dB of a relative error; None for none at all (JSON has no infinity)."""
    return None if error <= 0 else float(-10 * math.log10(error))


# ------------------------------------------------------------------ measures


def _measure(
    budget: Budget, accelerator: str | None, name: str
) -> Callable[[Model, list[_Layer]], tuple]:
    """A function of a run's model (and the planned layers) giving (measure, file image,
    slots): the image and, per layer, where its values lie in it, for zip budgets."""
    if budget.metric == "bytes":
        return lambda m, layers: (len(writer.to_bytes(m)), None, [])
    if budget.metric == "zip":
        from tflrewrite.reports.audit import zip_size

        def zipped(m: Model, layers: list[_Layer]) -> tuple:
            image = writer.serialize(m)
            return zip_size(image.to_bytes(), name), image, _slots(m, image, layers)

        return zipped
    from tflrewrite.reports import vela

    accelerator = accelerator or vela.DEFAULT_ACCELERATOR
    vela.require(accelerator)

    def measure(m: Model, layers: list[_Layer]) -> tuple:
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "budget.tflite")
            writer.write(m, path)
            report = vela.compile_report(path, accelerator)
        if report.error or report.npu_encoded_weights_bytes is None:
            raise TflRewriteError(f"--max-vela-bytes: Vela did not compile it ({report.error})")
        return int(report.npu_encoded_weights_bytes), None, []

    return measure


def _slots(model: Model, image: Any, layers: list[_Layer]) -> list:
    """Per layer, (index in image.arrays, dtype) of its weight's values in `model`, or None
    where the model holds no constant of that name on a buffer of its own."""
    where = {id(a): k for k, a in enumerate(image.arrays) if a is not None}
    users: dict[int, int] = {}
    by_name = {}
    for si, _, t in model.tensors():
        if t.buffer is not None and t.buffer.data is not None:
            users[id(t.buffer)] = users.get(id(t.buffer), 0) + 1
            if si == 0 and t.is_constant:
                by_name.setdefault(t.name, t)
    out = []
    for layer in layers:
        t = by_name.get(layer.weight.name)
        k = None if t is None else where.get(id(t.buffer.data))
        shared = t is not None and users[id(t.buffer)] > 1
        out.append(None if k is None or shared else (k, t.np_dtype))
    return out
