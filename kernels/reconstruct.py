"""Layer-wise reconstruction: compressed weights chosen to reproduce a layer's outputs on
calibration data, with the error of each rounded or pruned weight pushed onto the weights
not yet decided (optimal brain surgeon updates, in the column order of GPTQ / SparseGPT).

A layer computes Y = W X (W: rows x d, one row per output channel; X: d x n samples, im2col
patches for convolutions). With H = X X^T, the best W' under constraints minimises
tr((W' - W*) H (W' - W*)^T), where W* is the unconstrained optimum (the caller makes it:
the original weights, or weights refitted to targets computed from other inputs). Walking
the columns in order, weight j is fixed to its allowed value q and the others move by
-(w_j - q) / [H^-1]_jj * [H^-1]_j,: , which is the least-squares compensation; with U the
upper Cholesky factor of H^-1 the rows of U give those updates for the remaining columns
(Frantar & Alistarh, "Optimal Brain Compression", 2022; "SparseGPT", 2023).

Allowed values per row r: any real (float), or scale_r x an integer code, the codes being
-127..127 (int8) or a codebook of a few codes. Pruned positions (a mask) become exactly 0,
and a kept weight never rounds to 0 (it takes the nearest nonzero code), so sparsity is
what the mask says. Plain numpy: the work is matrix products and column sweeps over
all rows at once, which BLAS and numpy do well; there is no per-element Python loop.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from tflrewrite.kernels._jit import jit

# Damping added to H's diagonal, relative to its mean: keeps the inverse well conditioned
# when calibration data do not span every input direction (GPTQ's default).
DAMP = 0.01
BLOCK = 128
# Columns whose pruning is chosen together, from costs that reflect every update so far
# (SparseGPT's adaptive mask selection). On the MNIST bench's layers (at most 128 inputs)
# choosing 16 columns at a time scored the same as choosing all at once.
MASK_BLOCK = 128


def inverse_cholesky(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """Upper Cholesky factor U of (H + damping)^-1, so that U^T U = (H + damping)^-1.
    Inputs that were always zero (a zero diagonal) get a unit diagonal: their weights do
    not matter for these data and stay as they are. `h` may be a stack of matrices
    (... x d x d): LAPACK factors each as it would alone, in one call.

    With P the reversal of the inputs' order and P H P = L L^T, H^-1 = (P L^-1 P)^T (P L^-1
    P), where P L^-1 P is upper triangular with a positive diagonal: U itself, a Cholesky
    factor being unique. One factorization and one triangular inverse take a third of the
    multiply-adds of inverting H and factoring the inverse (2.6x faster at d = 2,048)."""
    flipped = damped(h, damp)[..., ::-1, ::-1]
    if flipped.size == 0:
        return np.array(flipped)
    return np.ascontiguousarray(_lower_inverse(np.linalg.cholesky(flipped))[..., ::-1, ::-1])


# Triangular blocks up to this size are inverted whole (LAPACK's general inverse, its upper
# part then zeroed); larger ones split in two, so that most of the work is matrix products.
TRIANGLE_BLOCK = 64


def _lower_inverse(lower: np.ndarray) -> np.ndarray:
    """The inverse of lower triangular matrices (... x d x d), blockwise: the inverse of
    [[A, 0], [B, C]] is [[A^-1, 0], [-C^-1 B A^-1, C^-1]]."""
    d = lower.shape[-1]
    if d <= TRIANGLE_BLOCK:
        return np.tril(np.linalg.inv(lower))
    m = d // 2
    a = _lower_inverse(lower[..., :m, :m])
    c = _lower_inverse(lower[..., m:, m:])
    out = np.zeros(lower.shape)
    out[..., :m, :m] = a
    out[..., m:, m:] = c
    out[..., m:, :m] = -(c @ (lower[..., m:, :m] @ a))
    return out


def damped(h: np.ndarray, damp: float = DAMP) -> np.ndarray:
    """H + damping: `damp` times H's mean diagonal added to the diagonal, after inputs that
    were always zero (a zero diagonal) get a unit diagonal; per matrix of a stack."""
    h = np.array(h, dtype=np.float64)
    if h.size == 0:
        return h
    d = np.arange(h.shape[-1])
    diag = h[..., d, d]
    diag[diag <= 0] = 1.0
    # each matrix's mean as np.mean gives it alone (a reduction along an axis of a stack
    # sums in another order)
    rows = diag.reshape(-1, diag.shape[-1])
    mean = np.array([np.mean(r) for r in rows]).reshape(diag.shape[:-1] + (1,))
    h[..., d, d] = diag + damp * mean
    return h


def obs_scores(w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Cost of removing each weight alone: w^2 / [H^-1]_jj^2 (rows x d)."""
    return (w / np.diag(u)[None, :]) ** 2


