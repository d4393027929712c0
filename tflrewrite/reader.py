"""Reads a .tflite file into the IR, refusing anything LiteRT would not load.

The file is memory-mapped and constant data stays in it: every Buffer.data is a read-only
view, so reading costs little more than parsing the small graph tables. Everything read is
checked before it is trusted (indices in range, data sizes that match shapes, known codes),
and any failure becomes a ModelError naming the file and the problem.

Bytes after the flatbuffer's last referenced byte are kept as `Model.trailing`: a flatbuffer
carries no length of its own, so the reader walks every table, vector and string from the
root to find where it ends. A zip archive there (TFLite Support's associated files) is kept
with its offsets counting from its own start, and the writer puts them back (archive.py).
"""

from __future__ import annotations

import copy
import math
import mmap
import os
import stat
import struct
from typing import Any

import numpy as np

from tflrewrite import archive, schema
from tflrewrite.errors import ModelError
from tflrewrite.model import (
    Buffer,
    DimensionMetadata,
    Metadata,
    Model,
    Opcode,
    Operator,
    Quantization,
    Signature,
    Sparsity,
    Subgraph,
    Tensor,
)

fb = schema.fb

FILE_IDENTIFIER = b"TFL3"
ALIGN = 16  # writers pad the flatbuffer to this; zero bytes up to it are not trailing data


def read(path: str | os.PathLike) -> Model:
    """Read a .tflite file. Raises ModelError for anything that is not a loadable model."""
    path = os.fspath(path)
    try:
        # A named pipe would block open() until some writer comes, and a device may never
        # end: a model is a regular file, so say so before opening anything else.
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
            raise ModelError(path, "not a regular file (a pipe, socket or device)")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ModelError(path, "empty file, not a TFLite model")
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except IsADirectoryError:
        raise ModelError(path, "is a directory, not a TFLite model") from None
    except OSError as e:
        raise ModelError(path, e.strerror or str(e)) from None
    return read_bytes(data, path)


def read_bytes(data: bytes | bytearray | memoryview | mmap.mmap, name: str = "<bytes>") -> Model:
    """Read a model from bytes in memory (views into `data` are kept, not copies)."""
    return _Reader(data, name).model()


