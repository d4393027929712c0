"""Cross-layer equalization (data-free quantization, Nagel et al. 2019): rescale the output
channels of one layer and the matching input channels of the next so that both have the
same weight range per channel, without changing what the model computes.

For a chain layer1 -> f -> layer2, where f is positively homogeneous channel by channel
(f(s x) = s f(x) for s > 0: no activation, ReLU, leaky ReLU, max or average pooling, a
spatial MEAN, zero padding, a reshape that keeps channels last), dividing layer1's output
channel i (weights and bias) by s_i and multiplying layer2's input channel i by s_i leaves
layer2's output as it was. With r1_i and r2_i the two ranges (max |w|), s_i =
sqrt(r1_i / r2_i) gives both sqrt(r1_i r2_i). Pairs overlap (a depthwise layer is layer2 of
one pair and layer1 of the next), so the pass sweeps every pair in graph order until the
scales settle (at most `iterations` sweeps), as DFQ iterates to convergence. Per-tensor
codebooks and per-tensor scales should gain the most: after it, fewer channels span a small
part of their tensor's range (tools/bench/equalize.py measures whether that helps).

RELU6, RELU_N1_TO_1, TANH and the other clipping or saturating activations are not
scale-equivariant: DFQ replaces ReLU6 by ReLU, which changes the model, so those pairs are
left alone and the records say why. Only float32 weights read by one op are edited;
quantized and float16 weights are left alone (equalize the float model before quantizing).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from tflrewrite.errors import UsageError
from tflrewrite.model import Model, Operator, Subgraph, Tensor
from tflrewrite.passes.common import (
    Data,
    Pass,
    PassResult,
    Rule,
    check_regex,
    options_for,
    remember_stats,
    stats_of,
    weight_stats,
)
from tflrewrite.weights import Weight, find_weights, record, replace_data

LAYERS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Fused activations that commute with a positive scale per channel.
HOMOGENEOUS_FUSED = ("NONE", "RELU")
# Ops between the two layers that act channel by channel and commute with positive scales.
THROUGH = ("RELU", "LEAKY_RELU", "MAX_POOL_2D", "AVERAGE_POOL_2D", "PAD", "MEAN")
NOT_EQUIVARIANT = "is not scale-equivariant (DFQ would replace it by RELU, which changes the model)"
# Sweeps stop when every scale of a sweep is within this of 1 (relative).
SETTLED = 1e-5
# A channel whose range is below this fraction of its tensor's largest is treated as dead:
# its scale stays 1 rather than blow up the other layer's channel.
DEAD = 1e-8


@dataclass(frozen=True, kw_only=True)
class Options:
    iterations: int = 50  # at most this many sweeps over every pair (DFQ iterates until
    # the scales settle: the sweeps stop once no channel's scale moves by SETTLED)
    min_size: int = 0  # pairs with a weight of fewer elements are left alone
    skip: str | None = None  # regex of tensor names to leave alone

    def __post_init__(self) -> None:
        check_regex(self.skip, "--skip")
        if self.iterations < 1:
            raise UsageError(f"equalize: iterations must be at least 1, not {self.iterations}")


@dataclass(eq=False)
class _Pair:
    """layer1's output channels feed layer2's input channels; `repeat` > 1 when a reshape
    between them flattens positions into layer2's inputs (input j is channel j % C)."""

    first: Weight
    second: Weight
    bias: Tensor | None
    repeat: int = 1


@dataclass(eq=False)
class _State:
    """Working float64 values of the edited tensors and what happened to each weight."""

    values: dict[int, np.ndarray] = field(default_factory=dict)  # id(tensor) -> values
    scales: dict[int, np.ndarray] = field(default_factory=dict)  # id(weight) -> out-scales
    partners: dict[int, list[str]] = field(default_factory=dict)  # id(weight) -> names
    sweeps: int = 0


def run(
    model: Model, options: Options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
) -> PassResult:
    model = model.copy()
    # --skip is applied here rather than by find_weights, so that a pair's other layer
    # can say which weight kept it alone
    weights, records = find_weights(model)
    usable, reasons = {}, {}
    for w in weights:
        reason = _not_usable(w, options_for(options, rules, w.name), options)
        if reason:
            reasons[id(w)] = [reason]
        usable[id(w.tensor)] = w
        for op in w.densify:  # a sparse weight: its layer reads what DENSIFY writes
            usable[id(op.outputs[0])] = w
    pairs = []
    for si, sg in enumerate(model.subgraphs):
        pairs += _pairs(sg, si, usable, reasons)
    state = _State()
    for pair in pairs:
        for t in (pair.first.tensor, pair.second.tensor, pair.bias):
            if t is not None and id(t) not in state.values:
                state.values[id(t)] = t.data.astype(np.float64)
        state.partners.setdefault(id(pair.first), []).append(pair.second.name)
        state.partners.setdefault(id(pair.second), []).append(pair.first.name)
    for sweep in range(1, options.iterations + 1 if pairs else 0):
        moved = max([_equalize(pair, state) for pair in pairs])
        state.sweeps = sweep
        if moved < SETTLED:
            break
    records += _commit(model, weights, pairs, state, reasons)
    return PassResult(model, records)


