"""The Ethos-U target: dense int8 weights laid down for Arm's Vela compiler and the weight
codec of the Ethos-U NPUs.

What Vela needs (ethos-u-vela 5.2, checked by compiling models with it):
- Full-integer operators. Vela runs an operator with float tensors on the CPU, so a float
  or weight-only quantized model gains nothing from it: such models are refused.
- Dense weights. Vela reads a weight's buffer as dense and ignores SparsityParameters, so
  sparse weights are densified here and DENSIFY operators in front of weights removed.
- Per-tensor FULLY_CONNECTED weights for older compilers: Vela 3.x (2023; its
  tflite_supported_operators.py has `per_axis_quant_ops = convolution_like_ops`) runs a
  FULLY_CONNECTED with per-channel weights on the CPU; 5.2 takes either. Per-tensor costs
  no encoded bytes (Vela writes a 32-bit scale for every output channel either way) and
  works with both, so per-channel FULLY_CONNECTED weights are requantized per tensor.
- Sum of |weight| over an output channel at most 127 * 65536 = 8,323,072 (its
  `weights_limit`), or the operator runs on the CPU: reported, not changed.

What the codec rewards (kernels/palette.py has the details and sources): each output-channel
block of a weight is one interleaved stream with one palette of at most 32 values, written
as frequency ranks in Golomb-Rice codes, with zeros as run lengths when they dominate. So
clustering pays only when the codebook is shared by all channels of the weight, and it pays
more when a few values are frequent. This target therefore runs the recipe's cluster step its
own way (STEPS): one codebook per weight tensor whatever the granularity asked, each
channel's scale refitted to it (free on Ethos-U), and values assigned with the codec's code
lengths in view, never with more weight error than plain tensor clustering.

int16 activations (--quantize int16x8; Vela 5.2 compiled every op of the int16 test model):
Vela runs 16x8 convolutions, FULLY_CONNECTED, elementwise, pooling, LUT activations and
memory ops on the NPU. What it leaves to the CPU runs in TFLM, so an op that neither runs
in int16 stays float (INT16_GAPS: GATHER, which Vela never takes and TFLM has no int16
kernel for). int16 BATCH_MATMUL (Vela wants int8 there) and int64 biases over 40 bits
(Vela's constraint_bias_40bit) run on the CPU, and the records say so. A float HARD_SWISH
makes Vela refuse the whole model, and LiteRT has none in int16: such models are refused.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.kernels import palette as kernels
from tflrewrite.model import Model, Operator, Quantization, Tensor
from tflrewrite.passes import cluster as cluster_pass
from tflrewrite.passes.common import (
    Data,
    Pass,
    PassResult,
    Rule,
    remember_stats,
    select,
    stats_of,
    weight_stats,
)
from tflrewrite.targets import Target, common
from tflrewrite.weights import WEIGHT_OPS, Weight, find_weights, record, replace_data

FC = "FULLY_CONNECTED"
WEIGHT_SUM_LIMIT = 127 * 65536
BIAS_INPUT = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, FC: 2, "TRANSPOSE_CONV": 3}
INTEGER_ACTIVATIONS = ("INT8", "INT16")
# (tflite_supported_operators.py: "Unsupported opType"; tflite-micro's gather.cc refuses int16)
INT16_GAPS = {
    ("INT16", "GATHER"): "Vela leaves GATHER to the CPU, and tflite-micro has no int16 GATHER"
}
BIAS_BITS = 40  # Vela's limit on int64 bias values
# Ops whose float input makes Vela 5.2 refuse the whole model ("Does not have valid TFLite
# Semantics": tflite_model_semantic.py, constraint_input_8bit). LiteRT has no int16
# HARD_SWISH, so 16x8 keeps it float, and Vela cannot take that model.
EIGHT_BIT_ONLY = ("HARD_SWISH",)


# Extra weight error (squared, as a fraction of plain tensor clustering's) the clustering
# may spend on fewer codec bits. 0: never less accurate than plain tensor clustering. On the
# MLPerf-Tiny models 0.05 would save about 1% more bytes for about 0.2 dB of weight SQNR.
BUDGET = 0.0

VELA_DENSE = "Vela ignores sparsity"


def cluster(
    model: Model,
    options: cluster_pass.Options,
    rules: tuple[Rule, ...] = (),
    *,
    data: Data | None = None,
) -> PassResult:
    """The recipe's cluster step, laid down for the codec (see the module docstring)."""
    require_integer(model)
    model = model.copy()
    densified = common.densify(model, VELA_DENSE)  # so that sparse weights get clustered too
    model, chosen, records = select(model, options, rules, refuse=_not_clusterable)
    for w, opts in chosen:
        notes = {}
        if _per_channel_fc(w):
            done = _requantize_fc(model, w)
            if done is None:
                records.append(record(w, "skipped", BIAS_SHARED))
                continue
            notes["requantized"] = done
        records.append(_cluster(model, w, opts, notes))
    return PassResult(model, densified + records)


