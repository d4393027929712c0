"""Writes the IR as a .tflite file: the graph tables through the flatbuffers builder, the
constant data copied once, straight from its arrays to the file.

The tables are packed as the schema bindings' object API packs them (ModelT.Pack and the
rest), part by part in the same order, so the bytes are the same; but the heavy ones
(buffers, tensors, operators, thousands in a large model) are written a whole table at a
time by _FastBuilder rather than field by field through the T objects.

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
import errno
import functools
import operator
import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import flatbuffers
import numpy as np

from tflrewrite import archive, schema
from tflrewrite.errors import ModelError
from tflrewrite.fileio import atomic_write
from tflrewrite.model import (
    Buffer,
    DimensionMetadata,
    Model,
    Operator,
    Quantization,
    Sparsity,
    Subgraph,
    Tensor,
)

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
        """Write the file to `f`: straight to its file descriptor where it has one."""
        try:
            fd = f.fileno() if hasattr(os, "writev") else None
        except (AttributeError, OSError):  # io.UnsupportedOperation is an OSError
            fd = None
        if fd is None:
            for chunk in self.chunks():
                f.write(chunk)
            return
        f.flush()
        _write_all(fd, [c for c in self.chunks() if len(c)])

    def to_bytes(self) -> bytes:
        return b"".join(bytes(c) for c in self.chunks())


def _write_all(fd: int, chunks: list) -> None:
    """Write the chunks with writev, a thousand per system call: a model of thousands of
    small buffers is three chunks per buffer, and a write() each cost as much as copying
    the data (measured: 64 ms against 34 ms of CPU for 10,000 chunks, 110 MB)."""
    i = 0
    while i < len(chunks):
        written = os.writev(fd, chunks[i : i + _IOV_MAX])
        if written == 0:
            raise OSError(errno.EIO, "the file takes no more bytes")
        while written:  # skip what was written; a chunk written in part keeps its rest
            n = len(chunks[i])
            if written < n:
                chunks[i] = memoryview(chunks[i])[written:]
                break
            written -= n
            i += 1


_IOV_MAX = 1024  # POSIX's minimum is 16; Linux and macOS allow 1024
_UINT32 = struct.Struct("<I")


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


def _pack(model: Model, buffers: list[Buffer], where: list) -> memoryview:
    builder = _builder_class()(4096)
    builder.Prep(ALIGN, 0)  # makes 16 the file's alignment unit, so the tail stays aligned
    builder.Finish(_model(builder, model, buffers, where), file_identifier=b"TFL3")
    return memoryview(builder.Bytes)[builder.Head() :]


# ---------------------------------------------------------------- the tables, packed
#
# Each function below packs one kind of table as the bindings' object API would (ModelT,
# SubGraphT, TensorT, ... .Pack): the same parts in the same order, the same fields, so the
# same bytes. The heavy ones -- buffers, tensors, operators -- go through _Builder.table in
# one step each; the rare ones, and any tensor or operator with fields the IR does not
# model (in `extra`), through the object API itself.


def _model(b: _Builder, model: Model, buffers: list[Buffer], where: list) -> int:
    index = _Index(model, buffers)
    rest = model.extra if model.extra is not None else fb.ModelT()
    opcodes = b.offsets([_opcode_t(oc).Pack(b) for oc in index.opcodes])
    subgraphs = b.offsets([_subgraph(b, sg, index) for sg in model.subgraphs])
    description = b.string(model.description)
    buffer_tables = b.offsets([_buffer(b, w) for w in where])
    metadata_buffer = (
        0
        if model.metadata_buffers is None
        else b.vector(_i32([index.buffer[id(x)] for x in model.metadata_buffers]))
    )
    metadata = (
        0
        if model.metadata is None
        else b.offsets(
            [
                fb.MetadataT(name=_bytes(m.name), buffer=index.buffer[id(m.buffer)]).Pack(b)
                for m in model.metadata
            ]
        )
    )
    signatures = (
        0
        if model.signatures is None
        else b.offsets([_signature_t(s, index.subgraph).Pack(b) for s in model.signatures])
    )
    groups, external = (
        0 if tables is None else b.offsets([t.Pack(b) for t in tables])
        for tables in (rest.externalBufferGroups, rest.externalBuffers)
    )
    return b.table(
        _MODEL,
        (
            model.version,
            opcodes,
            subgraphs,
            description,
            buffer_tables,
            metadata_buffer,
            metadata,
            signatures,
            groups,
            external,
        ),
    )


class _Index:
    """The index of each buffer, opcode and subgraph in the file, by id of the IR object."""

    def __init__(self, model: Model, buffers: list[Buffer]):
        self.buffer = {id(x): i for i, x in enumerate(buffers)}
        self.opcodes = list(model.opcodes)
        known = {id(oc) for oc in self.opcodes}
        for sg in model.subgraphs:
            for op in sg.operators:
                if id(op.opcode) not in known:
                    known.add(id(op.opcode))
                    self.opcodes.append(op.opcode)
        self.opcode = {id(oc): i for i, oc in enumerate(self.opcodes)}
        self.subgraph = {id(sg): i for i, sg in enumerate(model.subgraphs)}
        self.options: dict[tuple, tuple] = {}  # see _options


def _buffer(b: _Builder, where: tuple | None) -> int:
    """A Buffer table; its data lies in the tail (see the module docstring)."""
    if where is None:
        return b.table(_BUFFER, (0, 0, 0))
    if where[0] == "data":
        return b.table(_BUFFER, (-where[1], 0, 0))
    return b.table(_BUFFER, (0, where[1], where[2]))


def _subgraph(b: _Builder, sg: Subgraph, index: _Index) -> int:
    tensor_index = {id(t): i for i, t in enumerate(sg.tensors)}
    tensors = b.offsets([_tensor(b, t, index) for t in sg.tensors])
    inputs = b.ints(_indices(sg.inputs, tensor_index))
    outputs = b.ints(_indices(sg.outputs, tensor_index))
    operators = b.offsets([_operator(b, op, tensor_index, index) for op in sg.operators])
    name = b.string(sg.name)
    debug = -1 if sg.extra is None else sg.extra.debugMetadataIndex
    return b.table(_SUBGRAPH, (tensors, inputs, outputs, operators, name, debug))


def _tensor(b: _Builder, t: Tensor, index: _Index) -> int:
    if t.extra is not None:  # fields the IR does not model: the object API packs them
        return _tensor_t(t, index.buffer).Pack(b)
    shape = 0 if t.shape is None else b.ints(t.shape)
    name = b.string(t.name)
    quantization = 0 if t.quantization is None else _quantization(b, t.quantization)
    sparsity = 0 if t.sparsity is None else _sparsity_t(t.sparsity).Pack(b)
    signature = 0 if t.shape_signature is None else b.ints(t.shape_signature)
    return b.table(
        _TENSOR,
        (
            shape,
            schema.TENSOR_TYPE_CODES[t.dtype],
            index.buffer[id(t.buffer)],
            name,
            quantization,
            bool(t.is_variable),
            sparsity,
            signature,
            bool(t.has_rank),
            0,
            0,
        ),
    )


def _quantization(b: _Builder, q: Quantization) -> int:
    low, high, scale = (b.vector(_vec(v, "<f4")) for v in (q.min, q.max, q.scale))
    zero_point = b.vector(_vec(q.zero_point, "<i8"))
    kind, details = (0, None) if q.details is None else q.details
    details = 0 if details is None else details.Pack(b)
    return b.table(_QUANTIZATION, (low, high, scale, zero_point, kind, details, int(q.axis)))


def _operator(b: _Builder, op: Operator, tensor_index: dict, index: _Index) -> int:
    if op.extra is not None:  # fields the IR does not model: the object API packs them
        return _operator_t(op, tensor_index, index.opcode).Pack(b)
    inputs = b.ints(_indices(op.inputs, tensor_index))
    outputs = b.ints(_indices(op.outputs, tensor_index))
    kind, options = _options(b, op, index.options)
    custom = 0 if op.custom_options is None else b.vector(_u8(op.custom_options))
    intermediates = (
        0 if op.intermediates is None else b.ints(_indices(op.intermediates, tensor_index))
    )
    kind2 = schema.options_code(op.options2, schema.BUILTIN_OPTIONS2_CODES)
    options2 = 0 if op.options2 is None else op.options2.Pack(b)
    return b.table(
        _OPERATOR,
        (
            index.opcode[id(op.opcode)],
            inputs,
            outputs,
            kind,
            options,
            custom,
            0,
            0,
            intermediates,
            0,
            0,
            kind2,
            options2,
            -1,
        ),
    )


def _options(b: _Builder, op: Operator, seen: dict[tuple, tuple]) -> tuple[int, int]:
    """The union type code and packed table of an operator's builtin options (`attrs`
    written into them). Ops share few distinct options: each is worked out once per file."""
    key = (id(op.options), id(op.attrs))  # both live as long as the model: ids are stable
    found = seen.get(key)
    if found is None:
        options = op.options if op.attrs is None else schema.encode_attrs(op.attrs, op.options)
        code = schema.options_code(options, schema.BUILTIN_OPTIONS_CODES)
        fields = None if options is None else schema.scalar_fields(options)
        if fields is None:
            found = code, options, None, None
        else:
            found = code, options, _Table.of(type(options), fields), tuple(f[2] for f in fields[1])
        seen[key] = found
    code, options, table, values = found
    if options is None:
        return code, 0
    if table is None:
        return code, options.Pack(b)
    return code, b.table(table, values)


def _indices(tensors: list[Tensor | None], tensor_index: dict) -> list[int]:
    return [-1 if t is None else tensor_index[id(t)] for t in tensors]


# ---------------------------------------------------------------- the object API's way,
# for tables with fields the IR does not model


def _operator_t(op: Operator, tensor_index: dict, opcode_index: dict) -> Any:
    o = copy.copy(op.extra) if op.extra is not None else fb.OperatorT()
    o.opcodeIndex = opcode_index[id(op.opcode)]
    o.inputs = _i32(_indices(op.inputs, tensor_index))
    o.outputs = _i32(_indices(op.outputs, tensor_index))
    o.intermediates = (
        None if op.intermediates is None else _i32(_indices(op.intermediates, tensor_index))
    )
    options = op.options if op.attrs is None else schema.encode_attrs(op.attrs, op.options)
    o.builtinOptions, o.builtinOptions2 = options, op.options2
    o.builtinOptionsType = schema.options_code(options, schema.BUILTIN_OPTIONS_CODES)
    o.builtinOptions2Type = schema.options_code(op.options2, schema.BUILTIN_OPTIONS2_CODES)
    o.customOptions = None if op.custom_options is None else _u8(op.custom_options)
    return o


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


# ---------------------------------------------------------------- the builder


class _Table:
    """One kind of table as the bindings pack it: its number of field slots, and for each
    field in the order its Pack adds it, (slot, struct format, default). Format "O" is an
    offset to something packed before it (0: absent)."""

    def __init__(self, slots: int, fields: tuple[tuple[int, str, Any], ...]):
        self.slots, self.fields = slots, fields
        self.defaults = tuple(default for _, _, default in fields)
        self.layouts: dict[tuple, _Layout] = {}  # see _FastBuilder.table

    @staticmethod
    def of(cls: type, fields: tuple) -> _Table:
        """The table kind of an options class, from schema.scalar_fields of one of them."""
        table = _OPTIONS_TABLES.get(cls)
        if table is None:
            slots, added = fields
            table = _OPTIONS_TABLES[cls] = _Table(slots, tuple((s, f, d) for s, f, _, d in added))
        return table


_OPTIONS_TABLES: dict[type, _Table] = {}

# The tables the heavy paths pack, as the bindings' Pack methods add their fields.
_MODEL = _Table(10, ((0, "I", 0), *((slot, "O", 0) for slot in range(1, 10))))
_SUBGRAPH = _Table(6, (*((slot, "O", 0) for slot in range(5)), (5, "i", -1)))
_BUFFER = _Table(3, ((0, "O", 0), (1, "Q", 0), (2, "Q", 0)))
_TENSOR = _Table(
    11,
    (
        (0, "O", 0),  # shape
        (1, "b", 0),  # type
        (2, "I", 0),  # buffer
        (3, "O", 0),  # name
        (4, "O", 0),  # quantization
        (5, "?", 0),  # is_variable
        (6, "O", 0),  # sparsity
        (7, "O", 0),  # shape_signature
        (8, "?", 0),  # has_rank
        (9, "O", 0),  # variant_tensors
        (10, "I", 0),  # external_buffer
    ),
)
_QUANTIZATION = _Table(
    7,
    (
        (0, "O", 0),  # min
        (1, "O", 0),  # max
        (2, "O", 0),  # scale
        (3, "O", 0),  # zero_point
        (4, "B", 0),  # details_type
        (5, "O", 0),  # details
        (6, "i", 0),  # quantized_dimension
    ),
)
_OPERATOR = _Table(
    14,
    (
        (0, "I", 0),  # opcode_index
        (1, "O", 0),  # inputs
        (2, "O", 0),  # outputs
        (3, "B", 0),  # builtin_options_type
        (4, "O", 0),  # builtin_options
        (5, "O", 0),  # custom_options
        (6, "b", 0),  # custom_options_format
        (7, "O", 0),  # mutating_variable_inputs
        (8, "O", 0),  # intermediates
        (9, "Q", 0),  # large_custom_options_offset
        (10, "Q", 0),  # large_custom_options_size
        (11, "B", 0),  # builtin_options_2_type
        (12, "O", 0),  # builtin_options_2
        (13, "i", -1),  # debug_metadata_index
    ),
)

_PREPEND_SLOT = {
    "?": "PrependBoolSlot",
    "b": "PrependInt8Slot",
    "B": "PrependUint8Slot",
    "i": "PrependInt32Slot",
    "I": "PrependUint32Slot",
    "q": "PrependInt64Slot",
    "Q": "PrependUint64Slot",
    "h": "PrependInt16Slot",
    "H": "PrependUint16Slot",
    "f": "PrependFloat32Slot",
    "d": "PrependFloat64Slot",
}


class _Builder(flatbuffers.Builder):
    """The flatbuffers Builder with whole tables and vectors as single calls, each made of
    the Builder's own calls. The reference for _FastBuilder, and its fallback."""

    def table(self, table: _Table, values: tuple) -> int:
        self.StartObject(table.slots)
        for (slot, fmt, default), value in zip(table.fields, values, strict=True):
            if fmt == "O":
                if value:
                    self.PrependUOffsetTRelativeSlot(slot, value, 0)
            else:
                getattr(self, _PREPEND_SLOT[fmt])(slot, value, default)
        return self.EndObject()

    def vector(self, array: np.ndarray | None) -> int:
        return 0 if array is None else self.CreateNumpyVector(array)

    def string(self, text: str | None) -> int:
        return 0 if text is None else self.CreateString(_bytes(text))

    def ints(self, values: Any) -> int:
        """A vector of int32 from a sequence of Python ints."""
        return self.CreateNumpyVector(np.asarray(values, dtype="<i4").reshape(-1))

    def offsets(self, offsets: list[int]) -> int:
        """A vector of offsets to tables packed before."""
        self.StartVector(4, len(offsets), 4)
        for off in reversed(offsets):
            self.PrependUOffsetTRelative(off)
        return self.EndVector()


