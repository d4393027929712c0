"""Block-CSR encoding of a 2-D matrix: rows stay dense, each row keeps only the blocks of
``block`` consecutive columns that hold a nonzero value.

Layout (the one TFLite's block-sparse FULLY_CONNECTED kernels read, but nothing here knows
TFLite): ``segments[r]:segments[r + 1]`` are row r's stored blocks, in increasing column
order; ``indices[j]`` is the block column of stored block j (its first column divided by
``block``); ``values[j]`` are its ``block`` values, zeros inside a kept block included.

A value counts as nonzero when ``value != 0``: -0.0 is zero (a block of only ±0.0 is
dropped and decodes to +0.0), NaN is nonzero (kept).
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit


def _check(dense: np.ndarray, block: int) -> np.ndarray:
    a = np.asarray(dense)
    if a.ndim != 2:
        raise ValueError(f"dense must be 2-D, got shape {a.shape}")
    if isinstance(block, bool) or not isinstance(block, int | np.integer) or block < 1:
        raise ValueError(f"block must be a positive integer, got {block!r}")
    if a.shape[1] % block:
        raise ValueError(f"columns ({a.shape[1]}) must be a multiple of the block ({block})")
    if a.dtype.kind not in "iuf":
        raise ValueError(f"dense must hold integers or floats, got {a.dtype}")
    if a.size and (a.shape[0] + 1) * (a.shape[1] // block) > np.iinfo(np.int32).max:
        raise ValueError(f"too many blocks for int32 segments: shape {a.shape}, block {block}")
    return np.ascontiguousarray(a)


def block_csr_encode(dense: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segments int32 of rows + 1, indices int32 of kept blocks, values (kept, block) of
    the input's dtype) for a 2-D ``dense`` whose column count is a multiple of ``block``."""
    a = _check(dense, block)
    rows, cols = a.shape
    nb = cols // block
    segments = np.zeros(rows + 1, np.int32)
    if a.size == 0:
        return segments, np.zeros(0, np.int32), np.zeros((0, block), a.dtype)
    if a.dtype == np.float16:  # Numba has no float16: test and copy the bit patterns
        bits = a.view(np.uint16)
        test, store = (bits & np.uint16(0x7FFF)).reshape(rows, nb, block), bits
    else:
        test = store = a
    kept = np.empty((rows, nb), np.bool_)
    _kept_blocks(test.reshape(rows, nb, block), kept)
    count = _count_rows(kept, segments)
    indices = np.empty(count, np.int32)
    values = np.empty((count, block), store.dtype)
    _fill(store.reshape(rows, nb, block), kept, indices, values)
    return segments, indices, values.view(a.dtype)


@jit
def _kept_blocks(blocks, kept):
    rows, nb, block = blocks.shape
    for r in range(rows):
        for b in range(nb):
            k = False
            for i in range(block):
                if blocks[r, b, i] != 0:
                    k = True
                    break
            kept[r, b] = k


@jit
def _count_rows(kept, segments):
    rows, nb = kept.shape
    total = 0
    segments[0] = 0
    for r in range(rows):
        for b in range(nb):
            if kept[r, b]:
                total += 1
        segments[r + 1] = total
    return total


@jit
def _fill(blocks, kept, indices, values):
    rows, nb, block = blocks.shape
    j = 0
    for r in range(rows):
        for b in range(nb):
            if kept[r, b]:
                indices[j] = b
                for i in range(block):
                    values[j, i] = blocks[r, b, i]
                j += 1


def block_csr_decode(
    segments: np.ndarray,
    indices: np.ndarray,
    values: np.ndarray,
    shape: tuple[int, int],
    block: int,
) -> np.ndarray:
    """The dense matrix of ``shape`` that block_csr_encode turned into these arrays (for
    checks; values may be flat or (kept, block)). Raises ValueError on inconsistent input."""
    rows, cols = (int(d) for d in shape)
    if block < 1 or cols % block:
        raise ValueError(f"columns ({cols}) must be a multiple of the block ({block})")
    segments = np.asarray(segments).astype(np.int64)
    indices = np.asarray(indices).astype(np.int64)
    values = np.asarray(values).reshape(-1, block)
    if segments.shape != (rows + 1,) or segments[0] != 0 or np.any(np.diff(segments) < 0):
        raise ValueError("segments must be rows + 1 non-decreasing offsets starting at 0")
    if segments[-1] != indices.size or values.shape[0] != indices.size:
        raise ValueError("segments, indices and values disagree on the number of blocks")
    if indices.size and (indices.min() < 0 or indices.max() >= cols // block):
        raise ValueError("a block index is out of range")
    out = np.zeros((rows, cols // block, block), values.dtype)
    row_of = np.repeat(np.arange(rows), np.diff(segments))
    out[row_of, indices] = values
    return out.reshape(rows, cols)


def smallest_index_dtype(max_value: int) -> np.dtype:
    """The narrowest of uint8, uint16 and int32 that holds 0..max_value."""
    if max_value < 0:
        raise ValueError(f"indices are non-negative, got a maximum of {max_value}")
    if max_value <= np.iinfo(np.uint8).max:
        return np.dtype(np.uint8)
    if max_value <= np.iinfo(np.uint16).max:
        return np.dtype("<u2")
    if max_value <= np.iinfo(np.int32).max:
        return np.dtype("<i4")
    raise ValueError(f"{max_value} does not fit an int32 index")
