"""Packing of code arrays into the op's ``codes`` input.

format_version 1: one LSB-first stream. Code i of the flattened array occupies stream bits
[i*bits, (i+1)*bits); stream bit b is bit (b % 8) of byte b // 8. Pure numpy, vectorized
over bit positions, not over codes.

format_version 2: 4-bit fast-scan blocks of 32 rows (see onnxvq/ops/schema.py for the byte
order). format_version 3: 8-bit byte-scan blocks of 64 rows. ``pack_for_op`` / ``unpack_from_op`` pick the layout from ``layout.format_version``.
"""
from __future__ import annotations

import numpy as np

from .schema import (BYTESCAN_BLOCK_ROWS, BYTESCAN_FORMAT_VERSION, FASTSCAN_BLOCK_ROWS, FASTSCAN_FORMAT_VERSION,
                     FASTSCAN_GROUP_BYTES, MAX_BITS, MIN_BITS, ceil_div)


def packed_nbytes(num_codes: int, bits: int) -> int:
    return ceil_div(num_codes * bits, 8)


def _check_bits(bits: int) -> None:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in [{MIN_BITS}, {MAX_BITS}], got {bits}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integer codes (< 2**bits) into a uint8 stream."""
    _check_bits(bits)
    flat = np.asarray(codes).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= (1 << bits)):
        raise ValueError(f"codes must lie in [0, {1 << bits}), got [{flat.min()}, {flat.max()}]")
    flat = flat.astype(np.uint8)
    if bits == 8:
        return flat.copy()
    # Expand every code into its bits (LSB first), then pack the bit stream LSB-first.
    bit_matrix = (flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(bit_matrix.reshape(-1), bitorder="little")


def unpack_codes(stream: np.ndarray, bits: int, num_codes: int) -> np.ndarray:
    """Inverse of pack_codes; returns uint8 codes of length num_codes."""
    _check_bits(bits)
    stream = np.asarray(stream, dtype=np.uint8).reshape(-1)
    need = packed_nbytes(num_codes, bits)
    if stream.size != need:
        raise ValueError(f"a stream of {num_codes} {bits}-bit codes has {need} bytes, got {stream.size}")
    if bits == 8:
        return stream.copy()
    bit_stream = np.unpackbits(stream, bitorder="little")[: num_codes * bits]
    weights = (1 << np.arange(bits)).astype(np.uint16)
    return (bit_stream.reshape(num_codes, bits).astype(np.uint16) @ weights).astype(np.uint8)


def _padded_rows(codes: np.ndarray, limit: int, block_rows: int) -> np.ndarray:
    """Codes [T, R, S] checked to lie in [0, limit), rows zero-padded to a multiple of block_rows."""
    codes = np.asarray(codes)
    T, R, S = codes.shape
    if codes.size and (codes.min() < 0 or codes.max() >= limit):
        raise ValueError(f"codes must lie in [0, {limit}), got [{codes.min()}, {codes.max()}]")
    padded = np.zeros((T, ceil_div(R, block_rows) * block_rows, S), np.uint8)
    padded[:, :R] = codes
    return padded


def _blocked_stream(stream: np.ndarray, shape: tuple[int, int, int], version: int, block_rows: int,
                    entry_bytes: int) -> np.ndarray:
    """A blocked stream checked for its size, as [B, T, S, entry_bytes]."""
    T, R, S = shape
    blocks = ceil_div(R, block_rows)
    stream = np.asarray(stream, dtype=np.uint8).reshape(-1)
    need = blocks * T * S * entry_bytes
    if stream.size != need:
        raise ValueError(f"a format_version {version} stream for codes {shape} has {need} bytes, got {stream.size}")
    return stream.reshape(blocks, T, S, entry_bytes)


def pack_fastscan(codes: np.ndarray) -> np.ndarray:
    """format_version 2 stream for 4-bit codes [T, R, S]: blocks of 32 rows, 16 bytes per entry.

    byte[(b*E + e)*16 + j] = code(t, 32b + j, s) | code(t, 32b + 16 + j, s) << 4, e = t*S + s.
    """
    padded = _padded_rows(codes, 16, FASTSCAN_BLOCK_ROWS)
    T, padded_rows, S = padded.shape
    blocks = padded_rows // FASTSCAN_BLOCK_ROWS
    # [T, B, 2 (half), 16 (j), S] -> [B, T, S, j, half]
    rows = padded.reshape(T, blocks, 2, FASTSCAN_GROUP_BYTES, S).transpose(1, 0, 4, 3, 2)
    return (rows[..., 0] | (rows[..., 1] << 4)).astype(np.uint8).reshape(-1)


def unpack_fastscan(stream: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of pack_fastscan: codes [T, R, S] (uint8); padding rows are dropped."""
    T, R, S = shape
    groups = _blocked_stream(stream, shape, FASTSCAN_FORMAT_VERSION, FASTSCAN_BLOCK_ROWS, FASTSCAN_GROUP_BYTES)
    blocks = groups.shape[0]
    halves = np.stack([groups & 0x0F, groups >> 4], axis=-1)  # [B, T, S, j, half]
    rows = halves.transpose(1, 0, 4, 3, 2).reshape(T, blocks * FASTSCAN_BLOCK_ROWS, S)
    return np.ascontiguousarray(rows[:, :R])


