"""Full-integer quantization: a float model rewritten so that LiteRT's int8 kernels run it.

- Weights of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and TRANSPOSE_CONV: int8 per output
  channel, symmetric (zero point 0, so zeros and clusters survive); a constant BATCH_MATMUL
  operand: int8 per tensor, symmetric. Biases: int32, scale = input scale x weight scale.
- Activations: int8 per tensor, asymmetric, from calibrated ranges widened to hold 0 (so
  that zero padding and ReLU's zeros are exact). Other float constants read by int8 ops get
  the parameters of their own range, or of the tensors they must share a scale with.
- What the int8 kernels require (tensorflow/lite/tools/optimize/operator_property.cc and the
  kernels' Prepare checks): fixed output parameters for SOFTMAX and LOGISTIC (1/256, -128),
  TANH (1/128, 0) and LOG_SOFTMAX (16/256, 127); one scale and zero point on the inputs and
  outputs of ops that move values without arithmetic (RESHAPE, pooling, PAD, CONCATENATION,
  ...). Tensors tied that way form groups (union-find) whose range is the union of theirs.
- Op versions rise to those of the int8 kernels, as the TF converter writes them.

Ops without an int8 kernel here (and every op outside the main subgraph) stay float, with
DEQUANTIZE before and QUANTIZE after them, and the records name them and say why. The
interface is float by default (a QUANTIZE after each input, a DEQUANTIZE before each output);
`io` int8 or uint8 makes the inputs and outputs integer themselves.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import numpy as np

from tflrewrite import calibrate
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.kernels import quantize as kernels
from tflrewrite.model import Model, Operator, Quantization, Subgraph, Tensor
from tflrewrite.passes.common import PassResult, Rule, options_for, weight_stats
from tflrewrite.progress import Progress
from tflrewrite.weights import real_values


@dataclass(frozen=True)
class Int8Op:
    """What an op's int8 kernel needs."""

    version: int  # the op version of the int8 kernel
    same_scale: bool = False  # float inputs and outputs share one scale and zero point
    output: tuple[float, int] | None = None  # fixed (scale, zero point) of output 0
    weights: int | None = None  # input index of per-channel symmetric weights
    weight_axis: int | None = 0  # their output-channel axis (None: one scale)
    bias: int | None = None  # input index of the int32 bias
    data: int = 0  # the input whose scale times the weights' is the bias scale


_MOVE = Int8Op(2, same_scale=True)
_MOVE_V1 = Int8Op(1, same_scale=True)
INT8_OPS: dict[str, Int8Op] = {
    "CONV_2D": Int8Op(3, weights=1, bias=2),
    "DEPTHWISE_CONV_2D": Int8Op(3, weights=1, weight_axis=3, bias=2),
    "FULLY_CONNECTED": Int8Op(4, weights=1, bias=2),
    "TRANSPOSE_CONV": Int8Op(2, weights=1, bias=3, data=2),
    "BATCH_MATMUL": Int8Op(2, weights=1, weight_axis=None),
    "ADD": Int8Op(2),
    "SUB": Int8Op(2),
    "MUL": Int8Op(2),
    "MEAN": Int8Op(2),
    "SUM": Int8Op(2),
    "RELU": Int8Op(2),
    "RELU6": Int8Op(2),
    "PRELU": Int8Op(1),
    "LEAKY_RELU": Int8Op(1),
    "HARD_SWISH": Int8Op(1),
    "LOGISTIC": Int8Op(2, output=(1 / 256, -128)),
    "SOFTMAX": Int8Op(2, output=(1 / 256, -128)),
    "TANH": Int8Op(2, output=(1 / 128, 0)),
    "LOG_SOFTMAX": Int8Op(2, output=(16 / 256, 127)),
    "AVERAGE_POOL_2D": _MOVE,
    "MAX_POOL_2D": _MOVE,
    "CONCATENATION": _MOVE,
    "PAD": _MOVE,
    "PADV2": _MOVE,
    "RESIZE_BILINEAR": _MOVE,
    "RESIZE_NEAREST_NEIGHBOR": _MOVE,
    "STRIDED_SLICE": _MOVE,
    "SLICE": _MOVE,
    "SPLIT": _MOVE,
    "SPLIT_V": _MOVE,
    "TRANSPOSE": _MOVE,
    "GATHER": _MOVE,
    "MINIMUM": _MOVE,
    "MAXIMUM": _MOVE,
    "SPACE_TO_DEPTH": _MOVE,
    "DEPTH_TO_SPACE": _MOVE,
    "PACK": _MOVE,
    "UNPACK": _MOVE,
    "RESHAPE": _MOVE_V1,
    "SQUEEZE": _MOVE_V1,
    "EXPAND_DIMS": _MOVE_V1,
}

