"""The in-memory model: a TFLite graph as plain objects, its constant data as numpy arrays.

Objects refer to each other directly (a tensor holds its Buffer, an operator its Tensors);
indices exist only in the file and are assigned by the writer. Whatever a field of the file
means that the IR does not model is kept, opaque, in `extra` so that it survives a rewrite.
Nothing here knows flatbuffers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

# TFLite TensorType names and the numpy dtype of their stored elements; None where the
# stored form has no numpy twin (strings, resources, packed 4-bit...) and stays raw bytes.
DTYPES: dict[str, np.dtype | None] = {
    "FLOAT32": np.dtype("<f4"),
    "FLOAT16": np.dtype("<f2"),
    "FLOAT64": np.dtype("<f8"),
    "INT8": np.dtype("i1"),
    "UINT8": np.dtype("u1"),
    "INT16": np.dtype("<i2"),
    "UINT16": np.dtype("<u2"),
    "INT32": np.dtype("<i4"),
    "UINT32": np.dtype("<u4"),
    "INT64": np.dtype("<i8"),
    "UINT64": np.dtype("<u8"),
    "BOOL": np.dtype("?"),
    "COMPLEX64": np.dtype("<c8"),
    "COMPLEX128": np.dtype("<c16"),
    "BFLOAT16": np.dtype("<u2"),  # stored bit patterns; no arithmetic meaning in numpy
    "STRING": None,
    "RESOURCE": None,
    "VARIANT": None,
    "INT4": None,
    "INT2": None,
    "UINT4": None,
}


@dataclass(eq=False)
class Buffer:
    """A block of constant bytes; several tensors (or a metadata entry) may share one.

    `data` is a 1-D uint8 array (often a read-only view of the input file), or None when the
    buffer holds no data vector at all (as buffer 0 and activation buffers do).
    """

    data: np.ndarray | None = None

    def __deepcopy__(self, memo: dict) -> Buffer:
        # Structure is copied, bytes are shared: passes replace arrays, never write into them.
        return Buffer(self.data)

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else int(self.data.size)


@dataclass(eq=False)
class Quantization:
    """Affine quantization: real = scale * (q - zero_point), per tensor or along `axis`."""

    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    axis: int = 0
    details: Any = None  # custom quantization details, kept opaque

    @property
    def per_axis(self) -> bool:
        return self.scale is not None and self.scale.size > 1

    @property
    def is_affine(self) -> bool:
        return self.scale is not None and self.scale.size > 0


@dataclass(eq=False)
class DimensionMetadata:
    """One dimension of a sparse tensor: DENSE of `dense_size`, or SPARSE_CSR segments/indices."""

    format: str  # "DENSE" or "SPARSE_CSR"
    dense_size: int = 0
    segments: np.ndarray | None = None  # int32, uint16 or uint8: the dtype is the stored form
    indices: np.ndarray | None = None


@dataclass(eq=False)
class Sparsity:
    """TFLite SparsityParameters: how the stored values of a sparse tensor map to its shape."""

    traversal_order: np.ndarray | None = None
    block_map: np.ndarray | None = None
    dim_metadata: list[DimensionMetadata] | None = None


@dataclass(eq=False)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...] | None
    _: KW_ONLY
    buffer: Buffer
    shape_signature: tuple[int, ...] | None = None
    quantization: Quantization | None = None
    sparsity: Sparsity | None = None
    is_variable: bool = False
    has_rank: bool = False
    extra: Any = None

    @property
    def is_constant(self) -> bool:
        return self.buffer.nbytes > 0

    @property
    def np_dtype(self) -> np.dtype | None:
        return DTYPES.get(self.dtype)

    @property
    def data(self) -> np.ndarray | None:
        """The stored values as a typed array: shaped for dense tensors, flat for sparse ones.

        None for tensors without data; raw uint8 bytes where the dtype has no numpy twin.
        """
        raw = self.buffer.data
        if raw is None or raw.size == 0:
            return None
        dtype = self.np_dtype
        if dtype is None:
            return raw
        values = raw.view(dtype) if raw.size % dtype.itemsize == 0 else raw
        if self.sparsity is None and self.shape is not None and values.size == _prod(self.shape):
            return values.reshape(self.shape)
        return values

    def expected_nbytes(self) -> int | None:
        """Bytes the buffer of a dense constant of this shape and dtype must hold, if known."""
        dtype = self.np_dtype
        if dtype is None or self.shape is None or self.sparsity is not None:
            return None
        return _prod(self.shape) * dtype.itemsize


@dataclass(eq=False)
class Opcode:
    """An entry of the model's operator-code table: builtin name (or CUSTOM) and version."""

    name: str
    version: int = 1
    custom_code: str | None = None
    extra: Any = None


