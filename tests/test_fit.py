"""Codebook fitting: batched k-means (vector codebooks) and 1-D k-means (scalar codebooks)."""
from __future__ import annotations

import numpy as np
import pytest

from onnxvq.fit import assign_nearest, fit_kmeans_1d, fit_kmeans_1d_batched, fit_kmeans_batched
from onnxvq.fit import kmeans1d


def squared_error(points, centroids, codes):
    """Total squared error per problem: points [G, n, d], centroids [G, k, d], codes [G, n] -> [G]."""
    decoded = np.take_along_axis(centroids, codes.astype(np.int64)[..., None], axis=1)
    return ((points.astype(np.float64) - decoded) ** 2).sum(axis=(1, 2))


def brute_force_1d(values, k, weights=None):
    """Exact optimal 1-D k-means error by the O(k n^2) programme over sorted values."""
    order = np.argsort(values, kind="stable")
    v = np.asarray(values, dtype=np.float64)[order]
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    n = v.size
    pw, ps, pq = (np.concatenate([[0.0], np.cumsum(a)]) for a in (w, w * v, w * v * v))

    def cost(t, i):
        weight = pw[i] - pw[t]
        return 0.0 if weight == 0 else pq[i] - pq[t] - (ps[i] - ps[t]) ** 2 / weight

    best = [0.0] + [np.inf] * n
    for _ in range(k):
        best = [0.0] + [min(best[t] + cost(t, i) for t in range(i)) for i in range(1, n + 1)]
    return best[n]


# ----------------------------------------------------------------------------------------------------------
# 1-D k-means


@pytest.mark.parametrize("seed", range(12))
def test_kmeans_1d_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    k = int(rng.integers(1, 9))
    values = rng.standard_normal(n).astype(np.float32)
    if seed % 3 == 0:
        values = np.round(values * 2) / 2  # many ties
    weights = rng.uniform(0.1, 3.0, n) if seed % 2 else None
    centers, codes = fit_kmeans_1d(values, k, sample_weight=weights)
    error = float(((1 if weights is None else weights) * (values.astype(np.float64) - centers[codes]) ** 2).sum())
    assert error <= brute_force_1d(values, k, weights) * (1 + 1e-6) + 1e-9
    assert centers.dtype == np.float32 and centers.shape == (k,)
    assert np.all(np.diff(centers) >= 0)


def test_kmeans_1d_codes_are_nearest_center():
    values = np.random.default_rng(0).laplace(size=3000).astype(np.float32)
    centers, codes = fit_kmeans_1d(values, 8)
    distances = np.abs(values[:, None].astype(np.float64) - centers[None, :])
    assert np.all(distances[np.arange(values.size), codes] <= distances.min(axis=1))
    assert codes.dtype == np.uint8


def test_kmeans_1d_few_distinct_values_are_exact():
    values = np.array([3.0, -1.0, 3.0, 0.5, -1.0, 0.5, 0.5], dtype=np.float32)
    centers, codes = fit_kmeans_1d(values, 5)
    np.testing.assert_array_equal(centers, [-1.0, 0.5, 3.0, 3.0, 3.0])
    np.testing.assert_array_equal(centers[codes], values)


def test_kmeans_1d_large_input_is_within_its_certified_bound():
    # More values than EXACT_LIMIT: the histogram path. Reference: the exact programme on the distinct values.
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.standard_normal(70_000), 40 + rng.standard_normal(10)]).astype(np.float32)
    k = 6
    centers, codes = fit_kmeans_1d(values, k)
    error = float(((values.astype(np.float64) - centers[codes]) ** 2).sum())
    exact_groups = kmeans1d._distinct_values(values, None, float(values.mean(dtype=np.float64)))
    starts = kmeans1d.optimal_partition(exact_groups.count, exact_groups.sum, exact_groups.squares, k)
    exact = kmeans1d.partition_error(exact_groups, starts)
    bound = kmeans1d.bin_error_bound(kmeans1d.summarize_values(values, k=k))
    assert exact <= error <= exact + bound
    assert error <= exact * (1 + 1e-3)


def test_kmeans_1d_large_quantized_input_is_exact():
    values = np.random.default_rng(2).integers(-3, 4, size=80_000).astype(np.float32) * 0.25
    centers, codes = fit_kmeans_1d(values, 16)
    np.testing.assert_array_equal(centers[codes], values)  # 7 distinct values <= 16 centres