PASS = Pass(name="equalize", Options=Options, run=run, preserves_function=True)


def _not_usable(w: Weight, opts: Options | None, options: Options) -> str | None:
    if opts is None:
        return "a recipe rule leaves it alone"
    if options.skip and re.search(options.skip, w.name):
        return f"name matches --skip {options.skip!r}"
    if w.tensor.data.size < opts.min_size:
        return f"fewer than {opts.min_size} elements"
    if w.op_type not in LAYERS:
        return f"{w.op_type} layers are not equalized"
    if w.dequantize:
        return f"{w.tensor.dtype} behind DEQUANTIZE (equalize the float model)"
    if w.tensor.dtype != "FLOAT32":
        return f"quantized ({w.tensor.dtype}) weights: equalize the float model before quantizing"
    if w.aliases:
        return "its buffer is shared by several tensors"
    return None


# ------------------------------------------------------------------ finding the pairs


def _pairs(sg: Subgraph, si: int, usable: dict, reasons: dict) -> list[_Pair]:
    """The equalizable pairs of a subgraph, in graph order; a reason in `reasons` for each
    layer that could have been in a pair and is not."""
    readers = sg.consumers()
    outputs = {id(t) for t in sg.outputs}
    found = []
    for op in sg.operators:
        w = _layer_weight(op, usable, readers)
        if w is None or w.subgraph != si:
            continue
        second, why = _follow(op, readers, outputs, usable)
        if second is None:
            reasons.setdefault(id(w), []).append(f"not paired: {why}")
            continue
        w2, repeat = second
        bad = _refusal(w, reasons) or _refusal(w2, reasons)
        if bad:
            for x in (w, w2):
                reasons.setdefault(id(x), []).append(f"not paired with {_other(x, w, w2)}: {bad}")
            continue
        bias = _bias(op, readers)
        if bias is False:
            reasons.setdefault(id(w), []).append(
                f"not paired with {w2.name}: its bias is not a float32 constant of its own"
            )
            continue
        found.append(_Pair(w, w2, bias, repeat))
    return found


def _other(x: Weight, a: Weight, b: Weight) -> str:
    return b.name if x is a else a.name


def _refusal(w: Weight, reasons: dict) -> str | None:
    """The reason a weight may not be edited at all (the first one recorded for it)."""
    first = reasons.get(id(w), [None])[0]
    return None if first is None or first.startswith("not paired") else first


def _layer_weight(op: Operator, usable: dict, readers: dict) -> Weight | None:
    """The weight of a layer op read by that op alone, or None."""
    if op.type not in LAYERS or len(op.inputs) < 2 or op.inputs[1] is None:
        return None
    w = usable.get(id(op.inputs[1]))
    if w is None or readers.get(id(op.inputs[1])) != [op]:
        return None
    return w


def _follow(op: Operator, readers: dict, outputs: set, usable: dict) -> tuple:
    """((layer2's weight, repeat), None) for the layer that reads `op`'s output channel by
    channel through homogeneous ops only, or (None, why not)."""
    channels = op.outputs[0].shape[-1] if op.outputs and op.outputs[0].shape else None
    if op.activation not in HOMOGENEOUS_FUSED:
        return None, f"its fused {op.activation} {NOT_EQUIVARIANT}"
    t, width = op.outputs[0], channels
    while True:
        if t.dtype != "FLOAT32" or not t.shape:
            return None, f"{t.name} is {t.dtype}, not float32"
        if id(t) in outputs:
            return None, f"{t.name} is a model output"
        nxt = readers.get(id(t), [])
        if len(nxt) != 1:
            return None, f"{t.name} is read by {len(nxt)} ops, not one"
        op2 = nxt[0]
        if op2.type in LAYERS:
            return _second(op2, t, channels, width, usable, readers)
        why = _not_through(op2, t, channels)
        if why:
            return None, why
        t = op2.outputs[0]
        if op2.type == "RESHAPE":
            width = t.shape[-1] if t.shape else None


def _not_through(op: Operator, t: Tensor, channels: int) -> str | None:
    """Why the values cannot pass `op` scaled channel by channel, or None."""
    out = op.outputs[0] if op.outputs else None
    if op.type in ("RELU6", "RELU_N1_TO_1", "RELU_0_TO_1", "TANH", "LOGISTIC", "HARD_SWISH"):
        return f"{op.type} {NOT_EQUIVARIANT}"
    if op.type not in (*THROUGH, "RESHAPE"):
        return f"{t.name} goes to {op.type}, not to a layer (through ReLU or pooling at most)"
    if out is None or not out.shape or op.inputs[0] is not t:
        return f"{op.type} reads it in an unexpected way"
    if op.type == "RESHAPE":
        if t.shape[-1] != channels or out.shape[-1] % channels:
            return "a RESHAPE that does not keep channels last"
        return None
    if op.type == "MEAN" and _reduces_channels(op, len(t.shape)):
        return "a MEAN over the channels"
    if op.activation not in HOMOGENEOUS_FUSED:
        return f"{op.type}'s fused {op.activation} {NOT_EQUIVARIANT}"
    if out.shape[-1] != channels:
        return f"{op.type} changes the channel count"
    return None