@dataclass(frozen=True)
class Conv2DAttrs:
    """CONV_2D's builtin options. Enums are named as in the schema: padding "SAME" or "VALID";
    activation (fused) "NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH" or "SIGN_BIT". A code
    the schema does not name is kept as its decimal string."""

    padding: str
    stride: tuple[int, int]  # (h, w)
    dilation: tuple[int, int]  # (h, w)
    activation: str


@dataclass(frozen=True)
class DepthwiseConv2DAttrs(Conv2DAttrs):
    """DEPTHWISE_CONV_2D's builtin options: a convolution's, and the depth multiplier."""

    depth_multiplier: int


@dataclass(frozen=True)
class Pool2DAttrs:
    """The builtin options of MAX_POOL_2D, AVERAGE_POOL_2D and L2_POOL_2D (as Conv2DAttrs)."""

    padding: str
    stride: tuple[int, int]  # (h, w)
    filter: tuple[int, int]  # (h, w)
    activation: str


@dataclass(frozen=True)
class FullyConnectedAttrs:
    """FULLY_CONNECTED's builtin options; weights_format "DEFAULT" or "SHUFFLED4x16INT8"."""

    activation: str
    weights_format: str
    keep_num_dims: bool
    asymmetric_quantize_inputs: bool


OpAttrs = Conv2DAttrs | Pool2DAttrs | FullyConnectedAttrs


@dataclass(eq=False)
class Operator:
    """An operator. `attrs` types the builtin options that passes and targets read (None
    for the others); `options` is the schema bindings' options object, opaque, that the
    file had. The writer writes `attrs` into a copy of it, so `attrs` is what to edit."""

    opcode: Opcode
    inputs: list[Tensor | None]
    outputs: list[Tensor | None]
    attrs: OpAttrs | None = None
    options: Any = None
    options2: Any = None
    custom_options: np.ndarray | None = None
    intermediates: list[Tensor] | None = None
    extra: Any = None

    @property
    def type(self) -> str:
        return self.opcode.name

    @property
    def activation(self) -> str:
        """The fused activation, "NONE" for an op without one."""
        return "NONE" if self.attrs is None else self.attrs.activation


@dataclass(eq=False)
class Subgraph:
    name: str | None = None
    tensors: list[Tensor] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    extra: Any = None

    def consumers(self) -> dict[int, list[Operator]]:
        """Operators reading each tensor, keyed by id(tensor)."""
        found: dict[int, list[Operator]] = {}
        for op in self.operators:
            for t in op.inputs:
                if t is not None:
                    found.setdefault(id(t), []).append(op)
        return found


@dataclass(eq=False)
class Signature:
    key: str | None
    subgraph: Subgraph
    _: KW_ONLY
    inputs: list[tuple[str | None, Tensor]] = field(default_factory=list)
    outputs: list[tuple[str | None, Tensor]] = field(default_factory=list)
    extra: Any = None


@dataclass(eq=False)
class Metadata:
    name: str | None
    buffer: Buffer


