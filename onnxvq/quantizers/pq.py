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


def _residual_quantize(weight: np.ndarray, *, bits: int, dim: int, axis: str, stages: int,
                       codebook_dtype: str, iters: int, seed: int) -> CodedWeight:
    k_in, n_out = weight.shape
    layout = VQLayout.for_weight(k_in, n_out, bits=bits, subvector_len=dim,
                                 axis=AXIS_IN if axis == "in" else AXIS_OUT, stages=stages,
                                 codebook_per_subspace=1, format_version=None)  # fast-scan where valid
    residual = subvectors(weight, dim, axis)  # [S, R, d]
    codes = np.empty(layout.codes_shape, dtype=np.uint8)  # [T, R, S]
    codebooks = np.empty(layout.codebooks_shape, dtype=np.float32)  # [T, S, 1, k, d]
    for t in range(stages):
        centroids, assign = fit_kmeans_batched(residual, layout.codebook_size, iters=iters, seed=seed + t)
        if codebook_dtype == "float16":
            # Encode against the codebook as it will be stored, so rounding is not compounded.
            centroids = centroids.astype(np.float16).astype(np.float32)
            assign = assign_nearest(residual, centroids)
        codebooks[t, :, 0] = centroids
        codes[t] = np.asarray(assign).T
        residual = residual - np.take_along_axis(centroids, np.asarray(assign, dtype=np.int64)[..., None], axis=1)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, codebook_dtype))


@register(PQConfig)
def quantize_pq(weight: np.ndarray, config: PQConfig, seed: int) -> CodedWeight:
    return _residual_quantize(weight, bits=config.bits, dim=config.dim, axis=config.axis, stages=1,
                              codebook_dtype=config.codebook_dtype, iters=config.iters, seed=seed)


@register(RQConfig)
def quantize_rq(weight: np.ndarray, config: RQConfig, seed: int) -> CodedWeight:
    return _residual_quantize(weight, bits=config.bits, dim=config.dim, axis=config.axis,
                              stages=config.stages, codebook_dtype=config.codebook_dtype,
                              iters=config.iters, seed=seed)