class _Layout:
    """Where a table's fields go, for one set of present fields and one alignment phase."""

    def __init__(self, table: _Table, present: tuple[bool, ...], phase: int):
        rel, placed, widest = 0, [], 1  # bytes since the table's start; (index, offset)
        for i, ((_, fmt, _), here) in enumerate(zip(table.fields, present, strict=True)):
            if not here:
                continue
            size = 4 if fmt == "O" else struct.calcsize("<" + fmt)
            widest = max(widest, size)
            pad = -(phase + rel) & (size - 1)
            placed.append((i, fmt, pad, rel + pad))
            rel += pad + size
        pad = -(phase + rel) & 3
        self.size = rel + pad + 4  # with the vtable offset
        self.widest = max(widest, 4)
        # in memory the table is the reverse of the order of the Builder's prepends
        self.format = struct.Struct(
            "<i"
            + "x" * pad
            + "".join(("I" if fmt == "O" else fmt) + "x" * p for _, fmt, p, _ in reversed(placed))
        )
        # the values in that order, then, for each offset field, where it is in the row and
        # its offset from the table's start as the Builder places it (its value is that
        # offset + 4 - the target's offset)
        memory_order = list(reversed(placed))
        self.pick = _picker([i for i, *_ in memory_order])
        self.offsets = [(k, at) for k, (_, fmt, _, at) in enumerate(memory_order) if fmt == "O"]
        self.room = self.size + 4 * len(table.fields) + 4  # the table and a new vtable
        entries = [0] * (max((table.fields[i][0] for i, *_ in placed), default=-1) + 1)
        for i, fmt, _, at in placed:
            size = 4 if fmt == "O" else struct.calcsize("<" + fmt)
            entries[table.fields[i][0]] = self.size - (at + size)
        self.vtable_key = (*reversed(entries), self.size)
        self.vtable = struct.pack(
            f"<{len(entries) + 2}H", 2 * (len(entries) + 2), self.size, *entries
        )


