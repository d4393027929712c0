"""Finds the weight tensors the compression passes work on, and moves them between their
stored form (int8, float32, float16 behind DEQUANTIZE, any of them sparse behind DENSIFY)
and real values.

A sparse weight (a constant with SparsityParameters, expanded by a DENSIFY op, or read by
FULLY_CONNECTED's sparse kernel) is handed to the passes as a dense view: `Weight.tensor`
is then a tensor outside the model holding the decoded values, and `Weight.sparse` the
model's constant. replace_data re-encodes new values in the constant's own layout
(tflrewrite.sparsity), so the model stays valid between passes; densify_weight stores a
sparse weight dense instead."""

from __future__ import annotations

import re
import weakref
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

from tflrewrite import sparsity
from tflrewrite.kernels import stats
from tflrewrite.model import Buffer, Model, Operator, Subgraph, Tensor

# op -> (weight input index, output-channel axis, input-channel axis or None). Input-channel
# axis is where M:N groups and 1xK blocks run: the reduction axis of the op.
WEIGHT_OPS: dict[str, tuple[int, int, int | None]] = {
    "CONV_2D": (1, 0, 3),  # OHWI
    "DEPTHWISE_CONV_2D": (1, 3, None),  # 1HWO: each output channel has its own input channel
    "FULLY_CONNECTED": (1, 0, 1),  # OI
    "TRANSPOSE_CONV": (1, 0, 3),  # OHWI
    "BATCH_MATMUL": (1, -1, -2),  # ...KN: the constant right-hand side
}

STORED_DTYPES = ("INT8", "FLOAT32", "FLOAT16")

# The op that reads a sparse weight without a DENSIFY: its builtin kernel takes the sparse
# form (tflrewrite.targets.cpu writes it).
SPARSE_READER = "FULLY_CONNECTED"

# File bytes a DENSIFY costs beyond its constant's (sparsity.file_bytes) and its output's
# name: the operator table with its two vectors, the dense tensor it writes (table, shape
# vector) and an opcode entry. Rounded up; tests/test_sparse_weights.py checks that it
# bounds the real cost.
DENSIFY_BYTES = 128

# What the records of a sparse weight say of its storage.
STORED_SPARSE = "sparse behind DENSIFY, kept in the input's layout"
STORED_SPARSE_FC = "sparse, read so by FULLY_CONNECTED, kept in the input's layout"


class BufferMemo:
    """Facts about a buffer's bytes (its statistics, that they are finite), remembered for
    as long as the array holding them lives. Passes never write into a buffer's array and
    model copies share them, so the array object stands for its content."""

    def __init__(self) -> None:
        self._items: dict[tuple[int, Any], tuple[weakref.ref, Any]] = {}

    def get(self, raw: np.ndarray, key: Any = None) -> Any:
        hit = self._items.get((id(raw), key))
        return hit[1] if hit is not None and hit[0]() is raw else None

    def put(self, raw: np.ndarray, value: Any, key: Any = None) -> Any:
        k = (id(raw), key)
        items = self._items
        self._items[k] = (weakref.ref(raw, lambda _, k=k: items.pop(k, None)), value)
        return value


_FINITE = BufferMemo()


def is_finite(t: Tensor) -> bool:
    """Whether a float tensor's values hold no NaN or infinity (checked once per buffer)."""
    raw = t.buffer.data
    known = _FINITE.get(raw)
    return known if known is not None else _FINITE.put(raw, stats.all_finite(t.data))


@dataclass(eq=False)
class Weight:
    """One weight tensor as the ops see it. Several ops (or several tensors sharing a buffer)
    may read the same weight; it is edited once for all of them."""

    subgraph: int  # index in Model.subgraphs
    tensor: Tensor  # the stored constant (a dense view of it when `sparse` is set)
    op_type: str  # the op that reads it (the first, when several do)
    _: KW_ONLY
    out_axis: int
    in_axis: int | None
    dequantize: list[Operator] = field(default_factory=list)  # DEQUANTIZE ops in front of it
    aliases: list[Tensor] = field(default_factory=list)  # other tensors on the same buffer
    densify: list[Operator] = field(default_factory=list)  # DENSIFY ops that expand it
    sparse: Tensor | None = None  # the model's sparse constant, when `tensor` is its dense view

    @property
    def name(self) -> str:
        return self.tensor.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape or ())

    def channels(self, values: np.ndarray) -> np.ndarray:
        """`values` (the weight's shape) as rows, one per output channel."""
        return np.moveaxis(values, self.out_axis, 0).reshape(values.shape[self.out_axis], -1)

    def from_channels(self, rows: np.ndarray) -> np.ndarray:
        """Inverse of `channels`."""
        shape = list(self.shape)
        rest = [d for i, d in enumerate(shape) if i != self.out_axis]
        return np.moveaxis(rows.reshape([shape[self.out_axis], *rest]), 0, self.out_axis)


