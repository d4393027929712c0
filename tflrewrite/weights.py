"""Finds the weight tensors the compression passes work on, and moves them between their
stored form (int8, float32, float16 behind DEQUANTIZE) and real values."""

from __future__ import annotations

import re
import weakref
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

import numpy as np

from tflrewrite.kernels import stats
from tflrewrite.model import Buffer, Model, Operator, Tensor

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
    tensor: Tensor  # the stored constant
    op_type: str  # the op that reads it (the first, when several do)
    _: KW_ONLY
    out_axis: int
    in_axis: int | None
    dequantize: list[Operator] = field(default_factory=list)  # DEQUANTIZE ops in front of it
    aliases: list[Tensor] = field(default_factory=list)  # other tensors on the same buffer

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
    zero point 0), float32, or float16/int8 behind a DEQUANTIZE. Never weights: variable
    tensors, tensors whose buffer a non-weight tensor also uses, names matching `skip`.
    """
    found: dict[int, Weight] = {}  # by id(buffer)
    skipped: list[dict] = []
    weight_tensors: set[int] = set()
    for si, sg in enumerate(model.subgraphs):
        producers = {id(t): op for op in sg.operators for t in op.outputs if t is not None}
        for op in sg.operators:
            slot = WEIGHT_OPS.get(op.type)
            if slot is None or len(op.inputs) <= slot[0] or op.inputs[slot[0]] is None:
                continue
            t, dq = op.inputs[slot[0]], None
            if not t.is_constant:
                producer = producers.get(id(t))
                if producer is None or producer.type != "DEQUANTIZE":
                    continue
                dq, t = producer, producer.inputs[0]
                if t is None or not t.is_constant:
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

    users: dict[int, list[Tensor]] = {}
    for _, _, t in model.tensors():
        users.setdefault(id(t.buffer), []).append(t)
    weights = []
    for w in found.values():
        reason = _unusable(w, users[id(w.tensor.buffer)], weight_tensors, skip)
        if reason:
            skipped.append(record(w, "skipped", reason))
        else:
            weights.append(w)
    return weights, skipped


def _unusable(
    w: Weight, users: list[Tensor], weight_tensors: set[int], skip: str | None
) -> str | None:
    t = w.tensor
    if t.is_variable:
        return "variable tensor"
    if t.dtype not in STORED_DTYPES:
        return f"{t.dtype} weights are not handled"
    if t.sparsity is not None:
        return "already sparse-encoded"
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
    `finite` says that the values are known to hold no NaN or infinity."""
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
    index = _BUFFER_INDEX.get(model)
    if index is None:
        index = _BUFFER_INDEX[model] = _BufferIndex(model)
    index.replace(model, old, new, moved)


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
