"""Plain numpy twins of the Numba kernels in kernels/: slow, obvious, and equal to the kernels
exactly (the kernel tests compare them). Only tests use them; they take the kernels' own
argument checks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tflrewrite.kernels import bitpack, kmeans1d, prune, quantize, reconstruct, sparse

# ------------------------------------------------------------------ bitpack


def pack_numpy(indices: np.ndarray, width: int) -> np.ndarray:
    """Plain numpy twin of `bitpack.pack`."""
    width = bitpack._check_width(width)
    a = bitpack._check_indices(indices, width)
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint8)
    bits = ((a[:, None] >> shifts) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(bits)  # pads the last byte with zero bits


def unpack_numpy(packed: np.ndarray, width: int, count: int) -> np.ndarray:
    """Plain numpy twin of `bitpack.unpack`."""
    width = bitpack._check_width(width)
    p = np.asarray(packed, dtype=np.uint8).reshape(-1)
    if count < 0 or bitpack.packed_size(count, width) > p.size:
        raise ValueError(f"{p.size} bytes do not hold {count} indices of {width} bits")
    bits = np.unpackbits(p)[: count * width].reshape(count, width).astype(np.uint8)
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.uint16)
    return (bits @ weights).astype(np.uint8)


# ------------------------------------------------------------------ kmeans1d


def _np_prefix_sums(x: np.ndarray, w: np.ndarray):
    """The same float64 operations, in the same order, as `kmeans1d._prefix_sums`."""
    mu = np.cumsum(w * x)[-1] / np.cumsum(w)[-1]
    d = x - mu
    wd = w * d
    zero = np.zeros(1)
    return (
        np.concatenate([zero, np.cumsum(w)]),
        np.concatenate([zero, np.cumsum(wd)]),
        np.concatenate([zero, np.cumsum(wd * d)]),
    )


def _np_dp_starts(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """O(k m^2) dynamic programme over all (i, j) without the divide and conquer."""
    m = x.size
    kk = min(k, m)
    if kk == m:
        return np.arange(m)
    p0, p1, p2 = _np_prefix_sums(x, w)
    i, j = np.triu_indices(m + 1, 1)
    s0 = p0[j] - p0[i]
    s1 = p1[j] - p1[i]
    c = (p2[j] - p2[i]) - s1 * s1 / s0
    cost = np.full((m + 1, m + 1), np.inf)  # cost[i, j] of points [i, j); inf where i >= j
    cost[i, j] = np.where(c > 0.0, c, 0.0)
    d = cost[0].copy()
    args = np.zeros((kk, m + 1), np.int64)
    for layer in range(2, kk + 1):
        cand = d[:, None] + cost  # cand[i, j]
        cand[: layer - 1] = np.inf
        args[layer - 1] = np.argmin(cand, axis=0)  # first (leftmost) minimum
        d = cand[args[layer - 1], np.arange(m + 1)]
    starts = np.zeros(kk, np.int64)
    jj = m
    for layer in range(kk, 1, -1):
        jj = args[layer - 1, jj]
        starts[layer - 1] = jj
    return starts


def _np_dc_starts(x: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    """The same search as `kmeans1d._dp_core` (divide and conquer plus Knuth's bound), in numpy.

    The twins need this rather than the full DP: on an exact tie between two partitions,
    rounding can make the computed argmin non-monotone by an ulp, and then a full scan and the
    divide and conquer pick different (equally optimal) partitions.
    """
    m = x.size
    kk = min(k, m)
    if kk == m:
        return np.arange(m)
    p0, p1, p2 = _np_prefix_sums(x, w)

    def cost(i, j):  # _seg_cost for the points [i, j), i an array
        s1 = p1[j] - p1[i]
        c = (p2[j] - p2[i]) - s1 * s1 / (p0[j] - p0[i])
        return np.where(c > 0.0, c, 0.0)

    arg = np.zeros((kk, m + 1), np.int64)
    js = np.arange(1, m - kk + 2)
    dprev = np.zeros(m + 1)
    dprev[js] = cost(np.zeros_like(js), js)

    def solve(c, dprev, dcur, a, b, olo, ohi):  # layer c, j in [a, b], argmin in [olo, ohi]
        mid = (a + b) // 2
        hi = min(ohi, mid - 1)
        lo = max(olo, min(arg[c - 2, min(mid, m - kk + c - 1)], hi))
        i = np.arange(lo, hi + 1)
        v = dprev[i] + cost(i, mid)
        bi = lo + int(np.argmin(v))  # the first minimum, as the kernel's strict <
        dcur[mid] = v[bi - lo]
        arg[c - 1, mid] = bi
        if a < mid:
            solve(c, dprev, dcur, a, mid - 1, olo, bi)
        if mid < b:
            solve(c, dprev, dcur, mid + 1, b, bi, ohi)

    for c in range(2, kk):
        dcur = np.zeros(m + 1)
        solve(c, dprev, dcur, c, m - kk + c, c - 1, m - kk + c - 1)
        dprev = dcur
    if kk > 1:
        i = np.arange(max(kk - 1, arg[kk - 2, m - 1]), m)
        arg[kk - 1, m] = i[0] + int(np.argmin(dprev[i] + cost(i, m)))
    starts = np.zeros(kk, np.int64)
    jj = m
    for layer in range(kk, 1, -1):
        jj = arg[layer - 1, jj]
        starts[layer - 1] = jj
    return starts


def _np_cluster_means(x: np.ndarray, w: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """The same operations as `kmeans1d._cluster_mean`, cluster by cluster."""
    ends = np.append(starts[1:], x.size)
    out = np.empty(starts.size)
    for c, (a, b) in enumerate(zip(starts, ends)):
        acc = np.cumsum(w[a:b] * (x[a:b] - x[a]))[-1]
        out[c] = min(max(x[a] + acc / np.cumsum(w[a:b])[-1], x[a]), x[b - 1])
    return out


def kmeans_1d_bruteforce(
    values: np.ndarray, weights: np.ndarray | None, k: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Slow twin of `kmeans1d.optimal_kmeans_1d` (full O(k m^2) DP in numpy); same inputs and
    outputs."""
    v, w = kmeans1d._check_points(values, weights, need_sorted=True)
    k = kmeans1d._check_k(k)
    if v.size == 0:
        return np.empty(0), np.empty(0, np.int64), 0.0
    x, first, inverse = np.unique(v, return_index=True, return_inverse=True)
    wx = np.bincount(inverse, weights=w)
    starts = _np_dp_starts(x, wx, k)
    centroids = _np_cluster_means(x, wx, starts)
    cluster = np.searchsorted(starts, inverse, side="right") - 1
    cost = float(np.sum(w * (v - centroids[cluster]) ** 2))
    return centroids, first[starts].astype(np.int64), cost


def cluster_int8_numpy(
    q: np.ndarray, k: int, keep_zero: bool, per_row: bool
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, int]]:
    """Plain numpy twin of `kmeans1d.cluster_int8`."""
    units = q if per_row else q.reshape(1, -1)
    out = cluster_int8_rows_numpy(units, k, keep_zero).reshape(q.shape)
    sq = np.sum((q.astype(np.float64) - out.astype(np.float64)) ** 2, axis=1)
    distinct = np.array([np.unique(r).size for r in out], np.int64)
    return out, sq, (np.count_nonzero(out == 0, axis=1), distinct, int(np.unique(out).size))


