"""The size audit: what each tensor costs in the file, and how compressible it is."""

from __future__ import annotations

import io
import os
import zipfile
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from tflrewrite import archive, provenance
from tflrewrite.model import Model, Operator, Tensor

# Which axis of a weight input holds the output channels, by the op that reads it; a
# per-axis quantized tensor says so itself (Quantization.axis) and that takes precedence.
WEIGHT_INPUTS: dict[str, tuple[int, int]] = {  # op -> (input index, output-channel axis)
    "CONV_2D": (1, 0),
    "CONV_3D": (1, 4),
    "DEPTHWISE_CONV_2D": (1, 3),
    "FULLY_CONNECTED": (1, 0),
    "TRANSPOSE_CONV": (1, 0),
    "BATCH_MATMUL": (1, -1),
}


@dataclass
class TensorAudit:
    subgraph: int
    index: int
    name: str
    dtype: str
    shape: list[int] | None
    bytes: int
    sparsity: float | None  # fraction of stored values equal to zero (or the zero point)
    unique: int | None  # distinct stored values
    channel_unique: int | None  # for weights: the most distinct values in one output channel
    channel_axis: int | None
    consumers: list[str]
    sparse_encoded: bool
    shared_buffer: bool


@dataclass
class Audit:
    file: str
    bytes: int
    zip_bytes: int
    subgraphs: int
    operators: dict[str, int]
    constant_bytes: int
    by_dtype: dict[str, int]
    by_op: dict[str, int]
    metadata: list[str]
    associated_files: list[dict] = field(default_factory=list)  # {"name", "bytes"} each
    tensors: list[TensorAudit] = field(default_factory=list)
    tflrewrite: dict | None = None  # the provenance entry, when tflrewrite made the model
    vela: Any = None  # reports.vela.VelaReport, where Vela compiled the model too

    def to_json(self) -> dict:
        out = asdict(self)
        del out["vela"]
        if self.vela is not None:
            out["vela"] = self.vela.to_json()
        return out


def zip_size(data: bytes | memoryview, name: str = "model.tflite") -> int:
    """Size of a zip archive (DEFLATE, default level) holding `data` as one file called
    `name`: the measure of 'compression' in TF Model Optimization's tables."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(name, bytes(data))
    return sink.tell()


def audit(model: Model, path: str | os.PathLike, file_bytes: bytes | memoryview) -> Audit:
    """Audit `model`, read from `path` whose content is `file_bytes`."""
    operators: dict[str, int] = {}
    for sg in model.subgraphs:
        for op in sg.operators:
            operators[op.type] = operators.get(op.type, 0) + 1
    tensors, by_dtype, by_op = breakdown(model)
    return Audit(
        file=os.fspath(path),
        bytes=len(file_bytes),
        zip_bytes=zip_size(file_bytes, os.path.basename(path)),
        subgraphs=len(model.subgraphs),
        operators=dict(sorted(operators.items())),
        constant_bytes=sum(by_dtype.values()),
        by_dtype=dict(sorted(by_dtype.items())),
        by_op=dict(sorted(by_op.items())),
        metadata=[m.name or "" for m in model.metadata or []],
        associated_files=[
            {"name": m.name, "bytes": m.size} for m in archive.members(model.trailing)
        ],
        tensors=tensors,
        tflrewrite=provenance.read(model),
    )


def breakdown(model: Model) -> tuple[list[TensorAudit], dict[str, int], dict[str, int]]:
    """Every tensor's audit, and the constant bytes by dtype and by the types of the ops that
    read them (each buffer counted once, for each type of op that reads it)."""
    buffer_users: dict[int, int] = {}
    for _, _, t in model.tensors():
        buffer_users[id(t.buffer)] = buffer_users.get(id(t.buffer), 0) + 1
    tensors, by_dtype, by_op, counted = [], {}, {}, set()
    for si, sg in enumerate(model.subgraphs):
        readers = sg.consumers()
        for ti, t in enumerate(sg.tensors):
            ops = readers.get(id(t), [])
            entry = _tensor_audit(si, ti, t, ops, buffer_users.get(id(t.buffer), 0) > 1)
            tensors.append(entry)
            if t.is_constant and id(t.buffer) not in counted:
                counted.add(id(t.buffer))
                by_dtype[t.dtype] = by_dtype.get(t.dtype, 0) + t.buffer.nbytes
                for op_type in sorted({op.type for op in ops}) or ["(unused)"]:
                    by_op[op_type] = by_op.get(op_type, 0) + t.buffer.nbytes
    return tensors, by_dtype, by_op


def weight_axis(t: Tensor, consumers: list[Operator]) -> int | None:
    """The output-channel axis of a weight tensor, or None if it is not a weight."""
    if t.data is None or t.shape is None or len(t.shape) == 0:
        return None
    if t.quantization is not None and t.quantization.per_axis:
        return t.quantization.axis
    for op in consumers:
        slot = WEIGHT_INPUTS.get(op.type)
        if slot and len(op.inputs) > slot[0] and op.inputs[slot[0]] is t:
            return slot[1] % len(t.shape)
    return None


def _tensor_audit(
    si: int, ti: int, t: Tensor, consumers: list[Operator], shared: bool
) -> TensorAudit:
    values = t.data if t.np_dtype is not None else None
    sparsity = unique = channel_unique = axis = None
    if values is not None and values.size:
        zero = _zero_points(t, values)
        sparsity = float(np.count_nonzero(values == zero)) / values.size
        unique = int(np.unique(values).size)
        if t.sparsity is None:
            axis = weight_axis(t, consumers)
        if axis is not None:
            rows = np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
            channel_unique = int(distinct_per_row(rows).max())
    return TensorAudit(
        subgraph=si,
        index=ti,
        name=t.name,
        dtype=t.dtype,
        shape=None if t.shape is None else list(t.shape),
        bytes=t.buffer.nbytes,
        sparsity=sparsity,
        unique=unique,
        channel_unique=channel_unique,
        channel_axis=axis,
        consumers=sorted({op.type for op in consumers}),
        sparse_encoded=t.sparsity is not None,
        shared_buffer=shared,
    )


def _zero_points(t: Tensor, values: np.ndarray) -> np.ndarray | int:
    """What 'zero' is for each stored value: the zero point of a quantized tensor (per
    channel when quantized per axis), else 0."""
    q = t.quantization
    if q is None or q.zero_point is None or q.zero_point.size == 0 or not q.is_affine:
        return 0
    zp = q.zero_point.astype(np.int64)
    if zp.size == 1 or values.ndim == 0 or t.sparsity is not None:
        return int(zp[0]) if np.all(zp == zp[0]) else 0
    if q.axis < values.ndim and values.shape[q.axis] == zp.size:
        shape = [1] * values.ndim
        shape[q.axis] = zp.size
        return zp.reshape(shape)
    return 0


def distinct_per_row(rows: np.ndarray) -> np.ndarray:
    """Number of distinct values in each row of a 2-D array."""
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0], dtype=np.int64)
    s = np.sort(rows, axis=1)
    return 1 + np.count_nonzero(s[:, 1:] != s[:, :-1], axis=1)