# Conversion ops at the edges of int8 regions: (from, to) -> (op, version).
CONVERSIONS = {
    ("FLOAT32", "INT8"): ("QUANTIZE", 1),
    ("UINT8", "INT8"): ("QUANTIZE", 2),
    ("INT8", "UINT8"): ("QUANTIZE", 2),
    ("INT8", "FLOAT32"): ("DEQUANTIZE", 2),
    ("UINT8", "FLOAT32"): ("DEQUANTIZE", 1),
}
IO_TYPES = {"float": "FLOAT32", "int8": "INT8", "uint8": "UINT8"}
INT32_MAX = 2**31 - 1


Params = tuple[float, int]  # int8 (scale, zero point)


def run(
    model: Model, options: object, rules: tuple[Rule, ...] = (), *, data: object = None
) -> PassResult:
    """`options` are the quantize pass's (mode "int8": method, io); `data` the calibration
    samples (calibrate.Samples)."""
    if data is None:
        raise UsageError(
            "--quantize int8 needs calibration data: --calibration DATA.npz (one array per "
            "model input, first axis = samples), or --calibration random to calibrate on "
            "random inputs (poor ranges; the report says so)"
        )
    model = model.copy()
    _fold_constants(model)
    bar = Progress("calibrating", len(data.values) * (1 if options.method == "minmax" else 2))
    began = time.perf_counter()
    ranges = calibrate.ranges(
        model, data, method=options.method, progress=lambda done, _: bar(done)
    )
    seconds = {"calibrate": round(time.perf_counter() - began, 3)}
    sg = model.subgraphs[0]
    chosen, kept_float = _choose(model, sg, ranges, options, rules)
    params = _params(sg, chosen, ranges)
    records = _Rewriter(model, sg, chosen, params, IO_TYPES[options.io]).run()
    records += [_op_record(op, "kept float", reason) for op, reason in kept_float]
    _drop_unused(model)
    records.append(
        {
            "tensor": "(calibration)",
            "op": "",
            "action": "calibrated",
            "samples": len(data.values),
            "source": data.source,
            "method": options.method,
        }
    )
    return PassResult(model, records, seconds)


# ------------------------------------------------------------------ before: plain float


def _fold_constants(model: Model) -> None:
    """Constant weights in the plain float form the rewrite starts from: a DEQUANTIZE of a
    constant (float16 or int8 weights) becomes the float32 constant it computes, and int8
    weights read directly by float ops (hybrid, weight-only models) become float32."""
    for sg in model.subgraphs:
        dequantized: dict[int, Tensor] = {}
        for op in list(sg.operators):
            if op.type == "DEQUANTIZE" and op.inputs[0] is not None and op.inputs[0].is_constant:
                source, out = op.inputs[0], op.outputs[0]
                out.buffer = model.add_buffer(real_values(source).astype(np.float32))
                out.quantization = None
                sg.operators.remove(op)
        for op in sg.operators:
            if not any(t is not None and t.dtype == "FLOAT32" for t in op.outputs):
                continue
            for i, t in enumerate(op.inputs):
                if t is not None and t.is_constant and t.dtype == "INT8" and _affine(t):
                    if id(t) not in dequantized:
                        real = model.add_buffer(real_values(t).astype(np.float32))
                        dequantized[id(t)] = Tensor(t.name, "FLOAT32", t.shape, real)
                        sg.tensors.append(dequantized[id(t)])
                    op.inputs[i] = dequantized[id(t)]


def _affine(t: Tensor) -> bool:
    return t.quantization is not None and t.quantization.is_affine


# ------------------------------------------------------------------ which ops go int8


def _choose(model, sg, ranges, options, rules):
    """The ops of the main subgraph that become int8, and (op, reason) for those that stay
    float (every op of the other subgraphs stays float too)."""
    chosen, kept = [], []
    for op in sg.operators:
        reason = _not_int8(op, ranges, options, rules)
        if reason:
            kept.append((op, reason))
        else:
            chosen.append(op)
    for other in model.subgraphs[1:]:
        for op in other.operators:
            kept.append((op, "not in the main subgraph (control-flow bodies stay float)"))
    return chosen, kept


