"""Standard-op (opset >= 11) decoders and packers for the code layouts, all inputs constant.

Why standard ops: ONNX Runtime constant-folds standard ops whose inputs are initializers, so an
entropy-coded stream (``onnxvq/ops/entropy.py``, the "tiers" layout) is decoded once at session
creation, while a custom op would run at every call. The builder is portable.py's ``_Builder``.

* ``decode_tiers``: tiers layout -> int32 codes [n] (equal to ``entropy.decode``).
* ``unpack_stream``: a fixed-width LSB-first stream (``pack_codes``) -> int32 codes [n].
* ``pack_stream`` / ``pack_fastscan_stream`` / ``pack_bytescan_stream``: int32 codes -> the bytes
  ``pack_codes`` / ``pack_fastscan`` / ``pack_bytescan`` give, so a folded decode can feed the
  VQMatMul ``codes`` input.

No op used here changed its signature between opsets 11 and 21 (Gather, CumSum, Where, Range,
Cast, Reshape, Slice, Concat, Expand, Pad, Transpose, Add, Sub, Mul, Div, Mod), so none takes the
opset; the word sums use Gather + Add trees instead of ReduceSum, whose axes moved to an input at 13.
ORT holds every folded intermediate until folding ends, so symbols stay uint8 and ranks int32
(int64 only for the 56-bit words of ``pack_stream``): decoding folds at ~50 bytes per code
(measured, 5M codes, 5 tiers), against ~30 for the fixed-width unpacking.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx

from ..ops.entropy import TieredCodes, to_arrays, validate
from ..ops.packing import packed_nbytes
from ..ops.schema import BYTESCAN_BLOCK_ROWS, FASTSCAN_BLOCK_ROWS, FASTSCAN_GROUP_BYTES, ceil_div
from .portable import _Builder

INT32 = onnx.TensorProto.INT32
INT64 = onnx.TensorProto.INT64


def _i64(values) -> np.ndarray:
    return np.asarray(values, np.int64)


def _slice_prefix(b: _Builder, x: str, stop: int, suffix: str) -> str:
    return b.op("Slice", [x, b.const(f"{suffix}_start", _i64([0])), b.const(f"{suffix}_stop", _i64([stop]))], suffix)


def unpack_stream(b: _Builder, stream: str, n: int, bits: int, suffix: str = "stream") -> str:
    """uint8 LSB-first stream of n ``bits``-bit codes (exactly ceil(n*bits/8) bytes) -> int32 [n].

    A stream of another length makes the first Reshape fail (a runtime error, never a wrong read).
    The runtime holds every folded intermediate at once, so each path keeps them few and small."""
    if 8 % bits == 0:
        return b.op("Cast", [_unpack_u8(b, stream, n, bits, suffix)], f"{suffix}_i32", to=INT32)
    as_int = b.op("Cast", [_exact_length(b, stream, n, bits, suffix)], f"{suffix}_i32", to=INT32)
    return _unpack_across_bytes(b, as_int, n, bits, suffix)


def _exact_length(b: _Builder, stream: str, n: int, bits: int, suffix: str) -> str:
    shape = b.const(f"{suffix}_stored", _i64([packed_nbytes(n, bits)]))
    return b.op("Reshape", [stream, shape], f"{suffix}_checked")


#: A byte -> codes lookup table is used only when it costs at most this share of the stream it
#: unpacks (the 1-bit table is 2 KB: more than a small layer's entropy coding saves).
LUT_MAX_SHARE = 0.01


def _unpack_u8(b: _Builder, stream: str, n: int, bits: int, suffix: str) -> str:
    """bits 1, 2, 4, 8 -> uint8 codes [n]. No code spans two bytes, so either one Gather of a
    constant [256, 8 / bits] table of each byte's codes (1 byte per code in flight: large streams)
    or, for small streams, byte // 2**(j*bits) % 2**bits in int32 (a few bytes of constants)."""
    checked = _exact_length(b, stream, n, bits, suffix)
    if bits == 8:
        return checked
    per_byte = 8 // bits
    index = b.op("Cast", [checked], f"{suffix}_index", to=INT32)
    if 256 * per_byte <= LUT_MAX_SHARE * packed_nbytes(n, bits):
        lut = (np.arange(256)[:, None] >> (np.arange(per_byte) * bits)) & ((1 << bits) - 1)
        codes = b.op("Gather", [b.const(f"{suffix}_lut", lut.astype(np.uint8)), index], f"{suffix}_unpacked",
                     axis=0)
    else:
        column = b.op("Reshape", [index, b.const(f"{suffix}_column", _i64([-1, 1]))], f"{suffix}_bytes")
        shift = (1 << (np.arange(per_byte) * bits)).astype(np.int32).reshape(1, per_byte)
        shifted = b.op("Div", [column, b.const(f"{suffix}_shift", shift)], f"{suffix}_shifted")
        levels = b.op("Mod", [shifted, b.const(f"{suffix}_levels", np.array(1 << bits, np.int32))], f"{suffix}_values")
        codes = b.op("Cast", [levels], f"{suffix}_unpacked", to=onnx.TensorProto.UINT8)
    flat = b.op("Reshape", [codes, b.const(f"{suffix}_flat_shape", _i64([-1]))], f"{suffix}_flat")
    return flat if packed_nbytes(n, bits) * per_byte == n else _slice_prefix(b, flat, n, f"{suffix}_codes")


