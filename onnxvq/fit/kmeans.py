"""Batched k-means: fit G independent codebooks at once (one per PQ subspace of a layer).

Shapes used throughout: G problems, n points per problem, d coordinates per point, k centroids; a "block" is
b consecutive problems processed together.

The algorithm, and why (numbers from bench/fit.py and the experiments behind it, 2-core AVX2 machine):
1. Seeds: greedy k-means++ (2 candidates per seed; scikit-learn's 2 + ln k when there are fewer than 8 points
   per centroid, where the seeds decide the result) drawn from all points (up to max(4096, 16k)): seeding
   from a subset misses the outliers of heavy-tailed data, 8% worse there.
2. Lloyd updates alternating between two random halves of the points (3 updates per half, 60% of the
   iterations), then Lloyd on all points. With few points per centroid (4096 points, k=256) plain Lloyd
   stalls in a poor local optimum; the halves disagree just enough to shake it out: 3-4% lower squared
   error than plain Lloyd for the same number of updates, on Gaussian and real weights, at a lower cost.
   Centroids left empty by one half keep their place (an outlier's centroid waits for the other half).
3. A problem stops when its assignments stop changing or an iteration lowers its error by less than tol;
   unused centroids are finally moved onto the worst-served points.

Where the time goes: nearly all of it is the assignment step, n x k distances per problem and iteration.
With d as small as 4 it is compute-bound, so it is one float32 BLAS product per tile of points against the
centroids augmented with -|c|^2/2 (the nearest centroid is the argmax of x.c - |c|^2/2: no extra pass adds the
norms), then argmax, with the score tile small enough to stay in L2. Blocks of problems run on a pool of
threads (numpy releases the GIL in BLAS and argmax) with BLAS single-threaded inside. Random streams are keyed
by each problem's index and every reduction runs in the same order whatever the blocking, so problem g's
codebook depends only on its own points, its index g and the arguments: not on the thread count, nor on the
other problems.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property

import numpy as np

DEFAULT_ITERS = 20
DEFAULT_TOL = 1e-4

# Seeding: greedy k-means++ with this many candidates per seed, on all points up to
# max(_MIN_SEED_POINTS, _SEED_POINTS_PER_CENTROID * k) of them (a random subset beyond that).
_SEED_TRIALS = 2
_SEED_POINTS_PER_CENTROID = 16
_MIN_SEED_POINTS = 4096
# Alternating halves: when each half has at least this many points per centroid, this share of the iterations
# is spent alternating between the two halves, this many updates per half.
_HALF_POINTS_PER_CENTROID = 4
_HALVES_SHARE = 0.6
_STEPS_PER_HALF = 3
# k-means++ draws with cumulative sums over blocks of this many entries (numpy's cumsum is slow).
_SAMPLER_BLOCK = 64
# Score tiles (points x centroids, float32) of at most this many bytes stay in L2 on common CPUs.
_SCORE_TILE_BYTES = 512 * 1024
# Float32 coordinates per block of problems: bounds each thread's working memory to a few tens of MB.
_BLOCK_FLOATS = 1 << 20
# Rounds of "move the unused centroids, reassign" allowed once Lloyd is done.
_FINAL_REPAIR_ROUNDS = 4


def fit_kmeans_batched(data, k: int, *, iters: int = DEFAULT_ITERS, seed: int = 0, sample_weight=None,
                       tol: float = DEFAULT_TOL, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fit G independent k-means problems at once.

    Args:
        data: real array [G, n, d]: problem g clusters the n points data[g] of dimension d.
        k: centroids per problem (>= 1).
        iters: maximum Lloyd iterations (centroid updates) per problem.
        seed: random seed. The same data, k, iters, seed, tol and weights give identical bytes out, whatever
            n_threads is.
        sample_weight: optional non-negative weights, [n] (shared by all problems) or [G, n].
        tol: a problem stops once an iteration lowers its squared error by less than tol x that error
            (0: only when its assignments stop changing).
        n_threads: worker threads (default: usable cores, capped by the BLAS thread limit in force).

    Returns:
        centroids: float32 [G, k, d].
        assignments: [G, n] index of every point's nearest centroid (ties to the lower index); uint8 when
            k <= 256, uint16 when k <= 65536, else int32.
        When n <= k every point gets its own centroid (assignments are 0..n-1) and the remaining centroids
        repeat the first point. When a problem has at least k distinct points, every centroid is used.

    Raises:
        ValueError: on a wrong shape, NaN or infinite values, or invalid k, iters, tol or weights.
    """
    points = _checked_points(data)
    k = _checked_k(k)
    if isinstance(iters, bool) or not isinstance(iters, (int, np.integer)) or iters < 0:
        raise ValueError(f"iters must be an integer >= 0, got {iters!r}")
    if not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite number >= 0, got {tol!r}")
    n_problems, n_points, dim = points.shape
    weights = _checked_weights(sample_weight, n_problems, n_points)
    codes = np.empty((n_problems, n_points), dtype=_code_dtype(k))
    if n_points <= k:
        codes[:] = np.arange(n_points)
        return _one_centroid_per_point(points, k), codes
    centroids = np.empty((n_problems, k, dim), dtype=np.float32)

    def fit_block(block: slice) -> None:
        block_weights = None if weights is None else weights[block]
        centroids[block], codes[block] = _fit_block(
            np.ascontiguousarray(points[block], dtype=np.float32), block_weights, k, iters=iters, tol=float(tol),
            seed=seed, first_problem=block.start)

    _run_blocks(fit_block, n_problems, n_points * dim, n_threads)
    return centroids, codes


