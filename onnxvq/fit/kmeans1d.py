"""Scalar (1-D) k-means: exact for small inputs, certified near-exact for large ones, ~1 s for 16.7M values.

In one dimension the optimal clusters are intervals of the sorted values, so k-means is a dynamic programme:
best[j][i] = min_t best[j-1][t] + cost(t, i), where cost(t, i) is the squared error of groups t..i-1 around
their mean (O(1) from prefix sums of weight, sum and sum of squares). The minimizing t is monotone in i (the
cost satisfies the quadrangle inequality), so each of the k layers is solved by divide and conquer in
O(m log m), vectorized one recursion level at a time.

Up to EXACT_LIMIT values the groups are the distinct values: exact. Larger inputs are first collapsed into a
fine histogram (no sort): piecewise-uniform bins, most of them across the central 99.98% of the values so
outliers do not coarsen them, each keeping weight, sum and sum of squares, so within-bin spread is counted
exactly. The only approximation is that cluster boundaries fall on bin edges, which costs at most
2 x max(bin width x bin weight) x value range in squared error (`bin_error_bound`; ~3e-5 of the error for
16.7M Gaussian values, 2^16 bins). Codes are the nearest centre of every value, looked up per bin.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# Up to this many values the programme runs on the distinct values themselves (exact).
EXACT_LIMIT = 1 << 16
# Histogram resolution for larger inputs.
DEFAULT_BINS = 1 << 16
# Values per chunk when binning or assigning: bounds the temporaries to a few MB.
_CHUNK = 1 << 20


def fit_kmeans_1d(values, k: int, *, sample_weight=None, bins: int = DEFAULT_BINS) -> tuple[np.ndarray, np.ndarray]:
    """Optimal (or certified near-optimal) 1-D k-means.

    Args:
        values: real array of any shape (flattened), n values.
        k: number of centres (>= 1).
        sample_weight: optional non-negative weights, one per value.
        bins: histogram resolution used when there are more than EXACT_LIMIT values.

    Returns:
        centers: float32 [k], ascending. With at most k distinct values (of positive weight) they are exactly
            those values, padded by repeating the largest.
        assignments: [n] index of the nearest centre of every value (ties to the lower index); uint8 when
            k <= 256, uint16 when k <= 65536, else int32. Same bytes for the same input.

    Raises:
        ValueError: on NaN or infinite values, invalid k, bins or weights.
    """
    x = _checked_values(values)
    k = _checked_count(k, "k")
    bins = _checked_count(bins, "bins")
    weights = _checked_weights(sample_weight, x.size)
    groups = _summarize(x, weights, bins, k)
    if groups.count.size <= k:
        centers = _padded(groups.sum / groups.count + groups.shift, k)
    else:
        starts = optimal_partition(groups.count, groups.sum, groups.squares, k)
        centers = _segment_means(groups, starts)
    centers = centers.astype(np.float32)
    return centers, nearest_center(x, centers, grid=groups.grid)


def fit_kmeans_1d_batched(values, k: int, *, sample_weight=None) -> tuple[np.ndarray, np.ndarray]:
    """fit_kmeans_1d on every row of values [G, n] at once (e.g. one codebook per output channel).

    Rows of up to EXACT_LIMIT values are solved exactly, all in the same vectorized passes (a loop of
    fit_kmeans_1d calls would pay the programme's fixed cost G times); longer rows go one by one.

    Returns centers float32 [G, k] (each row ascending, padded as in fit_kmeans_1d) and codes [G, n].
    """
    x = np.asarray(values)
    if x.ndim != 2:
        raise ValueError(f"values must have shape [G, n], got shape {x.shape}")
    x = _checked_values(x).reshape(x.shape)
    k = _checked_count(k, "k")
    weights = None if sample_weight is None else _checked_weights(sample_weight, x.size).reshape(x.shape)
    if weights is not None and (weights.sum(axis=1) <= 0).any():
        raise ValueError("sample_weight must have a positive sum in every row")
    if x.shape[1] > EXACT_LIMIT:
        fits = [fit_kmeans_1d(row, k, sample_weight=None if weights is None else weights[g])
                for g, row in enumerate(x)]
        return np.stack([f[0] for f in fits]), np.stack([f[1] for f in fits])
    # Rows go through the programme in chunks of about EXACT_LIMIT values: enough to amortize the per-pass
    # overhead (3x faster than a loop for rows of 256), small enough to stay in cache.
    rows = max(1, EXACT_LIMIT // x.shape[1])
    centers = np.empty((x.shape[0], k), dtype=np.float32)
    for start in range(0, x.shape[0], rows):
        part = slice(start, start + rows)
        centers[part] = _exact_centers_by_row(x[part], None if weights is None else weights[part], k)
    codes = np.empty(x.shape, dtype=_code_dtype(k))
    for g in range(x.shape[0]):
        codes[g] = nearest_center(x[g], centers[g])
    return centers, codes


def _exact_centers_by_row(x: np.ndarray, weights: np.ndarray | None, k: int) -> np.ndarray:
    """Optimal centres [G, k] (float32) of every row of x [G, n], one programme for all rows."""
    groups, offsets, shifts = _distinct_values_by_row(x, weights)
    sizes = np.diff(offsets)
    centers = np.empty((x.shape[0], k))
    for g in np.flatnonzero(sizes <= k):  # at most k distinct values: exactly those
        part = slice(offsets[g], offsets[g + 1])
        centers[g] = _padded(groups.sum[part] / groups.count[part] + shifts[g], k)
    solve = np.flatnonzero(sizes > k)
    if solve.size:
        taken = np.concatenate([np.arange(offsets[g], offsets[g + 1]) for g in solve])
        sub_offsets = np.concatenate([[0], np.cumsum(sizes[solve])])
        count, total = groups.count[taken], groups.sum[taken]
        starts = optimal_partitions(count, total, groups.squares[taken], sub_offsets, k)
        flat_starts = (starts + sub_offsets[:-1, None]).ravel()
        means = np.add.reduceat(total, flat_starts) / np.add.reduceat(count, flat_starts)
        centers[solve] = means.reshape(solve.size, k) + shifts[solve, None]
    return centers.astype(np.float32)


class Groups(NamedTuple):
    """Sorted groups of values (distinct values, or histogram bins): weight, sum and sum of squares each."""

    count: np.ndarray    # [m] float64 total weight, > 0
    sum: np.ndarray      # [m] float64 weighted sum of (value - shift)
    squares: np.ndarray  # [m] float64 weighted sum of (value - shift)^2
    shift: float         # the values' mean: keeps the sums of squares well conditioned
    grid: "_Grid | None"  # the histogram's bins (None: groups are the distinct values, exact)
    widths: np.ndarray   # [m] width of each group's bin (zeros for distinct values)


def summarize_values(values, sample_weight=None, bins: int = DEFAULT_BINS, k: int = 1) -> Groups:
    """The groups fit_kmeans_1d runs the programme on (exposed for bench/fit.py and tests)."""
    x = _checked_values(values)
    return _summarize(x, _checked_weights(sample_weight, x.size), _checked_count(bins, "bins"), k)


def bin_error_bound(groups: Groups) -> float:
    """How much the histogram solution's squared error may exceed the exact optimum (0 when exact).

    Moving each optimal boundary to a bin edge moves at most one bin's values, each within a bin width of
    the midpoint between two centres; the gaps between centres add up to at most the value range. So the
    excess is at most 2 x max over bins (width x weight) x range. (Our answer, the nearest-centre assignment
    to the histogram solution's centres, is no worse than the histogram solution.)
    """
    if groups.grid is None:
        return 0.0
    return 2.0 * float((groups.widths * groups.count).max()) * (groups.grid.high - groups.grid.low)


def optimal_partition(count: np.ndarray, total: np.ndarray, squares: np.ndarray, k: int) -> np.ndarray:
    """Optimal split of m sorted groups into k non-empty contiguous segments (needs m >= k).

    count, total, squares: [m] per-group weight, weighted sum and weighted sum of squares.
    Returns starts [k]: segment j covers groups starts[j] .. starts[j+1]-1 (starts[0] = 0).
    """
    return optimal_partitions(count, total, squares, np.array([0, count.size]), k)[0]


def optimal_partitions(count: np.ndarray, total: np.ndarray, squares: np.ndarray, offsets: np.ndarray,
                       k: int) -> np.ndarray:
    """optimal_partition for P problems at once: problem p owns groups offsets[p] .. offsets[p+1]-1.

    count, total, squares: [M] groups of all problems, concatenated; offsets [P + 1]; every problem needs at
    least k groups. Returns starts [P, k], local to each problem.

    The programme runs in one "position" space where problem p's prefix positions 0..m_p sit at
    base_p + 0..m_p (base_p = offsets[p] + p), so every task of every problem is solved in the same passes.
    """
    sizes = np.diff(offsets)
    base = offsets[:-1] + np.arange(sizes.size)
    owner = np.repeat(np.arange(sizes.size), sizes + 1)  # problem of each position
    local = np.arange(owner.size) - base[owner]           # prefix length of each position
    prefix = _Prefix(count, total, squares, offsets)
    best = prefix.cost(base[owner], np.arange(owner.size))  # one segment: the first `local` groups
    best[local == 0] = np.inf
    splits = np.zeros((k, owner.size), dtype=np.int64)
    for layer in range(1, k):
        best, splits[layer] = _next_layer(best, prefix, base + layer + 1, base + sizes, base + layer)
    starts = np.zeros((sizes.size, k), dtype=np.int64)
    end = base + sizes
    for layer in range(k - 1, 0, -1):
        end = splits[layer][end]
        starts[:, layer] = end - base
    return starts


def partition_error(groups: Groups, starts: np.ndarray) -> float:
    """Squared error of the segments of groups starting at starts [k] around their means."""
    prefix = _Prefix(groups.count, groups.sum, groups.squares)
    ends = np.append(starts[1:], groups.count.size)
    return float(prefix.cost(starts, ends).sum())  # one problem: positions are group indices


def nearest_center(values, centers, *, grid: "_Grid | None" = None) -> np.ndarray:
    """Index of the nearest of ascending centers [k] for every value (ties to the lower index).

    With a grid, a value's code is looked up from its bin; only values in the few bins that contain a
    midpoint between two centres are compared individually (a binary search costs ~5x more per value).
    """
    x = np.asarray(values).reshape(-1)
    centers = np.asarray(centers, dtype=np.float64)
    midpoints = (centers[1:] + centers[:-1]) / 2  # a value's code is the number of midpoints below it
    codes = np.empty(x.size, dtype=_code_dtype(centers.size))
    if grid is not None:
        lows, highs = grid.bounds()
        code_of_bin = np.searchsorted(midpoints, lows, side="left").astype(codes.dtype)
        # Bins whose (slightly widened) range holds a midpoint: their values are compared one by one.
        margin = 1e-9 * (grid.high - grid.low)
        split_bin = code_of_bin != np.searchsorted(midpoints, highs + margin, side="left")
        split_bin |= code_of_bin != np.searchsorted(midpoints, lows - margin, side="left")
    for start in range(0, x.size, _CHUNK):
        chunk = x[start:start + _CHUNK]
        out = codes[start:start + chunk.size]
        if grid is None:
            out[:] = np.searchsorted(midpoints, chunk, side="left")
            continue
        index = grid.index(chunk)
        out[:] = code_of_bin[index]
        exact = np.flatnonzero(split_bin[index])
        out[exact] = np.searchsorted(midpoints, chunk[exact], side="left")
    return codes


# ----------------------------------------------------------------------------------------------------------
# Groups: distinct values (exact) or a histogram


class _Grid:
    """Piecewise-uniform bins over [low, high]: 3/4 of them across the central 99.98% of the values, 1/8 for
    each tail, so a few outliers do not coarsen the bins where the values are. Index = floor(interp(x))."""

    def __init__(self, knots: np.ndarray, bins: int):
        """knots: ascending [low, inner_low, inner_high, high], low < high; pieces of zero width are dropped."""
        self.knots, first = np.unique(knots, return_index=True)
        self.positions = np.array([0.0, bins / 8, bins * 7 / 8, bins])[first]
        self.positions[-1] = bins
        self.bins = bins
        self.low, self.high = float(knots[0]), float(knots[-1])

    @classmethod
    def for_values(cls, x: np.ndarray, low: float, high: float, bins: int) -> "_Grid":
        sample = np.sort(x[:: max(1, x.size // EXACT_LIMIT)].astype(np.float64))
        inner_low, inner_high = np.quantile(sample, [1e-4, 1 - 1e-4])
        return cls(np.array([low, max(low, inner_low), min(high, inner_high), high]), bins)

    def index(self, x: np.ndarray) -> np.ndarray:
        """Bin of every value, int64 in [0, bins)."""
        position = np.interp(x, self.knots, self.positions)
        return np.minimum(position.astype(np.int64), self.bins - 1)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Nominal [low, high] value range of every bin, float64 [bins] each."""
        edges = np.interp(np.arange(self.bins + 1, dtype=np.float64), self.positions, self.knots)
        return edges[:-1], edges[1:]


def _summarize(x: np.ndarray, weights: np.ndarray | None, bins: int, k: int) -> Groups:
    shift = float(np.mean(x, dtype=np.float64))
    if x.size <= EXACT_LIMIT:
        return _distinct_values(x, weights, shift)
    low, high = float(x.min()), float(x.max())
    if high == low:
        return _distinct_values(x[:1], None if weights is None else np.array([weights.sum()]), shift)
    groups = _histogram(x, weights, _Grid.for_values(x, low, high, bins), shift)
    if groups.count.size <= k:
        # At most k occupied bins: the values may be at most k distinct ones; answer exactly.
        distinct = np.unique(x)
        if distinct.size <= EXACT_LIMIT:
            return _distinct_values(x, weights, shift)
    return groups


def _distinct_values(x: np.ndarray, weights: np.ndarray | None, shift: float) -> Groups:
    distinct, inverse = np.unique(x, return_inverse=True)
    shifted = distinct.astype(np.float64) - shift
    count = np.bincount(inverse.reshape(-1), weights=weights, minlength=distinct.size).astype(np.float64)
    keep = count > 0  # values of zero weight do not pull any centre
    count, shifted = count[keep], shifted[keep]
    return Groups(count, count * shifted, count * shifted * shifted, shift, None, np.zeros(count.size))


def _distinct_values_by_row(x: np.ndarray, weights: np.ndarray | None) -> tuple[Groups, np.ndarray, np.ndarray]:
    """Distinct values of every row of x [G, n], as groups of all rows concatenated (each row's mean
    subtracted), with offsets [G + 1] (row g owns groups offsets[g] .. offsets[g+1]-1) and the means [G]."""
    if weights is None:
        ordered, ordered_weights = np.sort(x, axis=1), None
    else:
        order = np.argsort(x, axis=1, kind="stable")
        ordered, ordered_weights = np.take_along_axis(x, order, 1), np.take_along_axis(weights, order, 1)
    shifts = x.mean(axis=1, dtype=np.float64)
    starts_group = np.ones(x.shape, dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group = np.cumsum(starts_group.ravel()) - 1
    count = np.bincount(group, weights=None if weights is None else ordered_weights.ravel()).astype(np.float64)
    value = (ordered.astype(np.float64) - shifts[:, None])[starts_group]  # one value per group
    row = np.repeat(np.arange(x.shape[0]), starts_group.sum(axis=1))
    keep = count > 0  # values of zero weight pull no centre
    count, value, row = count[keep], value[keep], row[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=x.shape[0]))])
    groups = Groups(count, count * value, count * value * value, 0.0, None, np.zeros(count.size))
    return groups, offsets, shifts


