"""Low-rank baseline (Gong et al. 2014, SVD): W ~ (U_r S_r) @ V_r^T, two standard MatMuls."""
from __future__ import annotations

import numpy as np

from ..config import SVDConfig
from .base import LowRankWeight, register


def rank_for(config: SVDConfig, k_in: int, n_out: int) -> int:
    if config.rank:
        return min(config.rank, k_in, n_out)
    # K*N / (r*(K+N)) = ratio  =>  r = K*N / (ratio*(K+N))
    return max(1, min(k_in, n_out, int(k_in * n_out / (config.ratio * (k_in + n_out)))))


@register(SVDConfig)
def quantize_svd(weight: np.ndarray, config: SVDConfig, seed: int) -> LowRankWeight:
    k_in, n_out = weight.shape
    r = rank_for(config, k_in, n_out)
    u, s, vt = np.linalg.svd(weight.astype(np.float64), full_matrices=False)
    # Split the singular values evenly between the factors to keep both well scaled.
    root = np.sqrt(s[:r])
    return LowRankWeight((u[:, :r] * root).astype(np.float32), (root[:, None] * vt[:r]).astype(np.float32))