def pack_bytescan(codes: np.ndarray) -> np.ndarray:
    """format_version 3 stream for 8-bit codes [T, R, S]: blocks of 64 rows, 64 bytes per entry.

    byte[(b*E + e)*64 + j] = code(t, 64b + j, s), e = t*S + s.
    """
    padded = _padded_rows(codes, 256, BYTESCAN_BLOCK_ROWS)
    T, padded_rows, S = padded.shape
    # [T, B, 64 (j), S] -> [B, T, S, j]
    return np.ascontiguousarray(padded.reshape(T, padded_rows // BYTESCAN_BLOCK_ROWS, BYTESCAN_BLOCK_ROWS, S)
                                .transpose(1, 0, 3, 2)).reshape(-1)


def unpack_bytescan(stream: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Inverse of pack_bytescan: codes [T, R, S] (uint8); padding rows are dropped."""
    T, R, S = shape
    entries = _blocked_stream(stream, shape, BYTESCAN_FORMAT_VERSION, BYTESCAN_BLOCK_ROWS, BYTESCAN_BLOCK_ROWS)
    rows = entries.transpose(1, 0, 3, 2).reshape(T, entries.shape[0] * BYTESCAN_BLOCK_ROWS, S)
    return np.ascontiguousarray(rows[:, :R])


def pack_for_op(codes: np.ndarray, layout) -> np.ndarray:
    """The VQMatMul ``codes`` input for unpacked codes [T, R, S] under ``layout.format_version``."""
    codes = np.asarray(codes)
    if codes.shape != layout.codes_shape:
        raise ValueError(f"codes shape {codes.shape} != layout {layout.codes_shape}")
    if layout.format_version == FASTSCAN_FORMAT_VERSION:
        return pack_fastscan(codes)
    if layout.format_version == BYTESCAN_FORMAT_VERSION:
        return pack_bytescan(codes)
    return pack_codes(codes, layout.bits)


def unpack_from_op(stream: np.ndarray, layout) -> np.ndarray:
    """Inverse of pack_for_op: unpacked codes [T, R, S] (uint8)."""
    if layout.format_version == FASTSCAN_FORMAT_VERSION:
        return unpack_fastscan(stream, layout.codes_shape)
    if layout.format_version == BYTESCAN_FORMAT_VERSION:
        return unpack_bytescan(stream, layout.codes_shape)
    return unpack_codes(stream, layout.bits, layout.num_codes).reshape(layout.codes_shape)
