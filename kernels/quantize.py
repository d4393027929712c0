"""Per-channel symmetric int8 quantization of float weights.

Each row (an output channel) gets scale = max|x| / 127, stored as float32 (1.0 for an
all-zero row, never below the smallest normal float32), and q = round(x / scale) with
halves rounded away from zero, as TFLite's own weight quantizer rounds, clipped to
[-127, 127]. Zero maps to zero, and a row's k distinct values map to at most k int8 values.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit

# The smallest normal float32: a scale that underflowed would divide by zero.
_TINY = np.float32(np.finfo(np.float32).tiny)


@jit
def _sum4(x, n):
    """Sum of x[:n] in float64, in four interleaved partial sums: four additions in flight
    rather than one (the last bits differ from a sum in index order). Kept in each module that
    uses it: Numba's cache notices changes to a kernel's own file only, not to another
    module's Numba function that it calls."""
    a0 = 0.0
    a1 = 0.0
    a2 = 0.0
    a3 = 0.0
    n4 = n - n % 4
    for t in range(0, n4, 4):
        a0 += x[t]
        a1 += x[t + 1]
        a2 += x[t + 2]
        a3 += x[t + 3]
    for t in range(n4, n):
        a0 += x[t]
    return (a0 + a1) + (a2 + a3)


@jit
def _magnitude_of_key(keys, key):
    """The float whose bits (sign cleared) are `key`, for keys of x's width, as float64."""
    if keys.itemsize == 4:
        return np.float64(np.uint32(key).view(np.float32))
    return np.uint64(key).view(np.float64)


@jit
def _symmetric_int8_rows(x, keys, q, scales, sq_err, d2):
    """The kernel of `symmetric_int8_rows`: False, with the outputs unfinished, when x holds
    NaN or infinity. `keys` are x's bits as unsigned integers: with the sign bit cleared
    they order like |x|, so a row's peak is an integer maximum (a loop that vectorises) and
    any key above that of infinity is a NaN."""
    rows, n = x.shape
    absmask = ((1 << (keys.itemsize * 8 - 2)) - 1) * 2 + 1
    inf_key = 0x7F800000 if keys.itemsize == 4 else 0x7FF0000000000000
    for r in range(rows):
        top = absmask - absmask
        for t in range(n):
            top = max(top, keys[r, t] & absmask)
        if top >= inf_key:
            return False
        peak = _magnitude_of_key(keys, top)
        scale = np.float32(peak / 127.0) if peak > 0.0 else np.float32(1.0)
        if scale < _TINY:
            scale = _TINY
        scales[r] = scale
        s = np.float64(scale)
        for t in range(n):  # branch-free, so that it vectorises
            v = np.float64(x[r, t]) / s
            m = min(np.floor(abs(v) + 0.5), 127.0)
            m = -m if v < 0.0 else m
            q[r, t] = np.int8(m)
            d = np.float64(x[r, t]) - m * s
            d2[t] = d * d
        sq_err[r] = _sum4(d2, n)
    return True


def symmetric_int8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q int8 of x's shape, scales float32 per row, squared error of q * scale per row)
    for a 2-D float array."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(
            f"expected a 2-D float array, got {getattr(x, 'dtype', type(x))} "
            f"with shape {getattr(x, 'shape', None)}"
        )
    x = np.ascontiguousarray(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32))
    q = np.empty(x.shape, np.int8)
    scales = np.empty(x.shape[0], np.float32)
    sq_err = np.empty(x.shape[0])
    keys = x.view(np.uint32 if x.dtype == np.float32 else np.uint64)
    if not _symmetric_int8_rows(x, keys, q, scales, sq_err, np.empty(x.shape[1])):
        raise ValueError("weights hold NaN or infinity")
    return q, scales, sq_err
