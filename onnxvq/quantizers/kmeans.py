"""Scalar k-means (Gong et al. 2014, KM): 2**bits shared values per tensor or per group of outputs."""
from __future__ import annotations

import numpy as np

from ..config import KMeansConfig
from ..fit import fit_kmeans_1d, fit_kmeans_1d_batched
from ..ops.schema import AXIS_IN, VQLayout
from .base import CodedWeight, register, to_codebook_dtype
from .pruning import ZERO_CODE, fit_weights, magnitude_keep


@register(KMeansConfig)
def quantize_kmeans(weight: np.ndarray, config: KMeansConfig, seed: int) -> CodedWeight:
    k_in, n_out = weight.shape
    group_size = min(config.group_size or n_out, n_out)
    layout = VQLayout.for_weight(k_in, n_out, bits=config.bits, subvector_len=1, axis=AXIS_IN,
                                 group_size=group_size, codebook_per_subspace=0,
                                 format_version=None)  # fast-scan where valid
    rows = weight.T  # [N, K]: one row per output channel
    k = layout.codebook_size
    keep = None
    if config.prune:
        keep = magnitude_keep(rows.T[..., None], config.prune).T  # units: single weights; rows: outputs
        rows = np.where(keep, rows, np.float32(0))
    codes = np.empty((1, n_out, k_in), dtype=np.uint8)
    codebooks = np.zeros(layout.codebooks_shape, dtype=np.float32)
    for first_group, centers, assign in _fit_groups(rows, group_size, k, keep):
        for i, (c, a) in enumerate(zip(centers, assign)):
            g = first_group + i
            block = slice(g * group_size, min((g + 1) * group_size, n_out))
            if keep is not None:
                c = np.concatenate([[0.0], c]).astype(np.float32)  # the zero codeword first
            if config.codebook_dtype == "float16":
                c = c.astype(np.float16).astype(np.float32)
            if keep is not None or config.codebook_dtype == "float16":
                # Encode against the codebook as it will be stored; a kept weight may pick the zero
                # codeword when it is nearest, a pruned one must.
                a = _nearest_sorted(rows[block].reshape(-1), c)
            if keep is not None:
                a = np.where(keep[block].reshape(-1), a, ZERO_CODE)
            codebooks[0, 0, g, :, 0] = c
            codes[0, block] = np.asarray(a, dtype=np.uint8).reshape(-1, k_in)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, config.codebook_dtype),
                       zero_codeword=keep is not None)


def _fit_groups(rows: np.ndarray, group_size: int, k: int, keep: np.ndarray | None = None):
    """Yield (first group index, centers [g, k], codes [g, n]) for the row groups of ``rows`` [N, K].

    With a keep mask (pruning) k - 1 centers are fitted to the kept weights only: the caller puts
    the zero codeword first.
    Full groups are fitted in one batched pass (one programme per group, vectorized together);
    a shorter last group on its own."""
    n_out, k_in = rows.shape
    fitted = k if keep is None else k - 1
    full = n_out // group_size

    def weights(part: slice, groups: int):
        return None if keep is None else fit_weights(keep[part].reshape(groups, -1))

    if full:
        part = slice(0, full * group_size)
        values = np.ascontiguousarray(rows[part]).reshape(full, group_size * k_in)
        centers, assign = fit_kmeans_1d_batched(values, fitted, sample_weight=weights(part, full))
        yield 0, centers, assign
    if full * group_size < n_out:
        part = slice(full * group_size, n_out)
        w = weights(part, 1)
        centers, assign = fit_kmeans_1d(rows[part].reshape(-1), fitted, sample_weight=None if w is None else w[0])
        yield full, centers[None], assign[None]


def _nearest_sorted(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of ascending ``centers`` for each value."""
    order = np.argsort(centers, kind="stable")
    sorted_centers = centers[order]
    midpoints = (sorted_centers[1:] + sorted_centers[:-1]) / 2
    return order[np.searchsorted(midpoints, values)]