def find_weights(model: Model, skip: str | None = None) -> tuple[list[Weight], list[dict]]:
    """Every weight a compression pass may edit, and a record for each one it may not.

    A weight is the constant filter input of one of WEIGHT_OPS, stored as int8 (symmetric,
    zero point 0), float32, or float16/int8 behind a DEQUANTIZE, and sparse behind a
    DENSIFY (or read sparse by FULLY_CONNECTED) or not. Never weights: variable tensors,
    tensors whose buffer a non-weight tensor also uses, names matching `skip`.
    """
    found: dict[int, Weight] = {}  # by id(buffer)
    direct: dict[int, list[Operator]] = {}  # by id(weight): ops reading a sparse one as is
    skipped: list[dict] = []
    weight_tensors: set[int] = set()
    for si, sg in enumerate(model.subgraphs):
        producers = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
        for op in sg.operators:
            slot = WEIGHT_OPS.get(op.type)
            if slot is None or len(op.inputs) <= slot[0] or op.inputs[slot[0]] is None:
                continue
            t, dq, dz = _source(op.inputs[slot[0]], producers)
            if t is None:
                continue
            weight_tensors.add(id(t))
            w = found.get(id(t.buffer))
            if w is None:
                rank = len(t.shape or (1,))
                in_axis = None if slot[2] is None else slot[2] % rank
                found[id(t.buffer)] = w = Weight(
                    si, t, op.type, out_axis=slot[1] % rank, in_axis=in_axis
                )
            elif w.tensor is not t and t not in w.aliases:
                w.aliases.append(t)
            if dq is not None and dq not in w.dequantize:
                w.dequantize.append(dq)
            if dz is not None and dz not in w.densify:
                w.densify.append(dz)
            if dz is None and t.sparsity is not None:
                direct.setdefault(id(w), []).append(dq or op)

    users: dict[int, list[Tensor]] = {}
    for _, _, t in model.tensors():
        users.setdefault(id(t.buffer), []).append(t)
    weights = []
    readers: dict[int, dict[int, list[Operator]]] = {}  # by subgraph, as needed
    for w in found.values():
        reason = None
        if w.tensor.sparsity is not None or w.densify:
            if w.subgraph not in readers:
                readers[w.subgraph] = model.subgraphs[w.subgraph].consumers()
            reason = _sparse_unusable(model, w, direct.get(id(w), []), readers[w.subgraph])
            if reason is None:
                _view_dense(w)
        reason = reason or _unusable(
            w, users[id((w.sparse or w.tensor).buffer)], weight_tensors, skip
        )
        if reason:
            skipped.append(record(w, "skipped", reason))
        else:
            weights.append(w)
    return weights, skipped


def _source(
    t: Tensor, producers: dict[int, Operator]
) -> tuple[Tensor | None, Operator | None, Operator | None]:
    """(the constant a weight input holds or is computed from, the DEQUANTIZE and the
    DENSIFY between them, if any); (None, None, None) for an input computed otherwise."""
    dq = dz = None
    if not t.is_constant:
        producer = producers.get(id(t))
        if producer is not None and producer.type == "DEQUANTIZE":
            dq, t = producer, producer.inputs[0]
            producer = None if t is None or t.is_constant else producers.get(id(t))
        if producer is not None and producer.type == "DENSIFY" and producer.inputs:
            dz, t = producer, producer.inputs[0]
        elif dq is None:
            return None, None, None
    if t is None or not t.is_constant:
        return None, None, None
    return t, dq, dz


def source_constant(
    model: Model | None,
    t: Tensor,
    subgraph: int = 0,
    *,
    producers: dict[int, Operator] | None = None,
) -> Tensor:
    """The constant a weight input `t` of `subgraph` holds, or the one a DEQUANTIZE and/or
    a DENSIFY computes it from, as a dense tensor: a sparse constant's dense view, quantized
    as the DENSIFY output. `t` itself when it is computed otherwise. `producers`: the
    subgraph's ops by id of the tensor each makes, where the caller has them already."""
    if producers is None:
        producers = {id(x): op for op in model.subgraphs[subgraph].operators for x in op.outputs}
    c, _, dz = _source(t, producers)
    if c is None:
        return t
    if c.sparsity is None:
        return c
    w = Weight(subgraph, c, "", out_axis=0, in_axis=None, densify=[] if dz is None else [dz])
    _view_dense(w)
    return w.tensor


