"""The magnitude-pruning mask kernels: equal to their numpy twins, and what they promise."""

from __future__ import annotations

import numpy as np
import pytest
import twins
from hypothesis import given, settings
from hypothesis import strategies as st

from tflrewrite.kernels import prune

# Kernels compile on first use; after that each example takes microseconds.
FAST = settings(max_examples=150, deadline=None)

# Few distinct values, so ties are everywhere; -0.0 must count as 0.0; +inf is allowed.
TIED = [0.0, -0.0, 1.0, 2.0, 3.0, 0.5, 1e30, np.inf]


@st.composite
def magnitudes(draw, max_rows=5, max_n=200):
    """(rows, n) float32 or float64 magnitudes, built by numpy from drawn parameters (fast).

    Half the draws take values from a palette of at most four tied values; the others are
    spread over many decades (subnormals included) with about a fifth zeros. Rows longer than
    64 go through the radix-selection path, shorter ones through counting: both exercised.
    """
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = (draw(st.integers(0, max_rows)), draw(st.integers(0, max_n)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        palette = draw(st.lists(st.sampled_from(TIED), min_size=1, max_size=4))
        return rng.choice(np.array(palette, dtype), shape)
    spread = np.abs(rng.standard_normal(shape)) * 10.0 ** rng.integers(-44, 30, shape)
    spread[rng.random(shape) < 0.2] = 0.0
    return spread.astype(dtype)


def per_row_counts(draw, rows, high):
    return np.array(draw(st.lists(st.integers(0, high), min_size=rows, max_size=rows)), np.int64)


def assert_pruned_before_kept(vals, pruned):
    """Every pruned value <= every kept one; among equal values the pruned come first."""
    vals = np.asarray(vals, np.float64).ravel()
    pruned = np.asarray(pruned).ravel()
    if pruned.all() or not pruned.any():
        return
    assert vals[pruned].max() <= vals[~pruned].min()
    t = vals[pruned].max()
    tied = np.flatnonzero(vals == t)
    assert np.all(np.diff(pruned[tied].astype(int)) <= 0), "a tie was pruned after a kept one"


def sequential_mean(values):
    """A block's score as block_mask defines it: float64 sum in index order over the length."""
    total = 0.0
    for v in values:
        total += float(v)
    return total / len(values)


# --- smallest_k_mask ----------------------------------------------------------------------


@FAST
@given(data=st.data(), mag=magnitudes())
def test_smallest_k_equals_twin_and_prunes_exactly_k_smallest(data, mag):
    k = per_row_counts(data.draw, mag.shape[0], mag.shape[1])
    mask = prune.smallest_k_mask(mag, k)
    assert mask.dtype == bool and mask.shape == mag.shape
    np.testing.assert_array_equal(mask, twins.smallest_k_mask_numpy(mag, k))
    np.testing.assert_array_equal(mask.sum(axis=1), k)
    for r in range(mag.shape[0]):
        assert_pruned_before_kept(mag[r], mask[r])
        zeros = mag[r] == 0
        if k[r] >= zeros.sum():
            assert mask[r][zeros].all(), "an existing zero was kept while nonzeros were pruned"
        else:
            assert zeros[mask[r]].all(), "a nonzero was pruned while zeros were kept"


@pytest.mark.parametrize("n", [63, 64, 65, 2049, 10_000])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_k_long_tied_rows(rng, n, dtype):
    """Both routes (counting up to 64, radix above), many ties, k across the whole range."""
    mag = rng.integers(0, 4, (6, n)).astype(dtype)
    mag[1] = 0
    mag[2] = np.abs(rng.standard_normal(n))
    k = np.array([0, n // 3, n // 2, n - 1, n, 1], np.int64)
    mask = prune.smallest_k_mask(mag, k)
    np.testing.assert_array_equal(mask, twins.smallest_k_mask_numpy(mag, k))
    np.testing.assert_array_equal(mask.sum(axis=1), k)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_smallest_k_crowded_range(rng, dtype):
    """Thousands of neighbouring floats among values spread over decades: the selection's
    first rounds leave more candidates than counting takes, so it narrows several times."""
    dense = np.nextafter(dtype(1), dtype(2)) - dtype(1)
    row = np.concatenate(
        [
            dtype(1) + dense * np.arange(4000, dtype=dtype),
            np.abs(rng.standard_normal(1000)) * 10.0 ** rng.integers(-30, 30, 1000),
        ]
    ).astype(dtype)
    mag = np.stack([rng.permutation(row) for _ in range(4)])
    mag[3, ::7] = 1  # ties inside the crowd
    k = np.array([1200, 2500, 4999, 3001], np.int64)
    mask = prune.smallest_k_mask(mag, k)
    np.testing.assert_array_equal(mask, twins.smallest_k_mask_numpy(mag, k))
    out, sq, zeros = prune.prune_rows(mag, k)
    out2, sq2, zeros2 = twins.prune_rows_numpy(mag, k)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_allclose(sq, sq2, rtol=1e-12)
    np.testing.assert_array_equal(zeros, zeros2)


def test_smallest_k_ties_go_to_lower_index():
    mag = np.array([[2, 1, 1, 0, 1, 1]], np.float32)
    np.testing.assert_array_equal(prune.smallest_k_mask(mag, 3)[0], [0, 1, 1, 1, 0, 0])


def test_smallest_k_accepts_scalar_k_ints_float16_big_endian_and_views(rng):
    mag = rng.integers(0, 5, (4, 100))
    expected = twins.smallest_k_mask_numpy(mag, 37)
    for variant in (mag, mag.astype(np.float16), mag.astype(">f4"), np.asfortranarray(mag)):
        np.testing.assert_array_equal(prune.smallest_k_mask(variant, 37), expected)


# --- n_of_m_mask --------------------------------------------------------------------------


@FAST
@given(data=st.data(), mag=magnitudes(max_n=150))
def test_n_of_m_equals_twin_and_keeps_n_largest_per_group(data, mag):
    m = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64, 65, 70]) | st.integers(1, 12))
    n_keep = data.draw(st.integers(0, m))
    mask = prune.n_of_m_mask(mag, n_keep, m)
    np.testing.assert_array_equal(mask, twins.n_of_m_mask_numpy(mag, n_keep, m))
    for r in range(mag.shape[0]):
        for start in range(0, mag.shape[1], m):
            group, pruned = mag[r, start : start + m], mask[r, start : start + m]
            assert (~pruned).sum() == min(n_keep, group.size)
            assert_pruned_before_kept(group, pruned)


def test_two_of_four_with_short_last_group():
    mag = np.array([[4, 1, 1, 3, 5, 5, 5, 5, 0, 7, 2]], np.float32)
    #                 group 1     group 2     short group (g=3): prunes 3 - 2 = 1
    expected = [0, 1, 1, 0, 1, 1, 0, 0, 1, 0, 0]
    np.testing.assert_array_equal(prune.n_of_m_mask(mag, 2, 4)[0], expected)


# --- block_mask ---------------------------------------------------------------------------


@FAST
@given(data=st.data(), mag=magnitudes(max_n=150))
def test_block_mask_equals_twin_and_prunes_whole_blocks(data, mag):
    rows, n = mag.shape
    block = data.draw(st.sampled_from([1, 4, 16]) | st.integers(1, 40))
    nb = -(-n // block)
    k_blocks = per_row_counts(data.draw, rows, nb)
    mask = prune.block_mask(mag, block, k_blocks)
    np.testing.assert_array_equal(mask, twins.block_mask_numpy(mag, block, k_blocks))
    starts = np.arange(0, n, block)
    for r in range(rows):
        firsts = mask[r, starts]
        np.testing.assert_array_equal(mask[r], np.repeat(firsts, block)[:n])  # whole blocks
        assert firsts.sum() == k_blocks[r]
        means = [sequential_mean(mag[r, s : s + block]) for s in starts]
        assert_pruned_before_kept(means, firsts)


def test_block_mask_uses_the_mean_of_a_short_last_block():
    mag = np.array([[1, 1, 1, 1, 3]], np.float32)  # blocks of 4: mean 1.0, then mean 3.0
    np.testing.assert_array_equal(prune.block_mask(mag, 4, 1)[0], [1, 1, 1, 1, 0])
    mag = np.array([[2, 2, 2, 2, 1]], np.float32)  # short block's mean 1.0 < 2.0: pruned
    np.testing.assert_array_equal(prune.block_mask(mag, 4, 1)[0], [0, 0, 0, 0, 1])


def test_block_scores_are_summed_in_index_order():
    """Block 0 sums to exactly 1.0 left to right (each 2**-53 rounds away), like block 1: a
    tie, so block 0 goes. Summed right to left it would be 1 + 2**-52 and block 1 would go."""
    e = 2.0**-53
    mag = np.array([[1.0, e, e, 0.0, 1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(prune.block_mask(mag, 4, 1)[0], [1, 1, 1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(twins.block_mask_numpy(mag, 4, 1)[0], [1, 1, 1, 1, 0, 0, 0, 0])


def test_block_mask_large_matches_twin(rng):
    mag = rng.integers(0, 3, (64, 1000)).astype(np.float32)
    for block in (4, 16):
        k_blocks = rng.integers(0, -(-1000 // block) + 1, 64)
        np.testing.assert_array_equal(
            prune.block_mask(mag, block, k_blocks), twins.block_mask_numpy(mag, block, k_blocks)
        )


# --- global -------------------------------------------------------------------------------


@FAST
@given(data=st.data(), mags=st.lists(magnitudes(max_rows=4, max_n=60), max_size=4))
def test_global_equals_twin_and_prunes_exactly_k_total(data, mags):
    total = sum(m.size for m in mags)
    k_total = data.draw(st.integers(0, total))
    masks = prune.global_smallest_k_masks(mags, k_total)
    expected = twins.global_smallest_k_masks_numpy(mags, k_total)
    assert [m.shape for m in masks] == [m.shape for m in mags]
    for got, want in zip(masks, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    assert sum(int(m.sum()) for m in masks) == k_total
    if mags:
        flat = np.concatenate([m.ravel().astype(np.float64) for m in mags])
        assert_pruned_before_kept(flat, np.concatenate([m.ravel() for m in masks]))


def test_global_ties_go_to_lower_array_then_row_major_index():
    a = np.array([[1, 0], [1, 1]], np.float32)
    b = np.array([[0, 1, 1]], np.float64)
    masks = prune.global_smallest_k_masks([a, b], 3)  # both zeros, then the first 1
    np.testing.assert_array_equal(masks[0], [[1, 1], [0, 0]])
    np.testing.assert_array_equal(masks[1], [[1, 0, 0]])
    masks = prune.global_smallest_k_masks([a, b], 5)  # every 1 in a before any in b
    np.testing.assert_array_equal(masks[0], [[1, 1], [1, 1]])
    np.testing.assert_array_equal(masks[1], [[1, 0, 0]])


# --- prune_count --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "sparsity", "expected"),
    [
        (10, 0.5, 5),
        (3, 0.5, 2),
        (5, 0.1, 1),
        (5, 0.3, 2),
        (7, 0.0, 0),
        (7, 1.0, 7),
        (0, 0.5, 0),
        (1, 0.49999999999999994, 0),
    ],
)
def test_prune_count_rounds_half_up(n, sparsity, expected):
    assert prune.prune_count(n, sparsity) == expected


@given(n=st.integers(0, 10**12), sparsity=st.floats(0, 1))
def test_prune_count_is_within_half_an_element(n, sparsity):
    count = prune.prune_count(n, sparsity)
    assert 0 <= count <= n
    assert abs(count - sparsity * n) <= 0.5 + 1e-9 * n


# --- bad input ----------------------------------------------------------------------------

GOOD = np.ones((2, 8), np.float32)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: prune.smallest_k_mask(-GOOD, 1), "non-negative"),
        (lambda: prune.smallest_k_mask(np.full((2, 8), np.nan), 1), "NaN"),
        (lambda: prune.smallest_k_mask(GOOD[0], 1), "2-D"),
        (lambda: prune.smallest_k_mask(GOOD.astype(bool), 1), "dtype|floats"),
        (lambda: prune.smallest_k_mask(GOOD.astype(complex), 1), "floats"),
        (lambda: prune.smallest_k_mask(GOOD, 9), r"\[0, 8\]"),
        (lambda: prune.smallest_k_mask(GOOD, -1), r"\[0, 8\]"),
        (lambda: prune.smallest_k_mask(GOOD, [1, 2, 3]), "one count per row"),
        (lambda: prune.smallest_k_mask(GOOD, 1.0), "integers"),
        (lambda: prune.n_of_m_mask(GOOD, 5, 4), "n_keep"),
        (lambda: prune.n_of_m_mask(GOOD, 0, 0), "m must"),
        (lambda: prune.n_of_m_mask(GOOD, 2.0, 4), "integer"),
        (lambda: prune.block_mask(GOOD, 0, 1), "block must"),
        (lambda: prune.block_mask(GOOD, 4, 3), r"k_blocks must lie in \[0, 2\]"),
        (lambda: prune.global_smallest_k_masks([GOOD, GOOD], 33), "k_total"),
        (lambda: prune.global_smallest_k_masks(GOOD, 3), "list of arrays"),
        (lambda: prune.global_smallest_k_masks([GOOD, -GOOD], 3), r"mags\[1\]"),
        (lambda: prune.prune_count(10, 1.5), "sparsity"),
        (lambda: prune.prune_count(10, float("nan")), "sparsity"),
        (lambda: prune.prune_count(-1, 0.5), "n must"),
        (lambda: prune.prune_count(True, 0.5), "bool"),
    ],
)
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8])
def test_apply_mask_equals_twin(dtype):
    rng = np.random.default_rng(3)
    values = (rng.normal(0, 40, (9, 31))).astype(dtype)
    mask = rng.random((9, 31)) < 0.5
    out, sq = prune.apply_mask(values, mask)
    out2, sq2 = prune.apply_mask_numpy(values, mask)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_allclose(sq, sq2, rtol=1e-12)
    assert out.dtype == values.dtype and np.all(out[mask] == 0)
    np.testing.assert_array_equal(out[~mask], values[~mask])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.int8])
@pytest.mark.parametrize("seed", range(3))
def test_prune_rows_equals_twin(dtype, seed):
    rng = np.random.default_rng(seed)
    values = rng.choice([0.0, -0.0, 1.0, -1.0, 2.5, -3.0, 0.25], size=(7, 40))
    values = (values * (100 if dtype == np.int8 else 1)).astype(dtype)
    k = rng.integers(0, 41, 7)
    out, sq, zeros = prune.prune_rows(values, k)
    out2, sq2, zeros2 = twins.prune_rows_numpy(values, k)
    np.testing.assert_array_equal(out, out2)
    np.testing.assert_allclose(sq, sq2, rtol=1e-12)
    np.testing.assert_array_equal(zeros, zeros2)
    assert out.dtype == values.dtype
    assert np.all(np.count_nonzero(out == 0, axis=1) >= k)
