"""Plain numpy implementations of VQMatMul and VQGather: the oracles for every test.

Deliberately simple (decode W_hat, then a dense matmul or an index); speed is the C++
kernel's job. ``reference_ops()`` exposes both to ``onnx.reference.ReferenceEvaluator``.
"""
from __future__ import annotations

import numpy as np

from .packing import unpack_from_op
from .schema import AXIS_IN, DOMAIN, GATHER_OP_TYPE, GATHER_SUPPORTED_FORMAT_VERSIONS, OP_TYPE, VQLayout


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


def gather_rows(indices, rows: int) -> np.ndarray:
    """ONNX Gather's index rule: int32/int64 values in [-rows, rows - 1], negatives count from
    the end. Returns int64 indices in [0, rows); raises ValueError naming the first bad value."""
    idx = np.asarray(indices)
    if idx.dtype not in (np.int32, np.int64):
        raise ValueError(f"indices must be int32 or int64, got {idx.dtype}")
    idx = idx.astype(np.int64)
    bad = (idx < -rows) | (idx >= rows)
    if bad.any():
        value = int(idx[bad].reshape(-1)[0])
        raise ValueError(f"index {value} is out of range [-{rows}, {rows - 1}] for a table of V = {rows} rows")
    return np.where(idx < 0, idx + rows, idx)


def vq_gather_ref(indices, packed_codes: np.ndarray, codebooks: np.ndarray, layout: VQLayout) -> np.ndarray:
    """Y[i..., :] = T_hat[idx[i...], :], T_hat = W_hat^T [V, D]; float32, shape indices.shape + [D]."""
    if layout.format_version not in GATHER_SUPPORTED_FORMAT_VERSIONS:
        raise ValueError(f"VQGather does not read format_version {layout.format_version}")
    rows = gather_rows(indices, layout.out_features)
    codes = unpack_from_op(packed_codes, layout)
    table = decode_weight(layout, codes, codebooks).T  # [V, D]
    return table[rows].astype(np.float32)


def _make_onnx_reference_op():
    from onnx.reference.op_run import OpRun

    class VQMatMulRef(OpRun):
        op_domain = DOMAIN

        def _run(self, X, codes, codebooks, bias=None, **attrs):  # noqa: N803 (ONNX input names)
            layout = VQLayout.from_attributes({k: v for k, v in attrs.items() if v is not None})
            return (vq_matmul_ref(X, codes, codebooks, bias, layout),)

    VQMatMulRef.__name__ = OP_TYPE
    return VQMatMulRef


def _make_onnx_gather_reference_op():
    from onnx.reference.op_run import OpRun

    class VQGatherRef(OpRun):
        op_domain = DOMAIN

        def _run(self, indices, codes, codebooks, **attrs):
            layout = VQLayout.from_attributes({k: v for k, v in attrs.items() if v is not None})
            return (vq_gather_ref(indices, codes, codebooks, layout),)

    VQGatherRef.__name__ = GATHER_OP_TYPE
    return VQGatherRef


def reference_ops() -> list:
    """The custom ops to pass as ``ReferenceEvaluator(model, new_ops=reference_ops())``."""
    return [_make_onnx_reference_op(), _make_onnx_gather_reference_op()]