def _unpack_across_bytes(b: _Builder, as_int: str, n: int, bits: int, suffix: str) -> str:
    """bits 3, 5, 6, 7: portable.py's ``_unpack_codes`` for any stream. Eight codes fill ``bits``
    bytes; a code is read from the (at most) two bytes it spans, (lo + 256*hi) // 2**shift % 2**bits."""
    chunks, stored = ceil_div(n, 8), packed_nbytes(n, bits)
    if chunks * bits > stored:  # the stream ends mid-chunk: complete it with zero bytes
        pad = b.const(f"{suffix}_chunk_pad", np.zeros(chunks * bits - stored, np.int32))
        as_int = b.op("Concat", [as_int, pad], f"{suffix}_padded", axis=0)
    chunk = b.op("Reshape", [as_int, b.const(f"{suffix}_chunk_shape", _i64([chunks, bits]))], f"{suffix}_chunks")
    start_bit = np.arange(8) * bits
    low_byte = start_bit // 8
    high_byte = np.minimum(low_byte + 1, bits - 1)  # past a code's end only when it fits in its low byte
    low = b.op("Gather", [chunk, b.const(f"{suffix}_low_byte", _i64(low_byte))], f"{suffix}_low", axis=1)
    high = b.op("Gather", [chunk, b.const(f"{suffix}_high_byte", _i64(high_byte))], f"{suffix}_high", axis=1)
    high = b.op("Mul", [high, b.const(f"{suffix}_byte", np.array(256, np.int32))], f"{suffix}_high_shifted")
    word = b.op("Add", [low, high], f"{suffix}_word")
    shifted = b.op("Div", [word, b.const(f"{suffix}_shift", (1 << (start_bit % 8)).astype(np.int32))],
                   f"{suffix}_shifted")
    return _flatten_codes(b, shifted, n, bits, chunks * 8, suffix)


def _flatten_codes(b: _Builder, shifted: str, n: int, bits: int, available: int, suffix: str) -> str:
    """[chunks, 8] shifted words -> their low ``bits`` bits, flat, the first n of ``available``."""
    values = b.op("Mod", [shifted, b.const(f"{suffix}_levels", np.array(1 << bits, np.int32))], f"{suffix}_values")
    flat = b.op("Reshape", [values, b.const(f"{suffix}_flat_shape", _i64([-1]))], f"{suffix}_flat")
    return flat if available == n else _slice_prefix(b, flat, n, f"{suffix}_codes")


# --- tiers ------------------------------------------------------------------------------------

