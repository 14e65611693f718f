"""Decode codes + codebooks into W_hat with standard ONNX ops only (opset >= 11).

Codes are stored as one LSB-first stream in [T, R, S] order (format 1); unpacking uses integer
Div and Mod (no bitwise ops, which need opset 18). All inputs are initializers, so runtimes fold the
decode once at load time.

Embedding tables (``build_row_codes`` + ``gather_rows``) fold only the unpacking, into uint8 codes
[R, T, S]; the lookup then gathers codes and decodes just the requested rows at run time.
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
    """``node_names=False`` leaves the nodes unnamed (legal in ONNX): for decoders whose every byte
    counts against what they save (entropy_decoder.py)."""

    def __init__(self, names: NameAllocator, prefix: str, node_names: bool = True):
        self.names, self.prefix, self.node_names = names, prefix, node_names
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, suffix: str, array: np.ndarray) -> str:
        name = self.names.new(f"{self.prefix}.{suffix}")
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, op_type: str, inputs: list[str], suffix: str, **attrs) -> str:
        out = self.names.new(f"{self.prefix}.{suffix}")
        name = self.names.new(f"{self.prefix}.{suffix}_node") if self.node_names else None
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def _unpack_codes(b: _Builder, encoded: CodedWeight) -> str:
    """The packed stream -> int32 codes, flat [T*R*S] in [T, R, S] order (all inputs constant).

    Runtimes fold this once at session creation, holding every intermediate at the same time, so it
    stays cheap: eight codes of ``bits`` bits fill exactly ``bits`` bytes, and each code is read from
    the (at most) two bytes it spans of its chunk: (lo + 256*hi) // 2**shift % 2**bits, in int32.
    About 30 bytes per code while folding, where expanding every bit to int64 took ~200."""
    if encoded.entropy is not None:  # --entropy: the tiered prefix code, decoded by standard ops too
        from .entropy_decoder import compact_builder, decode_tiers

        tiers = compact_builder(b.names)
        codes = decode_tiers(tiers, encoded.entropy, "c")
        b.nodes.extend(tiers.nodes)
        b.initializers.extend(tiers.initializers)
        return codes
    layout = encoded.layout
    bits, n = layout.bits, layout.num_codes
    codes = b.const("codes", encoded.flat_packed_codes())
    as_int = b.op("Cast", [codes], "codes_i32", to=onnx.TensorProto.INT32)
    if bits == 8:
        return as_int
    chunks = -(-n // 8)
    stored = -(-n * bits // 8)
    if chunks * bits > stored:  # the stream ends mid-chunk: complete it with zero bytes
        as_int = b.op("Concat", [as_int, b.const("chunk_pad", np.zeros(chunks * bits - stored, np.int32))],
                      "codes_padded", axis=0)
    chunk = b.op("Reshape", [as_int, b.const("chunk_shape", np.array([chunks, bits], np.int64))], "chunks")
    start_bit = np.arange(8) * bits
    low_byte = start_bit // 8
    high_byte = np.minimum(low_byte + 1, bits - 1)  # past a code's end only when it fits in its low byte
    low = b.op("Gather", [chunk, b.const("low_byte", low_byte.astype(np.int64))], "low", axis=1)
    high = b.op("Gather", [chunk, b.const("high_byte", high_byte.astype(np.int64))], "high", axis=1)
    word = b.op("Add", [low, b.op("Mul", [high, b.const("byte", np.array(256, np.int32))], "high_shifted")], "word")
    shifted = b.op("Div", [word, b.const("shift", (1 << (start_bit % 8)).astype(np.int32))], "shifted")
    values = b.op("Mod", [shifted, b.const("levels", np.array(1 << bits, np.int32))], "chunk_codes")
    flat = b.op("Reshape", [values, b.const("flat_shape", np.array([-1], np.int64))], "code_stream")
    if chunks * 8 == n:
        return flat
    return b.op("Slice", [flat, b.const("start", np.array([0], np.int64)), b.const("stop", np.array([n], np.int64))],
                "codes_flat")


def build_decoder(encoded: CodedWeight, names: NameAllocator, prefix: str):
    """Return (nodes, initializers, output name of W_hat [K, N] float32)."""
    layout = encoded.layout
    b = _Builder(names, prefix)
    T, R, S = layout.codes_shape
    k, d = layout.codebook_size, layout.subvector_len

    as_int = _unpack_codes(b, encoded)
    index = b.op("Reshape", [as_int, b.const("codes_shape", np.array([T, R, S], np.int64))], "codes")

    # Row of the flattened codebook table [T*Gs*Gr*k, d]: ((t*Gs + s')*Gr + g(r))*k + code.
    offset = (np.arange(T, dtype=np.int32) * layout.subspace_groups * layout.row_groups * k).reshape(T, 1, 1)
    if layout.codebook_per_subspace:
        offset = offset + (np.arange(S, dtype=np.int32) * layout.row_groups * k).reshape(1, 1, S)
    if offset.any():
        index = b.op("Add", [index, b.const("stage_subspace_offset", offset.astype(np.int32))], "index_ts")
    if layout.row_groups > 1:
        rows = b.op("Range", [b.const("zero", np.array(0, np.int32)), b.const("rows", np.array(R, np.int32)),
                              b.const("one", np.array(1, np.int32))], "row_ids")
        groups = b.op("Div", [rows, b.const("group_size", np.array(layout.group_size, np.int32))], "row_groups")
        group_offset = b.op("Mul", [groups, b.const("k", np.array(k, np.int32))], "group_offset")
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


def build_row_codes(encoded: CodedWeight, names: NameAllocator, prefix: str):
    """Return (nodes, initializers, uint8 codes [R, T, S], flat codebooks [T*Gs*Gr*k, d]) for
    ``gather_rows``. Every input is a constant and the last op is a Cast to uint8, so a runtime folds
    the unpacking once into 1 byte per code (not the int64 the arithmetic runs in)."""
    layout = encoded.layout
    b = _Builder(names, prefix)
    T, R, S = layout.codes_shape
    as_int = _unpack_codes(b, encoded)
    if T == 1:
        rows = b.op("Reshape", [as_int, b.const("row_codes_shape", np.array([R, 1, S], np.int64))], "row_codes_i32")
    else:
        # Row-major [R, T, S]: one Gather along axis 0 then fetches every stage of a row.
        staged = b.op("Reshape", [as_int, b.const("codes_shape", np.array([T, R, S], np.int64))], "codes_trs")
        rows = b.op("Transpose", [staged], "row_codes_i64", perm=[1, 0, 2])
    codes = b.op("Cast", [rows], "row_codes", to=onnx.TensorProto.UINT8)
    books = b.const("codebooks", encoded.codebooks.reshape(-1, layout.subvector_len))
    return b.nodes, b.initializers, codes, books


def gather_rows(encoded: CodedWeight, codes: str, books: str, indices: str, names: NameAllocator, prefix: str):
    """Decode only the table rows ``indices`` (int32/int64, any rank) selects, from ``build_row_codes``'
    outputs. Needs ``axis in`` (a table row is a row of M). Return (nodes, initializers, rows float32
    [N, D] with N = number of indices, the shape indices.shape + [D]): a final Reshape gives the output."""
    layout = encoded.layout
    if layout.axis != AXIS_IN:
        raise ValueError("gather_rows needs axis in: with axis out a table row is a column of M")
    b = _Builder(names, prefix)
    T, R, S = layout.codes_shape
    k, d, D = layout.codebook_size, layout.subvector_len, layout.length

    # The raw ids go to the first Gather: it counts negatives from the end and refuses ids outside
    # [-R, R-1] as ONNX Gather does (wrapping them first would turn -R-1 into a valid -1).
    picked = b.op("Gather", [codes, indices], "codes", axis=0)  # [..., T, S] uint8
    index = b.op("Cast", [picked], "codes_i64", to=onnx.TensorProto.INT64)
    offset = (np.arange(T, dtype=np.int64) * layout.subspace_groups * layout.row_groups * k).reshape(T, 1)
    if layout.codebook_per_subspace:
        offset = offset + (np.arange(S, dtype=np.int64) * layout.row_groups * k).reshape(1, S)
    if offset.any():  # zero for one stage sharing one codebook: no Add per call
        index = b.op("Add", [index, b.const("stage_subspace_offset", offset)], "index_ts")
    id_shape = b.op("Shape", [indices], "ids_shape")
    if layout.row_groups > 1:
        # The row group needs the row itself: negative ids wrapped (r < 0 -> r + R) as Gather reads them.
        ids = b.op("Cast", [indices], "ids_i64", to=onnx.TensorProto.INT64)
        negative = b.op("Less", [ids, b.const("zero", np.array(0, np.int64))], "ids_negative")
        wrapped = b.op("Add", [ids, b.const("rows", np.array(R, np.int64))], "ids_wrapped")
        rows = b.op("Where", [negative, wrapped, ids], "row_ids")
        groups = b.op("Div", [rows, b.const("group_size", np.array(layout.group_size, np.int64))], "row_groups")
        group_offset = b.op("Mul", [groups, b.const("k", np.array(k, np.int64))], "group_offset")
        # [...] -> [..., 1, 1] with Reshape (Unsqueeze's signature changed at opset 13).
        shape = b.op("Concat", [id_shape, b.const("two_ones", np.array([1, 1], np.int64))], "group_offset_shape",
                     axis=0)
        group_offset = b.op("Reshape", [group_offset, shape], "group_offset_nd")
        index = b.op("Add", [index, group_offset], "index")

    gathered = b.op("Gather", [books, index], "gathered", axis=0)  # [..., T, S, d]
    if encoded.codebooks.dtype != np.float32:
        gathered = b.op("Cast", [gathered], "gathered_f32", to=onnx.TensorProto.FLOAT)
    rows_matrix = b.op("Reshape", [gathered, b.const("staged_shape", np.array([-1, T, S * d], np.int64))],
                       "staged")
    if T > 1:
        # Sum the stages with a MatMul by ones: works at every opset, unlike ReduceSum's signature.
        rows_matrix = b.op("MatMul", [b.const("ones", np.ones((1, T), np.float32)), rows_matrix], "stage_sum")
    if S * d != D:
        rows_matrix = b.op("Slice", [rows_matrix, b.const("m_start", np.array([0], np.int64)),
                                     b.const("m_stop", np.array([D], np.int64)),
                                     b.const("m_axis", np.array([2], np.int64))], "rows_unpadded")
    out_shape = b.op("Concat", [id_shape, b.const("row_len", np.array([D], np.int64))], "out_shape", axis=0)
    return b.nodes, b.initializers, rows_matrix, out_shape
