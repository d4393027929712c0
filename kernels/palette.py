"""One palette of int8 values shared by every channel of a weight, chosen for the bits of Arm's
Ethos-U weight codec, with each channel's scale refitted to it.

Why shared: the codec writes all the output channels of a weight (or of each depth slice
Vela cuts it into) as one interleaved stream with one palette, so a codebook per channel
multiplies the values the palette must hold. The per-channel scales are free: Vela stores a
scale for every output channel anyway, so a channel may scale the shared values as it likes.

The rate model is that of the codec's encoder (ethos-u-vela 5.2: regor's mlw_encode.cpp,
`update_palette`, `create_palette`, `search_grc_params`): the values of a stream are sorted
by frequency into a palette of at most 32 entries, each weight is written as its entry's
rank, and the ranks are Golomb-Rice coded with a divisor 2^d, d = 0..5, plain (rank r costs
(r >> d) + 1 + d bits) or truncated (min((r >> d) + 1, 2) + d bits, for r >> d <= 2), or
written flat in ceil(log2(palette size)) bits. Zeros leave the palette for run lengths when
they are more than 5 times as frequent as any other value; their cost then does not depend
on the other values, so it is left out here. The encoder may switch codes along a stream at
a cost of 40 bits; one code per weight is assumed. Padding zeros that Vela adds to fill its
blocks are not known here and are left out too.

The search (`shared_palette`) starts from the least-squares palette for the whole weight in
the stored domain (`kmeans1d.cluster_int8_rows` on one row: what plain tensor clustering
gives), then alternates three steps, each for a few values of a rate weight lambda:
assign every (channel, stored level) to the palette entry with the least squared error in
real values plus lambda times that entry's code length; move each entry to the rounded
weighted mean of what it holds; refit each channel's scale by least squares. It keeps the
candidate with the fewest estimated bits whose squared error (in real values) is at most
(1 + budget) times the starting palette's, so with budget 0 it never loses accuracy against
plain tensor clustering, and the starting palette itself is always a candidate.

Plain numpy, no Numba kernel: all work is over the distinct (channel, level) pairs, at most
255 per channel, in vectorized steps; the exact 1-D k-means it starts from is kmeans1d's
compiled kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tflrewrite.kernels import kmeans1d

PALETTE_MAX = 32  # palette entries in one codec section
ZERO_RUN_FACTOR = 5  # zeros become runs when more frequent than 5x any other value
DIRECT_BITS = 9  # a value outside the palette is written as a 9-bit sign-magnitude number

# Rate weights tried, in units of the starting palette's mean squared error per bit.
RATE_WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0)
ITERATIONS = 6


@dataclass
class Palette:
    """A weight's new stored values and scales, and what they cost against the start."""

    values: np.ndarray  # int8, the shape of the rows given
    scales: np.ndarray  # float32, one per row
    sq_error: float  # sum of squared errors in real values, against the input
    start_sq_error: float  # the same for plain tensor clustering
    bits: float  # estimated codec bits of the stored values (zero runs left out)
    start_bits: float


_DIVS = np.arange(6)[:, None]


def code_lengths(counts: np.ndarray) -> tuple[np.ndarray, float]:
    """Bits of each symbol when symbols with these counts are written as their frequency
    rank under the cheapest single Golomb-Rice code (or the flat code), and the total."""
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.size
    if n == 0:
        return np.zeros(0), 0.0
    rank = np.empty(n, np.int64)
    rank[np.argsort(-counts, kind="stable")] = np.arange(n)
    q = rank[None, :] >> _DIVS
    plain = np.where(q <= 31, q + 1 + _DIVS, np.inf)
    truncated = np.where(q <= 2, np.minimum(q + 1, 2) + _DIVS, np.inf)
    options = np.concatenate([plain, truncated])
    if n <= PALETTE_MAX:
        flat = max(1, int(np.ceil(np.log2(max(n, 2)))))
        options = np.concatenate([options, np.full((1, n), float(flat))])
    options[:, rank >= PALETTE_MAX] = DIRECT_BITS  # outside the palette: written directly
    totals = np.sum(options * counts, axis=1)
    best = int(np.argmin(totals))
    return options[best], float(totals[best])


def index_bits(counts: np.ndarray, zeros: float) -> tuple[np.ndarray, float]:
    """`code_lengths` of the nonzero values of a stream holding `zeros` zeros: zero joins
    the palette unless the codec takes it out for run lengths."""
    counts = np.asarray(counts, dtype=np.float64)
    if zeros == 0 or (counts.size and zeros > ZERO_RUN_FACTOR * counts.max()):
        return code_lengths(counts)
    lengths, total = code_lengths(np.append(counts, zeros))
    return lengths[:-1], total


