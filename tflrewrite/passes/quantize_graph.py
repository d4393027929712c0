"""Full-integer quantization: a float model rewritten so that LiteRT's integer kernels run it,
with int8 activations (mode "int8") or int16 ones (mode "int16x8", weights still int8).

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

Sparse weights (a constant with SparsityParameters behind DENSIFY, and a DEQUANTIZE after
it, as the TF converter writes them with EXPERIMENTAL_SPARSITY) are folded into dense float
weights first, like DEQUANTIZE of a constant. A CONV_2D or DEPTHWISE_CONV_2D that goes int8
gets its int8 weights back sparse behind DENSIFY, in the input's layout, where that is
smaller (LiteRT's int8 kernels read what DENSIFY writes); a FULLY_CONNECTED gets them dense,
because LiteRT's XNNPACK delegate (ai-edge-litert 2.3.0, its default) fails to prepare an
int8 FULLY_CONNECTED whose weights come from DENSIFY. Weights of ops that stay float get
their DENSIFY (and DEQUANTIZE) back, as the input had them.

16x8 (the TF converter's EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8): the
same weights; activations int16, symmetric, zero point 0 (LiteRT's int16 kernels require
it); biases int64; fixed outputs 1/32768 for SOFTMAX, LOGISTIC and TANH; only ops whose
int16 kernel LiteRT has (INT16_OPS), at the op versions of op_version.cc.

Mixed precision: `calibrated(model, data, options)` folds and calibrates once (a
Calibrated); `rewrite(calibrated, options, precision=...)` writes a model in which each op of
the main subgraph runs in int8, int16x8 or float (float16 weights), as a per-op map, recipe
rules (`quantize = "int16x8"`) or the mode choose; call it as often as a planner needs. `run`
is the two in one. Islands meet through conversions: QUANTIZE requantizes int16 <-> int8,
DEQUANTIZE and QUANTIZE join float ones; each dtype keeps its own scale groups and fixed
outputs, and its own op versions and bias dtype.

Ops without an integer kernel here (and every op outside the main subgraph) stay float, with
DEQUANTIZE before and QUANTIZE after them, and the records name them and say why. The
interface is float by default (a QUANTIZE after each input, a DEQUANTIZE before each output);
`io` int8 or uint8 (mode int8), or int16 (mode int16x8, as the converter allows), makes the
inputs and outputs integer themselves.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from tflrewrite import calibrate, sparsity
from tflrewrite.errors import TflRewriteError, UsageError
from tflrewrite.kernels import quantize as kernels
from tflrewrite.model import Model, Operator, Quantization, Subgraph, Tensor
from tflrewrite.passes import weight_only
from tflrewrite.passes.common import LAYER_OPS, PassResult, Rule, options_for, weight_stats
from tflrewrite.progress import Progress
from tflrewrite.weights import DENSIFY_BYTES, find_weights, real_values, record


@dataclass(frozen=True)
class IntegerOp:
    """What an op's integer kernel needs."""

    version: int  # the op version of the kernel
    same_scale: bool = False  # float inputs and outputs share one scale and zero point
    output: tuple[float, int] | None = None  # fixed (scale, zero point) of output 0
    weights: int | None = None  # input index of per-channel symmetric int8 weights
    weight_axis: int | None = 0  # their output-channel axis (None: one scale)
    bias: int | None = None  # input index of the bias
    data: int = 0  # the input whose scale times the weights' is the bias scale
    bias_dtype: str = "INT32"