class _Reader:
    def __init__(self, data: Any, name: str):
        self.name = name
        self.size = len(data)
        self.bytes = np.frombuffer(data, dtype=np.uint8) if self.size else np.empty(0, np.uint8)
        self.data = data

    def fail(self, problem: str) -> ModelError:
        return ModelError(self.name, problem)

    def model(self) -> Model:
        raw = self.unpack()
        if raw.subgraphs is None or len(raw.subgraphs) == 0:
            raise self.fail("the model has no subgraphs")
        buffers, external = self.buffers(raw.buffers or [])
        opcodes = [self.opcode(i, oc) for i, oc in enumerate(raw.operatorCodes or [])]
        subgraphs = [self.subgraph(si, sg, buffers, opcodes) for si, sg in enumerate(raw.subgraphs)]
        model = Model(
            version=raw.version,
            description=_text(raw.description),
            opcodes=opcodes,
            subgraphs=subgraphs,
            buffers=buffers,
            metadata=None
            if raw.metadata is None
            else [
                Metadata(_text(m.name), self.buffer_ref(buffers, m.buffer, f"metadata {i}"))
                for i, m in enumerate(raw.metadata)
            ],
            signatures=None
            if raw.signatureDefs is None
            else [self.signature(i, s, subgraphs) for i, s in enumerate(raw.signatureDefs)],
            metadata_buffers=None
            if raw.metadataBuffer is None
            else [self.buffer_ref(buffers, int(b), "metadata_buffer") for b in raw.metadataBuffer],
            buffers_after_flatbuffer=external,
        )
        model.trailing, model.trailing_offsets_from_file = self.trailing(model)
        _clear(
            raw,
            "operatorCodes",
            "subgraphs",
            "description",
            "buffers",
            "metadataBuffer",
            "metadata",
            "signatureDefs",
        )
        model.extra = raw
        return model

    def unpack(self) -> Any:
        if self.size < 8:
            raise self.fail(f"only {self.size} bytes, too short for a TFLite model")
        ident = bytes(self.bytes[4:8])
        if ident != FILE_IDENTIFIER:
            raise self.fail(f"not a TFLite model (file identifier {ident!r}, expected b'TFL3')")
        (root,) = struct.unpack_from("<I", self.bytes, 0)
        if root + 4 > self.size:
            raise self.fail("corrupt flatbuffer: root table offset points past the end")
        if root < 8:  # the root table cannot overlap its own offset and the identifier
            raise self.fail("corrupt flatbuffer: root table offset points into the header")
        # _Bounded: the generated code slices strings out of the buffer, and a slice
        # silently stops at the end of the file; a string whose length lies must fail.
        data = self.bytes.view(_Bounded)
        try:
            entries = _table_entries(fb.Model.GetRootAs(data, 0), self.size // 4)
            if entries <= self.size // 4:
                return fb.ModelT.InitFromPackedBuf(data, 0)
        except Exception as e:  # noqa: BLE001 - the generated unpacker trusts every offset
            raise self.fail(f"corrupt flatbuffer ({type(e).__name__}: {e})") from None
        raise self.fail(
            "corrupt flatbuffer: it lists more tables than the file has room for "
            "(entries that repeat one table or vector)"
        )

    def buffers(self, raw: list) -> tuple[list[Buffer], bool]:
        if len(raw) == 0:
            raise self.fail("the model has no buffers (buffer 0 must exist)")
        out, external = [], False
        for i, b in enumerate(raw):
            if b is None:
                raise self.fail(f"buffer {i} is missing")
            if b.offset > 1:
                if b.offset + b.size > self.size:
                    raise self.fail(
                        f"buffer {i} lies at bytes {b.offset}..{b.offset + b.size}, "
                        f"past the end of the {self.size}-byte file"
                    )
                external = True
                out.append(Buffer(self.bytes[b.offset : b.offset + b.size]))
            else:
                out.append(Buffer(None if b.data is None else _u8(b.data)))
        return out, external

    def buffer_ref(self, buffers: list[Buffer], index: int, what: str) -> Buffer:
        if not 0 <= index < len(buffers):
            raise self.fail(f"{what} refers to buffer {index}; the model has {len(buffers)}")
        return buffers[index]

    def opcode(self, i: int, raw: Any) -> Opcode:
        if raw is None:
            raise self.fail(f"operator code {i} is missing")
        code = max(raw.builtinCode, raw.deprecatedBuiltinCode)
        name = schema.OPERATOR_NAMES.get(code)
        if name is None:
            raise self.fail(f"operator code {i} has unknown builtin code {code}")
        if raw.version < 1:
            raise self.fail(f"operator code {i} ({name}) has version {raw.version}")
        oc = Opcode(name, raw.version, _text(raw.customCode))
        oc.extra = (raw.builtinCode, raw.deprecatedBuiltinCode)
        return oc

    def subgraph(self, si: int, raw: Any, buffers: list[Buffer], opcodes: list[Opcode]) -> Subgraph:
        if raw is None:
            raise self.fail(f"subgraph {si} is missing")
        tensors = [self.tensor(si, ti, t, buffers) for ti, t in enumerate(raw.tensors or [])]

        def ref(index: int, what: str, optional: bool = False) -> Tensor | None:
            index = int(index)
            if optional and index == -1:
                return None
            if not 0 <= index < len(tensors):
                raise self.fail(
                    f"subgraph {si}: {what} refers to tensor {index}; "
                    f"the subgraph has {len(tensors)}"
                )
            return tensors[index]

        operators = []
        for oi, op in enumerate(raw.operators or []):
            if op is None:
                raise self.fail(f"subgraph {si}: operator {oi} is missing")
            if not 0 <= op.opcodeIndex < len(opcodes):
                raise self.fail(
                    f"subgraph {si}: operator {oi} uses operator code {op.opcodeIndex}; "
                    f"the model has {len(opcodes)}"
                )
            what = f"operator {oi} ({opcodes[op.opcodeIndex].name})"
            operators.append(self.operator(op, opcodes, lambda i, w=what: ref(i, w, True)))
        sg = Subgraph(
            name=_text(raw.name),
            tensors=tensors,
            inputs=[ref(i, "input") for i in _ints(raw.inputs)],
            outputs=[ref(i, "output") for i in _ints(raw.outputs)],
            operators=operators,
        )
        _clear(raw, "tensors", "inputs", "outputs", "operators", "name")
        sg.extra = raw
        return sg

    def tensor(self, si: int, ti: int, raw: Any, buffers: list[Buffer]) -> Tensor:
        where = f"subgraph {si}: tensor {ti}"
        if raw is None:
            raise self.fail(f"{where} is missing")
        dtype = schema.TENSOR_TYPE_NAMES.get(raw.type)
        if dtype is None:
            raise self.fail(f"{where} has unknown type code {raw.type}")
        shape = None if raw.shape is None else tuple(int(d) for d in raw.shape)
        if shape is not None and any(d < 0 for d in shape):
            raise self.fail(f"{where} has a negative dimension in shape {shape}")
        t = Tensor(
            name=_text(raw.name) or "",
            dtype=dtype,
            shape=shape,
            buffer=self.buffer_ref(buffers, raw.buffer, where),
            shape_signature=None
            if raw.shapeSignature is None
            else tuple(int(d) for d in raw.shapeSignature),
            quantization=_quantization(raw.quantization),
            sparsity=_sparsity(raw.sparsity),
            is_variable=bool(raw.isVariable),
            has_rank=bool(raw.hasRank),
        )
        self.check_quantization(where, t)
        expected = t.expected_nbytes()
        if t.is_constant and expected is not None and expected != t.buffer.nbytes:
            raise self.fail(
                f"{where} ({t.name!r}) holds {t.buffer.nbytes} bytes of data but shape "
                f"{shape} of {dtype} needs {expected}"
            )
        if t.dtype == "STRING" and t.is_constant:
            self.check_strings(where, t)
        _clear(raw, "shape", "type", "buffer", "name", "quantization", "sparsity", "shapeSignature")
        t.extra = raw
        return t

    def check_quantization(self, where: str, t: Tensor) -> None:
        """LiteRT's checks of affine quantization (InterpreterBuilder::ParseQuantization):
        without them an axis out of range would fail later, in numpy, as a traceback."""
        q = t.quantization
        if q is None or not q.is_affine:
            return
        scales = q.scale.size
        zero_points = 0 if q.zero_point is None else q.zero_point.size
        if zero_points != scales:
            raise self.fail(
                f"{where} has {scales} quantization scales but {zero_points} zero points"
            )
        rank = len(t.shape or ())
        if q.axis < 0 or (rank and q.axis >= rank):
            raise self.fail(f"{where} is quantized along axis {q.axis} but has {rank} dimensions")
        if scales != 1 and rank and scales != t.shape[q.axis]:
            raise self.fail(
                f"{where} has {scales} quantization scales for the {t.shape[q.axis]} "
                f"entries of its axis {q.axis}"
            )

    def check_strings(self, where: str, t: Tensor) -> None:
        """The packed strings of a constant STRING tensor: int32 count n, n + 1 int32 offsets
        from the start of the buffer (the last one is the end of the last string), then the
        bytes. LiteRT loads them unchecked and reads wherever the offsets point: a bad
        offset is a crash in a kernel, not an error, so it is refused here."""
        data = t.buffer.data
        n = int(data[:4].view("<i4")[0]) if data.size >= 4 else -1
        header = 4 * (n + 2)
        offsets = data[4:header].view("<i4") if 0 <= n and header <= data.size else None
        bad = (
            offsets is None
            or offsets[0] != header
            or offsets[-1] > data.size
            or bool(np.any(np.diff(offsets) < 0))
        )
        if bad:
            raise self.fail(f"{where} ({t.name!r}) holds malformed string data")
        if t.shape is not None and t.sparsity is None and n != math.prod(t.shape):
            raise self.fail(f"{where} ({t.name!r}) holds {n} strings but has shape {t.shape}")

    def operator(self, raw: Any, opcodes: list[Opcode], ref: Any) -> Operator:
        if raw.builtinOptionsType != 0 and raw.builtinOptions is None:
            raise self.fail(f"unknown builtin options type {raw.builtinOptionsType}")
        if raw.builtinOptions2Type != 0 and raw.builtinOptions2 is None:
            raise self.fail(f"unknown builtin options type {raw.builtinOptions2Type}")
        custom = None if raw.customOptions is None else _u8(raw.customOptions)
        if raw.largeCustomOptionsSize > 0:
            end = raw.largeCustomOptionsOffset + raw.largeCustomOptionsSize
            if end > self.size:
                raise self.fail("large custom options lie past the end of the file")
            custom = self.bytes[raw.largeCustomOptionsOffset : end]
        op = Operator(
            opcode=opcodes[raw.opcodeIndex],
            inputs=[ref(i) for i in _ints(raw.inputs)],
            outputs=[ref(i) for i in _ints(raw.outputs)],
            attrs=schema.decode_attrs(raw.builtinOptions),
            options=raw.builtinOptions,
            options2=raw.builtinOptions2,
            custom_options=custom,
            intermediates=None
            if raw.intermediates is None
            else [ref(i) for i in _ints(raw.intermediates)],
        )
        _clear(
            raw,
            "opcodeIndex",
            "inputs",
            "outputs",
            "builtinOptionsType",
            "builtinOptions",
            "builtinOptions2Type",
            "builtinOptions2",
            "customOptions",
            "intermediates",
        )
        raw.largeCustomOptionsOffset = raw.largeCustomOptionsSize = 0
        op.extra = raw
        return op

    def signature(self, i: int, raw: Any, subgraphs: list[Subgraph]) -> Signature:
        if raw is None:
            raise self.fail(f"signature {i} is missing")
        if not 0 <= raw.subgraphIndex < len(subgraphs):
            raise self.fail(
                f"signature {i} refers to subgraph {raw.subgraphIndex}; "
                f"the model has {len(subgraphs)}"
            )
        sg = subgraphs[raw.subgraphIndex]

        def pairs(maps: list | None, what: str) -> list[tuple[str | None, Tensor]]:
            out = []
            for m in maps or []:
                if m is None or not 0 <= m.tensorIndex < len(sg.tensors):
                    raise self.fail(f"signature {i}: an {what} refers to a missing tensor")
                out.append((_text(m.name), sg.tensors[m.tensorIndex]))
            return out

        sig = Signature(
            _text(raw.signatureKey), sg, pairs(raw.inputs, "input"), pairs(raw.outputs, "output")
        )
        sig.extra = (raw.inputs is None, raw.outputs is None)
        return sig

    def trailing(self, model: Model) -> tuple[bytes, bool]:
        """The bytes after the flatbuffer's last referenced byte (and after the zero bytes
        that pad it to 16), with a zip archive among them detached from its position (see
        archive.detach); whether that archive's offsets counted from the file's start."""
        ends = [self.flatbuffer_end()]
        ends += [self.end_of(b.data) for b in model.buffers if b.data is not None]
        ends += [
            self.end_of(op.custom_options)
            for sg in model.subgraphs
            for op in sg.operators
            if op.custom_options is not None
        ]
        end = max(ends)
        padding = self.bytes[end : min(self.size, end + (-end) % ALIGN)]
        if not padding.any():
            end += padding.size
        return archive.detach(bytes(self.bytes[end:]))

    def flatbuffer_end(self) -> int:
        """One past the flatbuffer's last referenced byte: the furthest end of a table,
        vtable, string or vector reachable from the root (a flatbuffer carries no length)."""
        try:
            return _Extent(self.data, schema.pointers()).walk()
        except (struct.error, IndexError, ValueError):
            raise self.fail("corrupt flatbuffer: a table or vector lies past the end") from None

    def end_of(self, view: np.ndarray) -> int:
        """Where a view into the file ends, as a file offset."""
        if view.size == 0:
            return 0
        start = view.__array_interface__["data"][0] - self.bytes.__array_interface__["data"][0]
        return start + view.size


class _Extent:
    """Walks every table reachable from the root, noting the furthest byte each object
    (table, vtable, string, vector) reaches. Tables met twice are walked once."""

    def __init__(self, data: Any, layout: dict[str, tuple[schema.Pointer, ...]]):
        self.data, self.layout = data, layout
        self.vtables: dict[int, tuple[int, int, tuple[int, ...]]] = {}
        self.end = 8

    def u32(self, at: int) -> int:
        return _U32.unpack_from(self.data, at)[0]

    def vtable(self, vt: int) -> tuple[int, int, tuple[int, ...]]:
        """(table size, end of the vtable, field offsets) of the vtable at `vt`."""
        known = self.vtables.get(vt)
        if known is None:
            size, table_size = struct.unpack_from("<HH", self.data, vt)
            fields = struct.unpack_from(f"<{max(0, size - 4) // 2}H", self.data, vt + 4)
            known = self.vtables[vt] = (table_size, vt + size, fields)
        return known

    def walk(self) -> int:
        stack: list[tuple[int, str | None]] = [(self.u32(0), "Model")]
        seen: set[int] = set()
        while stack:
            pos, table = stack.pop()
            if pos in seen:
                continue
            seen.add(pos)
            size, vt_end, fields = self.vtable(pos - _I32.unpack_from(self.data, pos)[0])
            self.end = max(self.end, pos + size, vt_end)
            for p in self.layout.get(table, ()) if table is not None else ():
                if p.slot < len(fields) and fields[p.slot]:
                    self.field(pos, fields, p, stack)
        return self.end

    def field(self, pos: int, fields: tuple[int, ...], p: schema.Pointer, stack: list) -> None:
        at = pos + fields[p.slot]
        target = at + self.u32(at)
        if p.kind == "table":
            stack.append((target, p.table))
        elif p.kind == "union":
            has_type = p.type_slot < len(fields) and fields[p.type_slot]
            code = _U8.unpack_from(self.data, pos + fields[p.type_slot])[0] if has_type else 0
            stack.append((target, (p.members or {}).get(code)))
        elif p.kind == "string":
            self.end = max(self.end, target + 5 + self.u32(target))  # length, bytes, NUL
        elif p.kind == "scalars":
            self.end = max(self.end, target + 4 + self.u32(target) * p.width)
        else:  # a vector of offsets to tables or strings
            n = self.u32(target)
            self.end = max(self.end, target + 4 + 4 * n)
            for i, offset in enumerate(struct.unpack_from(f"<{n}I", self.data, target + 4)):
                element = target + 4 + 4 * i + offset
                if p.kind == "tables":
                    stack.append((element, p.table))
                else:
                    self.end = max(self.end, element + 5 + self.u32(element))


_U8, _U32, _I32 = struct.Struct("<B"), struct.Struct("<I"), struct.Struct("<i")


def _table_entries(m: Any, limit: int) -> int:
    """How many entries the model's vectors of tables hold, counted as the unpacker will
    visit them (a vector met twice counts twice); stops counting past `limit`.

    Each entry is a 4-byte offset, so a file of N bytes has room for N/4 of them, unless
    entries repeat: no TFLite writer does that, but a crafted file of a few kilobytes whose
    subgraph entries all name one subgraph, whose tensor entries all name one tensor, would
    unpack into millions of objects. The raw tables read here create nothing."""
    n = (
        m.OperatorCodesLength()
        + m.BuffersLength()
        + m.MetadataLength()
        + m.SubgraphsLength()
        + m.SignatureDefsLength()
    )
    for i in range(m.SubgraphsLength()):
        if n > limit:
            return n
        sg = m.Subgraphs(i)
        n += sg.TensorsLength() + sg.OperatorsLength()
        for j in range(sg.TensorsLength()):
            if n > limit:
                return n
            t = sg.Tensors(j)
            sparsity = t.Sparsity()
            n += t.VariantTensorsLength() + (
                0 if sparsity is None else sparsity.DimMetadataLength()
            )
    for i in range(m.SignatureDefsLength()):
        if n > limit:
            return n
        sig = m.SignatureDefs(i)
        n += sig.InputsLength() + sig.OutputsLength()
    return n


class _Bounded(np.ndarray):
    """The file's bytes (a view, no copy) for the flatbuffer unpacker: a slice that runs
    past the end raises instead of coming back short, like LiteRT's verifier."""

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice) and key.stop is not None and key.stop > len(self):
            raise IndexError(f"bytes {key.start}..{key.stop} lie past the end")
        return super().__getitem__(key)


