"""Magnitude-pruning masks: which elements of a 2-D magnitude array to set to zero.

Every function takes ``mag``, non-negative magnitudes (the caller passes ``|w|`` reshaped to
rows x n), and returns a boolean mask of the same shape, True = prune. Ties are broken the
same way everywhere: among equal magnitudes (or equal block scores) the LOWER index is
pruned first, so results are deterministic and equal their ``*_numpy`` twins in
tests/twins.py exactly.

Existing zeros count toward a target sparsity with no special handling: their magnitude is 0,
so they are among the first pruned (they stay zero) and they count in ``k``. A caller that
wants "prune k MORE elements" adds the row's zero count to ``k`` itself.

Inputs: integer magnitudes are promoted to float64, float16 to float32 (both exact); NaN and
negative magnitudes are refused with ValueError, +inf is allowed (it is pruned last).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from tflrewrite.kernels._jit import jit

# Rows or groups up to this length are ranked by counting (O(g^2), vectorises, no buffers);
# longer ones by radix selection. Both give the same answer; this only picks the faster.
_COUNTING_MAX = 64
_BINS = 1024  # radix selection: bins per round over the candidates' range of keys

# --- validation ---------------------------------------------------------------------------


def _as_magnitudes(mag: np.ndarray, name: str = "mag", ndim: int | None = 2) -> np.ndarray:
    a = np.asarray(mag)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if a.dtype.kind in "iu":
        dtype = np.float64
    elif a.dtype.kind == "f" and a.dtype.itemsize <= 8:
        dtype = np.float32 if a.dtype.itemsize <= 4 else np.float64
    else:
        raise ValueError(f"{name} must hold integers or floats up to 64 bits, got {a.dtype}")
    a = np.ascontiguousarray(a, dtype=dtype)  # also native byte order: the kernels view the bits
    if not (a >= 0).all():  # also catches NaN
        raise ValueError(f"{name} must be non-negative magnitudes (|w|) with no NaN")
    return a


def _keys(a: np.ndarray) -> np.ndarray:
    """The unsigned-integer view the selection kernels order by (see _select_key)."""
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


def _as_int(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool | np.bool_):
        raise ValueError(f"{name} must be an integer, got a bool")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if v < low or (high is not None and v > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {bound}, got {v}")
    return v


def _as_counts(k: object, rows: int, high: int, name: str) -> np.ndarray:
    """One count per row (a scalar is broadcast), each in [0, high], as int64."""
    a = np.asarray(k)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.ndim == 0:
        a = np.full(rows, a, dtype=np.int64)
    if a.shape != (rows,):
        raise ValueError(f"{name} must have one count per row ({rows}), got shape {a.shape}")
    if a.size and (a.min() < 0 or a.max() > high):
        raise ValueError(f"{name} must lie in [0, {high}], got [{a.min()}, {a.max()}]")
    return np.ascontiguousarray(a, dtype=np.int64)


# --- Numba kernels --------------------------------------------------------------------------


@jit
def _absmask(keys):
    """All bits but the sign bit of the keys' width, as a non-negative int64."""
    return ((1 << (keys.itemsize * 8 - 2)) - 1) * 2 + 1


@jit
def _rank_among(cand, m, rank):
    """_select_key for few candidates, by counting (O(m^2), no scratch)."""
    for i in range(m):
        c = cand[i]
        less = 0
        same = 0
        for j in range(m):
            less += cand[j] < c
            same += cand[j] == c
        if less <= rank < less + same:
            return c, rank - less, same
    return cand[0], rank, m  # not reached: some candidate holds every rank below m