BIAS_SHARED = (
    "per-channel FULLY_CONNECTED weights whose bias another operator shares: left "
    "per-channel (Vela 3.x runs them on the CPU; 5.2 on the NPU)"
)


def run(model: Model) -> PassResult:
    """Refuse float models; densify sparse weights; make per-channel FULLY_CONNECTED weights
    per-tensor (re-clustered when they were clustered); report weights Vela runs on the CPU."""
    model = model.copy()
    require_integer(model)
    common.refuse_integer_gaps(model, INT16_GAPS, "ethos-u")
    _refuse_float_eight_bit_ops(model)
    records = common.densify(model, VELA_DENSE)
    weights, skipped = find_weights(model)
    records += skipped
    for w in weights:
        if _per_channel_fc(w):
            records.append(_requantize_record(model, w))
        records += _warnings(w)
    records += _float_operators(model)
    records += _wide_biases(model)
    return PassResult(model, records)


def _warnings(w: Weight) -> list[dict]:
    """What Vela will make of a weight that this target leaves as it is."""
    if w.tensor.dtype != "INT8":
        return []
    rows = w.channels(w.tensor.data)
    out = []
    heavy = int(np.abs(rows.astype(np.int64)).sum(axis=1).max()) if rows.size else 0
    if heavy > WEIGHT_SUM_LIMIT:
        out.append(
            record(
                w,
                "skipped",
                f"an output channel's sum of |weights| is {heavy:,}, over Vela's limit of "
                f"{WEIGHT_SUM_LIMIT:,}: Vela runs {w.op_type} on the CPU",
            )
        )
    stats = weight_stats(rows)
    if stats["channel_unique"] <= kernels.PALETTE_MAX < stats["unique"]:
        out.append(
            record(
                w,
                "skipped",
                f"clustered per channel: {stats['unique']} distinct values in all, more than "
                f"the {kernels.PALETTE_MAX} of Vela's palette; cluster with --target ethos-u "
                f"for one codebook per weight",
            )
        )
    return out


def _float_operators(model: Model) -> list[dict]:
    """Weight operators of an integer model that Vela leaves to the CPU."""
    out = []
    for si, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            reason = _float_reason(op) if op.type in WEIGHT_OPS else None
            if reason:
                t = op.outputs[0] if op.outputs else None
                out.append(
                    {
                        "subgraph": si,
                        "tensor": t.name if t is not None else None,
                        "op": op.type,
                        "action": "skipped",
                        "reason": f"{reason}: Vela runs it on the CPU",
                    }
                )
    return out


def _wide_biases(model: Model) -> list[dict]:
    """Operators whose int64 bias (16x8) Vela cannot take: it runs them on the CPU."""
    out = []
    for si, sg in enumerate(model.subgraphs):
        for op in sg.operators:
            slot = BIAS_INPUT.get(op.type)
            b = op.inputs[slot] if slot is not None and len(op.inputs) > slot else None
            if b is None or b.dtype != "INT64" or not b.is_constant or not b.data.size:
                continue
            if int(np.abs(b.data).max()) >= 2**BIAS_BITS:
                out.append(
                    {
                        "subgraph": si,
                        "tensor": b.name,
                        "op": op.type,
                        "action": "skipped",
                        "reason": f"int64 bias values over {BIAS_BITS} bits: Vela runs "
                        f"{op.type} on the CPU",
                    }
                )
    return out


def _refuse_float_eight_bit_ops(model: Model) -> None:
    for sg in model.subgraphs:
        for op in sg.operators:
            x = op.inputs[0] if op.inputs else None
            if op.type in EIGHT_BIT_ONLY and x is not None and x.dtype == "FLOAT32":
                raise UsageError(
                    f"--target ethos-u: Vela cannot compile a model whose {op.type} reads "
                    f"float ({x.name!r}; it must be int8 or uint8), and LiteRT has no int16 "
                    f"{op.type} for --quantize int16x8 to use: quantize with --quantize int8"
                )


