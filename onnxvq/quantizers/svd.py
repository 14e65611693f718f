"""Low-rank baseline (Gong et al. 2014, SVD): W ~ (U_r S_r) @ V_r^T, two standard MatMuls."""
from __future__ import annotations

import numpy as np

from ..config import SVDConfig
from .base import LowRankWeight, register, register_data_aware


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


@register_data_aware(SVDConfig)
def fit_svd_data_aware(weight: np.ndarray, config: SVDConfig, encoded: LowRankWeight, stats, centered: bool = False):
    """The rank-r W_hat minimizing tr(dW^T H dW F): with H = C C^T, the truncated SVD of
    C^T W F^1/2, mapped back (closed form; one H for every conv group, their mean)."""
    from ..fit.data_aware import DataAwareFit, Objective, relative_error

    objective = Objective.from_stats(weight, stats, centered)
    r = encoded.rank
    chol = np.linalg.cholesky(objective.mean_hessian())                  # H = C C^T
    col = np.sqrt(objective.column_weights)
    u, s, vt = np.linalg.svd((chol.T @ objective.weight) * col, full_matrices=False)
    root = np.sqrt(s[:r])
    first = np.linalg.solve(chol.T, u[:, :r] * root)                     # C^-T U_r S^1/2
    second = (root[:, None] * vt[:r]) / col
    fitted = LowRankWeight(first.astype(np.float32), second.astype(np.float32))
    energy = objective.energy()
    before, after = objective.value(encoded.decode()), objective.value(fitted.decode())
    chosen, score = (fitted, after) if after <= before else (encoded, before)
    return DataAwareFit(chosen, relative_error(score, energy), relative_error(before, energy))
