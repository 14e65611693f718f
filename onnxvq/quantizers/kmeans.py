"""Scalar k-means (Gong et al. 2014, KM): 2**bits shared values per tensor or per group of outputs."""
from __future__ import annotations

import numpy as np

from ..config import KMeansConfig
from ..fit import fit_kmeans_1d, fit_kmeans_1d_batched
from ..ops.schema import AXIS_IN, VQLayout
from .base import CodedWeight, register, to_codebook_dtype


@register(KMeansConfig)
def quantize_kmeans(weight: np.ndarray, config: KMeansConfig, seed: int) -> CodedWeight:
    k_in, n_out = weight.shape
    group_size = min(config.group_size or n_out, n_out)
    layout = VQLayout.for_weight(k_in, n_out, bits=config.bits, subvector_len=1, axis=AXIS_IN,
                                 group_size=group_size, codebook_per_subspace=0,
                                 format_version=None)  # fast-scan where valid
    rows = weight.T  # [N, K]: one row per output channel
    k = layout.codebook_size
    codes = np.empty((1, n_out, k_in), dtype=np.uint8)
    codebooks = np.zeros(layout.codebooks_shape, dtype=np.float32)
    for first_group, centers, assign in _fit_groups(rows, group_size, k):
        for i, (c, a) in enumerate(zip(centers, assign)):
            g = first_group + i
            block = slice(g * group_size, min((g + 1) * group_size, n_out))
            if config.codebook_dtype == "float16":
                # Encode against the codebook as it will be stored.
                c = c.astype(np.float16).astype(np.float32)
                a = _nearest_sorted(rows[block].reshape(-1), c)
            codebooks[0, 0, g, :, 0] = c
            codes[0, block] = np.asarray(a, dtype=np.uint8).reshape(-1, k_in)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, config.codebook_dtype))


def _fit_groups(rows: np.ndarray, group_size: int, k: int):
    """Yield (first group index, centers [g, k], codes [g, n]) for the row groups of ``rows`` [N, K].

    Full groups are fitted in one batched pass (one programme per group, vectorized together);
    a shorter last group on its own."""
    n_out, k_in = rows.shape
    full = n_out // group_size
    if full:
        values = np.ascontiguousarray(rows[: full * group_size]).reshape(full, group_size * k_in)
        yield (0, *fit_kmeans_1d_batched(values, k))
    if full * group_size < n_out:
        centers, assign = fit_kmeans_1d(rows[full * group_size:].reshape(-1), k)
        yield full, centers[None], assign[None]


def _nearest_sorted(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of ascending ``centers`` for each value."""
    order = np.argsort(centers, kind="stable")
    sorted_centers = centers[order]
    midpoints = (sorted_centers[1:] + sorted_centers[:-1]) / 2
    return order[np.searchsorted(midpoints, values)]