def _not_int8(op: Operator, ranges: dict, options: object, rules) -> str | None:
    rule = INT8_OPS.get(op.type)
    if rule is None:
        return "no int8 kernel for this op in the rewrite's table"
    tensors = [t for t in op.inputs + op.outputs if t is not None]
    if not any(t.dtype == "FLOAT32" for t in op.outputs if t is not None):
        return "no float output"
    for t in tensors:
        if t.dtype not in ("FLOAT32", "INT32", "INT64", "BOOL"):
            return f"a {t.dtype} tensor ({t.name})"
        if t.dtype == "FLOAT32" and not t.is_constant and id(t) not in ranges:
            return f"no calibrated range for {t.name} (never computed on the samples)"
    if rule.weights is not None and len(op.inputs) > rule.weights:
        w = op.inputs[rule.weights]
        if op.type != "BATCH_MATMUL" and (w is None or not w.is_constant):
            return "its weights are computed at run time"
    names = [t.name for t in tensors]
    if options.skip and any(re.search(options.skip, n) for n in names):
        return f"a tensor name matches --skip {options.skip!r}"
    for name in names:
        if rules and options_for(options, rules, name) is None:
            return f"a recipe rule leaves {name} alone"
    return None


# ------------------------------------------------------------------ parameters


def _params(sg: Subgraph, chosen: list[Operator], ranges: dict) -> dict[int, Params]:
    """int8 (scale, zero point) of every float tensor an int8 op reads or writes (weights
    and biases aside), keyed by id(tensor)."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tensors: dict[int, Tensor] = {}
    fixed: dict[int, Params] = {}
    for op in chosen:
        rule = INT8_OPS[op.type]
        skip = {rule.weights, rule.bias} if rule.weights is not None else set()
        if op.type == "BATCH_MATMUL" and not _const(op.inputs, 1):
            skip = set()
        floats = [
            t
            for i, t in enumerate(op.inputs)
            if t is not None and t.dtype == "FLOAT32" and i not in skip
        ] + [t for t in op.outputs if t is not None and t.dtype == "FLOAT32"]
        for t in floats:
            tensors[id(t)] = t
            find(id(t))
        if rule.same_scale:
            for t in floats[1:]:
                parent[find(id(t))] = find(id(floats[0]))
        if rule.output is not None and op.outputs[0] is not None:
            fixed.setdefault(id(op.outputs[0]), rule.output)
    lows: dict[int, float] = {}
    highs: dict[int, float] = {}
    group_fixed: dict[int, Params] = {}
    for key, t in tensors.items():
        root = find(key)
        lo, hi = _range(t, ranges)
        lows[root] = min(lows.get(root, 0.0), lo)
        highs[root] = max(highs.get(root, 0.0), hi)
        if key in fixed:
            group_fixed.setdefault(root, fixed[key])
    return {
        key: group_fixed.get(find(key)) or _affine_params(lows[find(key)], highs[find(key)])
        for key in tensors
    }


def _const(inputs: list, i: int) -> bool:
    return len(inputs) > i and inputs[i] is not None and inputs[i].is_constant


def _range(t: Tensor, ranges: dict) -> tuple[float, float]:
    if t.is_constant:
        data = t.data
        return (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    return ranges[id(t)]


def _affine_params(lo: float, hi: float) -> Params:
    """int8 (scale, zero point) for [lo, hi] widened to hold 0, zero point nudged to an
    integer so that 0.0 is exactly representable."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    if hi - lo < 1e-30:
        return 1.0, 0
    scale = (hi - lo) / 255.0
    zero = int(np.clip(np.round(-128 - lo / scale), -128, 127))
    return float(np.float32(scale)), zero


# ------------------------------------------------------------------ the rewrite


