"""Exact optimal 1-D k-means (least squared error) for weight clustering, plus Lloyd for parity.

The exact solver is the classic dynamic programme over sorted distinct points, D[c][j] =
min_i D[c-1][i] + cost(i, j) (c clusters over the first j points), each layer computed by
divide and conquer: the 1-D k-means cost satisfies the quadrangle inequality, so the
leftmost argmin of a layer is monotone in j (Grønlund et al. 2017, "Fast exact k-means,
k-medians and Bregman divergence clustering in 1D"), and the previous layer's argmin bounds
it from below (Knuth). A layer costs O(m log m) for m distinct points; memory is
O(m) float64 work arrays plus a k x m int32 argmin table for the backtrack.

int8 units (`cluster_int8_rows`, `cluster_int8`) are clustered by their own DP
(`_int_dp`): the centroids written are integers, and a cluster's best integer centroid
is its rounded mean (or +-1 where zero is reserved), so the DP's segment cost is the error
around that integer, not around the mean. That cost keeps the quadrangle inequality (see
`_int_dp`), so the same divide and conquer applies, in int64, exactly.

Exactness of the twins in tests/twins.py: `kmeans_1d_bruteforce` is the full O(k m^2) DP and
reaches the same cost. The float row twin (`cluster_float_rows_numpy`) must match bit for
bit, so it runs the same float64 operations in the same order (sequential prefix sums,
`np.cumsum` in numpy) and the same search (`_np_dc_starts`): when two partitions tie
exactly, rounding can make the computed argmin non-monotone by an ulp, and then a full scan
and the divide and conquer return different, equally optimal, partitions. The int8 twin
(`cluster_int8_rows_numpy`) is the full scan over the same integer costs, leftmost argmin:
with exact costs the monotone leftmost argmins make both searches find the same split.
"""

from __future__ import annotations

import numpy as np

from tflrewrite.kernels import stats
from tflrewrite.kernels._jit import jit

_INF = np.inf
_STACK = 70  # the divide-and-conquer stack holds at most log2(m) + 2 entries
_SORTED_ROWS_MAX = 2**20  # cluster_float_rows sorts at most this many values at a time

# ------------------------------------------------------------------ shared DP core (Numba)


@jit
def _prefix_sums(x, w, m, p0, p1, p2):
    """Prefix sums of w, w*d, w*d*d with d = x - (weighted mean), centred against cancellation."""
    s0 = 0.0
    s1 = 0.0
    for t in range(m):
        s0 += w[t]
        s1 += w[t] * x[t]
    mu = s1 / s0
    p0[0] = 0.0
    p1[0] = 0.0
    p2[0] = 0.0
    for t in range(m):
        d = x[t] - mu
        wd = w[t] * d
        p0[t + 1] = p0[t] + w[t]
        p1[t + 1] = p1[t] + wd
        p2[t + 1] = p2[t] + wd * d


@jit
def _seg_cost(p0, p1, p2, i, j):
    """Weighted squared error of points [i, j) around their mean; rounding below 0 clamps."""
    s0 = p0[j] - p0[i]
    s1 = p1[j] - p1[i]
    s2 = p2[j] - p2[i]
    c = s2 - s1 * s1 / s0
    return c if c > 0.0 else 0.0


