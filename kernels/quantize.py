"""Per-channel symmetric int8 quantization of float weights.

Each row (an output channel) gets scale = max|x| / 127, stored as float32 (1.0 for an
all-zero row, never below the smallest normal float32), and q = round(x / scale) with
halves rounded away from zero, as TFLite's own weight quantizer rounds, clipped to
[-127, 127]. Zero maps to zero, and a row's k distinct values map to at most k int8 values.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit
from tflrewrite.kernels.stats import all_finite

# The smallest normal float32: a scale that underflowed would divide by zero.
_TINY = np.float32(np.finfo(np.float32).tiny)


@jit
def _symmetric_int8_rows(x, q, scales, sq_err):
    rows, n = x.shape
    for r in range(rows):
        peak = 0.0
        for t in range(n):
            v = abs(np.float64(x[r, t]))
            if v > peak:
                peak = v
        scale = np.float32(peak / 127.0) if peak > 0.0 else np.float32(1.0)
        if scale < _TINY:
            scale = _TINY
        scales[r] = scale
        s = np.float64(scale)
        acc = 0.0
        for t in range(n):
            v = np.float64(x[r, t]) / s
            m = np.floor(abs(v) + 0.5)
            if m > 127.0:
                m = 127.0
            if v < 0.0:
                m = -m
            q[r, t] = np.int8(m)
            d = np.float64(x[r, t]) - m * s
            acc += d * d
        sq_err[r] = acc


def symmetric_int8_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(q int8 of x's shape, scales float32 per row, squared error of q * scale per row)
    for a 2-D float array."""
    if not isinstance(x, np.ndarray) or x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(
            f"expected a 2-D float array, got {getattr(x, 'dtype', type(x))} "
            f"with shape {getattr(x, 'shape', None)}"
        )
    if not all_finite(x):
        raise ValueError("weights hold NaN or infinity")
    x = np.ascontiguousarray(x if x.dtype in (np.float32, np.float64) else x.astype(np.float32))
    q = np.empty(x.shape, np.int8)
    scales = np.empty(x.shape[0], np.float32)
    sq_err = np.empty(x.shape[0])
    _symmetric_int8_rows(x, q, scales, sq_err)
    return q, scales, sq_err


def symmetric_int8_rows_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain numpy twin of `symmetric_int8_rows`."""
    x64 = np.asarray(x, np.float64)
    peak = np.abs(x64).max(axis=1) if x64.shape[1] else np.zeros(x64.shape[0])
    scales = np.where(peak > 0, (peak / 127.0).astype(np.float32), np.float32(1.0))
    scales = np.maximum(scales, _TINY)
    v = x64 / scales.astype(np.float64)[:, None]
    m = np.minimum(np.floor(np.abs(v) + 0.5), 127.0)
    q = np.where(v >= 0, m, -m)
    sq_err = np.sum((x64 - q * scales.astype(np.float64)[:, None]) ** 2, axis=1)
    return q.astype(np.int8), scales.astype(np.float32), sq_err
