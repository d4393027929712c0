"""Bit packing of small unsigned indices into a byte stream, most significant bit first.

Layout: index i occupies bits [i * width, (i + 1) * width) of the stream, bit 0 being the
most significant bit of byte 0; an index is written with its own most significant bit
first, and may straddle a byte boundary. The last byte is padded with zero bits. This is
the order TensorFlow Lite Micro's lookup-table decoder reads (tensorflow/lite/micro/
kernels/decode_state_lut.cc, GetNextTableIndexWidth1..7: width 4 puts index 0 in the high
nibble of byte 0), but nothing here knows TFLite.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit

MAX_WIDTH = 8


def packed_size(count: int, width: int) -> int:
    """Bytes that `count` indices of `width` bits take."""
    return -(-count * width // 8)


def _check_width(width: int) -> int:
    if isinstance(width, bool) or not isinstance(width, int | np.integer):
        raise ValueError(f"width must be an integer, got {width!r}")
    if not 1 <= width <= MAX_WIDTH:
        raise ValueError(f"width must be 1..{MAX_WIDTH}, got {width}")
    return int(width)


def _check_indices(indices: np.ndarray, width: int) -> np.ndarray:
    a = np.asarray(indices)
    if a.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"indices must be integers, got {a.dtype}")
    if a.size and (int(a.min()) < 0 or int(a.max()) >= 1 << width):
        raise ValueError(f"indices must lie in 0..{(1 << width) - 1} for width {width}")
    return np.ascontiguousarray(a, dtype=np.uint8)


def pack(indices: np.ndarray, width: int) -> np.ndarray:
    """The uint8 stream holding each of the 1-D `indices` in `width` bits."""
    width = _check_width(width)
    a = _check_indices(indices, width)
    out = np.zeros(packed_size(a.size, width), np.uint8)
    _pack(a, width, out)
    return out


@jit
def _pack(indices, width, out):
    # A 32-bit accumulator takes each index at its low end; whole bytes leave from the top.
    acc = np.uint32(0)
    held = 0
    j = 0
    for i in range(indices.size):
        acc = (acc << np.uint32(width)) | np.uint32(indices[i])
        held += width
        if held >= 8:
            held -= 8
            out[j] = np.uint8((acc >> np.uint32(held)) & np.uint32(0xFF))
            j += 1
    if held:
        out[j] = np.uint8((acc << np.uint32(8 - held)) & np.uint32(0xFF))


def unpack(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """The first `count` indices of `width` bits in a stream made by `pack` (uint8)."""
    width = _check_width(width)
    p = np.ascontiguousarray(np.asarray(packed), dtype=np.uint8).reshape(-1)
    if count < 0 or packed_size(count, width) > p.size:
        raise ValueError(f"{p.size} bytes do not hold {count} indices of {width} bits")
    out = np.empty(count, np.uint8)
    _unpack(p, width, out)
    return out


@jit
def _unpack(packed, width, out):
    mask = np.uint32((1 << width) - 1)
    acc = np.uint32(0)
    held = 0
    j = 0
    for i in range(out.size):
        while held < width:
            acc = ((acc << np.uint32(8)) | np.uint32(packed[j])) & np.uint32(0xFFFF)
            held += 8
            j += 1
        held -= width
        out[i] = np.uint8((acc >> np.uint32(held)) & mask)