_MOVE = IntegerOp(2, same_scale=True)
_MOVE_V1 = IntegerOp(1, same_scale=True)
INT8_OPS: dict[str, IntegerOp] = {
    "CONV_2D": IntegerOp(3, weights=1, bias=2),
    "DEPTHWISE_CONV_2D": IntegerOp(3, weights=1, weight_axis=3, bias=2),
    "FULLY_CONNECTED": IntegerOp(4, weights=1, bias=2),
    "TRANSPOSE_CONV": IntegerOp(2, weights=1, bias=3, data=2),
    "BATCH_MATMUL": IntegerOp(2, weights=1, weight_axis=None),
    "ADD": IntegerOp(2),
    "SUB": IntegerOp(2),
    "MUL": IntegerOp(2),
    "MEAN": IntegerOp(2),
    "SUM": IntegerOp(2),
    "RELU": IntegerOp(2),
    "RELU6": IntegerOp(2),
    "PRELU": IntegerOp(1),
    "LEAKY_RELU": IntegerOp(1),
    "HARD_SWISH": IntegerOp(1),
    "LOGISTIC": IntegerOp(2, output=(1 / 256, -128)),
    "SOFTMAX": IntegerOp(2, output=(1 / 256, -128)),
    "TANH": IntegerOp(2, output=(1 / 128, 0)),
    "LOG_SOFTMAX": IntegerOp(2, output=(16 / 256, 127)),
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

# The ops LiteRT runs with int16 activations, for 16x8: those of INT8_OPS that the TF
# converter quantizes to int16 (tensorflow/lite/tools/optimize/operator_property.cc:
# quantizable_int16) and whose LiteRT kernel takes kTfLiteInt16, each run in ai-edge-litert
# 2.3.0 against the float model (tests/test_quantize_int16.py; SQUEEZE and EXPAND_DIMS
# only copy bytes, and the converter turns them into RESHAPE). Left out, so kept float:
# PRELU, HARD_SWISH, LOG_SOFTMAX (their Eval refuses int16, or PRELU's gives wrong values),
# SPACE_TO_DEPTH and DEPTH_TO_SPACE (Prepare refuses int16). Kernels' needs: conv.cc,
# depthwise_conv.cc, fully_connected.cc and transpose_conv.cc take int16 input with int8
# weights and an int64 bias; add.cc and sub.cc scale generally when the options'
# pot_scale_int16 is false; the LUT kernels fix outputs to 1/32768, zero point 0.
# Versions: tensorflow/lite/tools/versioning/op_version.cc for int16 inputs. Its CONV_2D,
# DEPTHWISE_CONV_2D and FULLY_CONNECTED branches test the weights for int16 too, which
# 16x8 weights never are; the versions they name (4, 5, 7: runtime 2.3.0, the release of
# the 16x8 kernels) are written here, without the options' quantized_bias_type (version 8
# or 11, runtime 2.15, for nothing: int64 is the bias the kernels take when it is unset).
_MOVE16 = IntegerOp(1, same_scale=True)
_LUT16 = (1 / 32768, 0)  # the fixed output of the int16 LOGISTIC, TANH and SOFTMAX kernels
INT16_OPS: dict[str, IntegerOp] = {
    "CONV_2D": IntegerOp(4, weights=1, bias=2, bias_dtype="INT64"),
    "DEPTHWISE_CONV_2D": IntegerOp(5, weights=1, weight_axis=3, bias=2, bias_dtype="INT64"),
    "FULLY_CONNECTED": IntegerOp(7, weights=1, bias=2, bias_dtype="INT64"),
    "TRANSPOSE_CONV": IntegerOp(2, weights=1, bias=3, data=2, bias_dtype="INT64"),
    "BATCH_MATMUL": IntegerOp(3),  # both operands int16: the kernel wants one input type
    "ADD": IntegerOp(3),
    "SUB": IntegerOp(5),
    "MUL": IntegerOp(4),
    "MEAN": IntegerOp(3),
    "SUM": IntegerOp(1),
    "RELU": IntegerOp(3),
    "RELU6": IntegerOp(3),
    "LEAKY_RELU": IntegerOp(2),
    "LOGISTIC": IntegerOp(3, output=_LUT16),
    "SOFTMAX": IntegerOp(3, output=_LUT16),
    "TANH": IntegerOp(3, output=_LUT16),
    "AVERAGE_POOL_2D": IntegerOp(3, same_scale=True),
    "MAX_POOL_2D": IntegerOp(3, same_scale=True),
    "CONCATENATION": IntegerOp(3, same_scale=True),
    "PAD": IntegerOp(3, same_scale=True),
    "PADV2": IntegerOp(3, same_scale=True),
    "RESIZE_BILINEAR": IntegerOp(4, same_scale=True),
    "RESIZE_NEAREST_NEIGHBOR": IntegerOp(4, same_scale=True),
    "STRIDED_SLICE": _MOVE16,
    "SLICE": IntegerOp(4, same_scale=True),
    "SPLIT": IntegerOp(4, same_scale=True),
    "SPLIT_V": _MOVE16,
    "TRANSPOSE": IntegerOp(5, same_scale=True),
    "GATHER": IntegerOp(4, same_scale=True),
    "MINIMUM": IntegerOp(4, same_scale=True),
    "MAXIMUM": IntegerOp(4, same_scale=True),
    "PACK": IntegerOp(3, same_scale=True),
    "UNPACK": IntegerOp(4, same_scale=True),
    "RESHAPE": _MOVE16,
    "SQUEEZE": _MOVE16,
    "EXPAND_DIMS": _MOVE16,
}
KERNELS = {"INT8": INT8_OPS, "INT16": INT16_OPS}
# The activation dtype of each full-integer mode.
ACTIVATIONS = {"int8": "INT8", "int16x8": "INT16"}

# Conversion ops at the edges of integer regions: (from, to) -> (op, version).
CONVERSIONS = {
    ("FLOAT32", "INT8"): ("QUANTIZE", 1),
    ("UINT8", "INT8"): ("QUANTIZE", 2),
    ("INT8", "UINT8"): ("QUANTIZE", 2),
    ("INT8", "FLOAT32"): ("DEQUANTIZE", 2),
    ("UINT8", "FLOAT32"): ("DEQUANTIZE", 1),
    ("FLOAT32", "INT16"): ("QUANTIZE", 2),
    ("INT16", "FLOAT32"): ("DEQUANTIZE", 3),
    ("INT16", "INT8"): ("QUANTIZE", 1),
    ("INT8", "INT16"): ("QUANTIZE", 2),
}
IO_TYPES = {"float": "FLOAT32", "int8": "INT8", "uint8": "UINT8", "int16": "INT16"}
# The interface dtypes each mode offers (the converter's 16x8 mode: float or int16).
MODE_IO = {"int8": ("float", "int8", "uint8"), "int16x8": ("float", "int16")}
# Int8 ops whose weights may stay sparse behind DENSIFY (checked in LiteRT, with and
# without XNNPACK, by tests/test_sparse_weights.py).
SPARSE_INT8_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")
INT32_MAX = 2**31 - 1
# int64 biases are clipped far inside their range (no real bias comes near it).
INT64_LIMIT = 2**62
# Activations int16 are symmetric: [-32767, 32767] steps of one scale, zero point 0.
INT16_MAX = 32767
# int16 has steps to spare, so its ranges are the calibrated ones doubled: held-out values
# beyond what the samples showed (common with few or random samples) do not clip, for 6 dB
# of the activations' ~90. Measured (tools/bench/int16_table.py, random inputs): the
# anomaly-detection autoencoder's output SQNR, 53.3 dB with the calibrated ranges, 68.7
# doubled (its int8 weights alone allow 68.7); on inputs drawn on the int8 twins' input
# grids no model's SQNR moved by more than 0.4 dB.
INT16_HEADROOM = 2.0


Params = tuple[float, int]  # (scale, zero point)


def run(
    model: Model,
    options: object,
    rules: tuple[Rule, ...] = (),
    *,
    data: object = None,
    unsupported: Mapping[tuple[str, str], str] | None = None,
    tied: frozenset[tuple[str, str]] = frozenset(),
    sums: dict | None = None,
    ranges: dict | None = None,
) -> PassResult:
    """`options` are the quantize pass's (mode "int8" or "int16x8": method, io); `data` the
    calibration samples (calibrate.Samples); `unsupported`: (activation dtype, op type) ->
    why the target's runtime cannot run it, for ops that stay float; `tied`: (activation
    dtype, op type) whose kernel in the target's runtime needs one scale on its input and
    output. `sums`: filled as `calibrated` fills it; `ranges`: as `calibrated` takes them."""
    check_rules(options, rules)
    return rewrite(
        calibrated(model, data, options, sums=sums, ranges=ranges),
        options,
        rules=rules,
        unsupported=unsupported,
        tied=tied,
    )


@dataclass(eq=False)
class Calibrated:
    """A float model ready to be rewritten many times: its sparse and dequantized constant
    weights folded into dense float ones, and its activation ranges, calibrated once per
    number of integer levels (methods minmax and percentile give the same ranges for every
    dtype; mse weighs rounding by the levels, so int8 and int16 have their own).

    `model` is the folded float model, never edited: `precision` maps of `rewrite` index
    its main subgraph's operators (`model.subgraphs[0].operators`), which are the input's
    less the DENSIFY and DEQUANTIZE ops of constants the fold removed."""

    model: Model
    data: calibrate.Samples
    method: str
    folded: dict[int, _Folded]
    seconds: float = 0.0  # spent calibrating so far
    _ranges: dict[int, dict[int, tuple[float, float]]] = field(default_factory=dict)

    def ranges(self, dtype: str, *, sums: dict | None = None) -> dict[int, tuple[float, float]]:
        """(low, high) of each float activation of `model`, keyed by id(tensor), for
        activations of `dtype` ("INT8" or "INT16"); computed on first use. `sums`: as
        calibrate.ranges takes it, filled where the ranges are computed now."""
        levels = 2 ** (8 * np.dtype(dtype.lower()).itemsize)
        key = levels if self.method == "mse" else 0
        if key not in self._ranges:
            runs = len(self.data.values) * (1 if self.method == "minmax" else 2)
            bar = Progress("calibrating", runs)
            began = time.perf_counter()
            self._ranges[key] = calibrate.ranges(
                self.model,
                self.data,
                method=self.method,
                progress=lambda done, _: bar(done),
                levels=levels,
                sums=sums,
            )
            self.seconds += time.perf_counter() - began
        return self._ranges[key]


def calibrated(
    model: Model,
    data: object,
    options: object,
    *,
    sums: dict | None = None,
    ranges: dict | None = None,
) -> Calibrated:
    """`model` folded and calibrated on `data` (calibrate.Samples) with `options.method`,
    for the activation dtype of `options.mode`; reusable by any number of `rewrite` calls.
    `sums`, where given, is filled with `model`'s layer inputs summed over the samples
    (passes.common.INPUT_SUMS) from the calibration's own run: the fold leaves activations
    as they were. `ranges`: minmax ranges of `model`'s activations (keyed by id(tensor) of
    `model`) already taken over `data` (passes.common.ACTIVATION_RANGES), used instead of
    calibrating where they cover every activation calibration would range."""
    if data is None:
        raise UsageError(
            f"--quantize {options.mode} needs calibration data: --calibration DATA.npz (one "
            "array per model input, first axis = samples), or --calibration random to "
            "calibrate on random inputs (poor ranges; the report says so)"
        )
    copies: dict[int, object] = {}
    model = model.copy(copies)
    folded = _fold_sparse(model)
    fold_constants(model)
    result = Calibrated(model, data, options.method, folded)
    if ranges is not None and options.method == "minmax" and sums is None:
        original = {id(c): key for key, c in copies.items()}
        sg = model.subgraphs[0]
        wanted = [t for t in sg.tensors if t.dtype == "FLOAT32" and not t.is_constant]
        if all(original.get(id(t)) in ranges for t in wanted):
            result._ranges[0] = {id(t): ranges[original[id(t)]] for t in wanted}
            return result
    summed = None if sums is None else _layer_inputs(model.subgraphs[0])
    result.ranges(ACTIVATIONS[options.mode], sums=summed)
    if sums is not None:
        sg = model.subgraphs[0]
        sums.update({sg.tensors[i].name: total for i, total in summed.items()})
    return result


def _layer_inputs(sg: Subgraph) -> dict[int, None]:
    """{index: None} of the float activations that layers (LAYER_OPS) read as input 0, those
    of names that no other tensor of `sg` has (INPUT_SUMS is keyed by name)."""
    names = Counter(t.name for t in sg.tensors)
    index = {id(t): i for i, t in enumerate(sg.tensors)}
    return {
        index[id(t)]: None
        for op in sg.operators
        if op.type in LAYER_OPS
        and (t := op.inputs[0]) is not None
        and t.dtype == "FLOAT32"
        and not t.is_constant
        and names[t.name] == 1
    }


def rewrite(
    calibrated: Calibrated,
    options: object,
    *,
    precision: Mapping[int, str] | None = None,
    rules: tuple[Rule, ...] = (),
    unsupported: Mapping[tuple[str, str], str] | None = None,
    tied: frozenset[tuple[str, str]] = frozenset(),
    source: str = "planner",
) -> PassResult:
    """A new full-integer model from `calibrated` (which stays as it was: call this as
    often as needed). `options`: the quantize pass's (mode, io, skip). `precision`: op
    index in `calibrated.model.subgraphs[0].operators` -> "INT8", "INT16" or "FLOAT" (float
    arithmetic, float16 weights); other ops take the mode's dtype, and a recipe rule that
    chooses an op's precision wins over both. `source` names where `precision` came from,
    for the records. `unsupported`: (activation dtype, op type) -> why the target's runtime
    cannot run it, for ops that stay float; `tied`: (activation dtype, op type) that must
    keep one scale from input to output there."""
    memo: dict[int, object] = {}
    model = calibrated.model.copy(memo=memo)
    folds = copy.deepcopy(list(calibrated.folded.values()), memo)
    folded = {id(f.tensor): f for f in folds}
    sg = model.subgraphs[0]
    ops = list(sg.operators)  # as indexed, before the rewrite adds conversions
    chosen_precision, why = _precisions(model, options, rules, precision or {}, source)
    precision_of = {id(op): chosen_precision[i] for i, op in enumerate(ops)}
    dtypes = {p for p in chosen_precision if p in KERNELS}
    if options.io != "float":  # integer inputs and outputs take the mode's dtype
        dtypes.add(ACTIVATIONS[options.mode])
    ranges = {
        dtype: {id(memo[k]): v for k, v in calibrated.ranges(dtype).items()}
        for dtype in sorted(dtypes)
    }
    chosen, kept_float = _choose(
        model, sg, ranges, options, rules, precision=precision_of, unsupported=unsupported or {}
    )
    params = _params(sg, chosen, ranges, precision_of, tied)
    records = _Rewriter(
        model,
        sg,
        chosen,
        params,
        io=IO_TYPES[options.io],
        precision=precision_of,
        mode=options.mode,
        folded=folded,
    ).run()
    records += [_op_record(op, "kept float", reason) for op, reason in kept_float]
    records += _precision_records(ops, chosen, why, precision_of)
    _unfold(model, sg, folded)
    _drop_unused(model)
    floats = {id(op) for op in ops if precision_of[id(op)] == "FLOAT"}
    if floats:
        records += _float16_weights(model, floats, options)
    records.append(
        {
            "tensor": "(calibration)",
            "op": "",
            "action": "calibrated",
            "samples": len(calibrated.data.values),
            "source": calibrated.data.source,
            "method": calibrated.method,
        }
    )
    return PassResult(model, records, {"calibrate": round(calibrated.seconds, 3)})


# ------------------------------------------------------------------ before: plain float


@dataclass(eq=False)
class _Folded:
    """A weight of the main subgraph that was computed from a sparse constant, now a dense
    constant: the sparse constant, and how to undo the fold for ops that stay float."""

    tensor: Tensor  # the dense constant the ops read now
    source: Tensor  # the sparse constant (its sparsity is the layout to write int8 in)
    ops: list[Operator]  # the DENSIFY (and DEQUANTIZE) that computed it, in graph order
    direct: bool = False  # `source` was read as it is (FULLY_CONNECTED's sparse kernel)


def _fold_sparse(model: Model) -> dict[int, _Folded]:
    """The main subgraph's sparse constants as dense ones: what a DENSIFY of a constant
    writes becomes a constant, as does a DEQUANTIZE of that, and a sparse constant an op
    reads as it is gets a dense twin. Keyed by id of the dense tensor."""
    sg = model.subgraphs[0]
    folded: dict[int, _Folded] = {}
    outputs = {id(t) for t in sg.outputs}
    for op in list(sg.operators):
        source = op.inputs[0] if op.type == "DENSIFY" and len(op.inputs) == 1 else None
        out = op.outputs[0] if len(op.outputs) == 1 else None
        dense = _decoded(source)
        if dense is None or out is None or id(out) in outputs:
            continue
        out.buffer = model.add_buffer(dense)
        sg.operators.remove(op)
        folded[id(out)] = _Folded(out, source, [op])
        for dq in list(sg.operators):
            if dq.type == "DEQUANTIZE" and dq.inputs[0] is out and id(dq.outputs[0]) not in outputs:
                real = dq.outputs[0]  # keeps its quantization: unfolded, it is as it was
                real.buffer = model.add_buffer(real_values(out).astype(np.float32))
                sg.operators.remove(dq)
                folded[id(real)] = _Folded(real, source, [op, dq])
    twins: dict[int, Tensor] = {}
    for op in sg.operators:
        if op.type == "DENSIFY":  # one left: it writes a subgraph output
            continue
        for i, t in enumerate(op.inputs):
            dense = _decoded(t) if t is not None and id(t) not in twins else None
            if dense is not None:
                twin = Tensor(t.name, t.dtype, t.shape, buffer=model.add_buffer(dense))
                twin.quantization = t.quantization
                sg.tensors.append(twin)
                twins[id(t)] = twin
                folded[id(twin)] = _Folded(twin, t, [], direct=True)
            if t is not None and id(t) in twins:
                op.inputs[i] = twins[id(t)]
    return folded


def _decoded(t: Tensor | None) -> np.ndarray | None:
    """The dense values of a sparse constant, or None (not one, or not decodable)."""
    if t is None or t.sparsity is None or not t.is_constant or t.shape is None:
        return None
    if t.np_dtype is None:
        return None
    try:
        return sparsity.decode(t.data, t.sparsity, t.shape)
    except sparsity.SparsityError:
        return None


def _unfold(model: Model, sg: Subgraph, folded: dict[int, _Folded]) -> None:
    """Weights that ops still read as float get back the form the input had: sparse
    constants read as they were, DENSIFY (and DEQUANTIZE) ops before their first reader."""
    readers = sg.consumers()
    ops: list[Operator] = []
    folds: set[int] = set()  # the buffers the fold gave them
    first = len(sg.operators)
    for f in folded.values():
        users = readers.get(id(f.tensor), [])
        if not users:
            continue
        if f.direct:
            for op in users:
                op.inputs = [f.source if t is f.tensor else t for t in op.inputs]
            continue
        first = min([first, *(sg.operators.index(op) for op in users)])
        for op in f.ops:
            if op not in ops:
                folds.add(id(op.outputs[0].buffer))
                op.outputs[0].buffer = model.empty_buffer()
                ops.append(op)
    ops.sort(key=lambda op: op.type != "DENSIFY")  # each DEQUANTIZE reads a DENSIFY's output
    sg.operators[first:first] = ops
    model.buffers = [b for b in model.buffers if id(b) not in folds]


def fold_constants(model: Model) -> None:
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
                        dequantized[id(t)] = Tensor(t.name, "FLOAT32", t.shape, buffer=real)
                        sg.tensors.append(dequantized[id(t)])
                    op.inputs[i] = dequantized[id(t)]


def dequantized_weights(model: Model) -> Model:
    """`model` with its weights behind a DEQUANTIZE of a constant (float16 or int8
    storage) as the float32 constants they compute, as full-integer quantization folds
    them anyway (fold_constants): a folded copy, or `model` itself where it has none. Steps
    before a full-integer quantize (the size budget's planner, the data-aware prune and
    cluster), which leave weights read through DEQUANTIZE alone, then fit them too."""
    folded = model.copy()
    fold_constants(folded)
    same = all(
        len(a.operators) == len(b.operators) for a, b in zip(model.subgraphs, folded.subgraphs)
    )
    return model if same else folded


def _affine(t: Tensor) -> bool:
    return t.quantization is not None and t.quantization.is_affine


# ------------------------------------------------------------------ which ops go int8


def _choose(model, sg, ranges, options, rules, *, precision, unsupported):
    """The ops of the main subgraph that become integer (each in its `precision`: id(op) ->
    activation dtype), and (op, reason) for those that stay float (every op of the other
    subgraphs stays float too). Ops whose precision is FLOAT are in neither list."""
    chosen, kept = [], []
    for op in sg.operators:
        dtype = precision[id(op)]
        if dtype == "FLOAT":
            continue
        reason = unsupported.get((dtype, op.type))
        reason = reason or _not_integer(op, dtype, ranges[dtype], options, rules)
        if reason:
            kept.append((op, reason))
        else:
            chosen.append(op)
    for other in model.subgraphs[1:]:
        for op in other.operators:
            kept.append((op, "not in the main subgraph (control-flow bodies stay float)"))
    return chosen, kept


def _not_integer(op: Operator, dtype: str, ranges: dict, options: object, rules) -> str | None:
    rule = KERNELS[dtype].get(op.type)
    if rule is None and dtype == "INT16":
        return "not among the ops LiteRT runs with int16 activations (INT16_OPS)"
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
        first = next((r for r in rules if r.applies(name)), None)
        if first is not None and first.options is None:
            return f"a recipe rule leaves {name} alone"
    return None


# ------------------------------------------------------------------ each op's precision

PRECISIONS = ("INT8", "INT16", "FLOAT")
# A recipe rule's quantize mode -> the precision it gives the ops it matches, in a
# full-integer model ("float16": float arithmetic with float16 weights).
RULE_PRECISION = {"int8": "INT8", "int16x8": "INT16", "float16": "FLOAT"}
# How records and reports name the precisions.
PRECISION_NAMES = {"INT8": "int8", "INT16": "int16x8", "FLOAT": "float (float16 weights)"}


def check_rules(options: object, rules: tuple[Rule, ...]) -> None:
    """Refuse recipe rules whose quantize mode makes no sense with the pass's mode: a
    full-integer model's rules choose an op's precision (int8, int16x8 or float); a
    weight-only model's rules choose int8-weights or float16 per weight."""
    full = options.mode in ACTIVATIONS
    for r in rules:
        mode = (r.options or {}).get("mode")
        if mode is None:
            continue
        if full and mode not in RULE_PRECISION:
            raise UsageError(
                f"rule for {r.match!r}: quantize mode {mode!r} in a --quantize "
                f"{options.mode} model; a rule chooses its ops' precision: int8, int16x8 "
                "or float"
            )
        if not full and mode in ACTIVATIONS:
            raise UsageError(
                f"rule for {r.match!r}: quantize {mode!r} chooses an op's activations, which "
                f"needs --quantize int8 or int16x8 (with --calibration), not {options.mode}"
            )
        if full:
            rest = {k: v for k, v in r.options.items() if k != "mode"}
            options_for(options, (Rule(r.match, rest),), r.match)


def rule_precision(model: Model, rules: tuple[Rule, ...]) -> dict[int, tuple[str, str]]:
    """Op index in the main subgraph -> (precision, the rule's match) for the ops a recipe
    rule gives a precision: the first rule that names a mode and matches one of the
    tensors the op owns (its outputs and constant inputs, not the activations it reads,
    which belong to the ops that write them)."""
    chosen = [r for r in rules if r.options is not None and r.options.get("mode") in RULE_PRECISION]
    out: dict[int, tuple[str, str]] = {}
    if not chosen:
        return out
    for i, op in enumerate(model.subgraphs[0].operators):
        owned = [t.name for t in op.outputs if t is not None]
        owned += [t.name for t in op.inputs if t is not None and t.is_constant]
        for r in chosen:
            if any(r.applies(name) for name in owned):
                out[i] = (RULE_PRECISION[r.options["mode"]], r.match)
                break
    return out


def _precisions(model, options, rules, precision, source):
    """Each main-subgraph op's precision, by index, and why (index -> reason) for those
    not in the mode's dtype."""
    ops = model.subgraphs[0].operators
    base = ACTIVATIONS[options.mode]
    out = [base] * len(ops)
    why: dict[int, str] = {}
    for i, p in precision.items():
        if not isinstance(i, int) or not 0 <= i < len(ops):
            raise UsageError(f"precision: no op {i!r} in the main subgraph ({len(ops)} ops)")
        if p not in PRECISIONS:
            raise UsageError(f"precision of op {i}: {p!r} is not one of {', '.join(PRECISIONS)}")
        out[i] = p
        if p != base:
            why[i] = source
    for i, (p, match) in rule_precision(model, rules).items():
        out[i] = p
        why.pop(i, None)
        if p != base:
            why[i] = f"recipe rule {match!r}"
    return out, why


def _precision_records(ops: list, chosen, why: dict[int, str], precision: dict) -> list:
    """A record for each op (of `ops`, the main subgraph's as indexed) whose precision is
    not the mode's: integer in the other dtype, or float with float16 weights."""
    integer = {id(op) for op in chosen}
    records = []
    for i, op in enumerate(ops):
        if i not in why:
            continue
        dtype = precision[id(op)]
        if dtype != "FLOAT" and id(op) not in integer:
            continue  # kept float for its own reason, which its record gives
        rec = _op_record(op, "precision", why[i])
        rec["precision"] = PRECISION_NAMES[dtype]
        records.append(rec)
    return records


# ------------------------------------------------------------------ parameters


@dataclass
class _Scales:
    """The quantization parameters of the float tensors that integer ops read or write
    (weights and biases aside), in each activation dtype."""

    ranges: dict[tuple[int, str], tuple[float, float]]  # (id(tensor), dtype) -> its group's
    fixed: dict[tuple[int, str], Params]  # (id(tensor), dtype) -> what a kernel fixes
    own: dict[str, dict[int, tuple[float, float]]]  # dtype -> calibrated ranges

    def __contains__(self, key: int) -> bool:
        return any((key, dtype) in self.ranges for dtype in KERNELS)

    def of(self, t: Tensor, dtype: str) -> Params:
        """(scale, zero point) of `t` as `dtype` ("INT8" or "INT16"): its scale group's in
        that dtype, or where no op of that dtype reads or writes it (a model output in the
        interface's dtype, written by an op of the other), its own calibrated range's."""
        got = self.fixed.get((id(t), dtype))
        if got is not None:
            return got
        lo, hi = self.ranges.get((id(t), dtype)) or self.own[dtype][id(t)]
        return _symmetric_params(lo, hi) if dtype == "INT16" else _affine_params(lo, hi)


def _params(
    sg: Subgraph, chosen: list[Operator], ranges: dict, precision: dict, tied: frozenset
) -> _Scales:
    """The parameters of every float tensor an integer op reads or writes, per activation
    dtype: tensors that a kernel needs in one scale share the union of their ranges (in
    the ops' dtype: an int8 and an int16 op meeting at a tensor each have their own form
    of it, joined by a requantization), and kernels with a fixed output fix their group's
    parameters. `ranges`: dtype -> calibrated ranges; `tied`: (dtype, op type) that the
    target's runtime needs in one scale too."""
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(x: tuple[int, str]) -> tuple[int, str]:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    tensors: dict[tuple[int, str], Tensor] = {}
    fixed: dict[tuple[int, str], Params] = {}
    for op in chosen:
        dtype = precision[id(op)]
        rule = KERNELS[dtype][op.type]
        skip = {rule.weights, rule.bias} if rule.weights is not None else set()
        if op.type == "BATCH_MATMUL" and not _const(op.inputs, 1):
            skip = set()
        floats = [
            t
            for i, t in enumerate(op.inputs)
            if t is not None and t.dtype == "FLOAT32" and i not in skip
        ] + [t for t in op.outputs if t is not None and t.dtype == "FLOAT32"]
        for t in floats:
            tensors[(id(t), dtype)] = t
            find((id(t), dtype))
        if rule.same_scale or (dtype, op.type) in tied:
            for t in floats[1:]:
                parent[find((id(t), dtype))] = find((id(floats[0]), dtype))
        if rule.output is not None and op.outputs[0] is not None:
            fixed.setdefault((id(op.outputs[0]), dtype), rule.output)
    lows: dict[tuple[int, str], float] = {}
    highs: dict[tuple[int, str], float] = {}
    group_fixed: dict[tuple[int, str], Params] = {}
    for key, t in tensors.items():
        root = find(key)
        lo, hi = _range(t, ranges[key[1]])
        lows[root] = min(lows.get(root, 0.0), lo)
        highs[root] = max(highs.get(root, 0.0), hi)
        if key in fixed:
            group_fixed.setdefault(root, fixed[key])
    return _Scales(
        ranges={key: (lows[find(key)], highs[find(key)]) for key in tensors},
        fixed={key: group_fixed[find(key)] for key in tensors if find(key) in group_fixed},
        own=ranges,
    )


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


def _symmetric_params(lo: float, hi: float) -> Params:
    """int16 (scale, 0) for [-m, m], m the larger magnitude of lo and hi times
    INT16_HEADROOM."""
    bound = max(-lo, hi, 0.0) * INT16_HEADROOM
    if bound < 1e-30:
        return 1.0, 0
    return float(np.float32(bound / INT16_MAX)), 0


# ------------------------------------------------------------------ the rewrite


class _Rewriter:
    """Walks the main subgraph in order, giving integer ops tensors of their activation
    dtype and float ops float ones, with a conversion op wherever a tensor is needed in
    another form.

    A tensor's "home" is the dtype its producer writes (a subgraph input's: the interface
    dtype). The tensor object takes its home dtype, except where it is a subgraph output
    the interface wants in another dtype: then the producer writes a twin and a conversion
    op right after it fills the output. Consumers read the form they need, converted once
    and shared by every later consumer.
    """

    def __init__(self, model, sg, chosen, params, *, io, precision, mode, folded):
        self.model, self.sg, self.params, self.io = model, sg, params, io
        self.precision, self.mode = precision, mode
        self.folded: dict[int, _Folded] = folded
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
                self._integer_op(op, self.precision[id(op)])
            else:
                self._float_op(op)
        self.sg.operators = self.ops
        return self.records

    def _quantization(self, t: Tensor, dtype: str) -> Quantization:
        scale, zero = self.params.of(t, "INT8" if dtype == "UINT8" else dtype)
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
            buffer=self.model.empty_buffer(),
            shape_signature=t.shape_signature,
            quantization=self._quantization(t, dtype) if dtype != "FLOAT32" else None,
        )
        self.sg.tensors.append(twin)
        self.forms[(id(t), dtype)] = twin
        return twin

    def _convert(self, source: Tensor, target: Tensor, of: Tensor) -> None:
        """An op that writes `target` from `source`, two forms of `of`; through its float
        form where LiteRT has no direct conversion (see CONVERSIONS)."""
        direct = CONVERSIONS.get((source.dtype, target.dtype))
        if direct is None:
            mid = self.forms.get((id(of), "FLOAT32"))
            if mid is None:
                mid = self._twin(of, "FLOAT32")
                self._convert(source, mid, of)
            source, direct = mid, CONVERSIONS[("FLOAT32", target.dtype)]
        name, version = direct
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
        self._convert(source, twin, t)
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
            self._convert(op.outputs[i], t, t)

    def _float_op(self, op: Operator) -> None:
        op.inputs = [self._read(t, "FLOAT32") for t in op.inputs]
        self.ops.append(op)
        self._write(op, "FLOAT32")

    def _integer_op(self, op: Operator, dtype: str) -> None:
        rule = KERNELS[dtype][op.type]
        weights_const = rule.weights is not None and _const(op.inputs, rule.weights)
        scales = None
        if weights_const:
            w = op.inputs[rule.weights]
            op.inputs[rule.weights], scales = self._weights(op, w, rule)
        data = op.inputs[rule.data]  # before it is replaced by its integer form
        for i, t in enumerate(op.inputs):
            if t is None or (weights_const and i == rule.weights):
                continue
            if id(t) in self.activations:  # (a subgraph input may already be integer)
                op.inputs[i] = self._read(t, dtype)
            elif t.dtype != "FLOAT32":
                continue
            elif i == rule.bias and weights_const:
                op.inputs[i] = self._bias(t, self.params.of(data, dtype)[0], scales, rule)
            else:
                op.inputs[i] = self._constant(t, dtype)
        version = rule.version
        if op.type == "TRANSPOSE_CONV" and _const(op.inputs, 3):
            version = 3  # with a bias input
        op.opcode = self.model.opcode(
            op.type, max(op.opcode.version, version), op.opcode.custom_code
        )
        if dtype == "INT16" and op.type in ("ADD", "SUB"):
            _general_int16_scales(op)
        self.ops.append(op)
        self._write(op, dtype)

    def _weights(self, op: Operator, w: Tensor, rule: IntegerOp) -> tuple[Tensor, np.ndarray]:
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
        stored = np.ascontiguousarray(stored)
        folded = self.folded.get(id(w))
        how = None if folded is None else self._sparse_or_dense(op, folded, stored)
        if how is not None and how[0]:
            q = self._densified_constant(key, w, folded.source, how[0], quant)
        else:
            q = self._new_constant(key, w, stored, quant)
        rec = {
            "subgraph": 0,
            "tensor": w.name,
            "op": op.type,
            "dtype": "INT8",
            "shape": list(w.shape or ()),
            "action": "quantized",
            "mode": self.mode,
            "before": weight_stats(rows),
            "after": weight_stats(q_rows),
            "mse": float(sq_err.sum()) / max(rows.size, 1),
        }
        if how is not None:
            rec["stored"] = how[1]
        self.records.append(rec)
        return q, scales

    def _sparse_or_dense(self, op: Operator, f: _Folded, stored: np.ndarray) -> tuple:
        """((values, sparsity) to store `stored` sparse in `f`'s layout, or None for dense;
        what the record says of it) for int8 weights that were sparse in the input."""
        if f.direct:
            why = "int8 FULLY_CONNECTED reads only 1x16 blocks (--target cpu writes them)"
            return None, f"int8 dense: {why}"
        if op.type not in SPARSE_INT8_OPS:
            why = (
                "LiteRT's XNNPACK delegate fails on an int8 FULLY_CONNECTED whose weights "
                "come from DENSIFY"
                if op.type == "FULLY_CONNECTED"
                else f"int8 {op.type} with weights from DENSIFY is untested here"
            )
            return None, f"int8 dense: {why}"
        values, layout = sparsity.encode(stored, f.source.sparsity)
        sparse = (
            sparsity.file_bytes(values.nbytes, layout) + DENSIFY_BYTES + len(f.tensor.name.encode())
        )
        dense = -(-stored.nbytes // 16) * 16
        if sparse < dense:
            what = f"({sparse:,} bytes against {dense:,} dense)"
            return (values, layout), f"int8 sparse behind DENSIFY, in the input's layout {what}"
        return None, f"int8 dense ({dense:,} bytes against {sparse:,} sparse)"

    def _densified_constant(
        self, key: tuple, like: Tensor, source: Tensor, encoded: tuple, quant
    ) -> Tensor:
        """The int8 weights a DENSIFY writes from their sparse form `encoded` (values,
        sparsity), named as the float tensor and the sparse constant they replace."""
        values, layout = encoded
        sparse = Tensor(
            source.name, "INT8", like.shape, buffer=self.model.add_buffer(values), sparsity=layout
        )
        q = Tensor(
            like.name, "INT8", like.shape, buffer=self.model.empty_buffer(), quantization=quant
        )
        self.sg.tensors += [sparse, q]
        self.ops.append(Operator(self.model.opcode("DENSIFY"), [sparse], [q]))
        self.constants[key] = q
        return q

    def _bias(self, b: Tensor, in_scale: float, w_scales: np.ndarray, rule: IntegerOp) -> Tensor:
        """The bias in units of input scale x weight scale, as the rule's dtype."""
        key = ("bias", id(b), in_scale, w_scales.tobytes(), rule.bias_dtype)
        if key in self.constants:
            return self.constants[key]
        scales = (np.float64(in_scale) * w_scales.astype(np.float64)).astype(np.float32)
        values = b.data.astype(np.float64).reshape(-1)
        if scales.size not in (1, values.size):
            raise TflRewriteError(f"{b.name}: {values.size} biases for {scales.size} channels")
        limit, np_type = (INT32_MAX, np.int32)
        if rule.bias_dtype == "INT64":
            limit, np_type = (INT64_LIMIT, np.int64)
        stored = np.clip(np.round(values / scales.astype(np.float64)), -limit, limit)
        quant = Quantization(scales, np.zeros(scales.size, np.int64), axis=0)
        return self._new_constant(key, b, stored.astype(np_type).reshape(b.shape), quant)

    def _constant(self, t: Tensor, dtype: str) -> Tensor:
        scale, zero = self.params.of(t, dtype)
        key = ("constant", id(t), scale, zero, dtype)
        if key in self.constants:
            return self.constants[key]
        info = np.iinfo(dtype.lower())
        stored = np.clip(np.round(t.data.astype(np.float64) / scale) + zero, info.min, info.max)
        quant = Quantization(np.array([scale], np.float32), np.array([zero], np.int64))
        return self._new_constant(key, t, stored.astype(info.dtype), quant)

    def _new_constant(self, key: tuple, like: Tensor, stored: np.ndarray, quant) -> Tensor:
        """A constant holding `stored`, named and shaped as the float tensor it replaces,
        shared by every op that asks with the same key."""
        dtype = stored.dtype.name.upper()
        q = Tensor(
            like.name, dtype, like.shape, buffer=self.model.add_buffer(stored), quantization=quant
        )
        self.sg.tensors.append(q)
        self.constants[key] = q
        return q


def _general_int16_scales(op: Operator) -> None:
    """ADD and SUB options with pot_scale_int16 false: the int16 kernels' general-scale path
    (the converter's 16x8 mode writes the same; op_version.cc gives these versions 3 and 5
    only then). An op without options keeps the schema's default, true, with which the
    kernels still take the general path for scales that are not powers of two."""
    if op.options is not None and hasattr(op.options, "potScaleInt16"):
        op.options = copy.copy(op.options)
        op.options.potScaleInt16 = False


def _op_record(op: Operator, action: str, reason: str) -> dict:
    out = next((t for t in op.outputs if t is not None), None)
    return {
        "tensor": out.name if out is not None else "",
        "op": op.type,
        "action": action,
        "reason": reason,
    }


def _float16_weights(model: Model, floats: set[int], options: object) -> list[dict]:
    """The weights that only ops of precision FLOAT (ids in `floats`) read, as the weight-
    only mode float16 stores them: float16 behind a DEQUANTIZE."""
    sg = model.subgraphs[0]
    readers = sg.consumers()
    f16 = dataclasses.replace(
        options, mode="float16", method="minmax", io="float", rounding="feedback"
    )
    chosen, records = [], []
    for w in find_weights(model, options.skip)[0]:
        between = {id(op) for op in w.dequantize + w.densify}
        ends = [w.tensor, *(op.outputs[0] for op in w.dequantize + w.densify)]
        users = [op for t in ends for op in readers.get(id(t), []) if id(op) not in between]
        if w.subgraph != 0 or not users or any(id(op) not in floats for op in users):
            continue
        reason = weight_only.not_quantizable(w, f16)
        if reason is None and w.tensor.data.size < options.min_size:
            reason = f"fewer than {options.min_size} elements"
        if reason:
            records.append(record(w, "skipped", f"float op's weight: {reason}"))
        else:
            chosen.append((w, f16))
    return records + weight_only.quantize_weights(model, chosen)


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
