"""Decodes a sparse constant (TFLite SparsityParameters) to its dense values, and encodes
dense values in a given sparse layout.

What the layout means (tensorflow/lite/kernels/internal/utils/sparsity_format_converter.cc,
which the DENSIFY kernel decodes with and the TF converter encodes with; what LiteRT loads
is decided by VerifyAndCountSparseElements in tensorflow/lite/core/tools/verifier.cc):
- A tensor of rank n with k blocks is traversed as n + k dimensions. Dimension d < n is the
  original one, counted in blocks where block_map names it (shape[d] / block size);
  dimension n + i is the inside of block i, of the original dimension block_map[i].
- traversal_order lists the n + k dimensions from outermost to innermost: a permutation of
  0..n-1, then one of n..n+k-1. dim_metadata[L] describes level L, the dimension
  traversal_order[L]: DENSE keeps every index (dense_size of them); SPARSE_CSR keeps, for
  each node of the level above, one segment of `indices`: the indices whose subtree holds
  a nonzero value, in increasing order.
- The stored values are the leaves of that tree, in traversal order: zeros are stored only
  under dense levels below the last sparse one (inside blocks). A value is zero when
  `value == 0`, so -0.0 is dropped and NaN is kept, as the converter has it.
- Index vectors are the narrowest of uint8, uint16 and int32 that holds their largest
  value, as the converter writes them (flatbuffer_export.cc).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from tflrewrite.kernels import sparse as sparse_kernels
from tflrewrite.model import DimensionMetadata, Sparsity

# File bytes of a SparsityParameters table beyond its index vectors, counted as in
# file_bytes: the table and its vtable, the traversal_order and block_map vectors; then per
# level the DimensionMetadata table, and for a SPARSE_CSR one the two union tables around
# its index vectors. Rounded up from written models (tests/test_sparse_weights.py checks
# that file_bytes bounds what the writer adds).
TABLE_BYTES = 48
DENSE_LEVEL_BYTES = 24
SPARSE_LEVEL_BYTES = 48


class SparsityError(ValueError):
    """SparsityParameters that do not describe the tensor (LiteRT would not load them)."""


@dataclass(frozen=True)
class Layout:
    """The parts of SparsityParameters that say where values go, checked against a shape."""

    order: tuple[int, ...]  # traversal_order: the n + k dimensions, outermost first
    block_map: tuple[int, ...]  # block i divides original dimension block_map[i]
    blocks: tuple[int, ...]  # the size of block i
    formats: tuple[str, ...]  # per level: "DENSE" or "SPARSE_CSR"
    sizes: tuple[int, ...]  # the size of each of the n + k dimensions (by dimension)

    @property
    def rank(self) -> int:
        return len(self.order) - len(self.block_map)


def layout(sparsity: Sparsity, shape: tuple[int, ...]) -> Layout:
    """The layout of `sparsity` for a tensor of `shape`; SparsityError when the two do not
    fit together the way LiteRT's verifier and format converter need."""
    meta = sparsity.dim_metadata
    if sparsity.traversal_order is None or meta is None:
        raise SparsityError("no traversal order or dimension metadata")
    order = tuple(int(d) for d in sparsity.traversal_order)
    n, total = len(shape), len(order)
    if total < n or len(meta) != total:
        raise SparsityError(
            f"{total} traversed dimensions and {len(meta)} dimension metadata for rank {n}"
        )
    block_map = tuple(int(d) for d in (() if sparsity.block_map is None else sparsity.block_map))
    if len(block_map) != total - n:
        raise SparsityError(f"{len(block_map)} block map entries for {total - n} blocks")
    if sorted(order[:n]) != list(range(n)) or sorted(order[n:]) != list(range(n, total)):
        raise SparsityError(f"traversal order {list(order)} is not valid for rank {n}")
    if any(not 0 <= d < n for d in block_map) or len(set(block_map)) != len(block_map):
        raise SparsityError(f"block map {list(block_map)} is not valid for rank {n}")
    if any(int(d) <= 0 for d in shape):
        raise SparsityError(f"shape {list(shape)} has an empty dimension")
    blocks = []
    sizes = [int(d) for d in shape]
    for i, d in enumerate(block_map):
        level = meta[order.index(n + i)]
        size = int(level.dense_size)
        if level.format != "DENSE" or size <= 0:
            raise SparsityError(f"block {i} is not a dense dimension of positive size")
        if sizes[d] % size:
            raise SparsityError(f"a block of {size} does not divide dimension {d} ({shape[d]})")
        blocks.append(size)
        sizes[d] //= size
    sizes += blocks
    formats = tuple(m.format for m in meta)
    for level, (dim, m) in enumerate(zip(order, meta)):
        if m.format == "DENSE" and int(m.dense_size) != sizes[dim]:
            raise SparsityError(
                f"level {level} is dense of size {m.dense_size}, dimension {dim} has {sizes[dim]}"
            )
        if m.format not in ("DENSE", "SPARSE_CSR"):
            raise SparsityError(f"level {level} has format {m.format!r}")
    return Layout(order, block_map, tuple(blocks), formats, tuple(sizes))


