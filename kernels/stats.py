"""Per-row statistics of weights for the reports: zeros, distinct values, squared error.

Each kernel makes one pass over the data, with no temporaries the size of the weight, so
that a report costs little next to the edit it describes.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels._jit import jit


@jit
def int8_histogram(row, sub, hist):
    """hist[v + 128] = how many times each int8 value v occurs in `row` (1-D). The counts go
    to four sub-histograms (`sub`, 4 x 256 int32 of scratch) in turn, so that a run of equal
    values does not make every increment wait for the one before."""
    sub[:] = 0
    n = row.shape[0]
    n4 = n - n % 4
    for t in range(0, n4, 4):
        sub[0, np.int64(row[t]) + 128] += 1
        sub[1, np.int64(row[t + 1]) + 128] += 1
        sub[2, np.int64(row[t + 2]) + 128] += 1
        sub[3, np.int64(row[t + 3]) + 128] += 1
    for t in range(n4, n):
        sub[0, np.int64(row[t]) + 128] += 1
    for b in range(256):
        hist[b] = np.int64(sub[0, b]) + sub[1, b] + sub[2, b] + sub[3, b]


@jit
def int8_row_counts(row, sub, hist, r, zeros, distinct, seen):
    """Zeros and distinct values of one int8 row into zeros[r] and distinct[r]; marks the
    values seen (offset by 128) in `seen`. `sub` and `hist` are scratch for int8_histogram."""
    int8_histogram(row, sub, hist)
    zeros[r] = hist[128]
    d = 0
    for b in range(256):
        if hist[b] > 0:
            d += 1
            seen[b] = True
    distinct[r] = d


@jit
def _int8_counts(q, zeros, distinct, seen, sub, hist):
    for r in range(q.shape[0]):
        int8_row_counts(q[r], sub, hist, r, zeros, distinct, seen)


@jit
def _int8_histograms(q, hists, sub):
    for r in range(q.shape[0]):
        int8_histogram(q[r], sub, hists[r])


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


def _histogram_scratch() -> tuple[np.ndarray, np.ndarray]:
    """(sub, hist): int8_histogram's scratch (see _jit on why kernels take it)."""
    return np.empty((4, 256), np.int32), np.empty(256, np.int64)


def all_finite(x: np.ndarray) -> bool:
    """Whether an array holds no NaN or infinity. (numpy's own test is as fast as a kernel
    here, and a kernel would cost its load at a process's first rewrite.)"""
    return x.dtype.kind != "f" or bool(np.isfinite(x).all())


def int8_counts(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(zeros per row, distinct values per row, distinct values overall) of int8 rows."""
    q = np.ascontiguousarray(_rows(q, "q"))
    zeros, distinct = np.empty(q.shape[0], np.int64), np.empty(q.shape[0], np.int64)
    seen = np.zeros(256, np.bool_)
    _int8_counts(q, zeros, distinct, seen, *_histogram_scratch())
    return zeros, distinct, int(seen.sum())


def int8_histograms(q: np.ndarray) -> np.ndarray:
    """(rows, 256) int64: how many times each value v occurs in each row of int8 q, at v + 128."""
    q = np.ascontiguousarray(_rows(q, "q"))
    if q.dtype != np.int8:
        raise ValueError(f"q must be int8, not {q.dtype}")
    hists = np.empty((q.shape[0], 256), np.int64)
    _int8_histograms(q, hists, _histogram_scratch()[0])
    return hists


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