def _histogram(x: np.ndarray, weights: np.ndarray | None, grid: _Grid, shift: float) -> Groups:
    """Per occupied bin of the grid: weight, sum and sum of squares of (value - shift), float64."""
    bins = grid.bins
    count, total, squares = np.zeros(bins), np.zeros(bins), np.zeros(bins)
    for start in range(0, x.size, _CHUNK):
        chunk = x[start:start + _CHUNK]
        index = grid.index(chunk)
        w = None if weights is None else weights[start:start + _CHUNK]
        centred = chunk.astype(np.float64) - shift
        weighted = centred if w is None else centred * w
        count += np.bincount(index, weights=w, minlength=bins)
        total += np.bincount(index, weights=weighted, minlength=bins)
        squares += np.bincount(index, weights=weighted * centred, minlength=bins)
    occupied = count > 0
    lows, highs = grid.bounds()
    return Groups(count[occupied], total[occupied], squares[occupied], shift, grid, (highs - lows)[occupied])


# ----------------------------------------------------------------------------------------------------------
# The dynamic programme


class _Prefix:
    """Prefix sums over groups, so the squared error of a run of groups around its mean is O(1).

    With offsets [P + 1] (problems owning consecutive groups), problem p's prefix sums start with a zero of
    their own at position offsets[p] + p; positions are what cost() takes.
    """

    def __init__(self, count: np.ndarray, total: np.ndarray, squares: np.ndarray, offsets=None):
        offsets = np.array([0, count.size]) if offsets is None else np.asarray(offsets)
        # One leading zero per problem; the sums then run on across problems, but costs only ever take
        # differences inside one problem.
        self.count, self.total, self.squares = (np.cumsum(np.insert(a, offsets[:-1], 0.0))
                                                for a in (count, total, squares))

    def cost(self, t: np.ndarray, i: np.ndarray) -> np.ndarray:
        """Squared error of the groups between positions t < i (elementwise; t == i gives 0)."""
        weight = self.count[i] - self.count[t]
        total = self.total[i] - self.total[t]
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = np.where(weight > 0, total * total / weight, 0.0)
        return np.maximum(self.squares[i] - self.squares[t] - spread, 0.0)


