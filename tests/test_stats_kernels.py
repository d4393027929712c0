"""The statistics kernels equal their numpy twins."""

from __future__ import annotations

import numpy as np
import pytest
import twins

from tflrewrite.kernels import stats


@pytest.mark.parametrize("seed", range(5))
def test_stats_equal_twins(seed):
    rng = np.random.default_rng(seed)
    q = np.where(rng.random((7, 50)) < 0.4, 0, rng.integers(-128, 128, (7, 50))).astype(np.int8)
    for got, want in zip(stats.int8_counts(q), twins.int8_counts_numpy(q), strict=True):
        np.testing.assert_array_equal(got, want)
    x = np.where(rng.random((5, 33)) < 0.3, 0, rng.normal(size=(5, 33))).astype(np.float32)
    np.testing.assert_array_equal(stats.zeros_per_row(x), twins.zeros_per_row_numpy(x))
    y = x.astype(np.float16)
    np.testing.assert_allclose(
        stats.sq_diff_per_row(x, y), twins.sq_diff_per_row_numpy(x, y), rtol=1e-12
    )


def test_histograms_equal_twin():
    rng = np.random.default_rng(0)
    for n in (0, 1, 5, 4096):
        q = np.where(rng.random((3, n)) < 0.5, 0, rng.integers(-128, 128, (3, n))).astype(np.int8)
        np.testing.assert_array_equal(stats.int8_histograms(q), twins.int8_histograms_numpy(q))


def test_shapes_are_checked():
    with pytest.raises(ValueError):
        stats.sq_diff_per_row(np.zeros((2, 3)), np.zeros((3, 2)))
    with pytest.raises(ValueError):
        stats.zeros_per_row(np.zeros(3))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_all_finite(dtype):
    x = np.ones((3, 5), dtype)
    assert stats.all_finite(x)
    assert stats.all_finite(np.zeros((0, 3), dtype))
    big = np.finfo(dtype).max
    assert stats.all_finite(np.array([-0.0, big, -big, np.finfo(dtype).smallest_subnormal], dtype))
    assert stats.all_finite(x.T)  # not contiguous
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 4] = bad
        assert not stats.all_finite(y)
