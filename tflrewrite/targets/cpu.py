"""The CPU target: FULLY_CONNECTED weights stored block-sparse, in the form LiteRT's builtin
CPU kernel reads directly (no DENSIFY op, so the weights stay small in RAM too).

What the runtime accepts (tensorflow/lite/kernels/fully_connected.cc, EvalQuantized and
EvalFloat; tensorflow/lite/kernels/internal/optimized/sparse_ops/fully_connected.h):
- int8 weights with int8 input and output: 1x16 blocks only (dim_metadata of 3 with a
  DENSE block dimension of 16) and a zero point of 0 ("supports symmetric weight
  quantization only"); the kernel needs the input depth to be a multiple of 16;
- float32 weights with float32 input and output: random sparsity or 1x4 blocks; this
  target writes 1x4 blocks;
- nothing else: hybrid (float input, int8 weights) and int16-activation FCs, and every
  other builtin kernel, read the buffer as dense.
Per-channel int8 weights are left dense: the 1x16 kernel applied one output multiplier to
every channel until recent runtimes, and the op version (8) does not tell the two apart.

Layout, as the TF converter writes it (tensorflow/compiler/mlir/lite/transforms/
dense_to_sparse_pass.cc, PopulateEncodingParams, for block size {1, B} on a rows x cols
weight): traversal_order [0, 1, 2], block_map [1], dim_metadata [DENSE(rows),
SPARSE_CSR(segments over rows, indices = block column numbers), DENSE(B)]; the buffer holds
the kept blocks' values, row by row. Index vectors are the narrowest of uint8 / uint16 /
int32 that holds their largest value (flatbuffer_export.cc picks them the same way).

A FULLY_CONNECTED op with a sparse weight is op version 8 (tensorflow/lite/tools/versioning/
op_version.cc: `if (sparse_weight) return 8;` after the checks for versions 11-13), so an
op below 8 is raised to 8 and one at 8 or above keeps its version.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels import sparse as kernels
from tflrewrite.model import (
    DimensionMetadata,
    FullyConnectedAttrs,
    Model,
    Opcode,
    Operator,
    Sparsity,
    Subgraph,
)
from tflrewrite.passes.common import PassResult, weight_stats
from tflrewrite.targets import Target, common
from tflrewrite.weights import Weight, find_weights, record, replace_data

# Weight dtype -> the block (1 x BLOCK along the input depth) its sparse FC kernel reads.
BLOCKS = {"INT8": 16, "FLOAT32": 4}
# Activation dtype the op must have on input 0 and output 0 for that kernel.
ACTIVATIONS = {"INT8": "INT8", "FLOAT32": "FLOAT32"}

FC = "FULLY_CONNECTED"
SPARSE_FC_VERSION = 8

# Flatbuffer bytes a SparsityParameters table costs beyond its two index vectors (counted
# as in encoded_size): the table, its traversal_order and block_map vectors, the vector of
# 3 DimensionMetadata tables, the 2 index-vector union tables, their vtables and padding.
# Measured at 108 to 116 bytes on written models; rounded up so that a weight is encoded
# only when the file really gets smaller.
SPARSITY_OVERHEAD = 128


def run(model: Model) -> PassResult:
    model = model.copy()
    weights, records = find_weights(model)
    raised: list[Opcode] = []
    for w in weights:
        sg = model.subgraphs[w.subgraph]
        reason = not_encodable(w, sg, common.readers(sg, w.tensor))
        if reason:
            records.append(record(w, "skipped", reason))
            continue
        records.append(_encode(model, w, common.readers(sg, w.tensor), raised))
    records.extend(_computed_weights(model))
    _drop_unused(model, raised)
    return PassResult(model, records)


def estimate_bytes(
    w: Weight,
    stored: np.ndarray,
    *,
    subgraph: Subgraph,
    readers: list[Operator],
    quantize_mode: str | None,
) -> int:
    """File bytes of `w` holding the candidate values `stored` (1 x rows x cols) once laid
    down: block-sparse where `run` would encode it (where that is smaller and some block
    holds a nonzero), else dense. A float weight the recipe quantizes stays dense:
    int8-weights leaves the activations float (a hybrid FC), int8 quantizes per channel,
    and float16 is no dtype the sparse kernels take."""
    if quantize_mode is not None and w.tensor.dtype != "INT8":
        return stored.nbytes
    if not_encodable(w, subgraph, readers):
        return stored.nbytes
    segments, indices, values = kernels.block_csr_encode(stored[0], BLOCKS[w.tensor.dtype])
    if indices.size == 0:
        return stored.nbytes
    return min(stored.nbytes, encoded_size(segments, indices, values.nbytes))


def _computed_weights(model: Model) -> list[dict]:
    """Records for FULLY_CONNECTED weights that are computed at run time (find_weights
    already reports those behind a DEQUANTIZE)."""
    out = []
    for si, sg in enumerate(model.subgraphs):
        producers = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
        seen: set[int] = set()
        for op in sg.operators:
            t = op.inputs[1] if op.type == FC and len(op.inputs) > 1 else None
            if t is None or t.is_constant or id(t) in seen:
                continue
            seen.add(id(t))
            producer = producers.get(id(t))
            if producer is not None and producer.type == "DEQUANTIZE":
                source = producer.inputs[0] if producer.inputs else None
                if source is not None and source.is_constant:
                    continue  # reported by find_weights
                producer = producers.get(id(source)) if source is not None else None
            if producer is not None and producer.type == "DENSIFY":
                source = producer.inputs[0] if producer.inputs else None
                if source is not None and source.is_constant:
                    continue  # reported by find_weights
            w = Weight(si, t, FC, out_axis=0, in_axis=1)
            out.append(record(w, "skipped", "not a constant: computed at run time"))
    return out


def encoded_size(segments: np.ndarray, indices: np.ndarray, values_bytes: int) -> int:
    """File bytes of a sparse weight, an upper bound: its stored values (padded to the 16
    bytes the writer aligns buffers to), both index vectors in their narrowest dtype (4-byte
    length prefix, padded to 4) and the SparsityParameters tables around them."""

    def vector(a: np.ndarray) -> int:
        dtype = kernels.smallest_index_dtype(int(a.max()) if a.size else 0)
        return 4 + -(-a.size * dtype.itemsize // 4) * 4

    return -(-values_bytes // 16) * 16 + vector(segments) + vector(indices) + SPARSITY_OVERHEAD


def block_sparsity(rows: int, block: int, segments: np.ndarray, indices: np.ndarray) -> Sparsity:
    """SparsityParameters of a rows x cols weight in 1 x `block` blocks, converter layout."""
    seg = segments.astype(kernels.smallest_index_dtype(int(segments[-1])))
    top = int(indices.max()) if indices.size else 0
    idx = indices.astype(kernels.smallest_index_dtype(top))
    return Sparsity(
        traversal_order=np.array([0, 1, 2], np.int32),
        block_map=np.array([1], np.int32),
        dim_metadata=[
            DimensionMetadata("DENSE", dense_size=rows),
            DimensionMetadata("SPARSE_CSR", segments=seg, indices=idx),
            DimensionMetadata("DENSE", dense_size=block),
        ],
    )


def not_encodable(w: Weight, sg: Subgraph, readers: list[Operator]) -> str | None:
    t = w.tensor
    if w.densify:
        return (
            "stored sparse behind DENSIFY: the FC kernel sees a dense tensor made at run "
            "time; kept as the passes left it"
        )
    if w.sparse is not None:
        return "stored sparse already, read so by the FULLY_CONNECTED kernel"
    if w.dequantize:
        return (
            "read through DEQUANTIZE: the FC kernel sees a dense tensor made at run time "
            "(sparse storage there would need a DENSIFY op, which saves file bytes but not RAM)"
        )
    others = sorted({op.type for op in readers if op.type != FC})
    if others:
        return f"read by {', '.join(others)}: only the FULLY_CONNECTED kernel reads sparse weights"
    refusal = common.refusal(w, sg)
    if refusal:
        return refusal
    if any(op.inputs[1] is not t or sum(x is t for x in op.inputs) > 1 for op in readers):
        return "read by a FULLY_CONNECTED op other than as its weights"
    if t.dtype not in BLOCKS:
        return f"{t.dtype} weights: the sparse FC kernels take int8 or float32"
    if len(t.shape) != 2:
        return f"{len(t.shape)}-D weights: the sparse FC kernels take 2-D weights"
    if t.dtype == "INT8":
        q = t.quantization
        if q.per_axis:
            return (
                "per-channel int8: the 1x16 sparse kernel applies per-channel scales only in "
                "recent runtimes, and op version 8 does not tell them apart"
            )
        if q.zero_point is not None and np.any(q.zero_point != 0):
            return "int8 weights with a nonzero zero point (the sparse kernel needs 0)"
    for op in readers:
        reason = _op_reason(op, t.dtype)
        if reason:
            return reason
    block, depth = BLOCKS[t.dtype], t.shape[1]
    if depth % block:
        return f"input depth {depth} is not a multiple of the 1x{block} block"
    return None


def _op_reason(op: Operator, dtype: str) -> str | None:
    if isinstance(op.attrs, FullyConnectedAttrs) and op.attrs.weights_format != "DEFAULT":
        return "a FULLY_CONNECTED op with a shuffled weights format"
    x = op.inputs[0] if op.inputs else None
    y = op.outputs[0] if op.outputs else None
    want = ACTIVATIONS[dtype]
    if x is None or y is None or x.dtype != want or y.dtype != want:
        got = f"{x.dtype if x else None} -> {y.dtype if y else None}"
        kind = "hybrid " if dtype == "INT8" and x is not None and x.dtype == "FLOAT32" else ""
        return (
            f"a {kind}FULLY_CONNECTED with {got} activations: the sparse kernel for {dtype} "
            f"weights needs {want} -> {want}"
        )
    return None


def _encode(model: Model, w: Weight, readers: list[Operator], raised: list[Opcode]) -> dict:
    t = w.tensor
    dense = t.data
    block = BLOCKS[t.dtype]
    rows, cols = dense.shape
    segments, indices, values = kernels.block_csr_encode(dense, block)
    total_blocks = rows * (cols // block)
    stats = weight_stats(dense)
    bytes_before = t.buffer.nbytes
    sizes = {
        "block": f"1x{block}",
        "blocks_kept": int(indices.size),
        "blocks_total": total_blocks,
        "bytes_before": bytes_before,
    }
    if indices.size == 0:
        return record(
            w,
            "skipped",
            "every block is zero: an empty buffer would read as a non-constant tensor",
            **sizes,
        )
    after = encoded_size(segments, indices, values.nbytes)
    sizes["bytes_after"] = after
    if after >= bytes_before:
        return record(
            w,
            "skipped",
            f"not smaller: {after:,} bytes block-sparse against {bytes_before:,} dense "
            f"({indices.size} of {total_blocks} blocks hold a nonzero)",
            **sizes,
        )
    replace_data(model, w, values)
    t.sparsity = block_sparsity(rows, block, segments, indices)
    versions = []
    for op in readers:
        if op.opcode.version < SPARSE_FC_VERSION:
            if op.opcode not in raised:
                raised.append(op.opcode)
            op.opcode = model.opcode(FC, SPARSE_FC_VERSION, op.opcode.custom_code)
        versions.append(op.opcode.version)
    dims = t.sparsity.dim_metadata[1]
    return record(
        w,
        "encoded",
        **sizes,
        index_dtypes=[str(dims.segments.dtype), str(dims.indices.dtype)],
        op_versions=versions,
        before=stats,
        after=stats,
    )


def _drop_unused(model: Model, replaced: list[Opcode]) -> None:
    """Opcode entries this target moved every op away from (others stay as they were)."""
    used = {id(op.opcode) for sg in model.subgraphs for op in sg.operators}
    gone = {id(oc) for oc in replaced if id(oc) not in used}
    model.opcodes = [oc for oc in model.opcodes if id(oc) not in gone]


TARGET = Target(
    name="cpu",
    run=run,
    estimate_bytes=estimate_bytes,
    bytes_hint=" (with this target only FULLY_CONNECTED weights pruned in blocks, "
    "--prune-pattern 1x16 for int8, shrink the file)",
)