def _tier_values(b: _Builder, tc: TieredCodes, arrays: dict[str, str], i: int, count: int,
                 p: str) -> tuple[str, bool]:
    """(uint8 symbols of tier i's codes in code order [count], False), or (table [1], True) for a
    constant (0-width) tier, which Where broadcasts. Symbols stay uint8 until the final Cast."""
    if tc.widths[i] == 0:
        return arrays[f"table{i}"], True
    index = unpack_stream(b, arrays[f"payload{i}"], count, tc.widths[i], f"{p}payload{i}")
    return b.op("Gather", [arrays[f"table{i}"], index], f"{p}tier{i}_values", axis=0), False


def _spread(b: _Builder, side: tuple[str, bool], rank: Callable[[], str], name: str) -> str:
    """Gather a tier's values to every position of its level (a constant tier broadcasts as is)."""
    values, is_constant = side
    return values if is_constant else b.op("Gather", [values, rank()], name, axis=0)


def _merge_level(b: _Builder, mask: str, reaching: int, chosen: tuple[str, bool], rest: tuple[str, bool],
                 i: int, p: str) -> str:
    """v_i = Where(m, chosen[r], rest[q]) with C = CumSum(m), r = C - 1 (rank in tier i) and
    q = Range(reaching) - C (= CumSum(1 - m) - 1, the rank among the rest: one CumSum for both).

    Off the selected branch r (resp. q) lies in [-1, count - 1], -1 being a legal (wrapping) Gather
    index, so the unused branch never reads out of bounds while the layout is consistent; a crafted
    mask whose counts disagree with the tensor sizes gives an out-of-range index: the runtime's error."""
    bits = _unpack_u8(b, mask, reaching, 1, f"{p}mask{i}")
    m = b.op("Cast", [bits], f"{p}mask{i}_i32", to=INT32)
    ones = b.op("CumSum", [m, b.const(f"{p}mask{i}_axis", np.array(0, np.int32))], f"{p}mask{i}_ones")

    def tier_rank() -> str:
        return b.op("Sub", [ones, b.const(f"{p}tier{i}_one", np.array(1, np.int32))], f"{p}tier{i}_rank")

    def rest_rank() -> str:
        bounds = (("start", 0), ("stop", reaching), ("step", 1))
        limits = [b.const(f"{p}rest{i}_{k}", np.array(v, np.int32)) for k, v in bounds]
        return b.op("Sub", [b.op("Range", limits, f"{p}rest{i}_position"), ones], f"{p}rest{i}_rank")

    condition = b.op("Cast", [bits], f"{p}mask{i}_bool", to=onnx.TensorProto.BOOL)
    picked = [_spread(b, chosen, tier_rank, f"{p}tier{i}_spread"), _spread(b, rest, rest_rank, f"{p}rest{i}_spread")]
    return b.op("Where", [condition, *picked], f"{p}level{i}")


def decode_tiers(b: _Builder, tc: TieredCodes, prefix: str = "") -> str:
    """Add ``tc``'s tensors (named ``{prefix}table0`` ... as ``to_arrays`` keys them) and the nodes
    computing int32 codes [num_codes] equal to ``entropy.decode(tc)``; return the output name.

    Built from the innermost level out: v_{L-1} = table[payload], then each mask i interleaves
    tier i's values with v_{i+1}. A 0-width tier stays a 1-element tensor (no index stream)."""
    validate(tc, prefix.rstrip("._") or "tiers")
    arrays = {key: b.const(f"{prefix}{key}", value) for key, value in to_arrays(tc).items()}
    sizes, last = tc.tier_sizes, tc.num_tiers - 1
    values = _tier_values(b, tc, arrays, last, sizes[last], prefix)
    reaching = sizes[last]
    for i in range(last - 1, -1, -1):
        reaching += sizes[i]
        chosen = _tier_values(b, tc, arrays, i, sizes[i], prefix)
        values = (_merge_level(b, arrays[f"mask{i}"], reaching, chosen, values, i, prefix), False)
    codes, is_constant = values
    if is_constant:  # a single constant tier: every code is table0[0]
        codes = b.op("Expand", [codes, b.const(f"{prefix}codes_shape", _i64([tc.num_codes]))], f"{prefix}codes_u8")
    return b.op("Cast", [codes], f"{prefix}codes", to=INT32)


