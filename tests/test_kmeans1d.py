"""Exact 1-D k-means: optimal against brute force, exhaustive search and scikit-learn; int8
clustering optimal over integer centroids against brute force; the row clusterers equal their
numpy twins exactly; Lloyd never beats the optimum."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import twins
from hypothesis import given, settings
from hypothesis import strategies as st

from tflrewrite.kernels import kmeans1d as km

# ------------------------------------------------------------------ helpers


def assignment_cost(values, weights, centroids, boundaries) -> float:
    """Sum w (v - c)^2 with value t in the cluster whose start index is the last <= t."""
    cluster = np.searchsorted(boundaries, np.arange(values.size), side="right") - 1
    return float(np.sum(weights * (values - centroids[cluster]) ** 2))


def exhaustive_cost(values, weights, k) -> float:
    """Least cost over every split of the distinct values into at most k contiguous runs."""
    xs, inverse = np.unique(values, return_inverse=True)
    best = np.inf
    for kk in range(1, min(k, xs.size) + 1):
        for cuts in itertools.combinations(range(1, xs.size), kk - 1):
            cluster = np.searchsorted(np.array(cuts, int), inverse, side="right")
            cost = 0.0
            for c in range(kk):
                v, w = values[cluster == c], weights[cluster == c]
                cost += float(np.sum(w * (v - np.sum(w * v) / np.sum(w)) ** 2))
            best = min(best, cost)
    return best


def close(a: float, b: float, scale: float) -> bool:
    return abs(a - b) <= 1e-9 * max(scale, 1.0)


# ------------------------------------------------------------------ the exact solver

points = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(-6, 6), min_size=n, max_size=n),
        st.lists(st.integers(1, 4), min_size=n, max_size=n),
        st.integers(1, 5),
        st.sampled_from([1.0, 0.37, 1e3]),
    )
)


@settings(max_examples=300, deadline=None)
@given(points)
def test_dp_matches_brute_force_and_exhaustive_search(case):
    raw, counts, k, scale = case
    values = np.sort(np.array(raw, float)) * scale
    weights = np.array(counts, float)
    centroids, boundaries, cost = km.optimal_kmeans_1d(values, weights, k)
    b_centroids, b_boundaries, b_cost = twins.kmeans_1d_bruteforce(values, weights, k)
    size = float(np.sum(weights * values**2))
    assert close(cost, b_cost, size)
    assert close(cost, exhaustive_cost(values, weights, k), size)
    distinct = np.unique(values).size
    assert centroids.size == b_centroids.size == min(k, distinct)
    assert np.all(np.diff(centroids) > 0)
    assert boundaries[0] == 0 and np.all(np.diff(boundaries) > 0)
    assert np.all(values[boundaries[1:]] != values[boundaries[1:] - 1])  # repeats stay together
    assert close(cost, assignment_cost(values, weights, centroids, boundaries), size)
    ends = np.append(boundaries[1:], values.size)
    for c, a, b in zip(centroids, boundaries, ends):
        mean = np.sum(weights[a:b] * values[a:b]) / np.sum(weights[a:b])
        assert abs(c - mean) <= 1e-12 * max(1.0, abs(mean))


def test_unweighted_and_degenerate_inputs():
    c, b, cost = km.optimal_kmeans_1d(np.array([1.0, 1.0, 2.0, 5.0]), None, 10)
    assert c.tolist() == [1.0, 2.0, 5.0] and b.tolist() == [0, 2, 3] and cost == 0.0
    c, b, cost = km.optimal_kmeans_1d(np.array([0.0, 2.0]), None, 1)
    assert c.tolist() == [1.0] and b.tolist() == [0] and cost == 2.0
    c, b, cost = km.optimal_kmeans_1d(np.array([3.0, 3.0, 3.0]), np.array([1.0, 2.0, 3.0]), 2)
    assert c.tolist() == [3.0] and b.tolist() == [0] and cost == 0.0
    c, b, cost = km.optimal_kmeans_1d(np.empty(0), None, 3)
    assert c.size == 0 and b.size == 0 and cost == 0.0


def test_far_from_origin_values_stay_exact():
    # Centring the prefix sums on the mean keeps a cluster of tiny spread at 1e8 exact enough.
    rng = np.random.default_rng(7)
    values = np.sort(1e8 + np.concatenate([rng.normal(0, 1e-3, 300), rng.normal(5, 1e-3, 300)]))
    _, boundaries, cost = km.optimal_kmeans_1d(values, None, 2)
    assert boundaries.tolist() == [0, 300]
    direct = sum(float(np.sum((part - part.mean()) ** 2)) for part in np.split(values, [300]))
    assert abs(cost - direct) <= 1e-6 * direct


def test_larger_case_matches_brute_force():
    rng = np.random.default_rng(3)
    values = np.sort(np.concatenate([rng.normal(0, 1, 400), rng.normal(6, 0.5, 200)]))
    weights = rng.integers(1, 9, values.size).astype(float)
    for k in (1, 2, 7, 20):
        cost = km.optimal_kmeans_1d(values, weights, k)[2]
        b_cost = twins.kmeans_1d_bruteforce(values, weights, k)[2]
        assert close(cost, b_cost, float(np.sum(weights * values**2)))


@pytest.mark.parametrize(
    ("values", "weights", "k", "message"),
    [
        (np.zeros((2, 2)), None, 2, "1-D"),
        (np.array([2.0, 1.0]), None, 2, "sorted"),
        (np.array([1.0, np.nan]), None, 2, "finite"),
        (np.array([1.0, np.inf]), None, 2, "finite"),
        (np.array([1.0, 2.0]), np.array([1.0]), 2, "shape"),
        (np.array([1.0, 2.0]), np.array([1.0, 0.0]), 2, "> 0"),
        (np.array([1.0, 2.0]), np.array([1.0, np.nan]), 2, "> 0"),
        (np.array([1.0, 2.0]), None, 0, "k must"),
        (np.array([1.0, 2.0]), None, 1.5, "k must"),
        (np.array([1.0, 2.0]), None, True, "k must"),
    ],
)
def test_bad_inputs_raise_value_error(values, weights, k, message):
    with pytest.raises(ValueError, match=message):
        km.optimal_kmeans_1d(values, weights, k)


# ------------------------------------------------------------------ scikit-learn never does better


def sklearn_cost(values, weights, k) -> float:
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # OpenMP threads spin badly on a busy machine
        model = KMeans(n_clusters=k, n_init=10, random_state=0).fit(
            values.reshape(-1, 1), sample_weight=weights
        )
    centers = model.cluster_centers_.ravel()
    return float(np.sum(weights * (values - centers[model.labels_]) ** 2))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sklearn_never_beats_the_optimum(seed):
    rng = np.random.default_rng(seed)
    values = np.sort(np.concatenate([rng.normal(0, 1, 700), rng.laplace(3, 0.3, 300)]))
    weights = rng.uniform(0.5, 2.0, values.size)
    for k in (3, 8, 16):
        ours = km.optimal_kmeans_1d(values, weights, k)[2]
        assert sklearn_cost(values, weights, k) >= ours - 1e-9 * np.sum(weights * values**2)


def test_sklearn_never_beats_the_optimum_on_an_int8_histogram():
    rng = np.random.default_rng(11)
    q = np.clip(np.rint(rng.normal(0, 30, 20_000)), -128, 127).astype(np.int8)
    levels, counts = np.unique(q, return_counts=True)
    values, weights = levels.astype(float), counts.astype(float)
    for k in (4, 16):
        ours = km.optimal_kmeans_1d(values, weights, k)[2]
        assert sklearn_cost(values, weights, k) >= ours - 1e-9 * np.sum(weights * values**2)


# ------------------------------------------------------------------ int8 rows


def int8_cases() -> list[np.ndarray]:
    rng = np.random.default_rng(2024)
    full = rng.integers(-128, 128, (6, 400))
    normal = np.clip(np.rint(rng.normal(0, 25, (6, 300))), -128, 127)
    sparse = np.where(rng.random((6, 200)) < 0.6, 0, rng.integers(-128, 128, (6, 200)))
    few = rng.choice([-128, -3, 0, 2, 127], (6, 50))
    odd = np.array([[0] * 20, [-128] * 20, [5] * 19 + [0], [-1, 1] * 10, [-128, 127] * 10])
    symmetric = np.tile(np.arange(-30, 31), (3, 2))  # exact ties between partitions
    return [np.asarray(a, np.int8) for a in (full, normal, sparse, few, odd, symmetric)]


@pytest.mark.parametrize("keep_zero", [False, True])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 16])
def test_int8_rows_equal_numpy_twin_and_keep_their_promises(k, keep_zero):
    for q in int8_cases():
        out = km.cluster_int8_rows(q, k, keep_zero)
        assert out.dtype == np.int8 and out.shape == q.shape
        np.testing.assert_array_equal(out, twins.cluster_int8_rows_numpy(q, k, keep_zero))
        for row, new in zip(q, out):
            assert np.unique(new).size <= k
            if keep_zero:
                assert np.all(new[row == 0] == 0)
                to_zero = (row != 0) & (new == 0)
                # clustering adds no zeros, except k == 1 with zeros kept: all is zero then
                assert not to_zero.any() or (k == 1 and (row == 0).any())
            levels = np.unique(row)
            if levels.size <= k:
                np.testing.assert_array_equal(new, row)
            # clusters are contiguous runs of levels (of nonzero ones when zero stands alone)
            moved = row != 0 if keep_zero else np.ones(row.size, bool)
            order = np.argsort(row[moved], kind="stable")
            assert np.all(np.diff(new[moved][order].astype(int)) >= 0)


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("keep_zero", [False, True])
@pytest.mark.parametrize("k", [1, 3, 16])
def test_int8_with_counts_equals_twin_and_the_rows_kernel(k, keep_zero, per_row):
    for q in int8_cases():
        out, sq, counts = km.cluster_int8(q, k, keep_zero, per_row)
        want = twins.cluster_int8_numpy(q, k, keep_zero, per_row)
        np.testing.assert_array_equal(out, want[0])
        np.testing.assert_array_equal(sq, want[1])  # integers: exact
        for got, expected in zip(counts, want[2], strict=True):
            np.testing.assert_array_equal(got, expected)
        units = q if per_row else q.reshape(1, -1)
        rows = km.cluster_int8_rows(units, k, keep_zero).reshape(q.shape)
        np.testing.assert_array_equal(out, rows)


def test_int8_centroids_are_rounded_means_half_away_from_zero():
    q = np.array(
        [[-3, -2, 10, 11], [1, 2, 9, 9], [-128, -127, 126, 127], [1, 1, 2, 60], [-2, -1, -1, 50]],
        np.int8,
    )
    out = km.cluster_int8_rows(q, 2, False)
    expected = [
        [-3, -3, 11, 11],
        [2, 2, 9, 9],
        [-128, -128, 127, 127],
        [1, 1, 1, 60],
        [-1, -1, -1, 50],
    ]
    assert out.tolist() == expected


def test_int8_k1_with_zeros_kept_zeroes_the_row():
    q = np.array([[0, 5, -7, 9], [4, 5, 6, 6]], np.int8)
    assert km.cluster_int8_rows(q, 1, True).tolist() == [[0, 0, 0, 0], [5, 5, 5, 5]]


def best_integer_centroid(v: np.ndarray, keep_zero: bool) -> int:
    """The integer (nonzero with keep_zero) with the least squared error to v, by search."""
    cands = [c for c in range(int(v.min()), int(v.max()) + 1) if not (keep_zero and c == 0)]
    return min(cands, key=lambda c: int(np.sum((v - c) ** 2)))


def partition_cost(values: np.ndarray, k: int, keep_zero: bool) -> int:
    """Least error over every split of the sorted distinct values into at most k contiguous
    runs, each run at its best integer centroid."""
    xs = np.unique(values)
    best = None
    for kk in range(1, min(k, xs.size) + 1):
        for cuts in itertools.combinations(range(1, xs.size), kk - 1):
            cost = 0
            for run in np.split(xs, cuts):
                v = values[(values >= run[0]) & (values <= run[-1])]
                cost += int(np.sum((v - best_integer_centroid(v, keep_zero)) ** 2))
            best = cost if best is None else min(best, cost)
    return best


def centroid_set_cost(values: np.ndarray, k: int, keep_zero: bool) -> int:
    """Least error over every set of at most k integer centroids in the values' range
    (nonzero ones with keep_zero), each value at its nearest: no contiguity assumed."""
    span = range(int(values.min()), int(values.max()) + 1)
    cands = [c for c in span if not (keep_zero and c == 0)]
    best = None
    for kk in range(1, min(k, len(cands)) + 1):
        for cs in itertools.combinations(cands, kk):
            d = (values[:, None] - np.array(cs)[None, :]) ** 2
            cost = int(d.min(axis=1).sum())
            best = cost if best is None else min(best, cost)
    return best


small_int8_rows = st.tuples(
    st.lists(st.integers(-7, 7), min_size=1, max_size=12),
    st.integers(1, 5),
    st.booleans(),
    st.sampled_from([1, 3, 17]),  # spreads the levels out, up to the int8 range
)


@settings(max_examples=300, deadline=None)
@given(small_int8_rows)
def test_int8_rows_are_optimal_over_integer_centroids(case):
    raw, k, keep_zero, spread = case
    row = np.clip(np.array(raw) * spread, -128, 127).astype(np.int8)
    out = km.cluster_int8_rows(row[None], k, keep_zero)[0]
    np.testing.assert_array_equal(out, twins.cluster_int8_rows_numpy(row[None], k, keep_zero)[0])
    error = int(np.sum((row.astype(int) - out) ** 2))
    values = row.astype(int)
    kr = k
    if keep_zero and (values == 0).any():  # zeros stay, the rest share k - 1 clusters
        values, kr = values[values != 0], k - 1
    if values.size == 0 or kr == 0:
        assert error == int(np.sum(values**2))
        return
    assert error == partition_cost(values, kr, keep_zero)
    if spread == 1:  # few candidate centroids: the search over every set of them is small
        assert error == centroid_set_cost(values, kr, keep_zero)


def int_dp_split(row: np.ndarray, k: int, keep_zero: bool) -> tuple[np.ndarray, np.ndarray]:
    """(the kernel's `_int_dp` split, the twin's full scan's) of a row's levels (less zero
    with keep_zero)."""
    levels, counts = np.unique(row.astype(np.int64), return_counts=True)
    if keep_zero:
        levels, counts = levels[levels != 0], counts[levels != 0]
    level, count, _, _, _, p, _, layers, arg, stack, starts = km._int8_scratch(k)
    level[: levels.size], count[: levels.size] = levels, counts
    kk = km._int_dp(level, count, levels.size, k, keep_zero, p, layers, arg, stack, starts[1])
    return starts[1, :kk], twins._np_int8_starts(levels, counts, k, keep_zero)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-128, 127), min_size=1, max_size=400),
    st.integers(1, 24),
    st.booleans(),
)
def test_int8_search_equals_the_full_scan_twin(raw, k, keep_zero):
    # The kernel's divide and conquer finds the twin's full O(k m^2) scan's split (the
    # integer cost keeps the quadrangle inequality), and the rows come out the same.
    q = np.array(raw, np.int8)[None]
    if np.any(q != 0) or not keep_zero:
        np.testing.assert_array_equal(*int_dp_split(q[0], k, keep_zero))
    np.testing.assert_array_equal(
        km.cluster_int8_rows(q, k, keep_zero), twins.cluster_int8_rows_numpy(q, k, keep_zero)
    )


@pytest.mark.parametrize("keep_zero", [False, True])
def test_int8_search_equals_the_full_scan_on_ties(keep_zero):
    # Symmetric and repeated rows tie exactly between splits: both take the leftmost.
    for q in int8_cases():
        for row in q:
            for k in (2, 3, 5, 8, 16):
                if np.any(row != 0) or not keep_zero:
                    np.testing.assert_array_equal(*int_dp_split(row, k, keep_zero))


def test_int8_integer_centroids_beat_rounding_the_float_optimum():
    # The float optimum for 3 clusters is [-6] [-2 -1 1 1 2] [5 6] (means -6, 0.2, 5.5):
    # with zero reserved its middle run goes to +1 and the row costs 0 + 14 + 1 = 15.
    # With integer centroids [-6 -2] [-1 1 1 2] [5 6] at -4, 1, 6 cost 8 + 5 + 1 = 14.
    row = np.array([[1, 2, 1, -6, 6, -2, -1, 5]], np.int8)
    out = km.cluster_int8_rows(row, 3, True)
    assert out.tolist() == [[1, 1, 1, -4, 6, -4, 1, 6]]
    assert partition_cost(row[0].astype(int), 3, True) == 14


def test_twin_search_is_optimal_on_int8_histograms():
    # The twins mirror the kernel's search; this ties that search to the full DP's optimum.
    rng = np.random.default_rng(5)
    for row in (rng.integers(-128, 128, 500), np.tile(np.arange(-40, 41), 3)):
        levels, counts = np.unique(row, return_counts=True)
        x, w = levels.astype(float), counts.astype(float)
        for k in (2, 5, 16):
            fast = twins._np_dc_starts(x, w, k)
            full = twins._np_dp_starts(x, w, k)
            costs = []
            for starts in (fast, full):
                cent = twins._np_cluster_means(x, w, starts)
                cluster = np.searchsorted(starts, np.arange(x.size), side="right") - 1
                costs.append(float(np.sum(w * (x - cent[cluster]) ** 2)))
            assert close(costs[0], costs[1], float(np.sum(w * x * x)))


def test_int8_rejects_bad_input():
    with pytest.raises(ValueError, match="int8"):
        km.cluster_int8_rows(np.zeros((2, 2), np.int16), 2, True)
    with pytest.raises(ValueError, match="2-D"):
        km.cluster_int8_rows(np.zeros(4, np.int8), 2, True)
    with pytest.raises(ValueError, match="k must"):
        km.cluster_int8_rows(np.zeros((2, 2), np.int8), 0, True)


# ------------------------------------------------------------------ float rows


def float_cases(dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(99)
    normal = rng.normal(0, 0.1, (8, 120))
    sparse = np.where(rng.random((8, 80)) < 0.5, 0.0, rng.normal(0, 1, (8, 80)))
    repeats = rng.integers(-3, 4, (8, 40)) * 0.25
    odd = np.array([[0.0] * 6, [1.5] * 6, [-0.0, 0.0, 1.0, 2.0, 3.0, 4.0], [1e-30, -1e-30] * 3])
    return [np.asarray(a, dtype) for a in (normal, sparse, repeats, odd)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("keep_zero", [False, True])
@pytest.mark.parametrize("k", [1, 2, 4, 16])
def test_float_rows_equal_numpy_twin_and_keep_their_promises(k, keep_zero, dtype):
    for x in float_cases(dtype):
        out = km.cluster_float_rows(x, k, keep_zero)
        assert out.dtype == dtype and out.shape == x.shape
        np.testing.assert_array_equal(out, twins.cluster_float_rows_numpy(x, k, keep_zero))
        for row, new in zip(x, out):
            assert np.unique(new).size <= k
            if keep_zero:
                assert np.all(new[row == 0] == 0)
            if np.unique(row).size <= (k - 1 if keep_zero and (row == 0).any() else k):
                np.testing.assert_array_equal(new, row)


def test_float_rows_reach_the_optimal_cost():
    rng = np.random.default_rng(4)
    x = np.where(rng.random((5, 60)) < 0.3, 0.0, rng.normal(0, 1, (5, 60)))
    for keep_zero in (False, True):
        out = km.cluster_float_rows(x, 5, keep_zero)
        for row, new in zip(x, out):
            movable = row != 0 if keep_zero else np.ones(row.size, bool)
            kr = 4 if keep_zero and not movable.all() else 5
            best = twins.kmeans_1d_bruteforce(np.sort(row[movable]), None, kr)[2]
            assert close(float(np.sum((row - new) ** 2)), best, float(np.sum(row**2)))


def test_float_rows_reject_bad_input():
    with pytest.raises(ValueError, match="float32 or float64"):
        km.cluster_float_rows(np.zeros((2, 2), np.float16), 2, True)
    with pytest.raises(ValueError, match="finite"):
        km.cluster_float_rows(np.array([[1.0, np.nan]]), 2, True)


# ------------------------------------------------------------------ Lloyd and its initialisations


@pytest.mark.parametrize("method", ["linear", "density", "kmeans++"])
def test_lloyd_descends_and_never_beats_the_optimum(method):
    rng = np.random.default_rng(8)
    values = np.concatenate([rng.normal(-1, 0.2, 300), rng.normal(0.5, 0.4, 500)])
    weights = rng.integers(1, 4, values.size).astype(float)
    k = 6
    best = km.optimal_kmeans_1d(np.sort(values), weights[np.argsort(values)], k)[2]
    c = km.initial_centroids(values, weights, k, method=method, seed=1)
    assert c.size == k and values.min() <= c.min() and c.max() <= values.max()
    previous = np.inf
    for _ in range(40):  # one update at a time
        c, cost = km.lloyd_1d(values, weights, c, max_iter=1, tol=0.0)
        assert cost <= previous * (1 + 1e-12)
        assert cost >= best * (1 - 1e-12)
        previous = cost
    c_all, cost_all = km.lloyd_1d(
        values, weights, km.initial_centroids(values, weights, k, method=method, seed=1)
    )
    assert cost_all >= best * (1 - 1e-12) and c_all.size == k


def test_initialisations():
    values = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    np.testing.assert_allclose(
        km.initial_centroids(values, None, 3, method="linear", seed=0), [0, 5, 10]
    )
    density = km.initial_centroids(values, None, 2, method="density", seed=0)
    assert density[0] == 0.0 and density[-1] == 10.0
    a = km.initial_centroids(values, None, 3, method="kmeans++", seed=3)
    np.testing.assert_array_equal(
        a, km.initial_centroids(values, None, 3, method="kmeans++", seed=3)
    )
    assert set(a) <= set(values)
    with pytest.raises(ValueError, match="unknown method"):
        km.initial_centroids(values, None, 3, method="random", seed=0)


def test_lloyd_from_the_optimum_stays_there():
    rng = np.random.default_rng(12)
    values = np.sort(rng.normal(0, 1, 500))
    centroids, _, cost = km.optimal_kmeans_1d(values, None, 5)
    c, lloyd_cost = km.lloyd_1d(values, None, centroids)
    np.testing.assert_allclose(c, centroids, rtol=1e-12, atol=1e-12)
    assert abs(lloyd_cost - cost) <= 1e-9 * cost