def _next_layer(previous: np.ndarray, prefix: _Prefix, i_first: np.ndarray, i_last: np.ndarray,
                t_first: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One layer of the programme for every problem, by divide and conquer over i, a level at a time.

    previous [positions]: best error of each prefix in `layer` segments (inf where impossible).
    Each problem solves positions i in [i_first, i_last] with splits t in [t_first, i - 1].
    Returns best [positions] for layer + 1 segments and the argmin split position, where solved.
    A task (i_lo, i_hi, t_lo, t_hi) solves every i in [i_lo, i_hi] knowing its split lies in [t_lo, t_hi]:
    it solves the middle i, then hands each half the part of the split range left by monotonicity.
    """
    best = np.full(previous.size, np.inf)
    split = np.zeros(previous.size, dtype=np.int64)
    i_lo, i_hi, t_lo, t_hi = i_first, i_last, t_first, i_last - 1
    while i_lo.size:
        middle = (i_lo + i_hi) // 2
        t_end = np.minimum(t_hi, middle - 1)
        sizes = t_end - t_lo + 1
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        task = np.repeat(np.arange(i_lo.size), sizes)
        t = np.arange(task.size) - starts[task] + t_lo[task]
        score = previous[t] + prefix.cost(t, middle[task])
        lowest = np.minimum.reduceat(score, starts)
        # First position reaching each task's minimum (the smallest split: keeps the splits monotone).
        hits = np.flatnonzero(score == lowest[task])
        chosen = t[hits[np.searchsorted(hits, starts)]]
        best[middle], split[middle] = lowest, chosen
        left = i_lo <= middle - 1
        right = middle + 1 <= i_hi
        i_lo, i_hi, t_lo, t_hi = (np.concatenate([i_lo[left], middle[right] + 1]),
                                  np.concatenate([middle[left] - 1, i_hi[right]]),
                                  np.concatenate([t_lo[left], chosen[right]]),
                                  np.concatenate([chosen[left], t_hi[right]]))
    return best, split


def _segment_means(groups: Groups, starts: np.ndarray) -> np.ndarray:
    """Weighted mean of each segment of groups, float64 [k] ascending."""
    weight = np.add.reduceat(groups.count, starts)
    total = np.add.reduceat(groups.sum, starts)
    return total / weight + groups.shift


def _padded(centers: np.ndarray, k: int) -> np.ndarray:
    """Distinct sorted values [m <= k] -> [k], padded by repeating the largest."""
    return np.concatenate([centers, np.full(k - centers.size, centers[-1])])


# ----------------------------------------------------------------------------------------------------------
# Inputs


def _checked_values(values) -> np.ndarray:
    x = np.asarray(values)
    if x.dtype == bool or not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise ValueError(f"values must be real numbers, got dtype {x.dtype}")
    x = x.reshape(-1)
    if x.size == 0:
        raise ValueError("values must not be empty")
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    low, high = float(x.min()), float(x.max())  # min/max propagate NaN
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("values contain NaN or infinite values")
    return x


def _checked_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _checked_weights(sample_weight, n: int) -> np.ndarray | None:
    if sample_weight is None:
        return None
    weights = np.asarray(sample_weight, dtype=np.float64).reshape(-1)
    if weights.size != n:
        raise ValueError(f"sample_weight must have one weight per value ({n}), got {weights.size}")
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("sample_weight must be finite, non-negative, with a positive sum")
    return weights


def _code_dtype(k: int) -> type:
    return np.uint8 if k <= 1 << 8 else np.uint16 if k <= 1 << 16 else np.int32