def shared_palette(
    rows: np.ndarray,
    scales: np.ndarray,
    *,
    k: int,
    keep_zero: bool,
    budget: float = 0.0,
    refit: bool = True,
) -> Palette:
    """At most k stored values shared by all rows, and a new scale per row (see above).

    Args:
        rows: int8 (C, n), one row per scale (C = 1 for a per-tensor quantized weight).
        scales: C positive scales: the real value of rows[c, i] is rows[c, i] * scales[c].
        k: the most distinct stored values, zero included.
        keep_zero: zeros stay exactly zero and no other value becomes zero (then zero is
            one of the k), as in sparsity-preserving clustering.
        budget: extra squared error allowed over plain tensor clustering, as a fraction.
        refit: whether the scales may change (the caller must then rescale what depends on
            them, such as biases); without it the returned scales are the given ones.
    """
    rows = np.ascontiguousarray(rows)
    if rows.ndim != 2 or rows.dtype != np.int8:
        raise ValueError(f"rows must be 2-D int8, got {rows.dtype} {rows.shape}")
    s0 = np.asarray(scales, dtype=np.float64).reshape(-1)
    if s0.size != rows.shape[0] or not np.all(np.isfinite(s0) & (s0 > 0)):
        raise ValueError("scales must be one positive finite value per row")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    start = kmeans1d.cluster_int8_rows(rows.reshape(1, -1), k, keep_zero).reshape(rows.shape)
    ch, level, count = _points(rows)
    lut = np.zeros(256)
    lut[rows.reshape(-1).astype(np.int64) + 128] = start.reshape(-1)
    v = lut[level + 128]  # plain clustering maps a level to one value in every channel
    real = level * s0[ch]
    moving = level != 0 if keep_zero else np.ones(level.size, bool)
    zeros = float(count[~moving].sum())

    def cost(v: np.ndarray, s: np.ndarray) -> tuple[float, float]:
        err = float(np.sum(count * (real - s[ch] * v) ** 2))
        _, inverse = np.unique(v[moving], return_inverse=True)
        return err, index_bits(np.bincount(inverse, weights=count[moving]), zeros)[1]

    s32 = s0.astype(np.float32).astype(np.float64)
    start_err, start_bits = cost(v, s32)
    best = (start_bits, start_err, v, s32)
    if start_err > 0 and moving.any():
        unit = start_err / float(count.sum())
        for weight in RATE_WEIGHTS:
            vi, si, feasible = v, s32, False
            for _ in range(ITERATIONS):
                vn, sn = _step(real, ch, count, moving, vi, si, weight * unit, zeros, keep_zero)
                sn = sn if refit else s32
                if np.array_equal(vn, vi) and np.array_equal(sn, si):
                    break
                vi, si = vn, sn
                err, bits = cost(vi, si)
                if err <= (1.0 + budget) * start_err:
                    feasible = True
                    if (bits, err) < best[:2]:
                        best = (bits, err, vi, si)
            if not feasible and weight > 0:
                break  # a larger rate weight only trades more error for bits
    bits, err, v, s = best
    table = np.zeros((rows.shape[0], 256), np.int8)
    table[ch, level + 128] = v.astype(np.int8)
    values = np.take_along_axis(table, rows.astype(np.int64) + 128, axis=1)
    return Palette(values, s.astype(np.float32), err, start_err, bits, start_bits)


def _points(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct (row, level) pairs of int8 rows: row index, level, count."""
    key = (np.arange(rows.shape[0])[:, None] * 256 + rows.astype(np.int64) + 128).reshape(-1)
    pairs, count = np.unique(key, return_counts=True)
    return pairs // 256, pairs % 256 - 128, count.astype(np.float64)


def _step(real, ch, count, moving, v, s, lam, zeros, keep_zero):
    """One round of assignment (error + lam * bits), entry update and scale refit."""
    palette, inverse = np.unique(v[moving], return_inverse=True)
    lengths, _ = index_bits(np.bincount(inverse, weights=count[moving]), zeros)
    sc = s[ch[moving]]
    x = real[moving] / sc  # each point in the stored domain of its channel
    w = count[moving] * sc**2  # squared error in real values = w * (x - value)^2
    penalty = lam * count[moving, None] * lengths[None, :]
    pick = np.argmin(w[:, None] * (x[:, None] - palette[None, :]) ** 2 + penalty, axis=1)
    total_w = np.bincount(pick, weights=w, minlength=palette.size)
    total_wx = np.bincount(pick, weights=w * x, minlength=palette.size)
    used = total_w > 0
    mean = np.zeros(palette.size)
    mean[used] = total_wx[used] / total_w[used]
    entry = np.clip(np.sign(mean) * np.floor(np.abs(mean) + 0.5), -127, 127)
    if keep_zero:  # a nonzero weight never becomes zero: the nearer of +-1 instead
        entry = np.where(entry == 0, np.where(mean >= 0, 1.0, -1.0), entry)
    out = v.copy()
    out[moving] = entry[pick]
    num = np.bincount(ch, weights=count * real * out, minlength=s.size)
    den = np.bincount(ch, weights=count * out * out, minlength=s.size)
    fitted = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    ok = np.isfinite(fitted) & (fitted > 0)
    # the file holds float32 scales: the error is measured with those
    return out, np.where(ok, fitted, s).astype(np.float32).astype(np.float64)