def stored_count(sparsity: Sparsity, shape: tuple[int, ...]) -> int:
    """How many values the stored buffer must hold, after checking every index vector as
    LiteRT's verifier does (segments non-decreasing and one per node of the level above,
    as many indices as the last segment says, each inside its dimension)."""
    lay = layout(sparsity, shape)
    nodes = 1
    for level, (dim, m) in enumerate(zip(lay.order, sparsity.dim_metadata)):
        if m.format == "DENSE":
            nodes *= lay.sizes[dim]
            continue
        if m.segments is None or m.indices is None:
            raise SparsityError(f"sparse level {level} lacks its segments or indices")
        seg = np.asarray(m.segments).astype(np.int64)
        idx = np.asarray(m.indices).astype(np.int64)
        if seg.size != nodes + 1:
            raise SparsityError(f"level {level} has {seg.size} segment bounds for {nodes} nodes")
        if seg[0] < 0 or np.any(np.diff(seg) < 0) or seg[-1] != idx.size:
            raise SparsityError(f"the segments of level {level} do not index its indices")
        if idx.size and (idx.min() < 0 or idx.max() >= lay.sizes[dim]):
            raise SparsityError(f"an index of level {level} lies outside dimension {dim}")
        nodes = int(idx.size)
    return nodes


def decode(values: np.ndarray, sparsity: Sparsity, shape: tuple[int, ...]) -> np.ndarray:
    """The dense array of shape `shape` that the stored `values` and `sparsity` describe:
    what LiteRT's DENSIFY computes."""
    count = stored_count(sparsity, shape)
    values = np.asarray(values).reshape(-1)
    if values.size != count:
        raise SparsityError(f"{values.size} stored values where the indices need {count}")
    lay = layout(sparsity, shape)
    pos = np.zeros(1, np.int64)  # each node's place among its level's stored entries
    flat = np.zeros(1, np.int64)  # each node's index in the traversal-ordered array
    for dim, m in zip(lay.order, sparsity.dim_metadata):
        size = lay.sizes[dim]
        if m.format == "DENSE":
            step = np.arange(size, dtype=np.int64)
            pos = (pos[:, None] * size + step).reshape(-1)
            flat = (flat[:, None] * size + step).reshape(-1)
            continue
        seg = np.asarray(m.segments).astype(np.int64)
        idx = np.asarray(m.indices).astype(np.int64)
        starts, counts = seg[pos], seg[pos + 1] - seg[pos]
        parent = np.repeat(np.arange(pos.size), counts)
        pos = (
            starts[parent] + np.arange(parent.size) - np.repeat(np.cumsum(counts) - counts, counts)
        )
        flat = flat[parent] * size + idx[pos]
    traversed = np.zeros(math.prod(lay.sizes), values.dtype)
    traversed[flat] = values[pos]
    expanded = traversed.reshape([lay.sizes[d] for d in lay.order]).transpose(np.argsort(lay.order))
    return np.ascontiguousarray(_unblock(expanded, lay)).reshape(shape)