def require_integer(model: Model) -> None:
    """Refuse a model none of whose weight operators Vela can run: float or weight-only
    quantized models. Some float operators in an integer model only run on the CPU."""
    ops = [op for sg in model.subgraphs for op in sg.operators if op.type in WEIGHT_OPS]
    if not ops:
        return
    float_ops = [op for op in ops if _float_reason(op)]
    if len(float_ops) == len(ops):
        raise UsageError(
            f"--target ethos-u needs a full-integer model: Ethos-U runs int8 operators and "
            f"Vela leaves float ones to the CPU, but every weight operator here is float "
            f"(the first: {_float_reason(float_ops[0])}); quantize it first with "
            f"--quantize int8 --calibration SAMPLES"
        )


def _float_reason(op: Operator) -> str | None:
    x = op.inputs[0] if op.inputs else None
    slot = WEIGHT_OPS[op.type][0]
    wt = op.inputs[slot] if len(op.inputs) > slot else None
    if x is not None and x.dtype not in INTEGER_ACTIVATIONS:
        return f"{op.type} with {x.dtype} input"
    if wt is not None and wt.dtype != "INT8":
        return f"{op.type} with {wt.dtype} weights"
    return None


def _not_clusterable(w: Weight, opts: cluster_pass.Options) -> str | None:
    if w.tensor.dtype != "INT8" or w.dequantize:
        return f"{w.tensor.dtype} weights: Vela runs float operators on the CPU"
    return None


# ---------------------------------------------------------------- clustering


def _cluster(model: Model, w: Weight, opts: cluster_pass.Options, notes: dict) -> dict:
    before = stats_of(w)
    rows, scales, per_channel = _scale_rows(w)
    refit = _rescalable_biases(model, w) is not None
    found = kernels.shared_palette(
        rows, scales, k=opts.clusters, keep_zero=opts.preserve_sparsity, budget=BUDGET, refit=refit
    )
    values = w.from_channels(found.values) if per_channel else found.values.reshape(w.shape)
    _set_values(model, w, values, scales, found.scales)
    if opts.granularity == "channel":
        notes["codebook"] = (
            "shared by the tensor, not per channel: Vela interleaves the channels in one "
            "stream with one palette (channel scales refitted instead)"
        )
    if opts.clusters > kernels.PALETTE_MAX:
        notes["palette"] = (
            f"{opts.clusters} clusters: Vela's palette holds {kernels.PALETTE_MAX}; values "
            f"beyond it are written directly ({kernels.DIRECT_BITS} bits)"
        )
    if opts.init != "optimal":
        notes["init"] = "the codec-aware search starts from the optimal codebook"
    size = max(values.size, 1)
    return record(
        w,
        "clustered",
        clusters=opts.clusters,
        granularity=opts.granularity,
        init=opts.init,
        scales="refitted" if refit else "kept: a bias is shared with another weight",
        index_bits={"plain": round(found.start_bits), "chosen": round(found.bits)},
        plain_mse=found.start_sq_error / size,
        **notes,
        before=before,
        after=remember_stats(w, weight_stats(w.channels(values))),
        mse=found.sq_error / size,
    )


def _scale_rows(w: Weight) -> tuple[np.ndarray, np.ndarray, bool]:
    """The stored values as rows that each have one scale, the scales, and whether they are
    per channel (else the whole tensor is one row, in storage order)."""
    q = w.tensor.quantization
    data = w.tensor.data
    if q.per_axis and q.axis == w.out_axis:
        return np.ascontiguousarray(w.channels(data)), q.scale.astype(np.float64), True
    return data.reshape(1, -1), q.scale.astype(np.float64)[:1], False


def _set_values(
    model: Model, w: Weight, values: np.ndarray, old: np.ndarray, new: np.ndarray
) -> None:
    """New stored values and scales for the weight, its biases following the scales."""
    q = w.tensor.quantization
    new = np.asarray(new, np.float32).reshape(-1)
    quant = Quantization(
        scale=new,
        zero_point=np.zeros(new.size, np.int64),
        axis=q.axis if new.size > 1 else 0,
        details=q.details,
    )
    replace_data(model, w, values, quantization=quant)
    ratio = np.asarray(old, np.float64).reshape(-1) / new.astype(np.float64)
    if np.any(ratio != 1.0):
        _rescale_biases(model, w, ratio)


# ---------------------------------------------------------------- biases


def _readers(model: Model, w: Weight) -> list[Operator]:
    mine = {id(w.tensor), *map(id, w.aliases)}
    return [
        op
        for op in model.subgraphs[w.subgraph].operators
        if op.type in WEIGHT_OPS
        and len(op.inputs) > WEIGHT_OPS[op.type][0]
        and id(op.inputs[WEIGHT_OPS[op.type][0]]) in mine
    ]