def _sparse_unusable(
    model: Model, w: Weight, direct: list[Operator], readers: dict[int, list[Operator]]
) -> str | None:
    """Why a sparse weight (or one behind DENSIFY) cannot be edited through a dense view;
    `direct`: the ops that read it sparse, without a DENSIFY; `readers`: its subgraph's."""
    t = w.tensor
    sg = model.subgraphs[w.subgraph]
    if t.is_variable:
        return "variable tensor"
    if t.dtype not in STORED_DTYPES:
        return f"{t.dtype} weights are not handled"
    if t.sparsity is None:
        return "a DENSIFY of a constant that is not sparse"
    if w.aliases:
        return "a sparse constant whose buffer other tensors share"
    if direct and w.densify:
        return "sparse, read both through DENSIFY and directly"
    if any(op.type != SPARSE_READER for op in direct):
        return (
            f"sparse, read by {direct[0].type} without a DENSIFY "
            f"(only {SPARSE_READER}'s kernel reads sparse weights)"
        )
    if w.densify and any(op not in w.densify for op in readers.get(id(t), [])):
        return "sparse, read by ops other than its DENSIFY"
    for dz in w.densify:
        out = dz.outputs[0] if dz.outputs else None
        if out is None or out in sg.outputs:
            return "its DENSIFY writes a subgraph output"
        for op in readers.get(id(out), []):
            slot = WEIGHT_OPS.get(op.type)
            weight_slot = slot is not None and op.inputs.index(out) == slot[0]
            if not weight_slot and op not in w.dequantize:
                return f"its DENSIFY's output is also read by {op.type}"
        if _affine(t) and not _same_quantization(t, out):
            return "its DENSIFY's output is quantized other than the constant"
        if not _same_quantization(out, w.densify[0].outputs[0]):
            return "its DENSIFY outputs are quantized differently"
    if t.shape is None or t.data is None:
        return "no shape or data"
    try:
        count = sparsity.stored_count(t.sparsity, t.shape)
    except sparsity.SparsityError as e:
        return f"sparsity parameters that do not fit its shape: {e}"
    if t.data.size != count:
        return f"{t.data.size} stored values where its sparsity parameters need {count}"
    return None


def _affine(t: Tensor) -> bool:
    return t.quantization is not None and t.quantization.is_affine


def _same_quantization(a: Tensor, b: Tensor) -> bool:
    qa, qb = a.quantization, b.quantization
    if qa is None or qb is None:
        return qa is qb
    pairs = [(qa.scale, qb.scale), (qa.zero_point, qb.zero_point)]
    same = all(
        x is None and y is None or x is not None and y is not None and np.array_equal(x, y)
        for x, y in pairs
    )
    return same and (qa.axis == qb.axis or not qa.per_axis)


# Decoded values of sparse constants, remembered for the bytes and parameters they came
# from (the raw uint8 array the dense view holds), so that statistics remembered for a
# weight's values are found again by the next pass.
_DENSE = BufferMemo()


def _view_dense(w: Weight) -> None:
    """Make `w` hold a dense view of its sparse constant."""
    t = w.tensor
    key = _fingerprint(t)
    raw = _DENSE.get(t.buffer.data, key)
    if raw is None:
        dense = sparsity.decode(t.data, t.sparsity, t.shape)
        raw = _DENSE.put(t.buffer.data, np.ascontiguousarray(dense).reshape(-1).view(np.uint8), key)
    w.sparse = t
    w.tensor = Tensor(
        t.name,
        t.dtype,
        t.shape,
        buffer=Buffer(raw),
        shape_signature=t.shape_signature,
        # What the ops see: DENSIFY's output (the constant need not repeat it).
        quantization=w.densify[0].outputs[0].quantization if w.densify else t.quantization,
    )


def _fingerprint(t: Tensor) -> tuple:
    """What, besides its bytes, decides a sparse constant's dense values."""

    def raw(a: np.ndarray | None) -> tuple | None:
        return None if a is None else (a.dtype.str, a.tobytes())

    sp = t.sparsity
    dims = tuple(
        (m.format, m.dense_size, raw(m.segments), raw(m.indices)) for m in sp.dim_metadata or ()
    )
    return (t.dtype, tuple(t.shape), raw(sp.traversal_order), raw(sp.block_map), dims)