def test_kmeans_1d_is_deterministic_and_validates():
    values = np.random.default_rng(3).standard_normal(70_000).astype(np.float32)
    a, b = fit_kmeans_1d(values, 16), fit_kmeans_1d(values.copy(), 16)
    assert a[0].tobytes() == b[0].tobytes() and a[1].tobytes() == b[1].tobytes()
    centers, codes = fit_kmeans_1d(np.full(10, 2.5, dtype=np.float32), 4)
    np.testing.assert_array_equal(centers, [2.5] * 4)
    np.testing.assert_array_equal(codes, 0)
    with pytest.raises(ValueError, match="NaN"):
        fit_kmeans_1d(np.array([1.0, np.nan]), 2)
    with pytest.raises(ValueError, match="k must be"):
        fit_kmeans_1d(values, 0)
    with pytest.raises(ValueError, match="sample_weight"):
        fit_kmeans_1d(values[:3], 2, sample_weight=[1.0, -1.0, 1.0])


def test_kmeans_1d_batched_matches_row_by_row():
    rng = np.random.default_rng(4)
    values = rng.standard_normal((7, 300)).astype(np.float32)
    values[2] = np.round(values[2])  # at most k distinct values
    values[5, :150] = values[5, 150:]  # duplicates
    weights = rng.uniform(0.0, 2.0, values.shape)
    for w in (None, weights):
        centers, codes = fit_kmeans_1d_batched(values, 8, sample_weight=w)
        assert centers.shape == (7, 8) and codes.shape == (7, 300) and codes.dtype == np.uint8
        for g in range(7):
            row_centers, row_codes = fit_kmeans_1d(values[g], 8, sample_weight=None if w is None else w[g])
            np.testing.assert_array_equal(centers[g], row_centers)
            np.testing.assert_array_equal(codes[g], row_codes)
    with pytest.raises(ValueError, match="shape"):
        fit_kmeans_1d_batched(values[0], 8)


# ----------------------------------------------------------------------------------------------------------
# Batched k-means


def test_batched_matches_scikit_learn_quality():
    # One k-means run lands in a local optimum that varies by several % either way on small problems; ask
    # for parity in total and for no problem far worse.
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    threadpool_limits = pytest.importorskip("threadpoolctl").threadpool_limits
    rng = np.random.default_rng(0)
    for n, d, k in [(1000, 4, 16), (1200, 4, 64), (600, 2, 8)]:
        points = rng.standard_normal((4, n, d)).astype(np.float32)
        points[1] = rng.laplace(size=(n, d))
        points[2] = points[2] ** 3          # heavy tails
        points[3, :, 0] *= 10               # anisotropic
        centroids, codes = fit_kmeans_batched(points, k, seed=0)
        ours = squared_error(points, centroids, codes)
        with threadpool_limits(limits=1):  # OpenMP spin-waiting on a busy machine costs more than it saves
            reference = np.array([sklearn_cluster.KMeans(k, n_init=1, random_state=0).fit(p.astype(np.float64))
                                  .inertia_ for p in points])
        assert ours.sum() <= 1.03 * reference.sum(), (n, d, k, ours / reference)
        assert np.all(ours <= 1.15 * reference), (n, d, k, ours / reference)


def test_batched_codes_are_nearest_and_assign_nearest_agrees():
    rng = np.random.default_rng(1)
    points = rng.standard_normal((3, 500, 4)).astype(np.float32) + 5.0  # off-centre on purpose
    centroids, codes = fit_kmeans_batched(points, 32, seed=3)
    assert codes.dtype == np.uint8 and codes.shape == (3, 500) and centroids.dtype == np.float32
    distances = ((points[:, :, None, :].astype(np.float64) - centroids[:, None, :, :]) ** 2).sum(-1)
    chosen = np.take_along_axis(distances, codes.astype(np.int64)[..., None], axis=2)[..., 0]
    assert np.all(chosen <= distances.min(axis=2) + 1e-5)
    np.testing.assert_array_equal(assign_nearest(points, centroids), codes)


def test_batched_is_deterministic_and_independent_of_threads():
    points = np.random.default_rng(2).standard_normal((9, 700, 4)).astype(np.float32)
    first = fit_kmeans_batched(points, 16, seed=7, n_threads=1)
    again = fit_kmeans_batched(points.copy(), 16, seed=7, n_threads=2)
    other = fit_kmeans_batched(points, 16, seed=8)
    assert first[0].tobytes() == again[0].tobytes() and first[1].tobytes() == again[1].tobytes()
    assert first[0].tobytes() != other[0].tobytes()


@pytest.mark.parametrize("n", [3, 8])
def test_batched_with_at_most_k_points_gives_each_its_own_centroid(n):
    points = np.random.default_rng(4).standard_normal((2, n, 3)).astype(np.float32)
    centroids, codes = fit_kmeans_batched(points, 8)
    assert centroids.shape == (2, 8, 3)
    np.testing.assert_array_equal(codes, np.broadcast_to(np.arange(n), (2, n)))
    np.testing.assert_array_equal(np.take_along_axis(centroids, codes.astype(np.int64)[..., None], 1), points)