class _FastBuilder(_Builder):
    """_Builder's tables and vectors written in one step each, straight into the Builder's
    bytes: the same bytes, vtables shared through the Builder's own table of them, at a
    tenth of the cost. It relies on the Builder's internals (Bytes, head, vtables,
    minalign), so _builder_class checks it against _Builder before it is used."""

    def grow(self, n: int) -> None:
        while self.head < n:
            old = len(self.Bytes)
            self.GrowByteBuffer()
            self.head += len(self.Bytes) - old

    def table(self, table: _Table, values: tuple) -> int:
        start = len(self.Bytes) - self.head  # the Builder's Offset()
        key = (tuple(map(operator.ne, values, table.defaults)), start & 7)
        layout = table.layouts.get(key)
        if layout is None:
            layout = table.layouts[key] = _Layout(table, *key)
        if self.head < layout.room:
            self.grow(layout.room)
        if layout.widest > self.minalign:
            self.minalign = layout.widest
        end = start + layout.size  # the table's offset
        row = list(layout.pick(values))
        for k, at in layout.offsets:  # the Builder's PrependUOffsetTRelative
            row[k] = start + at + 4 - row[k]
        self.head -= layout.size
        vtable = self.vtables.get(layout.vtable_key)
        if vtable is None:
            layout.format.pack_into(self.Bytes, self.head, len(layout.vtable), *row)
            self.head -= len(layout.vtable)
            self.Bytes[self.head : self.head + len(layout.vtable)] = layout.vtable
            self.vtables[layout.vtable_key] = end + len(layout.vtable)
        else:
            layout.format.pack_into(self.Bytes, self.head, vtable - end, *row)
        return end

    def ints(self, values: Any) -> int:
        n = len(values)
        if self.minalign < 4:
            self.minalign = 4
        pad = -(len(self.Bytes) - self.head) & 3
        if self.head < 4 * n + pad + 4:
            self.grow(4 * n + pad + 4)
        head = self.head = self.head - (pad + 4 * n + 4)
        _int32s(n).pack_into(self.Bytes, head, n, *values)
        return len(self.Bytes) - head

    def vector(self, array: np.ndarray | None) -> int:
        if array is None:
            return 0
        if array.dtype.byteorder == ">":  # CreateNumpyVector writes little-endian
            array = array.astype(array.dtype.newbyteorder("<"))
        data = array.tobytes()
        align = max(4, array.dtype.alignment)
        self.minalign = max(self.minalign, align)
        pad = -(len(self.Bytes) - self.head + len(data)) & (align - 1)
        self.grow(len(data) + pad + 4)
        self.head -= pad + len(data) + 4
        struct.pack_into("<I", self.Bytes, self.head, array.size)
        self.Bytes[self.head + 4 : self.head + 4 + len(data)] = data
        return len(self.Bytes) - self.head

    def string(self, text: str | None) -> int:
        if text is None:
            return 0
        data = text.encode("utf-8", "surrogateescape")
        n = len(data)
        if self.minalign < 4:
            self.minalign = 4
        pad = -(len(self.Bytes) - self.head + n + 1) & 3
        if self.head < n + pad + 5:
            self.grow(n + pad + 5)
        head = self.head = self.head - (n + pad + 5)
        _UINT32.pack_into(self.Bytes, head, n)
        self.Bytes[head + 4 : head + 4 + n] = data
        return len(self.Bytes) - head

    def offsets(self, offsets: list[int]) -> int:
        n = len(offsets)
        self.minalign = max(self.minalign, 4)
        start = len(self.Bytes) - self.head
        pad = -(start + 4 * n) & 3
        self.grow(4 * n + pad + 4)
        # entry k is placed (last first) at offset start + pad + 4 (n - 1 - k), and holds
        # the distance from just past it to its table
        at = start + pad + 4 * (n - np.arange(n, dtype=np.int64))
        entries = (at - np.asarray(offsets, dtype=np.int64)).astype("<u4")
        self.head -= pad + 4 * n + 4
        struct.pack_into("<I", self.Bytes, self.head, n)
        self.Bytes[self.head + 4 : self.head + 4 + 4 * n] = entries.tobytes()
        return len(self.Bytes) - self.head


