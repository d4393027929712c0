"""The weight quantization kernel equals its numpy twin and keeps zeros and clusters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from twins import symmetric_int8_rows_numpy

from tflrewrite.kernels.quantize import symmetric_int8_rows

floats = st.one_of(
    st.sampled_from([0.0, -0.0, 0.5, -0.5, 1e-30, 3.0]),
    st.floats(-1e6, 1e6, allow_nan=False, width=32),
)


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(np.float32, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=floats)
)
def test_kernel_equals_twin(x):
    q, s, e = symmetric_int8_rows(x)
    q2, s2, e2 = symmetric_int8_rows_numpy(x)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_allclose(e, e2, rtol=1e-9, atol=1e-300)
    assert np.all(q[x == 0] == 0) and np.all(np.abs(q.astype(int)) <= 127)
    assert np.all(s > 0)
    # dequantized values are within half a step of the originals
    err = np.abs(q.astype(np.float64) * s[:, None] - x)
    assert np.all(err <= s[:, None].astype(np.float64) * 0.5 * (1 + 1e-6) + 1e-30)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_kernel_equals_twin_on_every_float_width(dtype):
    rng = np.random.default_rng(1)
    x = np.where(rng.random((9, 301)) < 0.4, 0, rng.normal(0, 3, (9, 301))).astype(dtype)
    x[3] = 0
    q, s, e = symmetric_int8_rows(x)
    q2, s2, e2 = symmetric_int8_rows_numpy(x)
    np.testing.assert_array_equal(q, q2)
    np.testing.assert_array_equal(s, s2)
    np.testing.assert_allclose(e, e2, rtol=1e-9, atol=1e-300)


def test_clusters_stay_clusters():
    rng = np.random.default_rng(0)
    x = rng.choice(np.linspace(-1, 1, 7).astype(np.float32), size=(8, 100))
    q, _, _ = symmetric_int8_rows(x)
    assert all(np.unique(r).size <= 7 for r in q)


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(3, np.float32),
        np.array([[np.nan]], np.float32),
        np.array([[1.0, 2.0], [3.0, -np.inf]]),
        np.array([[np.inf, 1.0]], np.float16),
        np.zeros((2, 2), np.int8),
    ],
)
def test_bad_input(bad):
    with pytest.raises(ValueError):
        symmetric_int8_rows(bad)
