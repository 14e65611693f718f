"""Pruning into a zero codeword (Deep Compression's first stage; Han et al. 2016).

A pruned layer keeps codeword 0 of every codebook (every stage, subspace and row group) fixed at
exactly 0. The units the pruning removes are coded 0 in every stage, so they decode to exact zeros
in every runtime, and the codes that remain are fitted with the other 2**bits - 1 codewords. A unit
is what one code covers: one weight for scalar k-means, one subvector (d weights of a row of M)
for PQ and RQ, so PQ prunes whole subvectors and the zero codeword represents them exactly.

Data-free, the units with the smallest squared norm go, the same share of every output channel:
one threshold per layer (the paper's) empties whole channels of a BatchNorm-folded convolution,
whose channels differ in scale by orders of magnitude (MobileNetV2 lost 14% of its top-1 agreement
at 30% pruning that way). With calibration statistics fit/data_aware.py chooses them by their
output error instead (OBS / SparseGPT), again per output, and pushes that error onto the units
that remain.
"""
from __future__ import annotations

import numpy as np

#: The code of the zero codeword.
ZERO_CODE = 0


def pruned_count(units: int, fraction: float) -> int:
    """How many of ``units`` a prune fraction removes (rounded to nearest)."""
    return int(round(fraction * units))


def magnitude_keep(units: np.ndarray, fraction: float, outputs_along: int = 1) -> np.ndarray:
    """Keep mask [S, R] over units [S, R, d]: False for the ``fraction`` of units with the smallest
    squared norm within each output: ``outputs_along`` is the axis of [S, R] that indexes outputs
    (1: rows of M are outputs, axis in; 0: subspaces are groups of outputs, axis out). Ties go
    by position, so the same weight gives the same mask."""
    energy = np.einsum("srd,srd->sr", units, units, dtype=np.float64)
    return ~lowest_share(energy, fraction, axis=1 - outputs_along)


def lowest_share(scores: np.ndarray, fraction: float, axis: int) -> np.ndarray:
    """Mask of the ``fraction`` lowest scores along ``axis``, per slice (ties by position)."""
    count = pruned_count(scores.shape[axis], fraction)
    order = np.argsort(scores, axis=axis, kind="stable")
    ranks = np.empty_like(order)
    shape = [-1 if a == axis else 1 for a in range(scores.ndim)]
    np.put_along_axis(ranks, order, np.arange(scores.shape[axis]).reshape(shape), axis=axis)
    return ranks < count


def fit_weights(keep: np.ndarray) -> np.ndarray:
    """Sample weights for a codebook fit over kept units only. A problem (row of ``keep``) with
    nothing kept gets uniform weights: its values are all zero, so its codewords fit zeros."""
    weights = keep.astype(np.float32)
    empty = ~keep.any(axis=-1)
    weights[empty] = 1.0
    return weights


def with_zero_codeword(centers: np.ndarray, axis: int) -> np.ndarray:
    """Insert an all-zero codeword at index ZERO_CODE along ``axis`` (the codeword axis)."""
    shape = list(centers.shape)
    shape[axis] = 1
    return np.concatenate([np.zeros(shape, dtype=centers.dtype), centers], axis=axis)


def sparsity(w_hat: np.ndarray) -> float:
    """Share of exact zeros in a decoded weight."""
    return float(np.count_nonzero(w_hat == 0) / w_hat.size) if w_hat.size else 0.0