@jit
def _dc_layer(p0, p1, p2, dprev, dcur, arg, prev_arg, jlo, jhi, ilo, stack):
    """dcur[j] = min_{ilo <= i < j} dprev[i] + cost(i, j) for j in [jlo, jhi], leftmost argmin.

    Divide and conquer on j (the argmin is monotone in j); the previous layer's argmin,
    prev_arg (valid on [jlo - 1, jhi - 1]), is a lower bound too (Knuth), which cuts the
    evaluations by about a third.
    """
    stack[0, 0] = jlo
    stack[0, 1] = jhi
    stack[0, 2] = ilo
    stack[0, 3] = jhi - 1
    top = 1
    while top > 0:
        top -= 1
        a = stack[top, 0]
        b = stack[top, 1]
        olo = stack[top, 2]
        ohi = stack[top, 3]
        mid = (a + b) // 2
        hi = min(ohi, mid - 1)  # >= olo always
        lo = max(olo, min(prev_arg[min(mid, jhi - 1)], hi))  # never an empty range
        q0 = p0[mid]
        q1 = p1[mid]
        q2 = p2[mid]
        best = _INF
        bi = lo
        for i in range(lo, hi + 1):
            s1 = q1 - p1[i]
            c = (q2 - p2[i]) - s1 * s1 / (q0 - p0[i])  # _seg_cost(p0, p1, p2, i, mid)
            v = dprev[i] + (c if c > 0.0 else 0.0)
            if v < best:
                best = v
                bi = i
        dcur[mid] = best
        arg[mid] = bi
        if a < mid:
            stack[top, 0] = a
            stack[top, 1] = mid - 1
            stack[top, 2] = olo
            stack[top, 3] = bi
            top += 1
        if mid < b:
            stack[top, 0] = mid + 1
            stack[top, 1] = b
            stack[top, 2] = bi
            stack[top, 3] = ohi
            top += 1


@jit
def _dp_core(x, w, m, k, f, arg, stack, starts):
    """Optimal split of the m sorted distinct points x (weights w) into kk = min(k, m) clusters.

    Writes the first point of each cluster to starts[:kk] and returns (kk, DP cost). The
    work arrays come from `_workspace` and may be larger than needed.
    """
    p0, p1, p2, dprev, dcur = f[0], f[1], f[2], f[3], f[4]
    kk = min(k, m)
    if kk == m:
        for t in range(m):
            starts[t] = t
        return kk, 0.0
    _prefix_sums(x, w, m, p0, p1, p2)
    # Layer c (c clusters) is needed only for j in [c, m - kk + c]; layer 1's argmin is 0.
    for j in range(1, m - kk + 2):
        dprev[j] = _seg_cost(p0, p1, p2, 0, j)
        arg[0, j] = 0
    cost = dprev[m] if kk == 1 else 0.0
    for c in range(2, kk + 1):
        if c < kk:
            _dc_layer(p0, p1, p2, dprev, dcur, arg[c - 1], arg[c - 2], c, m - kk + c, c - 1, stack)
            dprev, dcur = dcur, dprev
        else:  # the last layer needs j = m only
            lo = max(c - 1, arg[c - 2, m - 1])
            best = _INF
            bi = lo
            for i in range(lo, m):
                v = dprev[i] + _seg_cost(p0, p1, p2, i, m)
                if v < best:
                    best = v
                    bi = i
            arg[c - 1, m] = bi
            cost = best
    j = m
    for c in range(kk, 1, -1):
        j = arg[c - 1, j]
        starts[c - 1] = j
    starts[0] = 0
    return kk, cost


@jit
def _cluster_mean(x, w, a, b):
    """Weighted mean of points [a, b), as x[a] + mean offset, clipped into [x[a], x[b-1]]."""
    acc = 0.0
    s0 = 0.0
    for t in range(a, b):
        acc += w[t] * (x[t] - x[a])
        s0 += w[t]
    c = x[a] + acc / s0
    if c < x[a]:
        c = x[a]
    if c > x[b - 1]:
        c = x[b - 1]
    return c