class _Rewriter:
    """Walks the main subgraph in order, giving int8 ops int8 tensors and float ops float
    ones, with a conversion op wherever a tensor is needed in the other form.

    A tensor's "home" is the dtype its producer writes (a subgraph input's: the interface
    dtype). The tensor object takes its home dtype, except where it is a subgraph output
    the interface wants in another dtype: then the producer writes a twin and a conversion
    op right after it fills the output. Consumers read the form they need, converted once
    and shared by every later consumer.
    """

    def __init__(self, model, sg, chosen, params, io):
        self.model, self.sg, self.params, self.io = model, sg, params, io
        self.chosen = {id(op) for op in chosen}
        self.activations = {id(t) for t in sg.tensors if t.dtype == "FLOAT32" and not t.is_constant}
        self.forms: dict[tuple[int, str], Tensor] = {}  # (id(tensor), dtype) -> tensor
        self.constants: dict[tuple, Tensor] = {}
        self.records: list[dict] = []
        self.ops: list[Operator] = []

    def run(self) -> list[dict]:
        for t in self.sg.inputs:
            if id(t) in self.activations and self.io != "FLOAT32" and id(t) in self.params:
                self._retype(t, self.io)
            self.forms[(id(t), t.dtype)] = t
        for op in self.sg.operators:
            if id(op) in self.chosen:
                self._int8_op(op)
            else:
                self._float_op(op)
        self.sg.operators = self.ops
        return self.records

    def _quantization(self, t: Tensor, dtype: str) -> Quantization:
        scale, zero = self.params[id(t)]
        zero += 128 if dtype == "UINT8" else 0
        return Quantization(np.array([scale], np.float32), np.array([zero], np.int64))

    def _retype(self, t: Tensor, dtype: str) -> None:
        t.dtype = dtype
        t.quantization = self._quantization(t, dtype) if dtype != "FLOAT32" else None

    def _twin(self, t: Tensor, dtype: str) -> Tensor:
        twin = Tensor(
            f"{t.name}_{dtype.lower()}",
            dtype,
            t.shape,
            self.model.empty_buffer(),
            shape_signature=t.shape_signature,
            quantization=self._quantization(t, dtype) if dtype != "FLOAT32" else None,
        )
        self.sg.tensors.append(twin)
        self.forms[(id(t), dtype)] = twin
        return twin

    def _convert(self, source: Tensor, target: Tensor) -> None:
        name, version = CONVERSIONS[(source.dtype, target.dtype)]
        self.ops.append(Operator(self.model.opcode(name, version), [source], [target]))

    def _read(self, t: Tensor | None, dtype: str) -> Tensor | None:
        """What an op reads for input `t` when it wants `dtype`."""
        if t is None or id(t) not in self.activations:
            return t
        have = self.forms.get((id(t), dtype))
        if have is not None:
            return have
        source = self.forms.get((id(t), t.dtype), t)
        if source.dtype == dtype:
            return source
        twin = self._twin(t, dtype)
        self._convert(source, twin)
        return twin

    def _write(self, op: Operator, home: str) -> None:
        for i, t in enumerate(op.outputs):
            if t is None or id(t) not in self.activations:
                continue
            want = home
            if t in self.sg.outputs:
                want = self.io if id(t) in self.params else "FLOAT32"
            if want == home:
                self._retype(t, home)
                self.forms[(id(t), home)] = t
                continue
            op.outputs[i] = self._twin(t, home)
            self._retype(t, want)
            self.forms[(id(t), want)] = t
            self._convert(op.outputs[i], t)

    def _float_op(self, op: Operator) -> None:
        op.inputs = [self._read(t, "FLOAT32") for t in op.inputs]
        self.ops.append(op)
        self._write(op, "FLOAT32")

    def _int8_op(self, op: Operator) -> None:
        rule = INT8_OPS[op.type]
        weights_const = rule.weights is not None and _const(op.inputs, rule.weights)
        scales = None
        if weights_const:
            w = op.inputs[rule.weights]
            op.inputs[rule.weights], scales = self._weights(op, w, rule)
        data = op.inputs[rule.data]  # before it is replaced by its int8 form
        for i, t in enumerate(op.inputs):
            if t is None or (weights_const and i == rule.weights):
                continue
            if id(t) in self.activations:  # (a subgraph input may already be integer)
                op.inputs[i] = self._read(t, "INT8")
            elif t.dtype != "FLOAT32":
                continue
            elif i == rule.bias and weights_const:
                op.inputs[i] = self._bias(t, data, scales)
            else:
                op.inputs[i] = self._constant(t)
        version = rule.version
        if op.type == "TRANSPOSE_CONV" and _const(op.inputs, 3):
            version = 3  # with a bias input
        op.opcode = self.model.opcode(
            op.type, max(op.opcode.version, version), op.opcode.custom_code
        )
        self.ops.append(op)
        self._write(op, "INT8")

    def _weights(self, op: Operator, w: Tensor, rule: Int8Op) -> tuple[Tensor, np.ndarray]:
        key = ("weights", id(w))
        if key in self.constants:
            q = self.constants[key]
            return q, q.quantization.scale
        values = w.data.astype(np.float32)
        axis = rule.weight_axis
        rows = (
            values.reshape(1, -1)
            if axis is None
            else np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
        )
        q_rows, scales, sq_err = kernels.symmetric_int8_rows(np.ascontiguousarray(rows))
        if axis is None:
            stored = q_rows.reshape(values.shape)
        else:
            rest = [d for i, d in enumerate(values.shape) if i != axis]
            stored = np.moveaxis(q_rows.reshape([values.shape[axis], *rest]), 0, axis)
        quant = Quantization(scales, np.zeros(scales.size, np.int64), axis=axis or 0)
        q = self._new_constant(key, w, np.ascontiguousarray(stored), quant)
        self.records.append(
            {
                "subgraph": 0,
                "tensor": w.name,
                "op": op.type,
                "dtype": "INT8",
                "shape": list(w.shape or ()),
                "action": "quantized",
                "mode": "int8",
                "before": weight_stats(rows),
                "after": weight_stats(q_rows),
                "mse": float(sq_err.sum()) / max(rows.size, 1),
            }
        )
        return q, scales

    def _bias(self, b: Tensor, data: Tensor, w_scales: np.ndarray) -> Tensor:
        in_scale = self.params[id(data)][0]
        key = ("bias", id(b), in_scale, w_scales.tobytes())
        if key in self.constants:
            return self.constants[key]
        scales = (np.float64(in_scale) * w_scales.astype(np.float64)).astype(np.float32)
        values = b.data.astype(np.float64).reshape(-1)
        if scales.size not in (1, values.size):
            raise TflRewriteError(f"{b.name}: {values.size} biases for {scales.size} channels")
        stored = np.clip(np.round(values / scales.astype(np.float64)), -INT32_MAX, INT32_MAX)
        quant = Quantization(scales, np.zeros(scales.size, np.int64), axis=0)
        return self._new_constant(key, b, stored.astype(np.int32).reshape(b.shape), quant)

    def _constant(self, t: Tensor) -> Tensor:
        scale, zero = self.params[id(t)]
        key = ("constant", id(t), scale, zero)
        if key in self.constants:
            return self.constants[key]
        stored = np.clip(np.round(t.data.astype(np.float64) / scale) + zero, -128, 127)
        quant = Quantization(np.array([scale], np.float32), np.array([zero], np.int64))
        return self._new_constant(key, t, stored.astype(np.int8), quant)

    def _new_constant(self, key: tuple, like: Tensor, stored: np.ndarray, quant) -> Tensor:
        """A constant holding `stored`, named and shaped as the float tensor it replaces,
        shared by every op that asks with the same key."""
        dtype = {np.dtype(np.int8): "INT8", np.dtype(np.int32): "INT32"}[stored.dtype]
        q = Tensor(like.name, dtype, like.shape, self.model.add_buffer(stored), quantization=quant)
        self.sg.tensors.append(q)
        self.constants[key] = q
        return q