def _picker(indices: list[int]) -> Callable[[tuple], tuple]:
    if len(indices) == 1:
        return lambda values: (values[indices[0]],)
    return operator.itemgetter(*indices) if indices else lambda values: ()


@functools.cache
def _int32s(n: int) -> struct.Struct:
    """A uint32 count, then n int32."""
    return struct.Struct(f"<I{n}i")


@functools.cache
def _builder_class() -> type[_Builder]:
    """_FastBuilder where it packs what _Builder packs (it knows the Builder's internals of
    flatbuffers 24 and 25), _Builder otherwise."""
    samples = []
    for cls in (_Builder, _FastBuilder):
        b = cls(16)
        b.Prep(ALIGN, 0)
        name = b.string("ab")
        shape = b.vector(np.array([1, 2, 3], "<i4"))
        zero_point = b.vector(np.array([0, -1], "<i8"))
        tensors = [
            b.table(_TENSOR, (shape, 1, 7, name, 0, True, 0, 0, False, 0, 0)),
            b.table(_TENSOR, (shape, 9, 0, name, 0, False, 0, 0, True, 0, 0)),
            b.table(_TENSOR, (shape, 1, 8, name, 0, True, 0, 0, False, 0, 0)),
        ]
        q = b.table(_QUANTIZATION, (0, 0, shape, zero_point, 0, 0, 3))
        listed = b.offsets(tensors + [q])
        b.string("xyz")
        b.Finish(b.table(_BUFFER, (listed, 2**40, 5)), file_identifier=b"TFL3")
        samples.append(bytes(b.Output()))
    return _FastBuilder if samples[0] == samples[1] else _Builder