def assign_nearest(data, centroids, *, n_threads: int | None = None) -> np.ndarray:
    """Index of the nearest centroid of every point (encoding only).

    Args:
        data: real array [G, n, d].
        centroids: real array [G, k, d].

    Returns:
        [G, n] indices, ties to the lower index; uint8 when k <= 256 (see fit_kmeans_batched).
    """
    points = _checked_points(data)
    table = _checked_points(centroids, name="centroids")
    if table.shape[0] != points.shape[0] or table.shape[2] != points.shape[2]:
        raise ValueError(f"centroids shape {table.shape} does not match data shape {points.shape}: "
                         "expected [G, k, d]")
    n_problems, n_points, dim = points.shape
    codes = np.empty((n_problems, n_points), dtype=_code_dtype(table.shape[1]))

    def assign_block(block: slice) -> None:
        block_points = np.ascontiguousarray(points[block], dtype=np.float32)
        # Centre both sides on the points' mean: distances are unchanged, float32 scores are more precise.
        mean = _weighted_mean(block_points, None)
        block_table = np.asarray(table[block], dtype=np.float32) - mean
        codes[block] = _Points(block_points - mean, None).nearest(block_table)

    _run_blocks(assign_block, n_problems, n_points * dim, n_threads)
    return codes


# ----------------------------------------------------------------------------------------------------------
# One block of problems, start to finish


