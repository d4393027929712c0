"""Quantization. Mode "int8" quantizes the whole graph, weights and activations, from
calibration data (tflrewrite.passes.quantize_graph); mode "int16x8" too, with int16
activations and int8 weights (the TF converter's 16x8). The weight-only modes: float weights to
int8 (per-channel symmetric, zero point 0) or to float16, each read through a DEQUANTIZE op.

LiteRT evaluates a DEQUANTIZE of a constant once, when the interpreter is prepared, so the
file shrinks while the arithmetic stays float; biases stay float and need no new scales.
Float16 weights already behind a DEQUANTIZE keep that op, which now reads int8.

A sparse weight (behind DENSIFY) gets its new values sparse in its own layout, the DENSIFY
writing the int8 or float16 tensor its DEQUANTIZE reads (the DENSIFY kernel takes float32,
float16 and int8), or dense behind DEQUANTIZE where sparse would not be smaller: the
record's "stored" says which. One that FULLY_CONNECTED reads sparse itself is left alone:
LiteRT has no sparse kernel for float activations with int8 or float16 weights.

Rounding is half away from zero, as TFLite's own weight quantizer rounds; zero maps to
zero and a unit's K distinct values map to at most K int8 values, so earlier pruning and
per-channel clustering survive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tflrewrite import calibrate
from tflrewrite.errors import UsageError
from tflrewrite.kernels import quantize as kernels
from tflrewrite.kernels import stats
from tflrewrite.model import Model, Opcode, Operator, Quantization, Tensor, release_pages
from tflrewrite.passes import quantize_graph
from tflrewrite.passes.common import (
    Data,
    Pass,
    PassResult,
    Rule,
    check_regex,
    map_weights,
    remember_stats,
    select,
    stats_of,
    weight_stats,
)
from tflrewrite.weights import Weight, densified_bytes, densify_weight, record, replace_data

MODES = ("int8", "int8-weights", "float16", "int16x8")
# The modes that quantize activations too, from calibration data.
FULL_INTEGER = ("int8", "int16x8")
ROUNDINGS = ("feedback", "adaround")

# DEQUANTIZE op versions by what it reads (TFLite's op_version.cc).
DEQUANTIZE_INT8, DEQUANTIZE_INT8_PER_CHANNEL, DEQUANTIZE_FLOAT16 = 2, 5, 3


@dataclass(frozen=True, kw_only=True)
class Options:
    mode: str = "int8-weights"
    # Below this a DEQUANTIZE op costs more bytes than it saves; the TF converter's own
    # weight quantization uses the same threshold (weights_min_num_elements).
    min_size: int = 1024
    skip: str | None = None
    # Modes int8 and int16x8 only: how activation ranges are chosen from the calibration
    # samples, and the dtype of the model's inputs and outputs.
    method: str = "minmax"
    io: str = "float"
    # Modes int8 and int16x8 with data-aware fitting: how the int8 weights are re-rounded
    # (tflrewrite.passes.datafit's refine step): error feedback, or AdaRound.
    rounding: str = "feedback"

    def __post_init__(self) -> None:
        check_regex(self.skip, "--skip")
        if self.mode not in MODES:
            raise UsageError(f"quantize: mode must be {', '.join(MODES)}, not {self.mode!r}")
        for name, value, allowed in (
            ("method", self.method, calibrate.METHODS),
            ("io", self.io, tuple(quantize_graph.IO_TYPES)),
            ("rounding", self.rounding, ROUNDINGS),
        ):
            if value not in allowed:
                raise UsageError(f"quantize: {name} must be {', '.join(allowed)}, not {value!r}")
        if self.mode not in FULL_INTEGER and (self.method, self.io) != ("minmax", "float"):
            raise UsageError(
                "quantize: method and io are options of mode int8 or int16x8 "
                "(--quantize int8 or int16x8)"
            )
        if self.mode not in FULL_INTEGER and self.rounding != "feedback":
            raise UsageError(
                "quantize: rounding is an option of mode int8 or int16x8 "
                "(--quantize int8 or int16x8)"
            )
        io = quantize_graph.MODE_IO.get(self.mode)
        if io is not None and self.io not in io:
            raise UsageError(f"quantize: io of mode {self.mode} must be {', '.join(io)}")


def run(
    model: Model,
    options: Options,
    rules: tuple[Rule, ...] = (),
    *,
    data: Data | None = None,
    unsupported: Mapping[tuple[str, str], str] | None = None,
) -> PassResult:
    """Modes int8 and int16x8 calibrate on `data`'s samples; the weight-only modes need no
    data. `unsupported`: (activation dtype, op type) -> why a runtime cannot run that op in
    that dtype; such ops stay float (a target's own quantize step, see for_runtime)."""
    quantize_graph.check_rules(options, rules)
    if options.mode in FULL_INTEGER:
        samples = None if data is None else data.samples
        return quantize_graph.run(model, options, rules, data=samples, unsupported=unsupported)
    model, chosen, records = select(model, options, rules, refuse=_not_quantizable)
    edits = map_weights(_edit, chosen, [w.tensor.data.size for w, _ in chosen])
    inserted: dict[int, int] = {}  # DEQUANTIZE ops added per subgraph, at its front
    for (w, opts), edit in zip(chosen, edits):
        storage = _storage(model, w, edit[0]) if w.sparse is not None else None
        position = inserted.get(w.subgraph, 0)
        if not w.dequantize and w.sparse is None:
            inserted[w.subgraph] = position + 1
        records.append(_commit(model, w, opts, edit, position, storage))
    _drop_unused_opcodes(model)
    return PassResult(model, records)


PASS = Pass(name="quantize", Options=Options, run=run)


def for_runtime(unsupported: Mapping[tuple[str, str], str]) -> Pass:
    """The quantize step of a target whose runtime lacks some integer kernels: ops of
    those (activation dtype, op type) stay float, their records giving the reason."""

    def run_for_runtime(
        model: Model, options: Options, rules: tuple[Rule, ...] = (), *, data: Data | None = None
    ) -> PassResult:
        return run(model, options, rules, data=data, unsupported=unsupported)

    return Pass(name="quantize", Options=Options, run=run_for_runtime)


def _not_quantizable(w: Weight, opts: Options) -> str | None:
    dtype = w.tensor.dtype
    if dtype == "INT8":
        return "already int8"
    if opts.mode == "float16" and dtype == "FLOAT16":
        return "already float16"
    if w.aliases and not w.dequantize:
        return "its buffer is used by several tensors"
    if w.sparse is not None and not w.densify:
        return (
            "read sparse by FULLY_CONNECTED: LiteRT has no sparse kernel for float "
            "activations with int8 or float16 weights (--quantize int8 takes it)"
        )
    return None


def _edit(item: tuple) -> tuple:
    """(stored values, dtype, quantization, DEQUANTIZE version, weight MSE, statistics
    before, statistics after) of one weight."""
    w, opts = item
    rows = np.ascontiguousarray(w.channels(w.tensor.data))
    before = stats_of(w)
    edit = _quantized(w, opts, rows, before)
    release_pages(w.tensor.data)  # done with the input's values: the edit replaces them
    return edit


def _quantized(w: Weight, opts: Options, rows: np.ndarray, before: dict) -> tuple:
    if opts.mode == "int8-weights":
        q_rows, scales, sq_err = kernels.symmetric_int8_rows(rows)
        quant = Quantization(
            scale=scales, zero_point=np.zeros(scales.size, np.int64), axis=w.out_axis
        )
        version = DEQUANTIZE_INT8_PER_CHANNEL if scales.size > 1 else DEQUANTIZE_INT8
        return (
            w.from_channels(q_rows),
            "INT8",
            quant,
            version,
            float(sq_err.sum()) / max(rows.size, 1),
            before,
            weight_stats(q_rows),
        )
    stored = w.tensor.data.astype(np.float16)
    error = float(stats.sq_diff_per_row(rows, w.channels(stored)).sum()) / max(rows.size, 1)
    return (
        stored,
        "FLOAT16",
        None,
        DEQUANTIZE_FLOAT16,
        error,
        before,
        weight_stats(w.channels(stored)),
    )


def _storage(model: Model, w: Weight, stored: np.ndarray) -> str:
    """How a sparse weight stores its new values: sparse in its layout where that is
    smaller, else dense (made so here, its DENSIFY ops gone)."""
    sparse, dense = densified_bytes(w, stored)
    how = "int8" if stored.dtype == np.int8 else "float16"
    if sparse < dense:
        return (
            f"{how} sparse behind DENSIFY -> DEQUANTIZE, in the input's layout "
            f"({sparse:,} bytes against {dense:,} dense)"
        )
    densify_weight(model, w)
    return f"{how} dense behind DEQUANTIZE ({dense:,} bytes against {sparse:,} sparse)"


def _commit(
    model: Model, w: Weight, opts: Options, edit: tuple, position: int, storage: str | None
) -> dict:
    stored, dtype, quant, version, error, before, after = edit
    opcode = model.opcode("DEQUANTIZE", version)
    if w.dequantize or w.sparse is not None:
        replace_data(model, w, stored, dtype=dtype, quantization=quant)
        if w.sparse is not None and not w.dequantize:
            _dequantize_densified(model, w, opcode)
        for op in w.dequantize:
            op.opcode = opcode
    else:
        _insert_dequantize(model, w, stored, dtype, quant, opcode, position)
    rec = record(
        w, "quantized", mode=opts.mode, before=before, after=remember_stats(w, after), mse=error
    )
    if storage is not None:
        rec["stored"] = storage
    return rec


def _dequantize_densified(model: Model, w: Weight, opcode: Opcode) -> None:
    """A DEQUANTIZE after each DENSIFY of a sparse weight that now writes int8 or float16:
    it writes a new float32 tensor (the DENSIFY output's name with a suffix), which the
    weight's ops read instead."""
    sg = model.subgraphs[w.subgraph]
    for dz in w.densify:
        out = dz.outputs[0]
        real = Tensor(
            f"{out.name}/dequantize",
            "FLOAT32",
            out.shape,
            buffer=model.empty_buffer(),
            shape_signature=out.shape_signature,
        )
        sg.tensors.append(real)
        for op in sg.operators:
            op.inputs = [real if x is out else x for x in op.inputs]
        dq = Operator(opcode=opcode, inputs=[out], outputs=[real])
        sg.operators.insert(sg.operators.index(dz) + 1, dq)
        w.dequantize.append(dq)


def _insert_dequantize(
    model: Model,
    w: Weight,
    stored: np.ndarray,
    dtype: str,
    quant: Quantization | None,
    opcode: object,
    position: int,
) -> None:
    """Turn the float weight tensor into the output of a new DEQUANTIZE that reads the new
    constant; the constant takes the weight's name, the float tensor a suffix."""
    sg = model.subgraphs[w.subgraph]
    float_tensor = w.tensor
    constant = Tensor(
        name=float_tensor.name,
        dtype=dtype,
        shape=float_tensor.shape,
        buffer=float_tensor.buffer,
        shape_signature=float_tensor.shape_signature,
        quantization=quant,
    )
    w.tensor = constant
    float_tensor.name += "/dequantize"
    float_tensor.buffer = model.empty_buffer()
    replace_data(model, w, stored)
    sg.tensors.append(constant)
    # At the front, in weight order: before every consumer, and deterministic.
    sg.operators.insert(
        position, Operator(opcode=opcode, inputs=[constant], outputs=[float_tensor])
    )


def _drop_unused_opcodes(model: Model) -> None:
    used = {id(op.opcode) for sg in model.subgraphs for op in sg.operators}
    model.opcodes = [oc for oc in model.opcodes if id(oc) in used]