def _workspace(m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(f, arg, stack, starts): _dp_core's work arrays for up to m points and k clusters
    (see _jit on why kernels take their scratch)."""
    kk = max(1, min(k, m))
    f = np.empty((5, m + 1))  # p0, p1, p2, dprev, dcur
    arg = np.zeros((kk, m + 1), np.int32)  # argmin of each layer, for the backtrack
    return f, arg, np.empty((_STACK, 4), np.int64), np.empty(kk, np.int64)


def _int8_scratch(k: int) -> tuple[np.ndarray, ...]:
    """(level, count, x, w, lut, p, f, layers, arg, stack, starts): _int8_lut's scratch."""
    f, arg, stack, starts = _workspace(256, k)
    return (
        np.empty(256, np.int64),
        np.empty(256, np.int64),
        np.empty(256),  # the levels and counts again, in float64 for _dp_core
        np.empty(256),
        np.empty(256, np.int8),
        np.empty((3, 257), np.int64),  # prefix sums of count, count * level, count * level^2
        f,
        np.empty((2, 257), np.int64),  # the previous and the current layer of _int_dp
        arg,
        stack,
        np.empty((2, starts.size), np.int64),  # the clusters' starts: _dp_core's, _int_dp's
    )


# ------------------------------------------------------------------ one weighted array


@jit
def _optimal_kmeans_1d_kernel(values, weights, k, x, w, first, f, arg, stack, starts, cent, bounds):
    """Into cent[:kk] and bounds[:kk], optimal_kmeans_1d's centroids and boundaries;
    returns (kk, cost). The other arguments are scratch for n points."""
    n = values.shape[0]
    m = 0
    for t in range(n):
        if m > 0 and values[t] == x[m - 1]:
            w[m - 1] += weights[t]
        else:
            x[m] = values[t]
            w[m] = weights[t]
            first[m] = t
            m += 1
    kk, _ = _dp_core(x, w, m, k, f, arg, stack, starts)
    for c in range(kk):
        a = starts[c]
        b = starts[c + 1] if c + 1 < kk else m
        cent[c] = _cluster_mean(x, w, a, b)
        bounds[c] = first[a]
    cost = 0.0
    c = 0
    for t in range(n):
        while c + 1 < kk and t >= bounds[c + 1]:
            c += 1
        d = values[t] - cent[c]
        cost += weights[t] * d * d
    return kk, cost


def _check_points(values, weights, *, need_sorted: bool) -> tuple[np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(values, dtype=np.float64)
    if v.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise ValueError("values must be finite (no NaN or inf)")
    if need_sorted and v.size > 1 and np.any(v[1:] < v[:-1]):
        raise ValueError("values must be sorted ascending")
    if weights is None:
        return v, np.ones_like(v)
    w = np.ascontiguousarray(weights, dtype=np.float64)
    if w.shape != v.shape:
        raise ValueError(f"weights shape {w.shape} differs from values shape {v.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise ValueError("weights must be finite and > 0")
    return v, w


def _check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def optimal_kmeans_1d(
    values: np.ndarray, weights: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Exact least-squares clustering of sorted 1-D points into at most k contiguous clusters.

    Args:
        values: 1-D, sorted ascending, finite; repeats allowed (they always share a cluster).
        weights: positive weights (counts) of the same length, or None for all ones.
        k: the most clusters wanted, >= 1.

    Returns:
        (centroids, boundaries, cost): k' = min(k, distinct values) ascending float64 centroids
        (each its cluster's weighted mean), the int64 index in `values` where each cluster
        starts, and sum w_i (v_i - c(i))^2 of that assignment.

    Raises:
        ValueError: on inputs that break the rules above.
    """
    v, w = _check_points(values, weights, need_sorted=True)
    k = _check_k(k)
    if v.size == 0:
        return np.empty(0), np.empty(0, np.int64), 0.0
    n = v.size
    cent, bounds = np.empty(min(k, n)), np.empty(min(k, n), np.int64)
    scratch = np.empty(n), np.empty(n), np.empty(n, np.int64), *_workspace(n, k)
    kk, cost = _optimal_kmeans_1d_kernel(v, w, k, *scratch, cent, bounds)
    return cent[:kk].copy(), bounds[:kk].copy(), float(cost)


# ------------------------------------------------------------------ int8 rows


@jit
def _round_mean_int(s1, s0):
    """round(s1 / s0) with ties away from zero, exactly (s0 > 0, |s1| <= 128 s0).

    In float64 while s0 < 2^40, a third of the time of integer division: |s1| / s0 is then
    within 2^-46 of the true quotient and adding 0.5 within 2^-46 more, while a quotient
    that is not a half-integer lies at least 1 / (2 s0) > 2^-41 from one, so the floor is
    exact, and a half-integer quotient is exact in float64.
    """
    if s0 < 2**40:
        r = np.int64(np.floor(abs(s1) / s0 + 0.5))
        return r if s1 >= 0 else -r
    if s1 >= 0:
        return (2 * s1 + s0) // (2 * s0)
    return -((-2 * s1 + s0) // (2 * s0))


@jit
def _int_centroid(s1, s0, keep_zero):
    """The integer with the least squared error to s0 integer points summing to s1; with
    keep_zero, the best nonzero one.

    The error s2 - 2 c s1 + c^2 s0 is a parabola in c with its vertex at the mean s1 / s0,
    so the nearest integer to the mean is best (at a tie of .5 both neighbours cost the
    same; this takes the one away from zero). With 0 excluded and the mean rounding to 0
    (|mean| <= 1/2), the nearer of +-1 is best: +1 for a mean >= 0. The mean of int8
    levels rounds into int8.
    """
    c = _round_mean_int(s1, s0)
    if keep_zero and c == 0:
        c = 1 if s1 >= 0 else -1
    return c


@jit
def _int_cost(p, i, j, keep_zero):
    """Squared error of the levels [i, j) around their best integer centroid, from the
    prefix sums p of count, count * level and count * level^2 (exact integers)."""
    s0 = p[0, j] - p[0, i]
    s1 = p[1, j] - p[1, i]
    c = _int_centroid(s1, s0, keep_zero)
    return (p[2, j] - p[2, i]) - 2 * c * s1 + c * c * s0


@jit
def _int_dc_layer(p, keep_zero, dprev, dcur, arg, prev_arg, jlo, jhi, ilo, stack):
    """`_dc_layer` with `_int_cost`: dcur[j] = min_i dprev[i] + cost(i, j), leftmost argmin."""
    p0, p1, p2 = p[0], p[1], p[2]
    stack[0, 0] = jlo
    stack[0, 1] = jhi
    stack[0, 2] = ilo
    stack[0, 3] = jhi - 1
    top = 1
    while top > 0:
        top -= 1
        a = stack[top, 0]
        b = stack[top, 1]
        olo = stack[top, 2]
        ohi = stack[top, 3]
        mid = (a + b) // 2
        hi = min(ohi, mid - 1)
        lo = max(olo, min(prev_arg[min(mid, jhi - 1)], hi))
        q0 = p0[mid]
        q1 = p1[mid]
        q2 = p2[mid]
        best = dprev[lo] + _int_cost(p, lo, mid, keep_zero)
        bi = lo
        for i in range(lo + 1, hi + 1):
            s0 = q0 - p0[i]
            s1 = q1 - p1[i]
            c = _int_centroid(s1, s0, keep_zero)
            v = dprev[i] + (q2 - p2[i]) - (2 * c * s1 - c * c * s0)  # _int_cost(p, i, mid, ...)
            if v < best:
                best = v
                bi = i
        dcur[mid] = best
        arg[mid] = bi
        if a < mid:
            stack[top, 0] = a
            stack[top, 1] = mid - 1
            stack[top, 2] = olo
            stack[top, 3] = bi
            top += 1
        if mid < b:
            stack[top, 0] = mid + 1
            stack[top, 1] = b
            stack[top, 2] = bi
            stack[top, 3] = ohi
            top += 1


@jit
def _int_dp(level, count, m, k, keep_zero, p, layers, arg, stack, starts):
    """Least squared error split of m sorted distinct integer levels (weights `count`) into
    kk = min(k, m) contiguous clusters, each at its best integer centroid (`_int_centroid`).

    Writes the first level of each cluster to starts[:kk], the prefix sums of count,
    count * level and count * level^2 to p, and returns kk. Nearest-centroid assignment
    makes an optimal clustering contiguous, and splitting a cluster never costs more, so
    the least cost over these splits is the least over every assignment of the levels to
    at most k integer centroids (nonzero with keep_zero). Every cost is an integer, exact
    in int64. The search is `_dp_core`'s: the cost keeps the quadrangle inequality
    cost(a, c) + cost(b, d) <= cost(a, d) + cost(b, c) for a < b < c < d, because a
    cluster's best integer centroid lies within its levels' range (the mean of integers
    rounds, or goes to +-1, inside it): with x the centroid of [a, d) and y that of
    [b, c), say x <= y, y <= every level of [c, d), which is then no farther from y than
    from x, so [a, c) around x and [b, d) around y cost no more than the right side (the
    other case mirrors on [a, b)). So the leftmost argmins are monotone and the divide
    and conquer with Knuth's bound finds the same split as a full scan (tests/twins.py's
    twin is one; the tests compare them exactly).
    """
    p[0, 0] = 0
    p[1, 0] = 0
    p[2, 0] = 0
    for t in range(m):
        h = count[t]
        v = level[t]
        p[0, t + 1] = p[0, t] + h
        p[1, t + 1] = p[1, t] + h * v
        p[2, t + 1] = p[2, t] + h * v * v
    kk = min(k, m)
    if kk == m:
        for t in range(m):
            starts[t] = t
        return kk
    dprev, dcur = layers[0], layers[1]
    # Layer c (c clusters) is needed only for j in [c, m - kk + c]; layer 1's argmin is 0.
    for j in range(1, m - kk + 2):
        dprev[j] = _int_cost(p, 0, j, keep_zero)
        arg[0, j] = 0
    for c in range(2, kk + 1):
        if c < kk:
            _int_dc_layer(
                p, keep_zero, dprev, dcur, arg[c - 1], arg[c - 2], c, m - kk + c, c - 1, stack
            )
            dprev, dcur = dcur, dprev
        else:  # the last layer needs j = m only
            lo = max(c - 1, arg[c - 2, m - 1])
            best = dprev[lo] + _int_cost(p, lo, m, keep_zero)
            bi = lo
            for i in range(lo + 1, m):
                v = dprev[i] + _int_cost(p, i, m, keep_zero)
                if v < best:
                    best = v
                    bi = i
            arg[c - 1, m] = bi
    j = m
    for c in range(kk, 1, -1):
        j = arg[c - 1, j]
        starts[c - 1] = j
    starts[0] = 0
    return kk


@jit
def _split_cost(p, starts, kk, m, keep_zero):
    """`_int_cost` summed over the kk clusters that start at starts[:kk] (of m levels)."""
    total = 0
    for c in range(kk):
        total += _int_cost(p, starts[c], starts[c + 1] if c + 1 < kk else m, keep_zero)
    return total


@jit
def _int8_lut(hist, k, keep_zero, level, count, x, w, lut, p, f, layers, arg, stack, starts):
    """Into lut (256 int8, indexed by value + 128): the centroid each int8 value of a unit
    with histogram `hist` goes to. The other arguments are scratch.

    The split is `_int_dp`'s unless the float optimum's (`_dp_core`) has as little error
    in integers: integer errors often tie, and among tied splits this one has the least
    error before rounding (it is also what this module wrote before it had `_int_dp`).
    """
    zero_alone = keep_zero and hist[128] > 0
    m = 0
    for b in range(256):
        if hist[b] > 0 and not (zero_alone and b == 128):
            level[m] = b - 128
            count[m] = hist[b]
            x[m] = b - 128
            w[m] = hist[b]
            m += 1
    kr = k - 1 if zero_alone else k
    lut[128] = 0
    if m > 0 and kr == 0:
        for t in range(m):  # k == 1 with zeros kept: the zero cluster is the only one
            lut[level[t] + 128] = 0
    elif m > 0:
        kk = _int_dp(level, count, m, kr, keep_zero, p, layers, arg, stack, starts[1])
        exact = _split_cost(p, starts[1], kk, m, keep_zero)
        _dp_core(x, w, m, kr, f, arg, stack, starts[0])
        pick = 1 if exact < _split_cost(p, starts[0], kk, m, keep_zero) else 0
        for c in range(kk):
            a = starts[pick, c]
            b = starts[pick, c + 1] if c + 1 < kk else m
            cent = _int_centroid(p[1, b] - p[1, a], p[0, b] - p[0, a], keep_zero)
            for t in range(a, b):
                lut[level[t] + 128] = cent


@jit
def _cluster_int8_rows_kernel(
    q, hists, k, keep_zero, out, level, count, x, w, lut, p, f, layers, arg, stack, starts
):
    rows, n = q.shape
    for r in range(rows):
        _int8_lut(hists[r], k, keep_zero, level, count, x, w, lut, p, f, layers, arg, stack, starts)
        for t in range(n):
            out[r, t] = lut[np.int64(q[r, t]) + 128]


@jit
def _cluster_int8_kernel(
    q,
    hists,
    k,
    keep_zero,
    per_row,
    out,
    sq,
    zeros,
    distinct,
    seen,
    total,
    used,
    level,
    count,
    x,
    w,
    lut,
    p,
    f,
    layers,
    arg,
    stack,
    starts,
):
    rows, n = q.shape
    if not per_row:  # one unit: the histogram of every row together (total starts at 0)
        for r in range(rows):
            for b in range(256):
                total[b] += hists[r, b]
        _int8_lut(total, k, keep_zero, level, count, x, w, lut, p, f, layers, arg, stack, starts)
    for r in range(rows):
        if per_row:
            _int8_lut(
                hists[r], k, keep_zero, level, count, x, w, lut, p, f, layers, arg, stack, starts
            )
        for t in range(n):
            out[r, t] = lut[np.int64(q[r, t]) + 128]
        # The row's statistics after clustering, from its histogram: lut maps every
        # value in it, so (value - centroid)^2 summed over the histogram is the squared
        # error (integers, exact in float64 in any order).
        used[:] = False
        z = 0
        e = 0
        for b in range(256):
            h = hists[r, b]
            if h > 0:
                c = np.int64(lut[b])
                used[c + 128] = True
                z += h if c == 0 else 0
                e += h * (b - 128 - c) * (b - 128 - c)
        d = 0
        for b in range(256):
            if used[b]:
                d += 1
                seen[b] = True
        zeros[r] = z
        distinct[r] = d
        sq[r] = np.float64(e)


def _check_rows(a, kind: str) -> None:
    if not isinstance(a, np.ndarray) or a.ndim != 2:
        raise ValueError(
            f"expected a 2-D {kind} array (rows x n), got {type(a).__name__} "
            f"with shape {getattr(a, 'shape', None)}"
        )


def cluster_int8_rows(q: np.ndarray, k: int, keep_zero: bool) -> np.ndarray:
    """Replace each row's int8 values by at most k optimal cluster centroids.

    Each row is clustered on its histogram of the 256 levels. When keep_zero is set and the
    row holds zeros, zero is a cluster of its own and the other levels share k - 1 clusters
    (so with k == 1 the whole row becomes zero); otherwise all levels share k. Centroids are
    integers, and the clustering has the least squared error of any with at most k integer
    centroids: each cluster's is its weighted mean rounded half away from zero. With
    keep_zero no centroid but the zero cluster's is 0 (a cluster of nonzero values whose
    mean rounds to 0 takes the nearer of +1 and -1), so clustering never adds zeros: the
    zero set (and so the sparsity pruning chose) comes out exactly as it went in.

    Returns:
        A new int8 array of q's shape with at most k distinct values per row.
    """
    _check_rows(q, "int8")
    if q.dtype != np.int8:
        raise ValueError(f"q must be int8, got {q.dtype}")
    k = _check_k(k)
    q = np.ascontiguousarray(q)
    out = np.empty(q.shape, np.int8)
    _cluster_int8_rows_kernel(
        q, stats.int8_histograms(q), k, bool(keep_zero), out, *_int8_scratch(k)
    )
    return out


def cluster_int8(
    q: np.ndarray, k: int, keep_zero: bool, per_row: bool
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, int]]:
    """`cluster_int8_rows` of each row (per_row) or of all of q as one unit, with what the
    report wants of the result, from histograms rather than more passes over the values.

    Returns:
        (clustered int8 rows, per row the sum of squared differences from q, and
        stats.int8_counts of the result).
    """
    _check_rows(q, "int8")
    if q.dtype != np.int8:
        raise ValueError(f"q must be int8, got {q.dtype}")
    k = _check_k(k)
    rows = q.shape[0]
    out = np.empty(q.shape, np.int8)
    sq = np.empty(rows)
    zeros, distinct = np.empty(rows, np.int64), np.empty(rows, np.int64)
    seen = np.zeros(256, np.bool_)
    q = np.ascontiguousarray(q)
    hists = stats.int8_histograms(q)
    total, used = np.zeros(256, np.int64), np.empty(256, np.bool_)
    _cluster_int8_kernel(
        q,
        hists,
        k,
        bool(keep_zero),
        bool(per_row),
        out,
        sq,
        zeros,
        distinct,
        seen,
        total,
        used,
        *_int8_scratch(k),
    )
    return out, sq, (zeros, distinct, int(seen.sum()))


# ------------------------------------------------------------------ float rows


@jit
def _cluster_float_rows_kernel(
    xin, srt, k, keep_zero, out, x, w, f, arg, stack, starts, cent, lows
):
    """cluster_float_rows of the rows of xin, given srt, each row of xin in ascending order
    as float64. The other arguments are scratch."""
    rows, n = xin.shape
    for r in range(rows):
        for t in range(n):
            out[r, t] = xin[r, t]
        has_zero = False
        m = 0
        for t in range(n):
            v = srt[r, t]
            if keep_zero and v == 0.0:
                has_zero = True
            elif m > 0 and v == x[m - 1]:
                w[m - 1] += 1.0
            else:
                x[m] = v
                w[m] = 1.0
                m += 1
        kr = k - 1 if has_zero else k
        if m == 0:
            continue
        if kr == 0:  # k == 1 with zeros kept: the zero cluster is the only one
            for t in range(n):
                out[r, t] = 0.0
            continue
        kk, _ = _dp_core(x, w, m, kr, f, arg, stack, starts)
        for c in range(kk):
            a = starts[c]
            b = starts[c + 1] if c + 1 < kk else m
            cent[c] = _cluster_mean(x, w, a, b)
            lows[c] = x[a]
        for t in range(n):
            v = np.float64(xin[r, t])
            if not (has_zero and v == 0.0):
                lo = 0  # the last cluster whose lowest point is <= v
                hi = kk
                while lo < hi:
                    mid = (lo + hi) // 2
                    if lows[mid] <= v:
                        lo = mid + 1
                    else:
                        hi = mid
                out[r, t] = cent[lo - 1]


def _check_float_rows(x) -> None:
    _check_rows(x, "float")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"x must be float32 or float64, got {x.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must be finite (no NaN or inf)")


def cluster_float_rows(x: np.ndarray, k: int, keep_zero: bool) -> np.ndarray:
    """Replace each row's values by at most k optimal cluster means (in x's dtype).

    Same rules as `cluster_int8_rows`: with keep_zero and zeros present, zeros stay exactly
    zero and the other values share k - 1 clusters (all become zero when k == 1).
    """
    _check_float_rows(x)
    k = _check_k(k)
    x = np.ascontiguousarray(x)
    out = np.empty(x.shape, x.dtype)
    rows, n = x.shape
    scratch = np.empty(n), np.empty(n), *_workspace(n, k), np.empty(k), np.empty(k)
    step = max(1, _SORTED_ROWS_MAX // max(n, 1))
    for a in range(0, rows, step):
        block = x[a : a + step]
        srt = np.sort(block.astype(np.float64), axis=1)
        _cluster_float_rows_kernel(block, srt, k, bool(keep_zero), out[a : a + step], *scratch)
    return out


# ------------------------------------------------------------------ Lloyd, for parity with TFMOT


def _assign(v: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index into sorted centroids of the nearest one (midpoint ties go to the lower)."""
    mids = (centroids[1:] + centroids[:-1]) / 2
    return np.searchsorted(mids, v, side="left")


def lloyd_1d(
    values: np.ndarray,
    weights: np.ndarray | None,
    init_centroids: np.ndarray,
    max_iter: int = 300,
    tol: float = 1e-12,
) -> tuple[np.ndarray, float]:
    """Weighted Lloyd iterations from init_centroids (a local optimum, not the exact one).

    Empty clusters keep their centroid. Stops after max_iter updates or when an update lowers
    the cost by no more than tol * cost.

    Returns:
        (centroids sorted ascending, cost of assigning every value to its nearest centroid).
    """
    v, w = _check_points(values, weights, need_sorted=False)
    c = np.sort(np.asarray(init_centroids, dtype=np.float64).ravel())
    if c.size == 0 or not np.all(np.isfinite(c)):
        raise ValueError("init_centroids must be a non-empty finite array")

    def cost_of(cent):
        return float(np.sum(w * (v - cent[_assign(v, cent)]) ** 2))

    cost = cost_of(c)
    for _ in range(max_iter):
        a = _assign(v, c)
        s0 = np.bincount(a, weights=w, minlength=c.size)
        s1 = np.bincount(a, weights=w * v, minlength=c.size)
        new = np.sort(np.where(s0 > 0, s1 / np.where(s0 > 0, s0, 1.0), c))
        new_cost = cost_of(new)
        if new_cost > cost:  # rounding only: keep the better one
            break
        done = cost - new_cost <= tol * cost or np.array_equal(new, c)
        c, cost = new, new_cost
        if done:
            break
    return c, cost


def initial_centroids(
    values: np.ndarray, weights: np.ndarray | None, k: int, *, method: str, seed: int = 0
) -> np.ndarray:
    """Starting centroids for `lloyd_1d`, after TF Model Optimization's initialisations.

    Methods: "linear" (k evenly spaced from min to max), "density" (the weighted CDF's
    quantiles at linspace(0.01, 1, k), TFMOT's probabilities, read from the exact CDF rather
    than TFMOT's 30-point grid), "kmeans++" (weighted D^2 sampling, np.random.default_rng(seed)).
    """
    v, w = _check_points(values, weights, need_sorted=False)
    k = _check_k(k)
    if v.size == 0:
        raise ValueError("values is empty")
    if method == "linear":
        return np.linspace(v.min(), v.max(), k)
    if method == "density":
        order = np.argsort(v, kind="stable")
        cdf = np.cumsum(w[order]) / np.sum(w)
        return np.interp(np.linspace(0.01, 1.0, k), cdf, v[order])
    if method == "kmeans++":
        rng = np.random.default_rng(seed)
        c = [v[rng.choice(v.size, p=w / w.sum())]]
        d2 = w * (v - c[0]) ** 2  # weighted squared distance to the nearest centroid so far
        for _ in range(1, k):
            total = d2.sum()
            c.append(v[rng.choice(v.size, p=d2 / total)] if total > 0 else c[-1])
            d2 = np.minimum(d2, w * (v - c[-1]) ** 2)
        return np.sort(np.array(c))
    raise ValueError(f"unknown method {method!r}: use 'linear', 'density' or 'kmeans++'")