def test_batched_edge_cases():
    rng = np.random.default_rng(5)
    # Constant data: zero error, valid codes.
    centroids, codes = fit_kmeans_batched(np.full((2, 50, 4), 3.0, dtype=np.float32), 8)
    assert squared_error(np.full((2, 50, 4), 3.0), centroids, codes).max() == 0
    # d = 1 and G = 1: within 2% of the exact 1-D optimum.
    values = rng.standard_normal((1, 400, 1)).astype(np.float32)
    centroids, codes = fit_kmeans_batched(values, 4)
    optimum, _ = fit_kmeans_1d(values[0, :, 0], 4)
    assert squared_error(values, centroids, codes)[0] <= 1.02 * float(
        ((values[0, :, 0].astype(np.float64)[:, None] - optimum[None]) ** 2).min(axis=1).sum())
    # Fewer distinct points than k: exact reconstruction.
    distinct = rng.standard_normal((1, 5, 2)).astype(np.float32)
    points = distinct[:, rng.integers(0, 5, 300)]
    centroids, codes = fit_kmeans_batched(points, 16)
    assert squared_error(points, centroids, codes)[0] < 1e-10
    # Integer input is accepted.
    centroids, codes = fit_kmeans_batched(rng.integers(0, 9, (2, 60, 2)), 4)
    assert centroids.dtype == np.float32


def test_batched_uses_every_centroid_when_enough_distinct_points():
    rng = np.random.default_rng(6)
    # Heavy duplicates around a few spots plus a sprinkle of distinct points: prone to empty clusters.
    spots = rng.standard_normal((3, 4, 4)).astype(np.float32) * 10
    points = np.concatenate([spots[:, rng.integers(0, 4, 600)],
                             rng.standard_normal((3, 40, 4)).astype(np.float32)], axis=1)
    k = 32
    centroids, codes = fit_kmeans_batched(points, k, seed=1)
    for g in range(3):
        assert np.unique(codes[g]).size == k


def test_batched_sample_weight():
    rng = np.random.default_rng(7)
    points = rng.standard_normal((4, 300, 2)).astype(np.float32)
    # A constant weight changes nothing (a power of two keeps every sum exact).
    plain = fit_kmeans_batched(points, 8, seed=0)
    doubled = fit_kmeans_batched(points, 8, seed=0, sample_weight=np.full(300, 2.0))
    assert plain[0].tobytes() == doubled[0].tobytes() and plain[1].tobytes() == doubled[1].tobytes()
    # Integer weights act like repeated points (up to the run-to-run spread of k-means).
    weights = rng.integers(1, 4, 300)
    centroids, codes = fit_kmeans_batched(points, 8, sample_weight=weights, seed=0)
    decoded = np.take_along_axis(centroids, codes.astype(np.int64)[..., None], 1)
    weighted_error = (weights * ((points - decoded) ** 2).sum(-1)).sum()
    repeated = np.repeat(points, weights, axis=1)
    assert weighted_error <= 1.10 * squared_error(repeated, *fit_kmeans_batched(repeated, 8, seed=0)).sum()
    # Zero-weight points pull no centroid: far-away points of weight zero leave the centroids near the rest.
    far = np.concatenate([points, np.full((4, 5, 2), 1e3, dtype=np.float32)], axis=1)
    centroids, _ = fit_kmeans_batched(far, 8, sample_weight=np.r_[np.ones(300), np.zeros(5)], seed=0)
    assert np.abs(centroids).max() < 10


@pytest.mark.parametrize("bad, message", [
    (np.array([[[np.nan, 1.0]]] * 3, dtype=np.float32).repeat(5, axis=1), "NaN"),
    (np.full((1, 5, 2), np.inf), "NaN or infinite"),
    (np.zeros((5, 2)), "shape"),
    (np.zeros((1, 0, 2)), "empty"),
])
def test_batched_rejects_bad_input(bad, message):
    with pytest.raises(ValueError, match=message):
        fit_kmeans_batched(bad, 2)


def test_batched_rejects_bad_arguments():
    points = np.zeros((1, 5, 2), dtype=np.float32)
    with pytest.raises(ValueError, match="k must be"):
        fit_kmeans_batched(points, 0)
    with pytest.raises(ValueError, match="iters"):
        fit_kmeans_batched(points, 2, iters=-1)
    with pytest.raises(ValueError, match="sample_weight"):
        fit_kmeans_batched(points, 2, sample_weight=np.ones(4))
    with pytest.raises(ValueError, match="centroids shape"):
        assign_nearest(points, np.zeros((2, 3, 2)))