def encode(
    dense: np.ndarray, like: Sparsity, *, keep_one: bool = True
) -> tuple[np.ndarray, Sparsity]:
    """(stored values, SparsityParameters) of `dense` in the layout of `like`: the same
    traversal order, block map and dimension formats, new index vectors. `keep_one`: when
    every value is zero, keep the first one anyway, because an empty buffer reads as a
    tensor that is not a constant."""
    dense = np.asarray(dense)
    lay = layout(like, dense.shape)
    traversed = _block(dense, lay).transpose(lay.order)
    nonzero = np.ascontiguousarray(traversed != 0)
    if keep_one and "SPARSE_CSR" in lay.formats and not nonzero.any():
        nonzero.reshape(-1)[0] = True
    below = []  # below[L]: whether the subtree of each node of level L holds a nonzero
    found = nonzero
    for _ in lay.formats:
        below.append(found)
        found = found.any(axis=-1)
    below.reverse()
    kept = np.ones((), bool)
    dims = []
    for level, (fmt, old) in enumerate(zip(lay.formats, like.dim_metadata)):
        size = traversed.shape[level]
        if fmt == "DENSE":
            kept = np.broadcast_to(kept[..., None], traversed.shape[: level + 1])
            dims.append(DimensionMetadata("DENSE", dense_size=int(old.dense_size)))
            continue
        children = (kept[..., None] & below[level]).reshape(-1, size)
        rows = children[kept.reshape(-1)]
        segments = np.concatenate([[0], np.cumsum(rows.sum(axis=1))])
        indices = np.nonzero(rows)[1]
        dims.append(
            DimensionMetadata(
                "SPARSE_CSR",
                dense_size=int(old.dense_size),
                segments=_narrowest(segments),
                indices=_narrowest(indices),
            )
        )
        kept = children.reshape(traversed.shape[: level + 1])
    values = np.ascontiguousarray(traversed[kept])
    return values, Sparsity(
        traversal_order=_copy(like.traversal_order),
        block_map=_copy(like.block_map),
        dim_metadata=dims,
    )


def file_bytes(values_nbytes: int, sparsity: Sparsity) -> int:
    """File bytes of a sparse constant, an upper bound: its stored values (padded to the
    16 bytes the writer aligns buffers to), its index vectors (4-byte length prefix, padded
    to 4) and the SparsityParameters tables around them."""
    total = -(-values_nbytes // 16) * 16 + TABLE_BYTES
    for m in sparsity.dim_metadata or ():
        total += DENSE_LEVEL_BYTES if m.format == "DENSE" else SPARSE_LEVEL_BYTES
        for a in (m.segments, m.indices):
            if a is not None:
                total += 4 + -(-np.asarray(a).nbytes // 4) * 4
    return total


def _narrowest(a: np.ndarray) -> np.ndarray:
    top = int(a.max()) if a.size else 0
    return np.ascontiguousarray(a.astype(sparse_kernels.smallest_index_dtype(top)))


def _copy(a: np.ndarray | None) -> np.ndarray | None:
    return None if a is None else np.array(a, copy=True)


def _split_axes(lay: Layout) -> tuple[list[int], list[int]]:
    """The dense array reshaped so that every blocked dimension is (blocks, block): that
    shape, and for each of the n + k dimensions its axis there."""
    block_of = {d: i for i, d in enumerate(lay.block_map)}
    shape, axis = [], [0] * len(lay.sizes)
    for d in range(lay.rank):
        axis[d] = len(shape)
        shape.append(lay.sizes[d])
        if d in block_of:
            axis[lay.rank + block_of[d]] = len(shape)
            shape.append(lay.blocks[block_of[d]])
    return shape, axis


def _block(dense: np.ndarray, lay: Layout) -> np.ndarray:
    """`dense` as its n + k dimensions, in dimension order."""
    shape, axis = _split_axes(lay)
    return dense.reshape(shape).transpose(axis)


def _unblock(expanded: np.ndarray, lay: Layout) -> np.ndarray:
    """Inverse of _block, up to the final reshape."""
    _, axis = _split_axes(lay)
    return expanded.transpose(np.argsort(axis))