def _round_half_away(s1, s0):
    """round(s1 / s0), ties away from zero, in integers (elementwise on int64 arrays too)."""
    up = (2 * np.abs(s1) + s0) // (2 * s0)
    return np.where(s1 >= 0, up, -up)


def _np_int_centroids(s1, s0, keep_zero: bool):
    """`kmeans1d._int_centroid` of int64 arrays: the rounded mean, nonzero with keep_zero."""
    c = _round_half_away(s1, s0)
    return np.where(c == 0, np.where(s1 >= 0, 1, -1), c) if keep_zero else c


def _np_int8_starts(levels: np.ndarray, counts: np.ndarray, k: int, keep_zero: bool):
    """`kmeans1d._int_dp` in numpy: the full DP over every (i, j) with the rounded-centroid
    cost, leftmost argmin. Costs are integers below 2^53, so float64 (for inf) is exact."""
    m = levels.size
    kk = min(k, m)
    if kk == m:
        return np.arange(m)
    zero = np.zeros(1, np.int64)
    p0, p1, p2 = (np.concatenate([zero, np.cumsum(counts * levels**e)]) for e in (0, 1, 2))
    i, j = np.triu_indices(m + 1, 1)
    s0, s1 = p0[j] - p0[i], p1[j] - p1[i]
    c = _np_int_centroids(s1, s0, keep_zero)
    cost = np.full((m + 1, m + 1), np.inf)  # cost[i, j] of levels [i, j); inf where i >= j
    cost[i, j] = (p2[j] - p2[i]) - 2 * c * s1 + c * c * s0
    d = cost[0].copy()
    args = np.zeros((kk, m + 1), np.int64)
    for layer in range(2, kk + 1):
        cand = d[:, None] + cost  # cand[i, j]
        cand[: layer - 1] = np.inf
        args[layer - 1] = np.argmin(cand, axis=0)  # first (leftmost) minimum
        d = cand[args[layer - 1], np.arange(m + 1)]
    starts = np.zeros(kk, np.int64)
    jj = m
    for layer in range(kk, 1, -1):
        jj = args[layer - 1, jj]
        starts[layer - 1] = jj
    return starts