def _fit_block(points: np.ndarray, weights: np.ndarray | None, k: int, *, iters: int, tol: float, seed: int,
               first_problem: int) -> tuple[np.ndarray, np.ndarray]:
    """Fit points [b, n, d] (weights [b, n] or None) -> centroids [b, k, d] float32, codes [b, n] int64."""
    b, n, _ = points.shape
    # k-means is translation invariant; centring keeps the float32 expansion of |x - c|^2 accurate.
    mean = _weighted_mean(points, weights)
    centred = points - mean
    rngs = [np.random.default_rng([seed, first_problem + i]) for i in range(b)]
    order = np.stack([rng.permutation(n) for rng in rngs])  # [b, n]: a random order of each problem's points
    seed_count = min(n, max(_MIN_SEED_POINTS, _SEED_POINTS_PER_CENTROID * k))
    seed_points, seed_weights = _take_points(centred, weights, order[:, :seed_count])
    # With few points per centroid Lloyd converges within a few iterations and the seeds decide the result:
    # then afford scikit-learn's 2 + ln(k) candidates per seed (at n = 2k: 7% lower error than 2 candidates).
    few_points = n < 2 * _HALF_POINTS_PER_CENTROID * k
    trials = 2 + int(np.log(k)) if few_points else _SEED_TRIALS
    centroids = _kmeans_plus_plus(seed_points, seed_weights, k, rngs, trials=trials)
    rounds, full_iters = (0, iters) if few_points else _schedule(iters)
    if rounds:
        halves = [_Points(*_take_points(centred, weights, part)) for part in (order[:, n // 2:], order[:, :n // 2])]
        for _ in range(rounds):
            for half in halves:
                # No reseeding here: a centroid left empty by one half (say, an outlier's) waits for the other.
                centroids, _ = _lloyd(half, centroids, iters=_STEPS_PER_HALF, tol=0.0, final_codes=False,
                                      reseed=False)
    everything = _Points(centred, weights)
    centroids, codes = _lloyd(everything, centroids, iters=full_iters, tol=tol)
    _use_every_centroid(everything, centroids, codes)
    return centroids + mean, codes


def _schedule(iters: int) -> tuple[int, int]:
    """(rounds over the two halves, iterations on all points) for iters Lloyd updates in total.

    Alternating Lloyd updates between two random halves of the points before the full iterations ends
    3-5% lower in squared error than Lloyd on all points for as many updates, at a lower cost (a half step
    costs half): the halves disagree slightly, which shakes the centroids out of poor local optima.
    (Measured on Gaussian and real weights, n=4096, k=16 and 256; it needs >= 4 points per centroid per half.)
    """
    rounds = int(iters * _HALVES_SHARE) // (2 * _STEPS_PER_HALF)
    return rounds, iters - 2 * _STEPS_PER_HALF * rounds


def _take_points(points: np.ndarray, weights: np.ndarray | None,
                 index: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The points [b, n, d] (and weights [b, n]) at index [b, m], in ascending index order."""
    index = np.sort(index, axis=1)
    taken = np.take_along_axis(points, index[..., None], axis=1)
    return taken, None if weights is None else np.take_along_axis(weights, index, axis=1)


def _lloyd(points: "_Points", centroids: np.ndarray, *, iters: int, tol: float, final_codes: bool = True,
           reseed: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Lloyd iterations from centroids [b, k, d] (edited in place).

    Returns the centroids and codes [b, n], the index of each point's nearest centroid (None when
    final_codes is false: the assignment after the last update is skipped). A problem stops when its codes
    did not change (its centroids would not move again) or its error fell by less than tol (relative).
    Empty clusters keep their centroid, or with reseed move onto the worst-served points.
    """
    count, k = centroids.shape[:2]
    codes = points.nearest(centroids)
    previous_error = np.full(count, np.inf)
    active = np.arange(count)
    for iteration in range(iters):
        if active.size == 0:
            break
        means, totals = points.cluster_means(codes, k, active)
        # Error of the current codes against the new means: sum |x|^2 - sum_c W_c |mean_c|^2.
        error = points.squared_norms[active] - np.einsum("pk,pkd,pkd->p", totals, means, means)
        empty = totals == 0
        centroids[active] = np.where(empty[..., None], centroids[active], means)
        for row in np.flatnonzero(empty.any(axis=1)) if reseed else ():
            points.move_to_worst_served(active[row], centroids, codes, empty[row])
        if iteration == iters - 1 and not final_codes:
            return centroids, None
        new_codes = points.nearest(centroids, active)
        changed = (new_codes[active] != codes[active]).any(axis=1)
        improving = previous_error[active] - error > tol * error
        previous_error[active] = error
        codes[active] = new_codes[active]
        active = active[changed & (improving | empty.any(axis=1))]
    return centroids, codes


def _use_every_centroid(points: "_Points", centroids: np.ndarray, codes: np.ndarray) -> None:
    """Move unused centroids onto the worst-served points and reassign (in place), a few rounds at most.

    Each move lowers the error; it can only fail to use every centroid when a problem has fewer than k
    distinct points (of positive weight).
    """
    k = centroids.shape[1]
    for _ in range(_FINAL_REPAIR_ROUNDS):
        unused = ~_used_centroids(codes, k)
        moved = [p for p in np.flatnonzero(unused.any(axis=1))
                 if points.move_to_worst_served(p, centroids, codes, unused[p])]
        if not moved:
            return
        moved = np.asarray(moved)
        codes[moved] = points.nearest(centroids, moved)[moved]


# ----------------------------------------------------------------------------------------------------------
# Seeding


def _kmeans_plus_plus(points: np.ndarray, weights: np.ndarray | None, k: int, rngs: list, *,
                      trials: int) -> np.ndarray:
    """k-means++ seeds for every problem of points [b, m, d] -> centroids [b, k, d] (k <= m).

    k-means++ (Arthur & Vassilvitskii 2007) draws each next seed with probability proportional to
    weight x squared distance to the nearest seed so far; the greedy variant (trials > 1, as in
    scikit-learn) draws `trials` candidates and keeps the one that leaves the smallest total.
    Cost: k steps of O(trials x m) per problem, each step vectorized over the block.
    """
    b, m, d = points.shape
    uniforms = np.stack([rng.random((k, trials)) for rng in rngs])  # [b, k, trials]
    sampler = _ProportionalSampler(b, m, weights)
    distances = _SquaredDistances(points, sampler.padded)
    rows = np.arange(b)
    candidate_rows = rows * trials

    centroids = np.empty((b, k, d), dtype=np.float32)
    centroids[:, 0] = points[rows, sampler.draw(sampler.weights, uniforms[:, 0, :1])[:, 0]]
    # Squared distance to the nearest seed so far, [b, padded]. Rounding leaves values of about -1e-7
    # (relative) at the seeds themselves; they stay: clamping would cost a pass per seed and a mass that
    # small changes no draw measurably.
    nearest = np.maximum(distances.to(centroids[:, :1])[:, 0], 0)
    for i in range(1, k):
        mass = nearest if weights is None else nearest * sampler.weights
        candidates = sampler.draw(mass, uniforms[:, i])  # [b, trials]
        seeds = points[rows[:, None], candidates]  # [b, trials, d]
        after = distances.to(seeds)  # [b, trials, padded]
        np.minimum(after, nearest[:, None, :], out=after)
        if trials == 1:
            best = np.zeros(b, dtype=np.intp)
        else:  # total weighted squared distance left by each candidate, as one batched mat-vec
            best = np.matmul(after, sampler.weights[..., None])[..., 0].argmin(axis=1)
        centroids[:, i] = seeds[rows, best]
        nearest = after.reshape(b * trials, -1)[candidate_rows + best]
    return centroids


class _SquaredDistances:
    """Squared distances from a block of points [b, m, d] to a few seeds per problem, as one batched product.

    |x - c|^2 = [x, |x|^2, 1] . [-2c, 1, |c|^2]. Columns past m (padding) are all zero: distance 0.
    """

    def __init__(self, points: np.ndarray, padded: int):
        b, m, d = points.shape
        self.lifted = np.zeros((b, d + 2, padded), dtype=np.float32)
        self.lifted[:, :d, :m] = points.transpose(0, 2, 1)
        self.lifted[:, d, :m] = np.einsum("bmd,bmd->bm", points, points)
        self.lifted[:, d + 1, :m] = 1

    def to(self, seeds: np.ndarray) -> np.ndarray:
        """seeds [b, t, d] -> squared distances [b, t, padded] (slightly negative values possible)."""
        b, t, d = seeds.shape
        vectors = np.empty((b, t, d + 2), dtype=np.float32)
        vectors[..., :d] = -2 * seeds
        vectors[..., d] = 1
        vectors[..., d + 1] = np.einsum("btd,btd->bt", seeds, seeds)
        return np.matmul(vectors, self.lifted)


class _ProportionalSampler:
    """Draws indices with probability proportional to a mass [b, m] >= 0, in O(m / block + block) per draw.

    The mass is cut into blocks of _SAMPLER_BLOCK entries: a block is picked from the cumulative block
    totals, then an entry inside it.
    """

    def __init__(self, b: int, m: int, weights: np.ndarray | None):
        self.b, self.m = b, m
        self.blocks = -(-m // _SAMPLER_BLOCK)
        self.padded = self.blocks * _SAMPLER_BLOCK
        self.weights = np.zeros((b, self.padded), dtype=np.float32)  # padding weighs 0
        self.weights[:, :m] = 1 if weights is None else weights
        self.ones = np.ones(_SAMPLER_BLOCK, dtype=np.float32)
        self.block_offsets = np.arange(b)[:, None] * self.blocks

    def draw(self, mass: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
        """mass [b, padded], uniforms [b, t] in [0, 1) -> indices [b, t] in [0, m).

        The target lies in (0, total], so an entry of zero mass is not drawn unless the whole row is zero.
        """
        size = _SAMPLER_BLOCK
        in_blocks = mass.reshape(self.b * self.blocks, size)
        totals = in_blocks @ self.ones  # [b * blocks]
        cumulative = np.cumsum(totals.reshape(self.b, self.blocks), axis=1, dtype=np.float64)
        target = (1.0 - uniforms) * cumulative[:, -1:]  # [b, t]
        block = np.count_nonzero(cumulative[:, None, :] < target[..., None], axis=2)
        block = np.minimum(block, self.blocks - 1) + self.block_offsets  # flat block index
        remaining = target - (cumulative.ravel()[block] - totals[block])
        inside = np.cumsum(in_blocks[block], axis=2, dtype=np.float64)  # [b, t, size]
        offset = np.minimum(np.count_nonzero(inside < remaining[..., None], axis=2), size - 1)
        return np.minimum((block - self.block_offsets) * size + offset, self.m - 1)


# ----------------------------------------------------------------------------------------------------------
# Assignment and update


class _Points:
    """A block of problems' points [b, n, d] (and weights [b, n] or None), with what Lloyd needs precomputed."""

    def __init__(self, coords: np.ndarray, weights: np.ndarray | None):
        self.coords = np.ascontiguousarray(coords, dtype=np.float32)
        self.weights = weights
        self.count, self.n, self.dim = self.coords.shape
        # [x, 1] rows for the score product in nearest().
        self.lifted = np.ones((self.count, self.n, self.dim + 1), dtype=np.float32)
        self.lifted[..., :self.dim] = self.coords

    @cached_property
    def weighted_columns(self) -> np.ndarray:
        """[d, b, n] float64 weighted coordinates: one contiguous row per dimension for the bincounts."""
        columns = self.coords.transpose(2, 0, 1).astype(np.float64)
        return columns if self.weights is None else columns * self.weights

    @cached_property
    def squared_norms(self) -> np.ndarray:
        """[b] float64 sum of weight x |x|^2 per problem."""
        squares = np.einsum("bnd,bnd->bn", self.coords, self.coords, dtype=np.float64)
        return (squares if self.weights is None else squares * self.weights).sum(axis=1)

    def nearest(self, centroids: np.ndarray, problems=None) -> np.ndarray:
        """Codes [b, n] (int64) of the nearest of centroids [b, k, d] for the listed problems (default all).

        Rows of problems not listed are left at 0.
        """
        k = centroids.shape[1]
        # argmin_c |x - c|^2 = argmax_c x.c - |c|^2/2: one product with [c, -|c|^2/2]^T per tile.
        table = np.empty((self.count, self.dim + 1, k), dtype=np.float32)
        table[:, :self.dim] = centroids.transpose(0, 2, 1)
        table[:, self.dim] = -0.5 * np.einsum("bkd,bkd->bk", centroids, centroids)
        tile = max(64, _SCORE_TILE_BYTES // (4 * k))
        codes = np.zeros((self.count, self.n), dtype=np.int64)
        for p in range(self.count) if problems is None else problems:
            for start in range(0, self.n, tile):
                stop = min(self.n, start + tile)
                np.argmax(self.lifted[p, start:stop] @ table[p], axis=1, out=codes[p, start:stop])
        return codes

    def cluster_means(self, codes: np.ndarray, k: int, problems: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean and total weight of every cluster of the listed problems: [p, k, d], [p, k] float64.

        Empty clusters get mean 0 and weight 0. bincount accumulates in float64, in point order.
        """
        every = problems.size == self.count  # skip the copies when all problems take part
        p = problems.size
        cluster = ((codes if every else codes[problems]) + k * np.arange(p)[:, None]).ravel()
        weights = None if self.weights is None else (self.weights if every else self.weights[problems]).ravel()
        totals = np.bincount(cluster, weights=weights, minlength=p * k)
        safe_totals = np.where(totals > 0, totals, 1.0)
        means = np.empty((p * k, self.dim))
        for j, column in enumerate(self.weighted_columns):
            means[:, j] = np.bincount(cluster, weights=(column if every else column[problems]).ravel(),
                                      minlength=p * k) / safe_totals
        return means.reshape(p, k, self.dim), totals.reshape(p, k)

    def move_to_worst_served(self, p: int, centroids: np.ndarray, codes: np.ndarray, which: np.ndarray) -> bool:
        """Move the selected centroids of problem p onto its worst-served points (in place).

        centroids [b, k, d], codes [b, n], which [k] bool. Points are ranked by weight x squared distance to
        their centroid; only points with a positive value are used, so a centroid never lands on a point that
        is already exact. Returns whether any centroid moved.
        """
        offsets = self.coords[p] - centroids[p][codes[p]]
        cost = np.einsum("nd,nd->n", offsets, offsets)
        if self.weights is not None:
            cost = cost * self.weights[p]
        candidates = np.flatnonzero(cost > 0)
        targets = np.flatnonzero(which)[:candidates.size]
        if targets.size == 0:
            return False
        # Worst first; the stable sort keeps ties in point order (deterministic).
        worst = candidates[np.argsort(-cost[candidates], kind="stable")[:targets.size]]
        centroids[p, targets] = self.coords[p, worst]
        return True


def _used_centroids(codes: np.ndarray, k: int) -> np.ndarray:
    """[b, k] bool: which centroids at least one point is assigned to."""
    b = codes.shape[0]
    counts = np.bincount((codes + k * np.arange(b)[:, None]).ravel(), minlength=b * k)
    return counts.reshape(b, k) > 0


# ----------------------------------------------------------------------------------------------------------
# Inputs, edge cases, blocks and threads


def _checked_points(data, name: str = "data") -> np.ndarray:
    """A [G, n, d] real array, not copied; NaN and infinities rejected without a full-size temporary."""
    array = np.asarray(data)
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape [G, n, d], got shape {array.shape}")
    if min(array.shape) == 0:
        raise ValueError(f"{name} must not be empty, got shape {array.shape}")
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}")
    # min/max propagate NaN; float32 is what gets fitted, so values beyond its range are rejected too.
    low, high = float(array.min()), float(array.max())
    limit = float(np.finfo(np.float32).max)
    if not (np.isfinite(low) and np.isfinite(high)) or max(-low, high) > limit:
        raise ValueError(f"{name} contains NaN or infinite values (or values beyond the float32 range)")
    return array


def _checked_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def _checked_weights(sample_weight, n_problems: int, n_points: int) -> np.ndarray | None:
    """None, or float64 weights [G, n] (a [n] vector is shared by every problem)."""
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float64)
    if weights.shape == (n_points,):
        weights = np.broadcast_to(weights, (n_problems, n_points))
    if weights.shape != (n_problems, n_points):
        raise ValueError(f"sample_weight must have shape [n] or [G, n] = {(n_problems, n_points)}, "
                         f"got {weights.shape}")
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError("sample_weight must be finite and non-negative")
    if (weights.sum(axis=1) <= 0).any():
        raise ValueError("sample_weight must have a positive sum in every problem")
    return weights


def _code_dtype(k: int) -> type:
    return np.uint8 if k <= 1 << 8 else np.uint16 if k <= 1 << 16 else np.int32


def _weighted_mean(points: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """[b, 1, d] float32 (weighted) mean of each problem's points [b, n, d]."""
    if weights is None:
        return points.mean(axis=1, keepdims=True, dtype=np.float64).astype(np.float32)
    sums = np.einsum("bnd,bn->bd", points.astype(np.float64), weights)
    return (sums / weights.sum(axis=1)[:, None]).astype(np.float32)[:, None, :]


def _one_centroid_per_point(points: np.ndarray, k: int) -> np.ndarray:
    """n <= k: centroid i is point i and the rest repeat point 0. [G, n, d] -> [G, k, d] float32."""
    n_points = points.shape[1]
    centroids = np.repeat(np.asarray(points[:, :1], dtype=np.float32), k, axis=1)
    centroids[:, :n_points] = points
    return centroids


def _blocks(n_problems: int, floats_per_problem: int, n_threads: int) -> list[slice]:
    """Consecutive blocks of problems: small enough for the memory bound, and at least 4 per thread when
    there are enough problems, so the threads finish together. (Results do not depend on the blocking.)"""
    size = max(1, min(_BLOCK_FLOATS // max(1, floats_per_problem), -(-n_problems // (4 * n_threads))))
    return [slice(start, min(n_problems, start + size)) for start in range(0, n_problems, size)]


def _default_threads() -> int:
    """Usable cores, capped by the BLAS thread limit in force (e.g. 1 inside a joblib worker)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return cores
    blas = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(1, min([cores, *blas]))


def _run_blocks(work, n_problems: int, floats_per_problem: int, n_threads: int | None) -> None:
    """Run work(block) for every block of problems on n_threads threads, with single-threaded BLAS inside."""
    n_threads = _default_threads() if n_threads is None else max(1, int(n_threads))
    blocks = _blocks(n_problems, floats_per_problem, n_threads)
    n_threads = min(n_threads, len(blocks))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        limits = None
    else:
        limits = threadpool_limits(limits=1, user_api="blas")
    try:
        if n_threads == 1:
            for block in blocks:
                work(block)
        else:
            with ThreadPoolExecutor(n_threads) as pool:
                for _ in pool.map(work, blocks):  # re-raises the first error
                    pass
    finally:
        if limits is not None:
            limits.restore_original_limits()