def _unusable(
    w: Weight, users: list[Tensor], weight_tensors: set[int], skip: str | None
) -> str | None:
    t = w.tensor
    if t.is_variable:
        return "variable tensor"
    if t.dtype not in STORED_DTYPES:
        return f"{t.dtype} weights are not handled"
    if t.shape is None or t.data is None or t.data.size != int(np.prod(t.shape)):
        return "no dense data of its shape"
    if t.dtype != "INT8" and not is_finite(t):
        return "holds NaN or infinity"
    if any(id(u) not in weight_tensors for u in users):
        return "its buffer is shared with a tensor that is not a weight"
    if any(u.shape != t.shape or u.dtype != t.dtype for u in users):
        return "its buffer is shared by weights of different shapes"
    if t.dtype == "INT8":
        q = t.quantization
        if q is None or not q.is_affine:
            return "int8 without quantization parameters"
        if q.zero_point is not None and np.any(q.zero_point != 0):
            return "int8 weights with a nonzero zero point"
        if q.per_axis and (q.axis >= len(t.shape) or q.scale.size != t.shape[q.axis]):
            return "per-axis scales that do not match the shape"
    if skip and re.search(skip, t.name):
        return f"name matches --skip {skip!r}"
    return None


def real_values(t: Tensor) -> np.ndarray:
    """A constant's values as real numbers (float64): quantized ones with their scales and
    zero points, per tensor or along their axis; float ones as they are."""
    values = t.data.astype(np.float64)
    q = t.quantization
    if t.dtype.startswith("FLOAT") or q is None or not q.is_affine:
        return values
    shape = [1] * values.ndim
    if q.per_axis:
        shape[q.axis] = q.scale.size
    zero = 0 if q.zero_point is None else q.zero_point.reshape(shape)
    return (values - zero) * q.scale.astype(np.float64).reshape(shape)


def record(w: Weight, action: str, reason: str | None = None, **stats: object) -> dict:
    """A per-tensor record of what a pass did (or why it did nothing)."""
    out = {
        "subgraph": w.subgraph,
        "tensor": w.name,
        "op": w.op_type,
        "dtype": w.tensor.dtype,
        "shape": list(w.shape),
        "action": action,
    }
    if reason:
        out["reason"] = reason
    if w.sparse is not None:
        out["stored"] = STORED_SPARSE if w.densify else STORED_SPARSE_FC
    out.update(stats)
    return out


def replace_data(
    model: Model,
    w: Weight,
    values: np.ndarray,
    dtype: str | None = None,
    quantization: object = "keep",
    finite: bool = False,
) -> None:
    """Give the weight (and every alias on its buffer) new stored values in a new buffer,
    which takes the old one's place in the buffer list when nothing else uses the old one.
    `finite` says that the values are known to hold no NaN or infinity. A sparse weight's
    constant gets them encoded in its own layout, and its dense view the values."""
    if w.sparse is not None:
        _replace_sparse(model, w, values, dtype, quantization, finite)
        return
    old = w.tensor.buffer
    new = Buffer(np.ascontiguousarray(values).reshape(-1).view(np.uint8))
    if finite:
        _FINITE.put(new.data, True)
    moved = [w.tensor, *w.aliases]
    for t in moved:
        t.buffer = new
        if dtype is not None:
            t.dtype = dtype
        if quantization != "keep":
            t.quantization = quantization
    _index(model).replace(model, old, new, moved)


def _replace_sparse(
    model: Model,
    w: Weight,
    values: np.ndarray,
    dtype: str | None,
    quantization: object,
    finite: bool,
) -> None:
    """replace_data of a sparse weight: the values encoded in its constant's layout, dtype
    and quantization for the constant, its dense view and what its DENSIFY ops write."""
    s = w.sparse
    raw = np.ascontiguousarray(values).reshape(-1).view(np.uint8)
    stored, layout = sparsity.encode(np.asarray(values).reshape(w.shape), s.sparsity)
    if finite:
        _FINITE.put(raw, True)
    w.tensor.buffer = Buffer(raw)
    old, new = s.buffer, Buffer(stored.reshape(-1).view(np.uint8))
    s.buffer, s.sparsity = new, layout
    for t in (w.tensor, s, *(dz.outputs[0] for dz in w.densify)):
        if dtype is not None:
            t.dtype = dtype
        # Behind DENSIFY the constant keeps parameters only if it had them: the ops and
        # DEQUANTIZE read those of DENSIFY's output, and a copy costs 12 bytes a channel.
        keep = t is s and w.densify and not _affine(s)
        if quantization != "keep" and not keep:
            t.quantization = quantization
    _DENSE.put(new.data, raw, _fingerprint(s))
    _index(model).replace(model, old, new, [s])