def nearest_code(v: np.ndarray, codes: np.ndarray | None) -> np.ndarray:
    """Per row, the nearest nonzero allowed code to v (rows x m): codes None means the
    integers -127..127 (half away from zero), else a rows x K (or 1 x K) array of sorted
    nonzero codes."""
    if codes is None:
        m = np.minimum(np.floor(np.abs(v) + 0.5), 127.0)
        m = np.maximum(m, 1.0)
        return np.where(v < 0, -m, m)
    dist = np.abs(v[:, :, None] - codes[:, None, :])
    return np.take_along_axis(codes, dist.argmin(axis=2), axis=1)


def solve(
    w_star: np.ndarray,
    u: np.ndarray,
    pruned: np.ndarray,
    scales: np.ndarray | None = None,
    codes: np.ndarray | None = None,
    block: int = BLOCK,
    choose: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """W' (rows x d, float64): W* with `pruned` positions 0 and the others on their row's
    grid (scales None: any real; else scale_r times the nearest nonzero code of `codes`,
    see nearest_code), each decision compensated on the columns after it.

    `choose(costs, a, b)`, when given, picks more positions to prune in columns a..b
    (MASK_BLOCK at a time) from their OBS costs *after* the updates of the columns before
    (SparseGPT's adaptive mask selection): a rows x (b - a) boolean array, added to
    `pruned` there."""
    w = np.array(w_star, dtype=np.float64)
    pruned = np.array(pruned, dtype=bool)
    rows, d = w.shape
    out = np.zeros_like(w)
    # the kernel's grid: 0 any real, 1 the int8 integers, 2 `codes`; unused arrays as stand-ins
    grid = 0 if scales is None else 1 if codes is None else 2
    s = np.ones(rows) if scales is None else np.asarray(scales, np.float64).reshape(rows)
    table = np.zeros((1, 1)) if codes is None else np.ascontiguousarray(codes, np.float64)
    for a in range(0, d, block):
        b = min(a + block, d)
        w1 = w[:, a:b].copy()
        err = np.zeros_like(w1)
        got = np.zeros_like(w1)
        u1 = np.ascontiguousarray(u[a:b, a:b], dtype=np.float64)
        for i in range(0, b - a, MASK_BLOCK):
            j = min(i + MASK_BLOCK, b - a)
            if choose is not None:
                costs = (w1[:, i:j] / np.diag(u1)[None, i:j]) ** 2
                pruned[:, a + i : a + j] |= choose(costs, a + i, a + j)
            gone = np.ascontiguousarray(pruned[:, a:b])
            _sweep(w1, u1, gone, s, table, grid, i, j, got, err)
        out[:, a:b] = got
        w[:, b:] -= err @ u[a:b, b:]
    return out


@jit
def _sweep(w, u, pruned, s, codes, grid, first, stop, out, err):
    """Columns first..stop-1 of one block of `solve`, in order: each weight put on its
    row's grid (0: any real; 1: scale s[r] times the nearest nonzero integer within
    +-127; 2: s[r] times the nearest code of `codes`, one row of codes per weight row or
    one shared), 0 where `pruned`, and its error compensated on the block's columns after
    it (err: the errors divided by U's diagonal, for the update of the later blocks)."""
    rows, m = w.shape
    shared = codes.shape[0] == 1
    for i in range(first, stop):
        p = u[i, i]
        for r in range(rows):
            col = w[r, i]
            q = col
            if grid != 0:
                v = col / s[r]
                if grid == 1:
                    c = min(np.floor(abs(v) + 0.5), 127.0)
                    c = max(c, 1.0)
                    if v < 0:
                        c = -c
                else:
                    k = 0 if shared else r
                    c = codes[k, 0]
                    best = abs(v - c)
                    for t in range(1, codes.shape[1]):
                        gap = abs(v - codes[k, t])
                        if gap < best:
                            best, c = gap, codes[k, t]
                q = c * s[r]
            if pruned[r, i]:
                q = 0.0
            out[r, i] = q
            e = (col - q) / p
            err[r, i] = e
            for j in range(i, m):
                w[r, j] -= e * u[i, j]


def solve_groups(
    w_star: np.ndarray,
    u: np.ndarray,
    pruned: np.ndarray,
    scales: np.ndarray | None = None,
    codes: np.ndarray | None = None,
) -> np.ndarray:
    """`solve` for many small independent groups at once (groups x rows x d, one factor u
    per group: depthwise channels), the column sweep vectorized over the groups rather
    than blocked; `scales` groups x rows, `codes` groups x rows x K."""
    w = np.array(w_star, dtype=np.float64)
    out = np.zeros_like(w)
    s = None if scales is None else np.asarray(scales, np.float64)
    for j in range(w.shape[2]):
        col = w[:, :, j]
        if s is None:
            q = col.copy()
        elif codes is None:
            q = nearest_code(col / s, None) * s
        else:
            dist = np.abs((col / s)[:, :, None] - codes)
            q = np.take_along_axis(codes, dist.argmin(axis=2)[:, :, None], axis=2)[:, :, 0] * s
        q[pruned[:, :, j]] = 0.0
        out[:, :, j] = q
        e = (col - q) / u[:, j, j][:, None]
        w[:, :, j:] -= e[:, :, None] * u[:, None, j, j:]
    return out


def output_error(w: np.ndarray, w_star: np.ndarray, h: np.ndarray) -> float:
    """tr((W - W*) H (W - W*)^T): the squared output error summed over the data."""
    diff = np.asarray(w, np.float64) - np.asarray(w_star, np.float64)
    return float(np.sum((diff @ h) * diff))  # einsum's three-operand path does not use BLAS


# Layers whose rows x d^2 x K (K codes) is past this keep the assignment's codebook (a
# 1,024 x 1,024 layer at K = 16 is 1.7e10). It bounded the refit's work when that took a
# dense product with each row's one-hot assignment; summing H by label (_label_grams)
# takes rows x d^2, K times less, but the bound stays where it was, so that the same
# layers are refitted.
REFIT_MAX_WORK = 2e9


def refit_codebook(w, w_star, h, scales, shared: bool, integer: bool) -> np.ndarray:
    """Clustered weights with their assignment kept and their codebook values moved to
    least output error: groups x rows x d `w` (each row's nonzero values, divided by its
    scale in `scales` (groups x rows), are codes of its codebook; zeros stay zero) against
    `w_star`, with X X^T `h` per group. `shared`: one codebook for every row of every group,
    else one per row. `integer`: codes stay nonzero integers within int8. A codebook is only
    moved where that lowers the error, so the result is never worse than `w`."""
    units = w / scales[:, :, None]
    keys = np.unique(units[units != 0]) if shared else None
    out = w.copy()
    groups, rows, _ = w.shape
    normal, rhs, onehots = [], [], []
    for g in range(groups):
        labels, k = _labels(units[g], keys)
        # per row, P^T H P and w* H P for its one-hot assignment P (d x k), summed from
        # H's rows by label: rows x d^2 additions, where the product with P as a dense
        # matrix took rows x d^2 x k (a 128 x 128 layer at 16 codes: 14 -> 0.8 ms)
        grams = np.zeros((rows, k, k))
        sums = np.empty((k, h.shape[-1]))
        _label_grams(np.ascontiguousarray(labels), np.ascontiguousarray(h[g]), grams, sums)
        normal.append(grams * (scales[g] ** 2)[:, None, None])
        kept = labels >= 0
        at = (np.arange(rows)[:, None] * k + labels)[kept]
        summed = np.bincount(at, weights=(w_star[g] @ h[g])[kept], minlength=rows * k)
        rhs.append(summed.reshape(rows, k) * scales[g][:, None])
        onehots.append(labels)
    if shared:
        m = sum(x.sum(axis=0) for x in normal)
        b = sum(x.sum(axis=0) for x in rhs)
        codes = _codes(m, b, keys, integer)
        for g in range(groups):
            out[g] = _assigned(codes, onehots[g]) * scales[g][:, None]
        before = sum(output_error(w[g], w_star[g], h[g]) for g in range(groups))
        after = sum(output_error(out[g], w_star[g], h[g]) for g in range(groups))
        return out if after < before else w
    for g in range(groups):
        for r in range(rows):
            old_codes = np.unique(units[g, r][units[g, r] != 0])
            if old_codes.size == 0:
                continue
            n = old_codes.size
            codes = _codes(normal[g][r, :n, :n], rhs[g][r, :n], old_codes, integer)
            fitted = _assigned(codes, onehots[g][r]) * scales[g, r]
            d_old, d_new = w[g, r] - w_star[g, r], fitted - w_star[g, r]
            if d_new @ h[g] @ d_new < d_old @ h[g] @ d_old:
                out[g, r] = fitted
    return out


@jit
def _label_grams(labels, h, grams, sums):
    """grams[r, a, b] += the sum over the i of row r labelled a of sums[b, i], the sum of
    h[j, i] over the j labelled b (label -1: a zero weight, left out), each sum taken in
    index order; `sums`: k x d scratch. Whole rows of h at a time, where adding h's
    entries one by one into grams' cells took 2.5 times as long (a 128 x 128 layer at 15
    codes: 2.0 -> 0.8 ms)."""
    rows, d = labels.shape
    k = grams.shape[1]
    for r in range(rows):
        for b in range(k):
            for i in range(d):
                sums[b, i] = 0.0
        for j in range(d):
            b = labels[r, j]
            if b >= 0:
                for i in range(d):
                    sums[b, i] += h[j, i]
        for i in range(d):
            a = labels[r, i]
            if a >= 0:
                for b in range(k):
                    grams[r, a, b] += sums[b, i]


def _assigned(codes: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each weight's code by its label (0 where the label is -1: a zero)."""
    return np.where(labels < 0, 0.0, codes[np.maximum(labels, 0)])


def _labels(units: np.ndarray, keys: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Per weight, the index of its code (-1 for zeros): in `keys`, or in its row's own
    sorted codes; and the number of codes."""
    if keys is not None:
        labels = np.searchsorted(keys, units)
        return np.where(units == 0, -1, labels), keys.size
    labels = np.full(units.shape, -1)
    k = 1
    for r, row in enumerate(units):
        codes = np.unique(row[row != 0])
        labels[r] = np.where(row == 0, -1, np.searchsorted(codes, row))
        k = max(k, codes.size)
    return labels, k


def _codes(m: np.ndarray, b: np.ndarray, old: np.ndarray, integer: bool) -> np.ndarray:
    """The codebook solving m c = b (codes that no weight uses keep their value); rounded
    to nonzero int8 integers when `integer`."""
    used = np.diag(m) > 0
    codes = old.astype(np.float64).copy()
    if used.any():
        sub = m[np.ix_(used, used)]
        ridge = 1e-9 * np.trace(sub) / used.sum()
        codes[used] = np.linalg.solve(sub + ridge * np.eye(used.sum()), b[used])
    if integer:
        codes = np.clip(np.sign(codes) * np.maximum(np.floor(np.abs(codes) + 0.5), 1), -127, 127)
        codes = np.where(codes == 0, np.sign(old), codes)
    return codes


# ------------------------------------------------------------------ OBC pruning


@jit
def _obc_prune_rows(w, hinv_t, forced, k, out, x, diag, col, gone, ca, cols, act):
    """obc_prune_rows on w's rows (the rest: scratch). Each removal's update of H^-1 is
    kept as its two vectors (ca: the column over its pivot, cols: the column) and applied
    lazily: only the next pivot's column and the diagonal are ever read, so those alone
    are brought up to date, each entry by the same operations in the same order as
    updating the whole matrix would take (bit for bit that result), in O(i d) rather
    than O(d^2) for the i-th removal. act[:na]: the updates that moved any entry, in
    order (one moves none where that input was always 0). A pass over the column takes
    four of them, each entry still one by one, in order: the stores of col, not the
    arithmetic, bound that loop (a 128 x 128 layer: 0.8x the time of one a pass)."""
    rows, d = w.shape
    for r in range(rows):
        for c in range(d):
            x[c] = w[r, c]
            diag[c] = hinv_t[c, c]
            gone[c] = False
        left = 0  # forced zeros not yet removed: once none, their scan is skipped
        for c in range(d):
            left += forced[r, c]
        na = 0
        for i in range(k[r]):
            best, j = np.inf, -1
            if left > 0:
                for c in range(d):  # forced zeros go first, in column order
                    if not gone[c] and forced[r, c]:
                        j = c
                        left -= 1
                        break
            if j < 0:
                for c in range(d):
                    if not gone[c]:
                        cost = x[c] * x[c] / diag[c]
                        if cost < best:
                            best, j = cost, c
            if j < 0:
                break
            for c in range(d):  # hinv_t: H^-1 transposed, so that its column j is a row
                col[c] = hinv_t[j, c]
            t = 0
            while t + 3 < na:  # four updates a pass over col, each entry's in order
                s0, s1, s2, s3 = act[t], act[t + 1], act[t + 2], act[t + 3]
                f0, f1, f2, f3 = cols[s0, j], cols[s1, j], cols[s2, j], cols[s3, j]
                for c in range(d):
                    v = col[c] - ca[s0, c] * f0
                    v = v - ca[s1, c] * f1
                    v = v - ca[s2, c] * f2
                    col[c] = v - ca[s3, c] * f3
                t += 4
            for rest in range(t, na):
                s = act[rest]
                f = cols[s, j]
                for c in range(d):
                    col[c] -= ca[s, c] * f
            p = col[j]
            f = x[j] / p
            for c in range(d):
                x[c] -= f * col[c]
            x[j] = 0.0
            gone[j] = True
            moves = False
            for c in range(d):
                e = col[c] / p
                if gone[c] or e == 0.0:
                    e = 0.0  # a removed weight's row of H^-1 is never read again
                else:
                    diag[c] -= e * col[c]
                    moves = True
                ca[i, c] = e
                cols[i, c] = col[c]
            if moves:
                act[na] = i
                na += 1
        for c in range(d):
            out[r, c] = 0.0 if gone[c] else x[c]


def obc_prune_rows(
    w_star: np.ndarray,
    h: np.ndarray,
    forced: np.ndarray,
    k: np.ndarray,
    damp: float = DAMP,
    threads: int = 1,
) -> np.ndarray:
    """Optimal brain compression, one row at a time: remove the weight whose removal costs
    the output least (w_j^2 / [H^-1]_jj), move the others by the optimal compensation,
    drop its row and column from H^-1, and repeat until the row has k[r] zeros; positions
    in `forced` (existing zeros) are removed first. Exact greedy OBS, O(k^2 d) per row
    (H^-1's downdates applied lazily, see _obc_prune_rows): for narrow layers, where it
    beats choosing the mask once (SparseGPT's shortcut). Rows are independent: `threads`
    take a share each (the kernel lets go of the GIL)."""
    w = np.ascontiguousarray(w_star, dtype=np.float64)
    hinv = np.ascontiguousarray(_damped_inverse(h, damp))
    out = np.empty_like(w)
    counts = np.maximum(np.asarray(k, np.int64), forced.sum(axis=1))
    rows, d = w.shape
    most = int(counts.max(initial=0))
    forced = np.ascontiguousarray(forced, dtype=np.bool_)
    hinv_t = np.ascontiguousarray(hinv.T)

    def share(a: int, b: int) -> None:
        scratch = np.empty(d), np.empty(d), np.empty(d), np.empty(d, np.bool_)
        updates = np.empty((most, d)), np.empty((most, d)), np.empty(most, np.int64)
        _obc_prune_rows(w[a:b], hinv_t, forced[a:b], counts[a:b], out[a:b], *scratch, *updates)

    cuts = np.linspace(0, rows, max(1, min(threads, rows)) + 1).astype(int)
    others = [_helpers(threads - 1).submit(share, a, b) for a, b in zip(cuts[:-2], cuts[1:-1])]
    share(cuts[-2], cuts[-1])  # the last share on this thread, while the helpers take theirs
    for done in others:
        done.result()
    return out


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _helpers(n: int) -> ThreadPoolExecutor:
    """A pool of n threads that lives as long as the process: obc_prune_rows runs once a
    layer, and starting threads for each call cost it most of their gain (a 128 x 128
    layer on two cores: 8.0 ms with threads started per call, 7.0 ms with these)."""
    if n not in _POOLS:
        _POOLS[n] = ThreadPoolExecutor(max(n, 1), thread_name_prefix="tflrewrite-obc")
    return _POOLS[n]


def _damped_inverse(h: np.ndarray, damp: float) -> np.ndarray:
    u = inverse_cholesky(h, damp)
    return u.T @ u
