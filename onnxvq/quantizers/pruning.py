"""Pruning into a zero codeword (Deep Compression's first stage; Han et al. 2016).

A pruned layer keeps codeword 0 of every codebook (every stage, subspace and row group) fixed at
exactly 0. The units the pruning removes are coded 0 in every stage, so they decode to exact zeros
in every runtime, and the codes that remain are fitted with the other 2**bits - 1 codewords. A unit
is what one code covers: one weight for scalar k-means, one subvector (d weights of a row of M)
for PQ and RQ, so PQ prunes whole subvectors and the zero codeword represents them exactly.

Data-free, the units with the smallest squared norm go (one threshold per layer, as in the
paper); with calibration statistics fit/data_aware.py chooses them by their output error instead
(OBS / SparseGPT) and pushes that error onto the units that remain.
"""
from __future__ import annotations

import numpy as np

#: The code of the zero codeword.
ZERO_CODE = 0


def pruned_count(units: int, fraction: float) -> int:
    """How many of ``units`` a prune fraction removes (rounded to nearest)."""
    return int(round(fraction * units))


def magnitude_keep(units: np.ndarray, fraction: float) -> np.ndarray:
    """Keep mask [S, R] over units [S, R, d]: False for the ``fraction`` of units with the smallest
    squared norm (ties broken by position, so the same weight gives the same mask)."""
    energy = np.einsum("srd,srd->sr", units, units, dtype=np.float64).ravel()
    keep = np.ones(energy.size, dtype=bool)
    count = pruned_count(energy.size, fraction)
    if count:
        keep[np.argsort(energy, kind="stable")[:count]] = False
    return keep.reshape(units.shape[:2])


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
