"""Decode codes + codebooks into W_hat with standard ONNX ops only (opset >= 11).

Codes are stored as one LSB-first stream in [T, R, S] order (format 1); unpacking uses integer
Div and Mod (no bitwise ops, which need opset 18). All inputs are initializers, so runtimes fold the
decode once at load time.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..ops.schema import AXIS_IN
from ..quantizers.base import CodedWeight
from .names import NameAllocator

MIN_OPSET = 11


class _Builder:
    def __init__(self, names: NameAllocator, prefix: str):
        self.names, self.prefix = names, prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, suffix: str, array: np.ndarray) -> str:
        name = self.names.new(f"{self.prefix}.{suffix}")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], suffix: str, **attrs) -> str:
        out = self.names.new(f"{self.prefix}.{suffix}")
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.names.new(f"{self.prefix}.{suffix}_node"), **attrs))
        return out


def build_decoder(encoded: CodedWeight, names: NameAllocator, prefix: str):
    """Return (nodes, initializers, output name of W_hat [K, N] float32)."""
    layout = encoded.layout
    b = _Builder(names, prefix)
    T, R, S = layout.codes_shape
    k, d = layout.codebook_size, layout.subvector_len

    codes = b.const("codes", encoded.flat_packed_codes())
    as_int = b.op("Cast", [codes], "codes_i64", to=onnx.TensorProto.INT64)
    if layout.bits < 8:
        # byte -> its 8 bits (LSB first) -> the stream of bits -> groups of `bits` -> integers
        column = b.op("Reshape", [as_int, b.const("col_shape", np.array([-1, 1], np.int64))], "bytes_col")
        powers = b.const("bit_weights", (1 << np.arange(8, dtype=np.int64))[None, :])
        bits = b.op("Mod", [b.op("Div", [column, powers], "shifted"), b.const("two", np.array(2, np.int64))], "bits")
        flat = b.op("Reshape", [bits, b.const("flat_shape", np.array([-1], np.int64))], "bit_stream")
        used = b.op("Slice", [flat, b.const("start", np.array([0], np.int64)),
                              b.const("stop", np.array([layout.num_codes * layout.bits], np.int64))], "code_bits")
        grouped = b.op("Reshape", [used, b.const("group_shape", np.array([layout.num_codes, layout.bits], np.int64))], "code_bit_groups")
        code_weights = b.const("code_weights", (1 << np.arange(layout.bits, dtype=np.int64)))
        as_int = _sum_last(b, grouped, code_weights)
    index = b.op("Reshape", [as_int, b.const("codes_shape", np.array([T, R, S], np.int64))], "codes")

    # Row of the flattened codebook table [T*Gs*Gr*k, d]: ((t*Gs + s')*Gr + g(r))*k + code.
    offset = (np.arange(T, dtype=np.int64) * layout.subspace_groups * layout.row_groups * k).reshape(T, 1, 1)
    if layout.codebook_per_subspace:
        offset = offset + (np.arange(S, dtype=np.int64) * layout.row_groups * k).reshape(1, 1, S)
    index = b.op("Add", [index, b.const("stage_subspace_offset", offset)], "index_ts")
    if layout.row_groups > 1:
        rows = b.op("Range", [b.const("zero", np.array(0, np.int64)), b.const("rows", np.array(R, np.int64)),
                              b.const("one", np.array(1, np.int64))], "row_ids")
        groups = b.op("Div", [rows, b.const("group_size", np.array(layout.group_size, np.int64))], "row_groups")
        group_offset = b.op("Mul", [groups, b.const("k", np.array(k, np.int64))], "group_offset")
        group_offset = b.op("Reshape", [group_offset, b.const("group_offset_shape", np.array([1, R, 1], np.int64))], "group_offset_3d")
        index = b.op("Add", [index, group_offset], "index")

    table = b.const("codebooks", encoded.codebooks.reshape(-1, d))
    gathered = b.op("Gather", [table, index], "gathered", axis=0)  # [T, R, S, d]
    if encoded.codebooks.dtype != np.float32:
        gathered = b.op("Cast", [gathered], "gathered_f32", to=onnx.TensorProto.FLOAT)
    if T > 1:
        # Sum the stages with a MatMul by ones: works at every opset, unlike ReduceSum's signature.
        flat = b.op("Reshape", [gathered, b.const("stage_rows", np.array([T, -1], np.int64))], "stages_flat")
        gathered = b.op("MatMul", [b.const("ones", np.ones((1, T), np.float32)), flat], "stage_sum")
    rows_matrix = b.op("Reshape", [gathered, b.const("m_shape", np.array([R, S * d], np.int64))], "m_padded")
    if S * d != layout.length:
        rows_matrix = b.op("Slice", [rows_matrix, b.const("m_start", np.array([0], np.int64)),
                                     b.const("m_stop", np.array([layout.length], np.int64)),
                                     b.const("m_axis", np.array([1], np.int64))], "m")
    w = b.op("Transpose", [rows_matrix], "w_hat", perm=[1, 0]) if layout.axis == AXIS_IN else rows_matrix
    return b.nodes, b.initializers, w


def _sum_last(b: _Builder, grouped: str, code_weights: str) -> str:
    """sum_j bit_j * 2**j as a float MatMul (exact for small integers; ReduceSum's signature changed at opset 13)."""
    as_float = b.op("Cast", [grouped], "code_bits_f32", to=onnx.TensorProto.FLOAT)
    weights = b.op("Cast", [code_weights], "code_weights_f32", to=onnx.TensorProto.FLOAT)
    summed = b.op("MatMul", [as_float, weights], "codes_f32")
    return b.op("Cast", [summed], "codes_int", to=onnx.TensorProto.INT64)