@jit
def _select_key(keys, rank, cand, hist):
    """(t, r, e): the key at 0-based ``rank`` in ascending order, how many keys equal to t
    come before it in that order (so the ``rank + 1`` smallest are the keys below t and the
    first r + 1 keys equal to t), and how many keys equal t.

    ``keys`` are unsigned integer views of non-negative floats; with the sign bit cleared
    (which also folds -0.0 onto 0.0) their integer order is their float order. Radix
    selection over the keys' own range: each round spreads the candidates' range [lo, hi]
    over at most _BINS bins, keeps the bin that holds ``rank`` (a branch-free copy into
    ``cand``) and narrows the range to it, until few candidates are left or all are equal.
    """
    absmask = _absmask(keys)
    n = keys.shape[0]
    lo = absmask
    hi = absmask - absmask
    for i in range(n):
        c = keys[i] & absmask
        lo = min(lo, c)
        hi = max(hi, c)
    m = n
    first = True
    while True:
        shift = 0
        while ((hi - lo) >> shift) >= _BINS:
            shift += 1
        hist[:] = 0
        if first:
            for i in range(n):
                hist[((keys[i] & absmask) - lo) >> shift] += 1
        else:
            for i in range(m):
                hist[((cand[i] & absmask) - lo) >> shift] += 1
        b = 0
        while hist[b] <= rank:
            rank -= hist[b]
            b += 1
        m2 = 0
        if first:
            for i in range(n):
                c = keys[i] & absmask
                cand[m2] = c
                m2 += ((c - lo) >> shift) == b
        else:
            for i in range(m):
                c = cand[i] & absmask
                cand[m2] = c
                m2 += ((c - lo) >> shift) == b
        m = m2
        first = False
        # Keys are compared as int64 (& absmask): a uint64 against an int64 would be compared
        # as float64, which cannot tell neighbouring float64 keys apart.
        if shift == 0:  # one key per bin: every candidate equals it
            return cand[0] & absmask, rank, m
        if m <= _COUNTING_MAX:  # (every key equal to t is a candidate)
            t, r, e = _rank_among(cand, m, rank)
            return t & absmask, r, e
        lo = lo + (b << shift)
        hi = lo + (1 << shift) - 1


@jit
def _prune_smallest_short(keys, lo, hi, k, out, buf):
    """_prune_smallest for a short keys[lo:hi]: rank each key by counting those before it."""
    absmask = _absmask(keys)
    g = hi - lo
    for i in range(g):  # masked copies in the keys' own width: the counting loops vectorise
        buf[i] = keys[lo + i] & absmask
    for i in range(g):
        v = buf[i]
        rank = np.int32(0)  # how many come before i in (key, index) order
        for j in range(i):
            rank += np.int32(buf[j] <= v)
        for j in range(i + 1, g):
            rank += np.int32(buf[j] < v)
        out[lo + i] = rank < k


@jit
def _prune_smallest(keys, k, out, cand, hist):
    """Set out[i] for the k smallest keys (ties: lower i first); cand and hist are scratch."""
    n = keys.shape[0]
    absmask = _absmask(keys)
    if k <= 0:
        return
    if k >= n:
        out[:] = True
        return
    if n <= _COUNTING_MAX:
        _prune_smallest_short(keys, n - n, n, k, out, cand)  # n - n: no Literal[0] variant
        return
    t, r, e = _select_key(keys, k - 1, cand, hist)
    ties = r + 1  # how many keys equal to t are pruned, lowest index first
    if ties == e:  # all of them
        for i in range(n):
            out[i] = (keys[i] & absmask) <= t
        return
    for i in range(n):
        out[i] = (keys[i] & absmask) < t
    for i in range(n):
        if ties == 0:
            break
        if (keys[i] & absmask) == t:
            out[i] = True
            ties -= 1


@jit
def _smallest_k_mask(keys, k, mask, cand, hist):
    for r in range(keys.shape[0]):
        _prune_smallest(keys[r], k[r], mask[r], cand, hist)


@jit
def _n_of_m_mask(keys, n_keep, m, mask, cand, hist):
    rows, n = keys.shape
    for r in range(rows):
        row, out = keys[r], mask[r]
        for start in range(0, n, m):
            stop = min(start + m, n)
            p = (stop - start) - n_keep  # a short last group keeps min(n_keep, g)
            if p <= 0:
                continue
            if stop - start <= _COUNTING_MAX:  # the usual case (2:4, 4:8): no slicing
                _prune_smallest_short(row, start, stop, p, out, cand)
            else:
                _prune_smallest(row[start:stop], p, out[start:stop], cand, hist)


