"""Per-row statistics of weights for the reports: zeros, distinct values, squared error.

One pass over the data each, with no temporaries the size of the weight, so that a report
costs little next to the edit it describes.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit


@jit
def _int8_counts(q, zeros, distinct, seen):
    hist = np.zeros(256, np.int64)
    rows, n = q.shape
    for r in range(rows):
        hist[:] = 0
        for t in range(n):
            hist[np.int64(q[r, t]) + 128] += 1
        zeros[r] = hist[128]
        d = 0
        for b in range(256):
            if hist[b] > 0:
                d += 1
                seen[b] = True
        distinct[r] = d


@jit
def _zeros(x, zeros):
    rows, n = x.shape
    for r in range(rows):
        z = 0
        for t in range(n):
            if x[r, t] == 0:
                z += 1
        zeros[r] = z


@jit
def _sq_diff(a, b, out):
    rows, n = a.shape
    for r in range(rows):
        acc = 0.0
        for t in range(n):
            d = np.float64(a[r, t]) - np.float64(b[r, t])
            acc += d * d
        out[r] = acc


@jit
def _all_finite(x):
    for v in x:
        if not np.isfinite(v):
            return False
    return True


def all_finite(x: np.ndarray) -> bool:
    """Whether a float array holds no NaN or infinity (one pass, no temporary array)."""
    flat = x.reshape(-1)
    if flat.dtype == np.float16:  # Numba has no float16
        return bool(np.isfinite(flat).all())
    return bool(_all_finite(np.ascontiguousarray(flat)))


def int8_counts(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(zeros per row, distinct values per row, distinct values overall) of int8 rows."""
    q = np.ascontiguousarray(_rows(q, "q"))
    zeros, distinct = np.empty(q.shape[0], np.int64), np.empty(q.shape[0], np.int64)
    seen = np.zeros(256, np.bool_)
    _int8_counts(q, zeros, distinct, seen)
    return zeros, distinct, int(seen.sum())


def zeros_per_row(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(_rows(x, "x"))
    out = np.empty(x.shape[0], np.int64)
    _zeros(x, out)
    return out


def sq_diff_per_row(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum over each row of (a - b)^2, in float64."""
    a, b = np.ascontiguousarray(_rows(a, "a")), np.ascontiguousarray(_rows(b, "b"))
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    out = np.empty(a.shape[0])
    _sq_diff(a, b, out)
    return out


def _rows(a: np.ndarray, name: str) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array, not {getattr(a, 'shape', type(a))}")
    return a.astype(np.float32) if a.dtype == np.float16 else a  # Numba has no float16


# ---- plain numpy twins, for the tests


def int8_counts_numpy(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    distinct = np.array([np.unique(r).size for r in q], np.int64)
    return np.count_nonzero(q == 0, axis=1), distinct, int(np.unique(q).size)


def zeros_per_row_numpy(x: np.ndarray) -> np.ndarray:
    return np.count_nonzero(x == 0, axis=1).astype(np.int64)


def sq_diff_per_row_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=1)