@dataclass(eq=False)
class Model:
    version: int = 3
    description: str | None = None
    opcodes: list[Opcode] = field(default_factory=list)
    subgraphs: list[Subgraph] = field(default_factory=list)
    buffers: list[Buffer] = field(default_factory=lambda: [Buffer()])
    metadata: list[Metadata] | None = None
    signatures: list[Signature] | None = None
    metadata_buffers: list[Buffer] | None = None  # the deprecated Model.metadata_buffer field
    # Bytes after the flatbuffer, kept as read, but for a zip archive among them (TFLite
    # Support's associated files), whose offsets are held counting from its own start;
    # the writer makes them count from the file's start again where they did so.
    trailing: bytes = b""
    trailing_offsets_from_file: bool = False
    buffers_after_flatbuffer: bool = False  # the >2 GB layout: Buffer.offset/size
    extra: Any = None

    def copy(self, memo: dict[int, Any] | None = None) -> Model:
        """A structural copy that shares the constant bytes (see Buffer.__deepcopy__), the
        frozen op attributes, and the schema objects kept opaque: builtin options, and the
        raw tables in `extra` that the writer starts from (it copies them first). Nothing
        edits those in place, and copying them was most of the cost of a copy. `memo`, when
        given, receives copy.deepcopy's map: id of each original object -> its copy."""
        opaque = [self.extra]
        for sg in self.subgraphs:
            opaque.append(sg.extra)
            opaque += [t.extra for t in sg.tensors]
            for op in sg.operators:
                opaque += [op.attrs, op.extra, op.options, op.options2]
        if memo is None:
            memo = {}
        memo.update({id(o): o for o in opaque if o is not None})
        return copy.deepcopy(self, memo)

    def tensors(self) -> Iterator[tuple[int, int, Tensor]]:
        """(subgraph index, tensor index, tensor) for every tensor of every subgraph."""
        for si, sg in enumerate(self.subgraphs):
            for ti, t in enumerate(sg.tensors):
                yield si, ti, t

    def metadata_entry(self, name: str) -> Metadata | None:
        return next((m for m in self.metadata or [] if m.name == name), None)

    def set_metadata(self, name: str, data: bytes) -> None:
        """Add or replace a metadata entry. A replaced buffer that nothing else uses gives
        its place in the buffer list to the new one, so the file does not keep both."""
        array = np.frombuffer(bytes(data), dtype=np.uint8)
        entry = self.metadata_entry(name)
        if entry is None:
            self.metadata = (self.metadata or []) + [Metadata(name, self.add_buffer(array))]
            return
        old, entry.buffer = entry.buffer, Buffer(array)
        in_list = [i for i, b in enumerate(self.buffers) if b is old]
        if id(old) in self.referenced_buffers() or not in_list:
            self.buffers.append(entry.buffer)
        else:
            self.buffers[in_list[0]] = entry.buffer

    def add_buffer(self, data: np.ndarray | None) -> Buffer:
        raw = None if data is None else np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        buffer = Buffer(raw)
        self.buffers.append(buffer)
        return buffer

    def empty_buffer(self) -> Buffer:
        """A buffer without data for a tensor that is not a constant: buffer 0 by convention."""
        if self.buffers and self.buffers[0].data is None:
            return self.buffers[0]
        return self.add_buffer(None)

    def opcode(self, name: str, version: int = 1, custom_code: str | None = None) -> Opcode:
        """The opcode entry for (name, version, custom_code), added if the model lacks it."""
        for oc in self.opcodes:
            if (oc.name, oc.version, oc.custom_code) == (name, version, custom_code):
                return oc
        oc = Opcode(name, version, custom_code)
        self.opcodes.append(oc)
        return oc

    def referenced_buffers(self) -> set[int]:
        used = {id(self.buffers[0])} if self.buffers else set()
        used.update(id(t.buffer) for _, _, t in self.tensors())
        used.update(id(m.buffer) for m in self.metadata or [])
        used.update(id(b) for b in self.metadata_buffers or [])
        return used


def release_pages(values: np.ndarray) -> None:
    """Let the pages of a memory-mapped file that hold `values` go from this process's
    memory: they stay in the page cache and come back on the next touch, so nothing reads
    differently, but a pass that has replaced a big weight no longer holds the input's
    copy resident beside its own (on a 2.5 GB model, weight-only int8 peaked at 1.31x the
    input without this). Arrays not in a mapped file are left alone."""
    import mmap

    root, base = values, values.base
    while isinstance(base, np.ndarray):
        root, base = base, base.base
    mapped = base.obj if isinstance(base, memoryview) else base
    if not isinstance(mapped, mmap.mmap) or mapped.closed:
        return
    offset = values.__array_interface__["data"][0] - root.__array_interface__["data"][0]
    page = mmap.PAGESIZE
    start = -(-offset // page) * page  # whole pages inside the values only
    end = (offset + values.nbytes) // page * page
    if end > start:
        mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
