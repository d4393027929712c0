"""Weight-only quantization of chosen weights: int8 per channel (symmetric, zero point 0) or
float16, each read through a DEQUANTIZE op, sparse weights kept sparse where that is
smaller. The quantize pass's weight-only modes run it on the weights they select; the
full-integer rewrite on the weights of the ops it keeps float by choice (precision FLOAT).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tflrewrite.kernels import quantize as kernels
from tflrewrite.kernels import stats
from tflrewrite.model import Model, Opcode, Operator, Quantization, Tensor, release_pages
from tflrewrite.passes.common import map_weights, remember_stats, stats_of, weight_stats
from tflrewrite.weights import Weight, densified_bytes, densify_weight, record, replace_data

# DEQUANTIZE op versions by what it reads (TFLite's op_version.cc).
DEQUANTIZE_INT8, DEQUANTIZE_INT8_PER_CHANNEL, DEQUANTIZE_FLOAT16 = 2, 5, 3


def quantize_weights(model: Model, chosen: list[tuple[Weight, Any]]) -> list[dict]:
    """Give each (weight, options) of `model` (edited in place) its weight-only form,
    `options.mode` "int8-weights" or "float16"; a record for each."""
    records = []
    edits = map_weights(_edit, chosen, [w.tensor.data.size for w, _ in chosen])
    inserted: dict[int, int] = {}  # DEQUANTIZE ops added per subgraph, at its front
    for (w, opts), edit in zip(chosen, edits):
        storage = _storage(model, w, edit[0]) if w.sparse is not None else None
        position = inserted.get(w.subgraph, 0)
        if not w.dequantize and w.sparse is None:
            inserted[w.subgraph] = position + 1
        records.append(_commit(model, w, opts, edit, position, storage))
    _drop_unused_opcodes(model)
    return records


def not_quantizable(w: Weight, opts: Any) -> str | None:
    """Why weight `w` cannot take `opts.mode`'s weight-only form, or None."""
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


def _quantized(w: Weight, opts: Any, rows: np.ndarray, before: dict) -> tuple:
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
    model: Model, w: Weight, opts: Any, edit: tuple, position: int, storage: str | None
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