def densify_weight(model: Model, w: Weight) -> None:
    """Store a sparse weight dense: its constant takes the dense values and drops its
    sparsity, and the ops its DENSIFY ops fed read it directly."""
    s, sg = w.sparse, model.subgraphs[w.subgraph]
    old = s.buffer
    s.buffer, s.sparsity = w.tensor.buffer, None
    s.dtype, s.quantization = w.tensor.dtype, w.tensor.quantization
    for dz in w.densify:
        _bypass(sg, dz, s)
    _index(model).replace(model, old, s.buffer, [s])
    w.tensor, w.sparse, w.densify = s, None, []


def _bypass(sg: Subgraph, op: Operator, source: Tensor) -> None:
    """Remove `op` and its output tensor, its readers reading `source` instead."""
    out = op.outputs[0]
    for reader in sg.operators:
        reader.inputs = [source if x is out else x for x in reader.inputs]
    sg.operators.remove(op)
    if out in sg.tensors:
        sg.tensors.remove(out)


def densified_bytes(w: Weight, stored: np.ndarray) -> tuple[int, int]:
    """(file bytes of a sparse weight holding the values `stored` in its layout behind its
    DENSIFY ops, file bytes of the same values dense), both upper bounds."""
    values, layout = sparsity.encode(stored.reshape(w.shape), w.sparse.sparsity)
    sparse = sparsity.file_bytes(values.nbytes, layout)
    for dz in w.densify:
        sparse += DENSIFY_BYTES + len(dz.outputs[0].name.encode())
        if _affine(w.sparse):  # the constant and DENSIFY's output each hold the parameters
            q = dz.outputs[0].quantization
            arrays = (q.scale, q.zero_point, q.min, q.max)
            sparse += 32 + sum(4 + a.nbytes for a in arrays if a is not None)
    return sparse, -(-stored.nbytes // 16) * 16


def _index(model: Model) -> _BufferIndex:
    index = _BUFFER_INDEX.get(model)
    if index is None:
        index = _BUFFER_INDEX[model] = _BufferIndex(model)
    return index


class _BufferIndex:
    """Where each buffer of a model stands in its list, and which tensors hold it: taken
    once per model and kept up to date by replace_data, because a scan of the whole model
    for each replacement makes a pass quadratic in its tensors (18 s for a model of 1,526
    FULLY_CONNECTED layers). What the index says is checked before it is used: a cached
    place must still hold the buffer, a holder must still point at it, and a buffer that
    holders seem to keep is confirmed by a scan. A tensor pointed at a buffer outside
    replace_data after the index was taken is not known as its holder: that buffer may
    leave the list, and the writer, which writes every buffer a tensor holds, keeps it."""

    def __init__(self, model: Model) -> None:
        self.place = {id(b): i for i, b in enumerate(model.buffers)}
        self.holders: dict[int, list[Tensor]] = {}
        for _, _, t in model.tensors():
            self.holders.setdefault(id(t.buffer), []).append(t)

    def replace(self, model: Model, old: Buffer, new: Buffer, moved: list[Tensor]) -> None:
        held = [t for t in self.holders.pop(id(old), []) if t.buffer is old]
        if held:
            self.holders[id(old)] = held
        self.holders.setdefault(id(new), []).extend(moved)
        kept = held and any(t.buffer is old for _, _, t in model.tensors())
        place = None if kept else self._place(model, old)
        if place is None:
            model.buffers.append(new)
            place = len(model.buffers) - 1
        else:
            model.buffers[place] = new
            self.place.pop(id(old), None)
        self.place[id(new)] = place

    def _place(self, model: Model, buffer: Buffer) -> int | None:
        place = self.place.get(id(buffer))
        if place is None or place >= len(model.buffers) or model.buffers[place] is not buffer:
            place = next((i for i, b in enumerate(model.buffers) if b is buffer), None)
        return place


_BUFFER_INDEX: weakref.WeakKeyDictionary[Model, _BufferIndex] = weakref.WeakKeyDictionary()