def _op_record(op: Operator, action: str, reason: str) -> dict:
    out = next((t for t in op.outputs if t is not None), None)
    return {
        "tensor": out.name if out is not None else "",
        "op": op.type,
        "action": action,
        "reason": reason,
    }


def _drop_unused(model: Model) -> None:
    """Tensors no op, subgraph or signature refers to any more (the float weights and
    folded constants the rewrite replaced) with their buffers, and opcodes no op uses."""
    dropped: set[int] = set()
    for sg in model.subgraphs:
        used = {id(t) for t in sg.inputs + sg.outputs}
        for op in sg.operators:
            used.update(id(t) for t in op.inputs + op.outputs + (op.intermediates or []) if t)
        for sig in model.signatures or []:
            if sig.subgraph is sg:
                used.update(id(t) for _, t in sig.inputs + sig.outputs)
        dropped.update(id(t.buffer) for t in sg.tensors if id(t) not in used)
        sg.tensors = [t for t in sg.tensors if id(t) in used]
    dropped -= model.referenced_buffers()
    model.buffers = [b for b in model.buffers if id(b) not in dropped]
    in_use = {id(op.opcode) for sg in model.subgraphs for op in sg.operators}
    model.opcodes = [oc for oc in model.opcodes if id(oc) in in_use]
