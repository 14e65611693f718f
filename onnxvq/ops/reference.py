"""Plain numpy implementation of VQMatMul: the oracle for every test.

Deliberately simple (decode W_hat, then a dense matmul); speed is the C++ kernel's job.
``VQMatMulRef`` exposes it to ``onnx.reference.ReferenceEvaluator(new_ops=[...])``.
"""
from __future__ import annotations

import numpy as np

from .packing import unpack_from_op
from .schema import AXIS_IN, DOMAIN, OP_TYPE, VQLayout


def decode_rows(layout: VQLayout, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """Decode the matrix of vectors M, shape [R, L] (padding dropped), in float64."""
    codes = np.asarray(codes).reshape(layout.codes_shape).astype(np.int64)
    codebooks = np.asarray(codebooks)
    if codebooks.shape != layout.codebooks_shape:
        raise ValueError(f"codebooks shape {codebooks.shape} != expected {layout.codebooks_shape}")
    cb = codebooks.astype(np.float64)
    T, R, S = layout.codes_shape
    s_index = np.arange(S) if layout.codebook_per_subspace else np.zeros(S, dtype=np.int64)
    g_index = np.arange(R) // layout.group_size
    rows = np.zeros((R, S, layout.subvector_len))
    for t in range(T):
        # cb[t][s_index[s], g_index[r], codes[t, r, s], :] for every (r, s)
        rows += cb[t][s_index[None, :], g_index[:, None], codes[t]]
    return rows.reshape(R, S * layout.subvector_len)[:, : layout.length]


def decode_weight(layout: VQLayout, codes: np.ndarray, codebooks: np.ndarray) -> np.ndarray:
    """W_hat, shape [K, N], float64. ``codes`` are unpacked, shape [T, R, S]."""
    rows = decode_rows(layout, codes, codebooks)
    return rows.T if layout.axis == AXIS_IN else rows


def vq_matmul_ref(x: np.ndarray, packed_codes: np.ndarray, codebooks: np.ndarray,
                  bias: np.ndarray | None, layout: VQLayout) -> np.ndarray:
    """Y = X @ W_hat (+ bias), computed in float64, returned as float32."""
    x = np.asarray(x)
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"X has last dimension {x.shape[-1]}, expected K = {layout.in_features}")
    codes = unpack_from_op(packed_codes, layout)
    w = decode_weight(layout, codes, codebooks)
    y = x.astype(np.float64) @ w
    if bias is not None and np.asarray(bias).size:
        y = y + np.asarray(bias, dtype=np.float64)
    return y.astype(np.float32)


def _make_onnx_reference_op():
    from onnx.reference.op_run import OpRun

    class VQMatMulRef(OpRun):
        op_domain = DOMAIN

        def _run(self, X, codes, codebooks, bias=None, **attrs):  # noqa: N803 (ONNX input names)
            layout = VQLayout.from_attributes({k: v for k, v in attrs.items() if v is not None})
            return (vq_matmul_ref(X, codes, codebooks, bias, layout),)

    VQMatMulRef.__name__ = OP_TYPE
    return VQMatMulRef


def reference_ops() -> list:
    """The custom ops to pass as ``ReferenceEvaluator(model, new_ops=reference_ops())``."""
    return [_make_onnx_reference_op()]