def _u8(values: Any) -> np.ndarray:
    return values if isinstance(values, np.ndarray) else np.asarray(values, dtype=np.uint8)


def _ints(values: Any) -> list[int]:
    return [] if values is None else [int(v) for v in values]


def _text(raw: bytes | str | None) -> str | None:
    if raw is None or isinstance(raw, str):
        return raw
    return raw.decode("utf-8", "surrogateescape")


def _clear(raw: Any, *fields: str) -> None:
    """Drop from a schema object the fields the IR models, keeping only the opaque rest."""
    for name in fields:
        setattr(raw, name, None)


def _array(values: Any, dtype: str) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=dtype)


def _quantization(raw: Any) -> Quantization | None:
    if raw is None:
        return None
    return Quantization(
        scale=_array(raw.scale, "<f4"),
        zero_point=_array(raw.zeroPoint, "<i8"),
        min=_array(raw.min, "<f4"),
        max=_array(raw.max, "<f4"),
        axis=int(raw.quantizedDimension),
        details=None if raw.detailsType == 0 else (raw.detailsType, copy.copy(raw.details)),
    )


_INDEX_DTYPES = {1: "<i4", 2: "<u2", 3: "u1"}  # SparseIndexVector union members


def _index_vector(kind: int, raw: Any) -> np.ndarray | None:
    if kind == 0 or raw is None:
        return None
    values = raw.values if raw.values is not None else []
    return np.asarray(values, dtype=_INDEX_DTYPES[kind])


def _sparsity(raw: Any) -> Sparsity | None:
    if raw is None:
        return None
    dims = None
    if raw.dimMetadata is not None:
        dims = [
            DimensionMetadata(
                format="SPARSE_CSR" if d.format == fb.DimensionType.SPARSE_CSR else "DENSE",
                dense_size=int(d.denseSize),
                segments=_index_vector(d.arraySegmentsType, d.arraySegments),
                indices=_index_vector(d.arrayIndicesType, d.arrayIndices),
            )
            for d in raw.dimMetadata
        ]
    return Sparsity(_array(raw.traversalOrder, "<i4"), _array(raw.blockMap, "<i4"), dims)
