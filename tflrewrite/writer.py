"""Writes the IR as a .tflite file: the graph tables through the flatbuffers builder, the
constant data copied once, straight from its arrays to the file.

Layout of a file this writer makes (offsets from the start of the file):

    [flatbuffer: root offset, b"TFL3", graph tables ...]   length H, a multiple of 16
    [buffer data: for each buffer with data, zero padding, then
        normal layout:  uint32 length, data       (data at a multiple of 16)
        >2 GB layout:   data                       (at a multiple of 16)]
    [Model.trailing, e.g. a zip of associated files, its offsets moved to where it lands]

In the normal layout each buffer's data is a flatbuffer vector that happens to sit after the
builder's bytes; the Buffer table points at it with an ordinary forward offset. The builder
measures offsets back from the end of what it has built, so a vector in the tail at byte q
past that end has builder offset -q. This keeps the builder small (no weights in it) and
lets data go from a memory-mapped input to the output without an intermediate copy.

In the >2 GB layout (LiteRT's large-model format) Buffer.offset/size give the absolute
position of the data instead; since H must be known to write those offsets, the tables are
packed twice, the first time with placeholder offsets of the same encoded size.
"""

from __future__ import annotations

import copy
import os
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import flatbuffers
import numpy as np

from tflrewrite import archive, schema
from tflrewrite.errors import ModelError
from tflrewrite.fileio import atomic_write
from tflrewrite.model import Buffer, DimensionMetadata, Model, Quantization, Sparsity, Tensor

fb = schema.fb

ALIGN = 16
FLATBUFFER_LIMIT = 2**31 - 1  # flatbuffers' largest buffer; beyond it, the >2 GB layout
_PLACEHOLDER_OFFSET = 2**40


def write(model: Model, path: str | os.PathLike, *, large: bool | None = None) -> int:
    """Write `model` to `path` atomically; returns the file size. See `serialize`."""
    image = serialize(model, large=large)
    atomic_write(path, image.write_to)
    return image.size


def to_bytes(model: Model, *, large: bool | None = None) -> bytes:
    """The file's bytes in memory (for small models and tests)."""
    return serialize(model, large=large).to_bytes()


def serialize(model: Model, *, large: bool | None = None) -> FileImage:
    """Lay out the file. `large` forces (True) or forbids (False) the >2 GB layout; by
    default it is used when the input used it or when the model needs it."""
    buffers = _buffer_list(model)
    arrays = [b.data for b in buffers]
    forced = large is not None
    if not forced:
        large = model.buffers_after_flatbuffer
    if not large:
        tail = _tail_layout(arrays, prefixed=True)
        head = _pack(model, buffers, [None if q is None else ("data", q) for q in tail.positions])
        if len(head) + tail.size <= FLATBUFFER_LIMIT:
            return FileImage(
                head, tail, arrays, prefixed=True, trailing=_trailing(model, head, tail)
            )
        if forced:
            raise ModelError(None, "the model is over 2 GB: it needs the large-model layout")
    tail = _tail_layout(arrays, prefixed=False)
    placeholders = [
        None if q is None else ("offset", _PLACEHOLDER_OFFSET, 1) for q in tail.positions
    ]
    h = len(_pack(model, buffers, placeholders))
    where = [
        None if q is None else ("offset", h + q, arrays[i].size)
        for i, q in enumerate(tail.positions)
    ]
    head = _pack(model, buffers, where)
    assert len(head) == h, "the second packing must be the size of the first"
    return FileImage(head, tail, arrays, prefixed=False, trailing=_trailing(model, head, tail))


def _trailing(model: Model, head: memoryview, tail: _Tail) -> bytes:
    """The model's trailing bytes as they go after this layout (a zip archive's offsets
    counting from the file's start where they did in the file read)."""
    at = len(head) + tail.size
    return archive.attach(model.trailing, at=at, from_file=model.trailing_offsets_from_file)


class FileImage:
    """A laid-out file: the packed tables, then buffer data at known positions."""

    def __init__(
        self, head: memoryview, tail: _Tail, arrays: list, prefixed: bool, trailing: bytes
    ):
        self.head, self.tail, self.arrays = head, tail, arrays
        self.prefixed, self.trailing = prefixed, trailing
        self.size = len(head) + tail.size + len(trailing)

    def chunks(self) -> Iterator[Any]:
        yield self.head
        pos = 0
        for array, q in zip(self.arrays, self.tail.positions):
            if q is None:
                continue
            yield bytes(q - pos)
            if self.prefixed:
                yield struct.pack("<I", array.size)
                pos = q + 4
            else:
                pos = q
            if array.size:
                yield np.ascontiguousarray(array).view(np.uint8).data
            pos += array.size
        yield bytes(self.tail.size - pos)
        yield self.trailing

    def write_to(self, f: BinaryIO) -> None:
        for chunk in self.chunks():
            f.write(chunk)

    def to_bytes(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())


class _Tail:
    def __init__(self, positions: list[int | None], size: int):
        self.positions, self.size = positions, size


