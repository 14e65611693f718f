"""Product and residual quantization (Gong et al. 2014, PQ and RQ), on either axis.

PQ is RQ with one stage: each stage fits one codebook of 2**bits codewords per subspace
on what the stages before it left over.
"""
from __future__ import annotations

import numpy as np

from ..config import PQConfig, RQConfig
from ..fit import assign_nearest, fit_kmeans_batched
from ..ops.schema import AXIS_IN, AXIS_OUT, VQLayout
from .base import CodedWeight, register, subvectors, to_codebook_dtype
from .pruning import ZERO_CODE, fit_weights, magnitude_keep, with_zero_codeword


def _residual_quantize(weight: np.ndarray, *, bits: int, dim: int, axis: str, stages: int,
                       codebook_dtype: str, iters: int, seed: int, prune: float = 0.0) -> CodedWeight:
    k_in, n_out = weight.shape
    layout = VQLayout.for_weight(k_in, n_out, bits=bits, subvector_len=dim,
                                 axis=AXIS_IN if axis == "in" else AXIS_OUT, stages=stages,
                                 codebook_per_subspace=1, format_version=None)  # fast-scan where valid
    residual = subvectors(weight, dim, axis)  # [S, R, d]
    keep = None
    if prune:
        # Whole subvectors: the zero codeword codes them exactly. Outputs: rows of M (in) or subspaces (out).
        keep = magnitude_keep(residual, prune, outputs_along=1 if axis == "in" else 0)
        residual = residual * keep[..., None]
    codes = np.empty(layout.codes_shape, dtype=np.uint8)  # [T, R, S]
    codebooks = np.empty(layout.codebooks_shape, dtype=np.float32)  # [T, S, 1, k, d]
    k = layout.codebook_size
    for t in range(stages):
        if keep is None:
            centroids, assign = fit_kmeans_batched(residual, k, iters=iters, seed=seed + t)
        else:
            centroids, _ = fit_kmeans_batched(residual, k - 1, iters=iters, seed=seed + t,
                                              sample_weight=fit_weights(keep))
            centroids = with_zero_codeword(centroids, axis=1)
        if codebook_dtype == "float16":
            # Encode against the codebook as it will be stored, so rounding is not compounded.
            centroids = centroids.astype(np.float16).astype(np.float32)
        if codebook_dtype == "float16" or keep is not None:
            assign = assign_nearest(residual, centroids)
        if keep is not None:
            assign = np.where(keep, assign, ZERO_CODE)
        codebooks[t, :, 0] = centroids
        codes[t] = np.asarray(assign).T
        residual = residual - np.take_along_axis(centroids, np.asarray(assign, dtype=np.int64)[..., None], axis=1)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, codebook_dtype), zero_codeword=keep is not None)


@register(PQConfig)
def quantize_pq(weight: np.ndarray, config: PQConfig, seed: int) -> CodedWeight:
    return _residual_quantize(weight, bits=config.bits, dim=config.dim, axis=config.axis, stages=1,
                              codebook_dtype=config.codebook_dtype, iters=config.iters, seed=seed,
                              prune=config.prune)


@register(RQConfig)
def quantize_rq(weight: np.ndarray, config: RQConfig, seed: int) -> CodedWeight:
    return _residual_quantize(weight, bits=config.bits, dim=config.dim, axis=config.axis,
                              stages=config.stages, codebook_dtype=config.codebook_dtype,
                              iters=config.iters, seed=seed, prune=config.prune)