def cluster_int8_rows_numpy(q: np.ndarray, k: int, keep_zero: bool) -> np.ndarray:
    """Plain numpy twin of `kmeans1d.cluster_int8_rows`: the full integer-cost DP's clusters
    where they have less error than the float optimum's (`_np_dc_starts`), else those."""
    kmeans1d._check_rows(q, "int8")
    k = kmeans1d._check_k(k)
    out = np.empty_like(q)
    for r, row in enumerate(q):
        levels, counts = np.unique(row.astype(np.int64), return_counts=True)
        lut = np.zeros(256, np.int64)
        kr = k
        if keep_zero and np.any(levels == 0):
            keep = levels != 0
            levels, counts, kr = levels[keep], counts[keep], k - 1
        if levels.size and kr > 0:
            exact = _np_int8_starts(levels, counts, kr, keep_zero)
            rounded = _np_dc_starts(levels.astype(np.float64), counts.astype(np.float64), kr)
            errors = [_np_int8_split(levels, counts, s, keep_zero)[1] for s in (exact, rounded)]
            starts = exact if errors[0] < errors[1] else rounded  # ties keep the float optimum
            lut[levels + 128] = _np_int8_split(levels, counts, starts, keep_zero)[0]
        out[r] = lut[row.astype(np.int64) + 128]
    return out


def _np_int8_split(levels, counts, starts, keep_zero: bool) -> tuple[np.ndarray, int]:
    """(each level's centroid, squared error) of the levels split into runs at starts."""
    cent = np.empty(levels.size, np.int64)
    for a, b in zip(starts, np.append(starts[1:], levels.size)):
        s1 = np.dot(counts[a:b], levels[a:b])
        cent[a:b] = _np_int_centroids(s1, counts[a:b].sum(), keep_zero)
    return cent, int(np.sum(counts * (levels - cent) ** 2))


def cluster_float_rows_numpy(x: np.ndarray, k: int, keep_zero: bool) -> np.ndarray:
    """Plain numpy twin of `kmeans1d.cluster_float_rows` (the same search, see `_np_dc_starts`)."""
    kmeans1d._check_float_rows(x)
    k = kmeans1d._check_k(k)
    out = x.copy()
    for r, row in enumerate(x.astype(np.float64)):
        movable = row != 0.0 if keep_zero else np.ones(row.size, bool)
        kr = k - 1 if not movable.all() else k
        if not movable.any():
            continue
        if kr == 0:
            out[r] = 0
            continue
        xs, counts = np.unique(row[movable], return_counts=True)
        starts = _np_dc_starts(xs, counts.astype(np.float64), kr)
        cent = _np_cluster_means(xs, counts.astype(np.float64), starts)
        idx = np.searchsorted(xs[starts], row[movable], side="right") - 1
        out[r, movable] = cent[idx].astype(x.dtype)
    return out


# ------------------------------------------------------------------ prune


def _stable_rank(a: np.ndarray) -> np.ndarray:
    """Each element's position in a stable ascending sort along the last axis."""
    order = np.argsort(a, axis=-1, kind="stable")
    rank = np.empty(a.shape, np.int64)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(a.shape[-1]), a.shape), axis=-1)
    return rank