def _tail_layout(arrays: list[np.ndarray | None], prefixed: bool) -> _Tail:
    """Where each buffer's data goes, in bytes after the packed tables (None: no data).

    With a length prefix the position is the prefix's, 4 bytes before 16-aligned data; it
    is never 0, which the builder would take for an absent field.
    """
    positions: list[int | None] = []
    pos = 0
    for array in arrays:
        if array is None or (not prefixed and array.size == 0):
            positions.append(None)
            continue
        if prefixed:
            q = pos + (ALIGN - 4 - pos) % ALIGN
            pos = q + 4 + array.size
        else:
            q = pos + (-pos) % ALIGN
            pos = q + array.size
        positions.append(q)
    return _Tail(positions, pos + (-pos) % ALIGN)


class _BufferTable:
    """Stands in for BufferT when ModelT packs its buffers: the data lives in the tail."""

    def __init__(self, where: tuple | None):
        self.where = where

    def Pack(self, builder: flatbuffers.Builder) -> int:  # noqa: N802 - the bindings' name
        fb.BufferStart(builder)
        if self.where is not None and self.where[0] == "data":
            fb.BufferAddData(builder, -self.where[1])
        elif self.where is not None:
            fb.BufferAddOffset(builder, self.where[1])
            fb.BufferAddSize(builder, self.where[2])
        return fb.BufferEnd(builder)


def _pack(model: Model, buffers: list[Buffer], where: list) -> memoryview:
    raw = _model_t(model, buffers)
    raw.buffers = [_BufferTable(w) for w in where]
    builder = flatbuffers.Builder(4096)
    builder.Prep(ALIGN, 0)  # makes 16 the file's alignment unit, so the tail stays aligned
    builder.Finish(raw.Pack(builder), file_identifier=b"TFL3")
    return memoryview(builder.Bytes)[builder.Head() :]


def _buffer_list(model: Model) -> list[Buffer]:
    """The model's buffers in order, then any a tensor or metadata entry uses but the list
    lacks (a pass that forgot `add_buffer`), so that every reference has an index."""
    out = list(model.buffers)
    seen = {id(b) for b in out}
    referenced = [t.buffer for _, _, t in model.tensors()]
    referenced += [m.buffer for m in model.metadata or []] + list(model.metadata_buffers or [])
    for b in referenced:
        if id(b) not in seen:
            seen.add(id(b))
            out.append(b)
    return out


def _model_t(model: Model, buffers: list[Buffer]) -> Any:
    buffer_index = {id(b): i for i, b in enumerate(buffers)}
    opcodes = list(model.opcodes)
    known = {id(oc) for oc in opcodes}
    for sg in model.subgraphs:
        for op in sg.operators:
            if id(op.opcode) not in known:
                known.add(id(op.opcode))
                opcodes.append(op.opcode)
    opcode_index = {id(oc): i for i, oc in enumerate(opcodes)}
    subgraph_index = {id(sg): i for i, sg in enumerate(model.subgraphs)}

    raw = copy.copy(model.extra) if model.extra is not None else fb.ModelT()
    raw.version = model.version
    raw.description = _bytes(model.description)
    raw.operatorCodes = [_opcode_t(oc) for oc in opcodes]
    raw.subgraphs = [_subgraph_t(sg, buffer_index, opcode_index) for sg in model.subgraphs]
    raw.metadata = (
        None
        if model.metadata is None
        else [
            fb.MetadataT(name=_bytes(m.name), buffer=buffer_index[id(m.buffer)])
            for m in model.metadata
        ]
    )
    raw.metadataBuffer = (
        None
        if model.metadata_buffers is None
        else _i32([buffer_index[id(b)] for b in model.metadata_buffers])
    )
    raw.signatureDefs = (
        None
        if model.signatures is None
        else [_signature_t(s, subgraph_index) for s in model.signatures]
    )
    return raw


def _opcode_t(oc: Any) -> Any:
    code = schema.OPERATOR_CODES[oc.name]
    stored = oc.extra if isinstance(oc.extra, tuple) else None
    if stored is not None and max(stored) == code:
        builtin, deprecated = stored  # as read: old files set only the deprecated field
    else:
        builtin, deprecated = code, min(code, schema.PLACEHOLDER_FOR_GREATER_OP_CODES)
    return fb.OperatorCodeT(
        deprecatedBuiltinCode=deprecated,
        customCode=_bytes(oc.custom_code),
        version=oc.version,
        builtinCode=builtin,
    )