# --- packing ----------------------------------------------------------------------------------

def _pair_sum(b: _Builder, x: str, width: int, shift_bits: int, suffix: str) -> str:
    """[rows, width] int64 -> [rows, width/2]: even column + odd column * 2**shift_bits."""
    even = b.op("Gather", [x, b.const(f"{suffix}_even", _i64(np.arange(0, width, 2)))], f"{suffix}_lo", axis=1)
    odd = b.op("Gather", [x, b.const(f"{suffix}_odd", _i64(np.arange(1, width, 2)))], f"{suffix}_hi", axis=1)
    odd = b.op("Mul", [odd, b.const(f"{suffix}_scale", np.array(1 << shift_bits, np.int64))], f"{suffix}_hi_shifted")
    return b.op("Add", [even, odd], f"{suffix}_sum")


def pack_stream(b: _Builder, codes_i32: str, n: int, bits: int, suffix: str = "pack") -> str:
    """int32 codes [n] (each < 2**bits) -> the uint8 stream ``pack_codes`` gives (ceil(n*bits/8) bytes).

    Eight codes make one word of 8*bits <= 56 bits (int64): word = sum_j code_j * 2**(j*bits),
    summed as a tree of pairs; its bytes are word // 256**k % 256, k < bits."""
    if bits == 8:
        return b.op("Cast", [codes_i32], f"{suffix}_bytes", to=onnx.TensorProto.UINT8)
    chunks = ceil_div(n, 8)
    x = b.op("Cast", [codes_i32], f"{suffix}_i64", to=INT64)
    if chunks * 8 > n:
        pad = b.const(f"{suffix}_pad", np.zeros(chunks * 8 - n, np.int64))
        x = b.op("Concat", [x, pad], f"{suffix}_padded", axis=0)
    x = b.op("Reshape", [x, b.const(f"{suffix}_chunk_shape", _i64([chunks, 8]))], f"{suffix}_chunks")
    for level, width in enumerate((8, 4, 2)):
        x = _pair_sum(b, x, width, bits << level, f"{suffix}_pairs{width}")
    scale = b.const(f"{suffix}_byte_scale", (256 ** np.arange(bits, dtype=np.int64)).reshape(1, bits))
    shifted = b.op("Div", [x, scale], f"{suffix}_shifted")  # [chunks, 1] / [1, bits]
    byte = b.op("Mod", [shifted, b.const(f"{suffix}_byte", np.array(256, np.int64))], f"{suffix}_byte_values")
    byte = b.op("Cast", [byte], f"{suffix}_u8", to=onnx.TensorProto.UINT8)
    flat = b.op("Reshape", [byte, b.const(f"{suffix}_flat_shape", _i64([-1]))], f"{suffix}_flat")
    stored = packed_nbytes(n, bits)
    return flat if chunks * bits == stored else _slice_prefix(b, flat, stored, f"{suffix}_bytes")


def _padded_codes(b: _Builder, codes_i32: str, shape_TRS: tuple[int, int, int], block_rows: int, suffix: str) -> str:
    """int32 codes as [T, R', S], rows zero-padded to a multiple of block_rows."""
    T, R, S = shape_TRS
    x = b.op("Reshape", [codes_i32, b.const(f"{suffix}_trs", _i64([T, R, S]))], f"{suffix}_codes")
    pad_rows = ceil_div(R, block_rows) * block_rows - R
    if pad_rows:
        x = b.op("Pad", [x, b.const(f"{suffix}_pads", _i64([0, 0, 0, 0, pad_rows, 0]))], f"{suffix}_padded")
    return x


