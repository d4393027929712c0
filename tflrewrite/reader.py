"""Reads a .tflite file into the IR, refusing anything LiteRT would not load.

The file is memory-mapped and constant data stays in it: every Buffer.data is a read-only
view, so reading costs little more than parsing the small graph tables. Everything read is
checked before it is trusted (indices in range, data sizes that match shapes, known codes),
and any failure becomes a ModelError naming the file and the problem.

The heavy tables (buffers, tensors with their quantization, operators: thousands in a large
model) are read straight from the bytes, each field for all the tables of a vector at once
(_Tables). The rest of the model, and any of those tables that sets a field the IR does not
model, goes through the schema bindings' object API, whose objects the IR keeps in `extra`
so that such fields survive a rewrite.

Bytes after the flatbuffer's last referenced byte are kept as `Model.trailing`: a flatbuffer
carries no length of its own, so the reader walks every table, vector and string from the
root to find where it ends. A zip archive there (TFLite Support's associated files) is kept
with its offsets counting from its own start, and the writer puts them back (archive.py).
"""

from __future__ import annotations

import copy
import functools
import math
import mmap
import os
import stat
import struct
from collections.abc import Iterator
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
        self.view = memoryview(self.bytes)
        # _Bounded: the generated code slices strings out of the buffer, and a slice
        # silently stops at the end of the file; a string whose length lies must fail.
        self.bounded = self.bytes.view(_Bounded)
        self.entries = 0  # vector entries of tables visited, see visit()
        self.data_end = 0  # where the last buffer's data ends
        self.options_seen: dict[tuple, Any] = {}
        self.fields_end: dict[tuple, int] = {}

    def fail(self, problem: str) -> ModelError:
        return ModelError(self.name, problem)

    def model(self) -> Model:
        root = self.root()
        try:
            return self.parse(root)
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - every offset in the file is untrusted
            raise self.fail(f"corrupt flatbuffer ({type(e).__name__}: {e})") from None

    def root(self) -> int:
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
        return root

    def parse(self, root: int) -> Model:
        top = _Tables(self, np.array([root]))
        rest = _ModelRest()
        rest.Init(self.bounded, root)
        self.visit(_table_entries(rest, self.size // 4))
        raw = fb.ModelT.InitFromObj(rest)  # all but the subgraphs and buffers, read below
        subgraphs_at, buffers_at = int(top.target(2)[0]), int(top.target(4)[0])
        if not subgraphs_at or self.length(subgraphs_at, 4) == 0:
            raise self.fail("the model has no subgraphs")
        buffers, external = self.buffers(buffers_at)
        opcodes = [self.opcode(i, oc) for i, oc in enumerate(raw.operatorCodes or [])]
        subgraphs = self.subgraphs(subgraphs_at, buffers, opcodes)
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

    # ------------------------------------------------------------ raw reads

    def gather(self, at: np.ndarray, dtype: str) -> np.ndarray:
        """The values of type `dtype` at file positions `at`."""
        size = _SIZES[dtype]
        if at.size and (at.min() < 0 or at.max() > self.size - size):
            raise self.fail("corrupt flatbuffer: an offset points past the end of the file")
        return self.bytes[at[:, None] + _SPANS[size]].view(dtype).reshape(-1)

    def length(self, at: int, itemsize: int) -> int:
        """The element count of the vector at `at`, checked to fit in the file."""
        if not 0 < at <= self.size - 4:
            raise self.fail("corrupt flatbuffer: an offset points past the end of the file")
        (n,) = struct.unpack_from("<I", self.view, at)
        if at + 4 + n * itemsize > self.size:
            raise self.fail(f"corrupt flatbuffer: a vector of {n} entries runs past the end")
        return n

    def visit(self, entries: int) -> None:
        """Count entries of vectors of tables as they are read. Each is a 4-byte offset, so
        a file of N bytes has room for N/4 of them, unless entries repeat: no TFLite writer
        does that, but a crafted file of a few kilobytes whose subgraph entries all name one
        subgraph, whose tensor entries all name one tensor, would read as millions."""
        self.entries += entries
        if self.entries > self.size // 4:
            raise self.fail(
                "corrupt flatbuffer: it lists more tables than the file has room for "
                "(entries that repeat one table or vector)"
            )

    def ints(self, start: int, n: int) -> tuple[int, ...] | None:
        return None if start < 0 else _int32s(n).unpack_from(self.view, start)

    def array(self, start: int, n: int, dtype: str) -> np.ndarray | None:
        if start < 0:
            return None
        return self.bytes[start : start + n * _SIZES[dtype]].view(dtype)

    def unpack(self, accessor: type, cls: type, at: int) -> Any:
        """The table at `at` through the object API (for what the raw reads leave out)."""
        table = accessor()
        table.Init(self.bounded, at)
        return cls.InitFromObj(table)

    # ------------------------------------------------------------ buffers

    def buffers(self, at: int) -> tuple[list[Buffer], bool]:
        bs = _Tables.vector(self, at) if at else None
        if bs is None or len(bs) == 0:
            raise self.fail("the model has no buffers (buffer 0 must exist)")
        starts, lengths = bs.vectors(0, 1)
        offsets, sizes = bs.scalar(1, "<u8").tolist(), bs.scalar(2, "<u8").tolist()
        ends = np.where((starts >= 0) & (lengths > 0), starts + lengths, 0)
        self.data_end = int(ends.max())
        out, external = [], False
        for i, (start, n, offset, size) in enumerate(
            zip(starts.tolist(), lengths.tolist(), offsets, sizes)
        ):
            if offset > 1:
                if offset + size > self.size:
                    raise self.fail(
                        f"buffer {i} lies at bytes {offset}..{offset + size}, "
                        f"past the end of the {self.size}-byte file"
                    )
                external = True
                out.append(Buffer(self.bytes[offset : offset + size]))
                if size:
                    self.data_end = max(self.data_end, offset + size)
            else:
                out.append(Buffer(None if start < 0 else self.bytes[start : start + n]))
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

    # ------------------------------------------------------------ subgraphs

    def subgraphs(self, at: int, buffers: list[Buffer], opcodes: list[Opcode]) -> list[Subgraph]:
        sgs = _Tables.vector(self, at)
        where = zip(sgs.pos.tolist(), sgs.target(0).tolist(), sgs.target(3).tolist())
        return [
            self.subgraph(si, at, tensors_at, operators_at, buffers, opcodes)
            for si, (at, tensors_at, operators_at) in enumerate(where)
        ]

    def subgraph(
        self,
        si: int,
        at: int,
        tensors_at: int,
        operators_at: int,
        buffers: list[Buffer],
        opcodes: list[Opcode],
    ) -> Subgraph:
        raw = self.unpack(_SubGraphRest, fb.SubGraphT, at)  # all but tensors and operators
        tensors = self.tensors(si, tensors_at, buffers) if tensors_at else []

        def ref(index: int, what: str) -> Tensor:
            index = int(index)
            if not 0 <= index < len(tensors):
                raise self.fail(
                    f"subgraph {si}: {what} refers to tensor {index}; "
                    f"the subgraph has {len(tensors)}"
                )
            return tensors[index]

        operators = self.operators(si, operators_at, opcodes, tensors) if operators_at else []
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

    # ------------------------------------------------------------ tensors

    def tensors(self, si: int, at: int, buffers: list[Buffer]) -> list[Tensor]:
        ts = _Tables.vector(self, at)
        rows = zip(
            ts.scalar(1, "i1").tolist(),
            ts.scalar(2, "<u4").tolist(),
            _spans(*ts.vectors(0, 4)),
            _spans(*ts.vectors(3, 1)),
            _spans(*ts.vectors(7, 4)),
            self.quantizations(ts.target(4)),
            ts.target(6).tolist(),
            (ts.scalar(5, "u1") != 0).tolist(),
            (ts.scalar(8, "u1") != 0).tolist(),
            ts.sets(*_UNMODELED_TENSOR_SLOTS).tolist(),
        )
        out = []
        view, names = self.view, schema.TENSOR_TYPE_NAMES
        for ti, row in enumerate(rows):
            code, b, (at, rank), (name_at, name_length), signature, quantization = row[:6]
            dtype = names.get(code)
            if dtype is None:
                raise self.fail(f"subgraph {si}: tensor {ti} has unknown type code {code}")
            shape = None if at < 0 else _int32s(rank).unpack_from(view, at)
            if shape and min(shape) < 0:
                raise self.fail(
                    f"subgraph {si}: tensor {ti} has a negative dimension in shape {shape}"
                )
            if not 0 <= b < len(buffers):
                self.buffer_ref(buffers, b, f"subgraph {si}: tensor {ti}")
            sparsity_at, is_variable, has_rank, unmodeled = row[6:]
            t = Tensor(
                name=""
                if name_at < 0
                else str(view[name_at : name_at + name_length], "utf-8", "surrogateescape"),
                dtype=dtype,
                shape=shape,
                buffer=buffers[b],
                shape_signature=self.ints(*signature),
                quantization=quantization,
                sparsity=self.sparsity(sparsity_at) if sparsity_at else None,
                is_variable=is_variable,
                has_rank=has_rank,
            )
            if quantization is not None or buffers[b].data is not None:
                self.check_tensor(f"subgraph {si}: tensor {ti}", t)
            if unmodeled:  # fields the IR does not model, kept as the object API reads them
                t.extra = self.unpack(fb.Tensor, fb.TensorT, int(ts.pos[ti]))
                _clear(t.extra, *_MODELED_TENSOR_FIELDS)
            out.append(t)
        return out

    def quantizations(self, at: np.ndarray) -> list[Quantization | None]:
        """The QuantizationParameters tables at `at` (0: the tensor has none)."""
        out: list[Quantization | None] = [None] * len(at)
        which = np.flatnonzero(at)
        if which.size == 0:
            return out
        qs = _Tables(self, at[which])
        vectors = [
            list(_spans(*qs.vectors(s, _SIZES[dtype]))) for s, dtype in _QUANTIZATION_VECTORS
        ]
        axes = qs.scalar(6, "<i4").tolist()
        details = (qs.scalar(4, "u1") != 0).tolist()
        for k, i in enumerate(which.tolist()):
            if details[k]:  # custom quantization: rare, read whole by the object API
                raw = self.unpack(fb.QuantizationParameters, fb.QuantizationParametersT, int(at[i]))
                out[i] = _quantization(raw)
                continue
            low, high, scale, zero_point = (
                self.array(*v[k], dtype)
                for v, (_, dtype) in zip(vectors, _QUANTIZATION_VECTORS, strict=True)
            )
            out[i] = Quantization(
                scale=scale, zero_point=zero_point, min=low, max=high, axis=axes[k]
            )
        return out

    def sparsity(self, at: int) -> Sparsity:
        table = fb.SparsityParameters()
        table.Init(self.bounded, at)
        self.visit(table.DimMetadataLength())
        return _sparsity(fb.SparsityParametersT.InitFromObj(table))

    def check_tensor(self, where: str, t: Tensor) -> None:
        self.check_quantization(where, t)
        expected = t.expected_nbytes()
        if t.is_constant and expected is not None and expected != t.buffer.nbytes:
            raise self.fail(
                f"{where} ({t.name!r}) holds {t.buffer.nbytes} bytes of data but shape "
                f"{t.shape} of {t.dtype} needs {expected}"
            )
        if t.dtype == "STRING" and t.is_constant:
            self.check_strings(where, t)

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

    # ------------------------------------------------------------ operators

    def operators(
        self, si: int, at: int, opcodes: list[Opcode], tensors: list[Tensor]
    ) -> list[Operator]:
        ops = _Tables.vector(self, at)
        rows = zip(
            ops.scalar(0, "<u4").tolist(),
            *(_spans(*ops.vectors(slot, size)) for slot, size in _OPERATOR_VECTORS),
            ops.scalar(3, "u1").tolist(),
            ops.target(4).tolist(),
            ops.scalar(11, "u1").tolist(),
            ops.target(12).tolist(),
            ops.scalar(9, "<u8").tolist(),
            ops.scalar(10, "<u8").tolist(),
            ops.sets(*_UNMODELED_OPERATOR_SLOTS).tolist(),
        )
        out = []
        for oi, row in enumerate(rows):
            code, inputs, outputs, intermediates, custom = row[:5]
            kind, options_at, kind2, options2_at, large_at, large_size, unmodeled = row[5:]
            if not 0 <= code < len(opcodes):
                raise self.fail(
                    f"subgraph {si}: operator {oi} uses operator code {code}; "
                    f"the model has {len(opcodes)}"
                )
            options, attrs = self.options(schema.OPTIONS_CLASSES, kind, options_at)
            options2, _ = self.options(schema.OPTIONS2_CLASSES, kind2, options2_at)
            custom_options = self.array(*custom, "u1")
            if large_size > 0:
                if large_at + large_size > self.size:
                    raise self.fail("large custom options lie past the end of the file")
                custom_options = self.bytes[large_at : large_at + large_size]
            opcode = opcodes[code]
            op = Operator(
                opcode=opcode,
                inputs=self.refs(tensors, inputs, si, oi, opcode),
                outputs=self.refs(tensors, outputs, si, oi, opcode),
                attrs=attrs,
                options=options,
                options2=options2,
                custom_options=custom_options,
                intermediates=None
                if intermediates[0] < 0
                else self.refs(tensors, intermediates, si, oi, opcode),
            )
            if unmodeled:  # fields the IR does not model, kept as the object API reads them
                op.extra = self.unpack(fb.Operator, fb.OperatorT, int(ops.pos[oi]))
                _clear(op.extra, *_MODELED_OPERATOR_FIELDS)
                op.extra.largeCustomOptionsOffset = op.extra.largeCustomOptionsSize = 0
            out.append(op)
        return out

    def refs(
        self, tensors: list[Tensor], span: tuple[int, int], si: int, oi: int, opcode: Opcode
    ) -> list[Tensor | None]:
        """The tensors operator `oi` lists by index (-1: an optional input left out)."""
        ids = self.ints(*span) or ()
        if ids and (min(ids) < -1 or max(ids) >= len(tensors)):
            bad = next(i for i in ids if not -1 <= i < len(tensors))
            raise self.fail(
                f"subgraph {si}: operator {oi} ({opcode.name}) refers to tensor "
                f"{bad}; the subgraph has {len(tensors)}"
            )
        return [tensors[i] if i >= 0 else None for i in ids]

    def options(self, classes: dict[int, type], kind: int, at: int) -> tuple[Any, Any]:
        """A builtin options object of union type `kind` at `at`, and its typed attributes.
        A large model repeats a few option tables many times over: equal tables of plain
        values share one object (and attributes), which nothing edits in place."""
        if kind == 0:
            return None, None
        cls = classes.get(kind)
        if cls is None or at == 0:
            raise self.fail(f"unknown builtin options type {kind}")
        key = self.table_key(cls, at)
        seen = self.options_seen.get(key) if key is not None else None
        if seen is not None:
            return seen
        options = cls.InitFromBuf(self.bounded, at)
        result = options, schema.decode_attrs(options)
        if key is not None and schema.scalar_fields(options) is not None:
            self.options_seen[key] = result
        return result

    def table_key(self, cls: type, at: int) -> tuple | None:
        """The bytes a table's values are read from: its vtable and its fields (None when
        they do not lie in the file; the object API then reads it, or fails)."""
        if at > self.size - 4:
            return None
        (back,) = struct.unpack_from("<i", self.view, at)
        vtable = at - back
        if vtable < 0 or vtable > self.size - 4:
            return None
        (vtable_size,) = struct.unpack_from("<H", self.view, vtable)
        if vtable_size < 4 or vtable + vtable_size > self.size:
            return None
        layout = bytes(self.view[vtable : vtable + vtable_size])
        end = self.fields_end.get((cls, layout))
        if end is None:
            sizes = schema.field_sizes(cls)
            offsets = struct.unpack_from(f"<{(vtable_size - 4) // 2}H", layout, 4)
            end = max((off + size for off, size in zip(offsets, sizes) if off), default=4)
            self.fields_end[cls, layout] = end
        if at + end > self.size:
            return None
        return cls, layout, bytes(self.view[at + 4 : at + end])

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
            _text(raw.signatureKey),
            sg,
            inputs=pairs(raw.inputs, "input"),
            outputs=pairs(raw.outputs, "output"),
        )
        sig.extra = (raw.inputs is None, raw.outputs is None)
        return sig

    def trailing(self, model: Model) -> tuple[bytes, bool]:
        """The bytes after the flatbuffer's last referenced byte (and after the zero bytes
        that pad it to 16), with a zip archive among them detached from its position (see
        archive.detach); whether that archive's offsets counted from the file's start."""
        end = max(self.flatbuffer_end(), self.data_end)  # data_end: buffers stored after it
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
    """How many entries the model's vectors of tables that the object API reads hold,
    counted as it will visit them (see _Reader.visit); stops counting past `limit`."""
    n = m.OperatorCodesLength() + m.MetadataLength() + m.SignatureDefsLength()
    for i in range(m.SignatureDefsLength()):
        if n > limit:
            return n
        sig = m.SignatureDefs(i)
        n += sig.InputsLength() + sig.OutputsLength()
    return n


class _Tables:
    """Tables of one kind, each field read for all of them at once.

    The flatbuffer format, little-endian: a table at position p starts with an int32 s, and
    its vtable lies at p - s: uint16 vtable size, uint16 table size, then a uint16 for each
    field slot, the field's offset from p (0, or a slot past the vtable's end: the field is
    absent and has its default). A field that is a table, vector or string holds a uint32
    offset to it, counted from the field's own position; a vector (or string) is a uint32
    element count followed by the elements. Positions are file offsets, checked by
    _Reader.gather before anything is read there.
    """

    def __init__(self, r: _Reader, pos: np.ndarray):
        self.r, self.pos = r, pos
        self.vtable = pos - r.gather(pos, "<i4")
        self.vtable_size = r.gather(self.vtable, "<u2")

    @classmethod
    def vector(cls, r: _Reader, at: int) -> _Tables:
        """The tables of the vector of tables at `at`."""
        n = r.length(at, 4)
        r.visit(n)
        entries = at + 4 + 4 * np.arange(n, dtype=np.int64)
        return cls(r, entries + r.gather(entries, "<u4"))

    def __len__(self) -> int:
        return len(self.pos)

    def field(self, slot: int) -> np.ndarray:
        """Where each table's field `slot` lies (0 where absent)."""
        entry = 4 + 2 * slot
        out = np.zeros(len(self.pos), np.int64)
        has = np.flatnonzero(self.vtable_size > entry)
        if has.size:
            offset = self.r.gather(self.vtable[has] + entry, "<u2")
            out[has] = np.where(offset > 0, self.pos[has] + offset, 0)
        return out

    def scalar(self, slot: int, dtype: str, default: int = 0) -> np.ndarray:
        at = self.field(slot)
        out = np.full(len(at), default, dtype)
        has = np.flatnonzero(at)
        out[has] = self.r.gather(at[has], dtype)
        return out

    def target(self, slot: int) -> np.ndarray:
        """Where the table, vector or string that field `slot` refers to lies (0: absent)."""
        at = self.field(slot)
        has = np.flatnonzero(at)
        at[has] += self.r.gather(at[has], "<u4")
        return at

    def vectors(self, slot: int, itemsize: int) -> tuple[np.ndarray, np.ndarray]:
        """Where the elements of the vector in field `slot` start (-1: absent), and how many
        there are, checked to lie in the file."""
        at = self.target(slot)
        has = np.flatnonzero(at)
        n = np.zeros(len(at), np.int64)
        n[has] = self.r.gather(at[has], "<u4")
        if has.size and (at[has] + 4 + n[has] * itemsize).max() > self.r.size:
            raise self.r.fail("corrupt flatbuffer: a vector runs past the end of the file")
        return np.where(at > 0, at + 4, -1), n

    def sets(self, slots: tuple[int, ...], beyond: int) -> np.ndarray:
        """Whether each table sets a field of one of `slots` or of a slot from `beyond` on."""
        out = np.zeros(len(self.pos), bool)
        for slot in slots:
            out |= self.field(slot) > 0
        for i in np.flatnonzero(self.vtable_size > 4 + 2 * beyond).tolist():
            start = int(self.vtable[i]) + 4 + 2 * beyond
            n = (int(self.vtable_size[i]) - 4) // 2 - beyond
            if start + 2 * n > self.r.size:
                raise self.r.fail("corrupt flatbuffer: a vtable runs past the end of the file")
            out[i] |= any(struct.unpack_from(f"<{n}H", self.r.view, start))
        return out


class _ModelRest(fb.Model):
    """The root table as the object API sees it, less the subgraphs and buffers."""

    def SubgraphsIsNone(self) -> bool:  # noqa: N802 - the bindings' name
        return True

    def BuffersIsNone(self) -> bool:  # noqa: N802 - the bindings' name
        return True


class _SubGraphRest(fb.SubGraph):
    """A subgraph as the object API sees it, less the tensors and operators."""

    def TensorsIsNone(self) -> bool:  # noqa: N802 - the bindings' name
        return True

    def OperatorsIsNone(self) -> bool:  # noqa: N802 - the bindings' name
        return True


_SIZES = {"u1": 1, "i1": 1, "<u2": 2, "<i4": 4, "<u4": 4, "<f4": 4, "<i8": 8, "<u8": 8}
_SPANS = {size: np.arange(size) for size in set(_SIZES.values())}
_QUANTIZATION_VECTORS = ((0, "<f4"), (1, "<f4"), (2, "<f4"), (3, "<i8"))  # min max scale zp
_OPERATOR_VECTORS = ((1, 4), (2, 4), (8, 4), (5, 1))  # inputs outputs intermediates custom
# Slots of fields the IR does not model: (listed slots, first slot of all later ones). A
# table that sets one is also read by the object API, into `extra`.
_UNMODELED_TENSOR_SLOTS = ((), 9)  # variant_tensors, external_buffer
_UNMODELED_OPERATOR_SLOTS = ((6, 7), 13)  # custom options format, mutating inputs, debug
_MODELED_TENSOR_FIELDS = (
    "shape",
    "type",
    "buffer",
    "name",
    "quantization",
    "sparsity",
    "shapeSignature",
)
_MODELED_OPERATOR_FIELDS = (
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


def _spans(starts: np.ndarray, lengths: np.ndarray) -> Iterator[tuple[int, int]]:
    return zip(starts.tolist(), lengths.tolist())


@functools.cache
def _int32s(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}i")


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