@jit
def _block_scores(mag, block, scores):
    """Into scores (rows, ceil(n / block)): the mean magnitude of each block, its float64 sum
    in index order over its length."""
    rows, n = mag.shape
    nb = scores.shape[1]
    for r in range(rows):
        for b in range(nb):
            start = b * block
            stop = min(start + block, n)
            s = 0.0  # float64, summed in index order: the numpy twin does exactly this
            for i in range(start, stop):
                s += mag[r, i]
            scores[r, b] = s / (stop - start)


def _scratch(n: int, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """(cand, hist): the selection kernels' scratch for rows of n keys (see _jit on why
    kernels take it)."""
    return np.empty(n, dtype), np.empty(_BINS, np.int64)


def _smallest_k(keys: np.ndarray, k: np.ndarray) -> np.ndarray:
    mask = np.zeros(keys.shape, np.bool_)
    _smallest_k_mask(keys, k, mask, *_scratch(keys.shape[1], keys.dtype))
    return mask


# --- public API -----------------------------------------------------------------------------


def prune_count(n: int, sparsity: float) -> int:
    """The number of elements to prune out of ``n`` for a target ``sparsity`` in [0, 1].

    ``sparsity * n`` (as a float64 product) rounded half up, clamped to [0, n]. Existing zeros
    count toward it when the caller passes their magnitude as 0 (see the module docstring).
    """
    n = _as_int(n, "n", 0)
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:  # also refuses NaN
        raise ValueError(f"sparsity must be in [0, 1], got {sparsity!r}")
    x = s * n
    f = math.floor(x)
    count = f + 1 if x - f >= 0.5 else f  # not floor(x + 0.5): that rounds 0.49999999999999994 up
    return min(max(count, 0), n)


def smallest_k_mask(mag: np.ndarray, k: np.ndarray | int) -> np.ndarray:
    """Prune exactly ``k[r]`` elements of row ``r``: the smallest, ties by lower index.

    Args:
        mag: (rows, n) non-negative magnitudes.
        k: int array of shape (rows,), each in [0, n]; a scalar applies to every row.

    Returns:
        (rows, n) bool mask, True = prune. O(n) per row (selection, not sorting).
    """
    a = _as_magnitudes(mag)
    return _smallest_k(_keys(a), _as_counts(k, a.shape[0], a.shape[1], "k"))


def n_of_m_mask(mag: np.ndarray, n_keep: int, m: int) -> np.ndarray:
    """N:M structured sparsity along the last axis (2:4 is ``n_keep=2, m=4``).

    Each row is cut into consecutive groups of ``m``; in each group the ``n_keep`` largest are
    kept and the rest pruned (ties: lower index pruned first). When ``n % m != 0`` the last
    group is shorter, of size ``g``: it prunes ``max(0, g - n_keep)``, i.e. keeps
    ``min(n_keep, g)``.

    Args:
        mag: (rows, n) non-negative magnitudes.
        n_keep: elements kept per group, in [0, m].
        m: group size, >= 1.
    """
    a = _as_magnitudes(mag)
    m = _as_int(m, "m", 1)
    n_keep = _as_int(n_keep, "n_keep", 0, m)
    keys = _keys(a)
    mask = np.zeros(keys.shape, np.bool_)
    _n_of_m_mask(keys, n_keep, m, mask, *_scratch(m, keys.dtype))
    return mask


def block_mask(mag: np.ndarray, block: int, k_blocks: np.ndarray | int) -> np.ndarray:
    """Prune whole blocks of ``block`` consecutive elements along the last axis.

    Row ``r`` is cut into ``ceil(n / block)`` blocks (the last one shorter when
    ``n % block != 0``); a block's score is its mean magnitude (float64 sum in index order,
    divided by the block's own length); the ``k_blocks[r]`` lowest-scoring blocks are pruned,
    ties by lower block index. For TFLite's 1x4 and 1x16 sparse FULLY_CONNECTED blocks.

    Args:
        mag: (rows, n) non-negative magnitudes.
        block: block length, >= 1.
        k_blocks: int array of shape (rows,), each in [0, ceil(n / block)]; a scalar applies
            to every row.
    """
    a = _as_magnitudes(mag)
    block = _as_int(block, "block", 1)
    rows, n = a.shape
    k_blocks = _as_counts(k_blocks, rows, -(-n // block), "k_blocks")
    scores = np.empty((rows, -(-n // block)))
    _block_scores(a, block, scores)
    chosen = _smallest_k(_keys(scores), k_blocks)
    return _expand_blocks(chosen, block, n)


def _expand_blocks(chosen: np.ndarray, block: int, n: int) -> np.ndarray:
    """A (rows, blocks) choice as a (rows, n) element mask."""
    return np.ascontiguousarray(np.repeat(chosen, block, axis=1)[:, :n])


def _flatten_all(mags: Sequence[np.ndarray], k_total: int) -> tuple[np.ndarray, int]:
    if isinstance(mags, np.ndarray):
        raise ValueError("mags must be a list of arrays, not one array")
    arrays = [_as_magnitudes(m, f"mags[{i}]", ndim=None) for i, m in enumerate(mags)]
    total = sum(a.size for a in arrays)
    k_total = _as_int(k_total, "k_total", 0, total)
    dtype = np.result_type(np.float32, *arrays)  # float32 unless some array is float64
    flat = np.concatenate([np.zeros(0, dtype)] + [a.ravel() for a in arrays], dtype=dtype)
    return flat, k_total


def _split_like(flat_mask: np.ndarray, mags: Sequence[np.ndarray]) -> list[np.ndarray]:
    out, at = [], 0
    for m in mags:
        shape = np.shape(m)
        size = math.prod(shape)
        out.append(flat_mask[at : at + size].reshape(shape))
        at += size
    return out


def global_smallest_k_masks(mags: Sequence[np.ndarray], k_total: int) -> list[np.ndarray]:
    """Global-scope pruning: prune exactly ``k_total`` elements across all arrays together.

    The smallest magnitudes over every array are pruned; ties go to the lower array index,
    then the lower row-major (C-order) index within the array. Use
    ``k_total = prune_count(sum of sizes, sparsity)`` for a target sparsity.

    Args:
        mags: non-negative magnitude arrays, any shapes (2-D in practice).
        k_total: in [0, total number of elements].

    Returns:
        One bool mask per array, same shapes, True = prune.
    """
    flat, k_total = _flatten_all(mags, k_total)
    mask = _smallest_k(_keys(flat.reshape(1, -1)), np.array([k_total], np.int64))
    return _split_like(mask.reshape(-1), mags)


# ------------------------------------------------------------------ applying a mask


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
def _zero_where(values, mask, out, sq):
    """out = values (1-D) with masked elements zeroed. Returns (the sum of their squares, the
    zeros in out); `sq` is scratch. Branch-free, so that the loop vectorises."""
    n = values.shape[0]
    zeros = 0
    for t in range(n):
        v = values[t]
        p = mask[t]
        out[t] = 0 if p else v
        f = np.float64(v)
        sq[t] = f * f if p else 0.0
        zeros += p | (v == 0)
    return _sum4(sq, n), zeros


@jit
def _zero_up_to(values, keys, t, cut, out, sq):
    """_zero_where with the mask of _prune_rows: keys below t, and keys equal to t up to
    index `cut`."""
    absmask = _absmask(keys)
    n = values.shape[0]
    zeros = 0
    for i in range(n):
        key = keys[i] & absmask
        p = (key < t) | ((key == t) & (i <= cut))
        v = values[i]
        out[i] = 0 if p else v
        f = np.float64(v)
        sq[i] = f * f if p else 0.0
        zeros += p | (v == 0)
    return _sum4(sq, n), zeros


@jit
def _apply_mask(values, mask, out, sq, scratch):
    for r in range(values.shape[0]):
        sq[r], _ = _zero_where(values[r], mask[r], out[r], scratch)


def apply_mask(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values with the masked elements set to zero, per row the sum of squares of what was
    zeroed) for 2-D values of any numeric dtype and a bool mask of the same shape."""
    if values.ndim != 2 or mask.shape != values.shape or mask.dtype != np.bool_:
        raise ValueError(
            f"need 2-D values and a bool mask of their shape, got {values.shape} "
            f"and {mask.dtype} {mask.shape}"
        )
    if values.dtype == np.float16:  # Numba has no float16
        return apply_mask_numpy(values, mask)
    values, mask = np.ascontiguousarray(values), np.ascontiguousarray(mask)
    out = np.empty_like(values)
    sq = np.empty(values.shape[0])
    _apply_mask(values, mask, out, sq, np.empty(values.shape[1]))
    return out, sq


def apply_mask_numpy(values: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy twin of `apply_mask`, kept here (not in tests/twins.py) because
    `apply_mask` runs it for float16, which Numba lacks."""
    out = np.where(mask, np.zeros((), values.dtype), values)
    sq = np.sum(np.where(mask, values.astype(np.float64), 0.0) ** 2, axis=1)
    return out, sq


# ------------------------------------------------------------------ pruning rows in place


@jit
def _prune_rows(keys, values, k, out, sq, zeros, cand, hist, scratch):
    rows, n = keys.shape
    absmask = _absmask(keys)
    for r in range(rows):
        row = keys[r]
        if k[r] <= 0:
            t, cut = absmask - absmask, -1  # prunes nothing: no key is below 0
        elif k[r] >= n:
            t, cut = absmask, n  # prunes everything
        else:
            t, ties, equal = _select_key(row, k[r] - 1, cand, hist)
            ties += 1  # keys equal to t that are pruned, lowest index first
            cut = n  # all of them (the usual case: t is one value)
            if ties < equal:
                for i in range(n):
                    ties -= (row[i] & absmask) == t
                    if ties == 0:
                        cut = i
                        break
        sq[r], zeros[r] = _zero_up_to(values[r], row, t, cut, out[r], scratch)


def _row_keys(values: np.ndarray) -> np.ndarray:
    """Unsigned keys whose order (sign bit ignored, as the kernels do) is that of |values|:
    the float bits themselves, or |q| for integers."""
    if values.dtype.kind == "f":
        return values.view(np.uint32 if values.dtype.itemsize == 4 else np.uint64)
    return np.abs(values.astype(np.int64)).astype(np.uint64)


def prune_rows(
    values: np.ndarray, k: np.ndarray | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zero the k[r] smallest-magnitude elements of each row r (ties: lower index first):
    (pruned values of the input dtype, per row the sum of squares of what was zeroed, per
    row the zeros in the result).

    The same choice as ``smallest_k_mask(|values|, k)`` followed by ``apply_mask``, in one
    pass per row and without magnitude or mask arrays the size of the weight."""
    if not isinstance(values, np.ndarray) or values.ndim != 2 or values.dtype.kind not in "fi":
        raise ValueError(
            f"values must be a 2-D float or integer array, got "
            f"{getattr(values, 'dtype', type(values))} {getattr(values, 'shape', '')}"
        )
    if values.dtype == np.float16:  # Numba has no float16; float32 holds it exactly
        out, sq, zeros = prune_rows(values.astype(np.float32), k)
        return out.astype(np.float16), sq, zeros
    values = np.ascontiguousarray(values)
    if values.dtype.kind == "f" and values.dtype.itemsize not in (4, 8):
        raise ValueError(f"unsupported float dtype {values.dtype}")
    k = _as_counts(k, values.shape[0], values.shape[1], "k")
    out = np.empty_like(values)
    sq = np.empty(values.shape[0])
    zeros = np.empty(values.shape[0], np.int64)
    keys = _row_keys(values)
    scratch = np.empty(values.shape[1])
    _prune_rows(keys, values, k, out, sq, zeros, *_scratch(values.shape[1], keys.dtype), scratch)
    return out, sq, zeros