def pack_fastscan_stream(b: _Builder, codes_i32: str, shape_TRS: tuple[int, int, int],
                         suffix: str = "fastscan") -> str:
    """int32 4-bit codes (T*R*S elements, [T, R, S] order) -> the bytes ``pack_fastscan`` gives.

    Rows are zero-padded to blocks of 32 and reordered by a Reshape + Transpose (not a Gather by a
    constant permutation, which would store 8 index bytes per code); byte = lo + 16 * hi."""
    T, R, S = shape_TRS
    blocks = ceil_div(R, FASTSCAN_BLOCK_ROWS)
    x = _padded_codes(b, codes_i32, shape_TRS, FASTSCAN_BLOCK_ROWS, suffix)
    x = b.op("Reshape", [x, b.const(f"{suffix}_blocks", _i64([T, blocks, 2, FASTSCAN_GROUP_BYTES, S]))],
             f"{suffix}_halves")
    x = b.op("Transpose", [x], f"{suffix}_ordered", perm=[2, 1, 0, 4, 3])  # [half, B, T, S, j]
    lo = b.op("Gather", [x, b.const(f"{suffix}_lo_index", np.array(0, np.int64))], f"{suffix}_lo", axis=0)
    hi = b.op("Gather", [x, b.const(f"{suffix}_hi_index", np.array(1, np.int64))], f"{suffix}_hi", axis=0)
    hi = b.op("Mul", [hi, b.const(f"{suffix}_nibble", np.array(16, np.int32))], f"{suffix}_hi_shifted")
    byte = b.op("Cast", [b.op("Add", [lo, hi], f"{suffix}_sum")], f"{suffix}_u8", to=onnx.TensorProto.UINT8)
    return b.op("Reshape", [byte, b.const(f"{suffix}_flat_shape", _i64([-1]))], f"{suffix}_bytes")


def pack_bytescan_stream(b: _Builder, codes_i32: str, shape_TRS: tuple[int, int, int],
                         suffix: str = "bytescan") -> str:
    """int32 8-bit codes (T*R*S elements, [T, R, S] order) -> the bytes ``pack_bytescan`` gives:
    rows zero-padded to blocks of 64, then a Reshape + Transpose to [B, T, S, 64]."""
    T, R, S = shape_TRS
    blocks = ceil_div(R, BYTESCAN_BLOCK_ROWS)
    x = _padded_codes(b, codes_i32, shape_TRS, BYTESCAN_BLOCK_ROWS, suffix)
    x = b.op("Reshape", [x, b.const(f"{suffix}_blocks", _i64([T, blocks, BYTESCAN_BLOCK_ROWS, S]))],
             f"{suffix}_rows")
    x = b.op("Transpose", [x], f"{suffix}_ordered", perm=[1, 0, 3, 2])  # [B, T, S, j]
    byte = b.op("Cast", [x], f"{suffix}_u8", to=onnx.TensorProto.UINT8)
    return b.op("Reshape", [byte, b.const(f"{suffix}_flat_shape", _i64([-1]))], f"{suffix}_bytes")


#: Name prefix of the tiers decoders (``vqe``, ``vqe_1``, ...): short, because every name is stored
#: several times and a decoder must save more bytes than it adds.
COMPACT_PREFIX = "vqe"


def compact_builder(names) -> _Builder:
    """A builder for one tiers decoder: a short unique prefix and unnamed nodes."""
    return _Builder(names, names.new(COMPACT_PREFIX), node_names=False)


def decoder_overhead_bytes(tc: TieredCodes) -> int:
    """Serialized bytes the tiers decoder adds beyond ``tc.nbytes`` (nodes, small constants, tensor
    headers), measured by building it once as the pass does: what --entropy must save."""
    from .names import NameAllocator

    allocator = NameAllocator(onnx.ModelProto())
    allocator.used.update(f"{COMPACT_PREFIX}_{i}" if i else COMPACT_PREFIX for i in range(100))  # a typical prefix
    b = compact_builder(allocator)
    decode_tiers(b, tc, "c")
    total = sum(n.ByteSize() for n in b.nodes) + sum(t.ByteSize() for t in b.initializers)
    return max(total - int(tc.nbytes), 0)