def _reduces_channels(op: Operator, rank: int) -> bool:
    axes = op.inputs[1] if len(op.inputs) > 1 else None
    if axes is None or not axes.is_constant or axes.data is None:
        return True
    return bool(np.any(np.asarray(axes.data).reshape(-1) % rank == rank - 1))


def _second(op2: Operator, t: Tensor, channels: int, width: int, usable: dict, readers: dict):
    if op2.inputs[0] is not t:
        return None, f"{op2.type} reads it as a weight or bias"
    w2 = _layer_weight(op2, usable, readers)
    if w2 is None:
        return None, f"the {op2.type} that reads it has no float32 weight of its own"
    inputs = w2.shape[1] if op2.type == "FULLY_CONNECTED" else w2.shape[3]
    if inputs != width or width % channels:
        return None, f"{w2.name} has {inputs} input channels for {channels} (grouped?)"
    return (w2, width // channels), None


def _bias(op: Operator, readers: dict) -> Tensor | None | bool:
    """The layer's bias (None without one), or False when it cannot be scaled."""
    if len(op.inputs) < 3 or op.inputs[2] is None:
        return None
    b = op.inputs[2]
    if b.dtype != "FLOAT32" or not b.is_constant or readers.get(id(b)) != [op]:
        return False
    return b


# ------------------------------------------------------------------ the scaling


def _out_axis_ranges(w: Weight, values: np.ndarray) -> np.ndarray:
    return np.abs(w.channels(values)).max(axis=1)


def _in_axis(w: Weight) -> int:
    return 1 if w.op_type == "FULLY_CONNECTED" else 3


def _in_axis_ranges(w: Weight, values: np.ndarray, repeat: int) -> np.ndarray:
    axis = _in_axis(w)
    r = np.abs(np.moveaxis(values, axis, 0)).reshape(values.shape[axis], -1).max(axis=1)
    return r.reshape(repeat, -1).max(axis=0)


def _along(values: np.ndarray, axis: int, factors: np.ndarray) -> np.ndarray:
    shape = [1] * values.ndim
    shape[axis] = factors.size
    return values * factors.reshape(shape)


def _equalize(pair: _Pair, state: _State) -> float:
    """Equalize one pair in `state`; how far its scales were from 1 (largest |log s|)."""
    w1, w2 = pair.first, pair.second
    v1, v2 = state.values[id(w1.tensor)], state.values[id(w2.tensor)]
    r1 = _out_axis_ranges(w1, v1)
    r2 = _in_axis_ranges(w2, v2, pair.repeat)
    live = (r1 > DEAD * r1.max()) & (r2 > DEAD * r2.max())
    s = np.ones_like(r1)
    s[live] = np.sqrt(r1[live] / r2[live])
    state.values[id(w1.tensor)] = _along(v1, w1.out_axis, 1 / s)
    state.values[id(w2.tensor)] = _along(v2, _in_axis(w2), np.tile(s, pair.repeat))
    if pair.bias is not None:
        state.values[id(pair.bias)] = state.values[id(pair.bias)] / s
    previous = state.scales.get(id(w1), np.ones_like(s))
    state.scales[id(w1)] = previous / s
    return float(np.abs(np.log(s)).max())


# ------------------------------------------------------------------ results


def _spread(w: Weight, values: np.ndarray) -> float | None:
    """Largest over smallest nonzero range of the output channels."""
    r = _out_axis_ranges(w, values)
    r = r[r > 0]
    return None if r.size == 0 else float(r.max() / r.min())


def _commit(model, weights, pairs, state, reasons) -> list[dict]:
    records = []
    biases = {id(p.first): p.bias for p in pairs if p.bias is not None}
    for w in weights:
        if id(w) not in state.partners:
            why = _refusal(w, reasons) or "; ".join(reasons.get(id(w), ["no layer to pair with"]))
            records.append(record(w, "skipped", why))
            continue
        old = w.tensor.data
        new = state.values[id(w.tensor)].astype(np.float32)
        if not np.all(np.isfinite(new)):
            raise AssertionError(f"equalize: {w.name} would hold NaN or infinity")
        before = stats_of(w)
        spread = [_spread(w, old), _spread(w, new)]
        replace_data(model, w, new, finite=True)
        extra = {"with": state.partners[id(w)], "channel_range_spread": spread}
        extra["sweeps"] = state.sweeps
        scales = state.scales.get(id(w))
        if scales is not None:
            extra["output_scales"] = [float(scales.min()), float(scales.max())]
        bias = biases.get(id(w))
        if bias is not None:
            values = state.values[id(bias)].astype(np.float32)
            replace_data(
                model,
                Weight(w.subgraph, bias, w.op_type, out_axis=0, in_axis=None),
                values,
                finite=True,
            )
        notes = [r for r in reasons.get(id(w), []) if r.startswith("not paired")]
        if notes:
            extra["not_paired"] = notes
        after = remember_stats(w, weight_stats(w.channels(new)))
        records.append(record(w, "equalized", before=before, after=after, **extra))
    return records
