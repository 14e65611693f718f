"""Scalar k-means (Gong et al. 2014, KM): 2**bits shared values per tensor or per group of outputs."""
from __future__ import annotations

import numpy as np

from ..config import KMeansConfig
from ..fit import fit_kmeans_1d
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
    for g in range(layout.row_groups):
        block = slice(g * group_size, min((g + 1) * group_size, n_out))
        centers, assign = fit_kmeans_1d(rows[block].reshape(-1), k)
        if config.codebook_dtype == "float16":
            # Encode against the codebook as it will be stored.
            centers = centers.astype(np.float16).astype(np.float32)
            assign = _nearest_sorted(rows[block].reshape(-1), centers)
        codebooks[0, 0, g, :, 0] = centers
        codes[0, block] = np.asarray(assign, dtype=np.uint8).reshape(-1, k_in)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, config.codebook_dtype))


def _nearest_sorted(values: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest of ascending ``centers`` for each value."""
    order = np.argsort(centers, kind="stable")
    sorted_centers = centers[order]
    midpoints = (sorted_centers[1:] + sorted_centers[:-1]) / 2
    return order[np.searchsorted(midpoints, values)]
