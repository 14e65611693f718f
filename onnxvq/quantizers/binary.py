"""Binarization (Gong et al. 2014): sign(W), by default scaled per output channel by mean|w|."""
from __future__ import annotations

import numpy as np

from ..config import BinaryConfig
from ..ops.schema import AXIS_IN, VQLayout
from .base import CodedWeight, register, to_codebook_dtype


@register(BinaryConfig)
def quantize_binary(weight: np.ndarray, config: BinaryConfig, seed: int) -> CodedWeight:
    k_in, n_out = weight.shape
    # Scaled: one codebook [-alpha_n, +alpha_n] per output channel n (group_size 1).
    group_size = 1 if config.scaled else n_out
    layout = VQLayout.for_weight(k_in, n_out, bits=1, subvector_len=1, axis=AXIS_IN,
                                 group_size=group_size, codebook_per_subspace=0)
    codes = (weight.T >= 0).astype(np.uint8)[None]  # [1, N, K]; code 1 means +
    if config.scaled:
        alpha = np.abs(weight).mean(axis=0)  # [N]; mean|w| minimizes ||w - alpha*sign(w)||
        if config.codebook_dtype == "float16":
            alpha = alpha.astype(np.float16).astype(np.float32)
        values = np.stack([-alpha, alpha], axis=1)  # [N, 2]
    else:
        values = np.array([[-1.0, 1.0]], dtype=np.float32)
    codebooks = values.reshape(layout.codebooks_shape).astype(np.float32)
    return CodedWeight(layout, codes, to_codebook_dtype(codebooks, config.codebook_dtype))