def smallest_k_mask_numpy(mag: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Twin of `prune.smallest_k_mask` by stable argsort."""
    a = prune._as_magnitudes(mag)
    k = prune._as_counts(k, a.shape[0], a.shape[1], "k")
    return _stable_rank(a) < k[:, None]


def n_of_m_mask_numpy(mag: np.ndarray, n_keep: int, m: int) -> np.ndarray:
    """Twin of `prune.n_of_m_mask` by stable argsort of each group."""
    a = prune._as_magnitudes(mag)
    m = prune._as_int(m, "m", 1)
    n_keep = prune._as_int(n_keep, "n_keep", 0, m)
    rows, n = a.shape
    full = n - n % m
    mask = np.zeros(a.shape, bool)
    groups = a[:, :full].reshape(rows, full // m, m)
    mask[:, :full] = (_stable_rank(groups) < m - n_keep).reshape(rows, full)
    g = n - full
    if g:
        mask[:, full:] = _stable_rank(a[:, full:]) < max(0, g - n_keep)
    return mask


def block_mask_numpy(mag: np.ndarray, block: int, k_blocks: np.ndarray | int) -> np.ndarray:
    """Twin of `prune.block_mask`: the same float64 sums, in the same order, then argsort."""
    a = prune._as_magnitudes(mag)
    block = prune._as_int(block, "block", 1)
    rows, n = a.shape
    nb = -(-n // block)
    k_blocks = prune._as_counts(k_blocks, rows, nb, "k_blocks")
    padded = np.zeros((rows, nb * block), np.float64)  # + 0.0 leaves every sum unchanged
    padded[:, :n] = a
    padded = padded.reshape(rows, nb, block)
    sums = np.zeros((rows, nb), np.float64)
    with np.errstate(over="ignore"):  # huge float64 magnitudes sum to inf, as in the kernel
        for j in range(block):  # one column at a time: index order within each block
            sums = sums + padded[:, :, j]
    lengths = np.minimum(np.arange(1, nb + 1) * block, n) - np.arange(nb) * block
    chosen = _stable_rank(sums / lengths) < k_blocks[:, None]
    return prune._expand_blocks(chosen, block, n)


def global_smallest_k_masks_numpy(mags: Sequence[np.ndarray], k_total: int) -> list[np.ndarray]:
    """Twin of `prune.global_smallest_k_masks` by one stable argsort of everything."""
    flat, k_total = prune._flatten_all(mags, k_total)
    return prune._split_like(_stable_rank(flat) < k_total, mags)


def prune_rows_numpy(
    values: np.ndarray, k: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Twin of `prune.prune_rows`: the mask twin, then the apply twin."""
    mask = smallest_k_mask_numpy(np.abs(values.astype(np.float64)), k)
    out, sq = prune.apply_mask_numpy(values, mask)
    return out, sq, np.count_nonzero(out == 0, axis=1).astype(np.int64)


# ------------------------------------------------------------------ quantize


def symmetric_int8_rows_numpy(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain numpy twin of `quantize.symmetric_int8_rows`."""
    x64 = np.asarray(x, np.float64)
    peak = np.abs(x64).max(axis=1) if x64.shape[1] else np.zeros(x64.shape[0])
    scales = np.where(peak > 0, (peak / 127.0).astype(np.float32), np.float32(1.0))
    scales = np.maximum(scales, quantize._TINY)
    v = x64 / scales.astype(np.float64)[:, None]
    m = np.minimum(np.floor(np.abs(v) + 0.5), 127.0)
    q = np.where(v >= 0, m, -m)
    sq_err = np.sum((x64 - q * scales.astype(np.float64)[:, None]) ** 2, axis=1)
    return q.astype(np.int8), scales.astype(np.float32), sq_err


# ------------------------------------------------------------------ reconstruct


def solve_numpy(
    w_star: np.ndarray,
    u: np.ndarray,
    pruned: np.ndarray,
    scales: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    block: int = reconstruct.BLOCK,
    choose=None,
) -> np.ndarray:
    """Plain numpy twin of `reconstruct.solve` (its column sweep `_sweep`): the same
    operations in the same order, column by column over all rows at once."""
    w = np.array(w_star, dtype=np.float64)
    pruned = np.array(pruned, dtype=bool)
    rows, d = w.shape
    out = np.zeros_like(w)
    s = None if scales is None else np.asarray(scales, np.float64).reshape(rows, 1)
    for a in range(0, d, block):
        b = min(a + block, d)
        w1 = w[:, a:b].copy()
        err = np.zeros_like(w1)
        u1 = u[a:b, a:b]
        for i in range(b - a):
            if choose is not None and i % reconstruct.MASK_BLOCK == 0:
                j = min(i + reconstruct.MASK_BLOCK, b - a)
                costs = (w1[:, i:j] / np.diag(u1)[None, i:j]) ** 2
                pruned[:, a + i : a + j] |= choose(costs, a + i, a + j)
            col = w1[:, i]
            if s is None:
                q = col.copy()
            else:
                q = reconstruct.nearest_code((col / s[:, 0])[:, None], codes)[:, 0] * s[:, 0]
            q[pruned[:, a + i]] = 0.0
            out[:, a + i] = q
            e = (col - q) / u1[i, i]
            w1[:, i:] -= np.outer(e, u1[i, i:])
            err[:, i] = e
        w[:, b:] -= err @ u[a:b, b:]
    return out


def solve_numpy_reference(
    w_star: np.ndarray,
    u: np.ndarray,
    pruned: np.ndarray,
    scales: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """Twin of `reconstruct.solve`: the same result column by column, with no blocking."""
    w = np.array(w_star, dtype=np.float64)
    out = np.zeros_like(w)
    s = None if scales is None else np.asarray(scales, np.float64)
    for j in range(w.shape[1]):
        col = w[:, j]
        q = (
            col.copy()
            if s is None
            else reconstruct.nearest_code((col / s)[:, None], codes)[:, 0] * s
        )
        q[pruned[:, j]] = 0.0
        out[:, j] = q
        w[:, j + 1 :] -= np.outer((col - q) / u[j, j], u[j, j + 1 :])
    return out


def obc_prune_rows_numpy(
    w_star: np.ndarray,
    h: np.ndarray,
    forced: np.ndarray,
    k: np.ndarray,
    damp: float = reconstruct.DAMP,
) -> np.ndarray:
    """Plain numpy twin of `reconstruct.obc_prune_rows`: the whole of H^-1 downdated after
    each removal, each entry by the operations the kernel applies lazily to the entries
    it reads (so the results are equal, not merely close)."""
    hinv0 = reconstruct._damped_inverse(h, damp)
    out = np.array(w_star, dtype=np.float64)
    for r in range(out.shape[0]):
        x, hinv = out[r], hinv0.copy()
        gone = np.zeros(x.size, bool)
        for _ in range(max(int(k[r]), int(forced[r].sum()))):
            pending = np.flatnonzero(forced[r] & ~gone)
            if pending.size:
                j = int(pending[0])
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    cost = np.where(gone, np.inf, x * x / np.diag(hinv))
                j = int(np.argmin(cost))
            col = hinv[:, j].copy()
            p = col[j]
            x -= x[j] / p * col
            x[j] = 0.0
            gone[j] = True
            ca = col / p
            live = ~gone & (ca != 0)
            hinv[live] -= ca[live, None] * col[None, :]
        x[gone] = 0.0
    return out


def label_grams_numpy(labels: np.ndarray, h: np.ndarray, k: int) -> np.ndarray:
    """Plain numpy twin of `reconstruct._label_grams` (from zero): np.add.at adds in index
    order, the kernel's order."""
    rows, d = labels.shape
    grams = np.zeros((rows, k, k))
    for r in range(rows):
        kept = np.flatnonzero(labels[r] >= 0)
        sums = np.zeros((k, d))
        np.add.at(sums, labels[r, kept], h[kept])
        np.add.at(grams[r], labels[r, kept], sums[:, kept].T)
    return grams


# ------------------------------------------------------------------ sparse


def block_csr_encode_numpy(
    dense: np.ndarray, block: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Plain numpy twin of `sparse.block_csr_encode` (same outputs, same dtypes)."""
    a = sparse._check(dense, block)
    rows, cols = a.shape
    blocks = a.reshape(rows, cols // block, block)
    kept = np.any(blocks != 0, axis=2)
    segments = np.zeros(rows + 1, np.int32)
    segments[1:] = np.cumsum(kept.sum(axis=1))
    r, b = np.nonzero(kept)  # row-major: rows in order, blocks in order within a row
    return segments, b.astype(np.int32), blocks[r, b].reshape(-1, block).astype(a.dtype)


# ------------------------------------------------------------------ stats


def int8_counts_numpy(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    distinct = np.array([np.unique(r).size for r in q], np.int64)
    return np.count_nonzero(q == 0, axis=1), distinct, int(np.unique(q).size)


def int8_histograms_numpy(q: np.ndarray) -> np.ndarray:
    return np.array([np.bincount(r.astype(np.int64) + 128, minlength=256) for r in q], np.int64)


def zeros_per_row_numpy(x: np.ndarray) -> np.ndarray:
    return np.count_nonzero(x == 0, axis=1).astype(np.int64)


def sq_diff_per_row_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=1)