def _subgraph_t(sg: Any, buffer_index: dict, opcode_index: dict) -> Any:
    tensor_index = {id(t): i for i, t in enumerate(sg.tensors)}

    def idx(ts: list[Tensor | None] | None) -> np.ndarray | None:
        if ts is None:
            return None
        return _i32([-1 if t is None else tensor_index[id(t)] for t in ts])

    raw = copy.copy(sg.extra) if sg.extra is not None else fb.SubGraphT()
    raw.name = _bytes(sg.name)
    raw.tensors = [_tensor_t(t, buffer_index) for t in sg.tensors]
    raw.inputs, raw.outputs = idx(sg.inputs), idx(sg.outputs)
    raw.operators = []
    for op in sg.operators:
        o = copy.copy(op.extra) if op.extra is not None else fb.OperatorT()
        o.opcodeIndex = opcode_index[id(op.opcode)]
        o.inputs, o.outputs, o.intermediates = (
            idx(op.inputs),
            idx(op.outputs),
            idx(op.intermediates),
        )
        options = op.options if op.attrs is None else schema.encode_attrs(op.attrs, op.options)
        o.builtinOptions, o.builtinOptions2 = options, op.options2
        o.builtinOptionsType = schema.options_code(options, schema.BUILTIN_OPTIONS_CODES)
        o.builtinOptions2Type = schema.options_code(op.options2, schema.BUILTIN_OPTIONS2_CODES)
        o.customOptions = None if op.custom_options is None else _u8(op.custom_options)
        raw.operators.append(o)
    return raw


def _tensor_t(t: Tensor, buffer_index: dict) -> Any:
    raw = copy.copy(t.extra) if t.extra is not None else fb.TensorT()
    raw.shape = None if t.shape is None else _i32(t.shape)
    raw.shapeSignature = None if t.shape_signature is None else _i32(t.shape_signature)
    raw.type = schema.TENSOR_TYPE_CODES[t.dtype]
    raw.buffer = buffer_index[id(t.buffer)]
    raw.name = _bytes(t.name)
    raw.quantization = _quantization_t(t.quantization)
    raw.sparsity = _sparsity_t(t.sparsity)
    raw.isVariable, raw.hasRank = t.is_variable, t.has_rank
    return raw


def _quantization_t(q: Quantization | None) -> Any:
    if q is None:
        return None
    raw = fb.QuantizationParametersT()
    raw.scale = _vec(q.scale, "<f4")
    raw.zeroPoint = _vec(q.zero_point, "<i8")
    raw.min, raw.max = _vec(q.min, "<f4"), _vec(q.max, "<f4")
    raw.quantizedDimension = int(q.axis)
    if q.details is not None:
        raw.detailsType, raw.details = q.details
    return raw


_INDEX_VECTORS = {
    np.dtype("<i4"): (1, "Int32VectorT"),
    np.dtype("<u2"): (2, "Uint16VectorT"),
    np.dtype("u1"): (3, "Uint8VectorT"),
}


def _index_vector_t(values: np.ndarray | None) -> tuple[int, Any]:
    if values is None:
        return 0, None
    values = np.asarray(values)
    kind, cls = _INDEX_VECTORS.get(values.dtype, (1, "Int32VectorT"))
    vector = getattr(fb, cls)()
    vector.values = np.ascontiguousarray(values, dtype=values.dtype if kind != 1 else "<i4")
    return kind, vector


def _dimension_t(d: DimensionMetadata) -> Any:
    raw = fb.DimensionMetadataT()
    raw.format = fb.DimensionType.SPARSE_CSR if d.format == "SPARSE_CSR" else fb.DimensionType.DENSE
    raw.denseSize = int(d.dense_size)
    raw.arraySegmentsType, raw.arraySegments = _index_vector_t(d.segments)
    raw.arrayIndicesType, raw.arrayIndices = _index_vector_t(d.indices)
    return raw


def _sparsity_t(s: Sparsity | None) -> Any:
    if s is None:
        return None
    raw = fb.SparsityParametersT()
    raw.traversalOrder, raw.blockMap = _vec(s.traversal_order, "<i4"), _vec(s.block_map, "<i4")
    raw.dimMetadata = None if s.dim_metadata is None else [_dimension_t(d) for d in s.dim_metadata]
    return raw


def _signature_t(s: Any, subgraph_index: dict) -> Any:
    tensor_index = {id(t): i for i, t in enumerate(s.subgraph.tensors)}
    no_inputs, no_outputs = s.extra if isinstance(s.extra, tuple) else (False, False)

    def maps(pairs: list, absent: bool) -> list | None:
        if absent and not pairs:
            return None
        return [fb.TensorMapT(name=_bytes(n), tensorIndex=tensor_index[id(t)]) for n, t in pairs]

    return fb.SignatureDefT(
        inputs=maps(s.inputs, no_inputs),
        outputs=maps(s.outputs, no_outputs),
        signatureKey=_bytes(s.key),
        subgraphIndex=subgraph_index[id(s.subgraph)],
    )


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode("utf-8", "surrogateescape")


def _vec(values: Any, dtype: str) -> np.ndarray | None:
    return None if values is None else np.ascontiguousarray(values, dtype=dtype).reshape(-1)


def _i32(values: Any) -> np.ndarray:
    return np.ascontiguousarray(values, dtype="<i4").reshape(-1)


def _u8(values: Any) -> np.ndarray:
    return np.ascontiguousarray(values).reshape(-1).view(np.uint8)