def _rescalable_biases(model: Model, w: Weight) -> list[Tensor] | None:
    """The biases of the weight's operators when each can follow a change of the weight's
    scales (a constant integer that no other operator reads), else None."""
    readers = _readers(model, w)
    found: dict[int, Tensor] = {}
    for op in readers:
        slot = BIAS_INPUT.get(op.type)
        b = op.inputs[slot] if slot is not None and len(op.inputs) > slot else None
        if b is not None:
            found[id(b)] = b
    mine = {id(op) for op in readers}
    others = [op for op in model.subgraphs[w.subgraph].operators if id(op) not in mine]
    for b in found.values():
        bq = b.quantization
        if b.dtype not in ("INT32", "INT64") or not b.is_constant or bq is None:
            return None
        if bq.scale is None or bq.scale.size not in (1, b.data.size):
            return None
        if any(any(t is b for t in op.inputs) for op in others):
            return None
    return list(found.values())


def _rescale_biases(model: Model, w: Weight, ratio: np.ndarray) -> None:
    """A bias is stored in units of input scale x weight scale: when a weight scale becomes
    old / ratio, its stored bias is multiplied by ratio and its scale divided by it."""
    per_tensor = w.tensor.quantization.scale.size == 1
    for b in _rescalable_biases(model, w) or []:
        stored = b.data.astype(np.float64).reshape(-1)
        r = np.broadcast_to(ratio, stored.shape)
        limit = np.iinfo(b.np_dtype)
        new = np.clip(np.round(stored * r), limit.min, limit.max).astype(b.np_dtype)
        bq = b.quantization
        scale = np.broadcast_to(bq.scale.astype(np.float64), r.shape) / r
        if per_tensor:  # every channel now has the same scale
            scale = scale[:1]
        bias = Weight(w.subgraph, b, "bias", out_axis=0, in_axis=None)
        quant = dataclasses.replace(
            bq,
            scale=scale.astype(np.float32),
            zero_point=np.zeros(scale.size, np.int64),
            min=None,
            max=None,
        )
        replace_data(model, bias, new, quantization=quant)


# ---------------------------------------------------------------- per-tensor FULLY_CONNECTED


def _per_channel_fc(w: Weight) -> bool:
    q = w.tensor.quantization
    return w.op_type == FC and w.tensor.dtype == "INT8" and q is not None and q.per_axis


def _requantize_fc(model: Model, w: Weight) -> dict | None:
    """Per-channel weights made per-tensor with the largest channel scale, so that nothing
    clips; None when a bias cannot follow."""
    if _rescalable_biases(model, w) is None:
        return None
    rows, scales, _ = _scale_rows(w)
    common = np.float32(scales.max())
    real = rows.astype(np.float64) * scales[:, None]
    x = real / np.float64(common)
    new = np.clip(np.sign(x) * np.floor(np.abs(x) + 0.5), -127, 127).astype(np.int8)
    _set_values(model, w, w.from_channels(new), scales, np.array([common]))
    err = float(np.sum((new * np.float64(common) - real) ** 2)) / max(real.size, 1)
    return {"from_channels": int(scales.size), "mse": err}


def _requantize_record(model: Model, w: Weight) -> dict:
    """Per-tensor for Vela; a weight that looked clustered (no more distinct values than a
    palette holds) is clustered again to as many values, as one codebook."""
    before = stats_of(w)
    distinct = int(np.unique(w.tensor.data).size)
    done = _requantize_fc(model, w)
    if done is None:
        return record(w, "skipped", BIAS_SHARED)
    extra = {}
    if distinct <= kernels.PALETTE_MAX:
        rows, scales, _ = _scale_rows(w)
        keep_zero = bool(np.any(rows == 0))
        found = kernels.shared_palette(rows, scales, k=distinct, keep_zero=keep_zero)
        _set_values(model, w, found.values.reshape(w.shape), scales, found.scales)
        extra["reclustered"] = distinct
    return record(
        w,
        "requantized",
        "per-channel FULLY_CONNECTED weights made per-tensor (Vela 3.x runs per-channel "
        "FULLY_CONNECTED on the CPU)",
        **extra,
        before=before,
        after=remember_stats(w, weight_stats(w.channels(w.tensor.data))),
        mse=done["mse"],
    )


TARGET = Target(
    name="ethos-u",
    run=run,
    steps={"cluster": Pass(name="cluster", Options=cluster_pass.Options, run=cluster)},
    unsupported=INT16_GAPS,
)
