"""Entropy-coded code layout "tiers": a tiered prefix code that standard ONNX ops can decode.

This docstring is the single definition of the layout; the encoder, the numpy reference decoder,
``validate`` and the ONNX decoder (``onnxvq/passes/entropy_decoder.py``) all follow it.

Why: after pruning one code (0, the zero codeword) dominates, so a fixed-width stream wastes
most of its bits. A full Huffman decoder is sequential and cannot be written with the vectorized
ops that a runtime constant-folds; this layout gets close to the order-0 entropy and decodes with
CumSum / Gather / Where only.

Layout
------
Input: a flat array ``codes`` of n >= 1 values < 2**bits (bits 1..8).

* The distinct symbols present are sorted by descending count, ties by symbol value ascending,
  and the sorted list is cut into L consecutive *tiers*, 1 <= L <= MAX_TIERS. Tier i has a symbol
  table ``table_i`` (uint8, m_i >= 1 distinct symbols, in sorted order) and a payload width
  w_i = ceil(log2(m_i)) bits (0 when m_i = 1). No symbol appears in two tables.
* Level 0 sees all n codes; level i sees the codes not in tiers < i (s_0 = n, s_{i+1} = s_i - n_i).
* For i < L-1, ``mask_i`` is a 1-bit-per-code stream over the s_i codes of level i, in code order:
  bit 1 = "this code is in tier i". n_i is its number of ones (among its first s_i bits). The last
  tier has no mask: n_{L-1} = s_{L-1}. Every tier holds at least one code.
* ``payload_i`` is the w_i-bit stream of the within-tier indices (position in table_i, < m_i) of
  the n_i codes of tier i, in code order; it is empty when w_i = 0.
* Every stream is packed with ``pack_codes`` (LSB-first): exactly ceil(count * width / 8) bytes;
  the padding bits of a stream's last byte are ignored.

Cost: sum_{i<L-1} s_i + sum_i n_i * w_i bits of streams, plus the tables. The encoder chooses L
and the cuts by an exact dynamic programme minimizing the stored bytes (byte padding included)
plus TENSOR_OVERHEAD_BYTES per stored tensor (table_i, mask_i, and payload_i when w_i > 0), the
allowance for an ONNX initializer's header. One tier is plain fixed-width coding through a table.

Stored tensors (``to_arrays``): ``table{i}``, ``mask{i}`` (i < L-1), ``payload{i}`` (w_i > 0), all
uint8 and 1-D. The counts are not stored: they follow from the masks.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np

from .packing import pack_codes, packed_nbytes, unpack_codes
from .schema import MAX_BITS, MIN_BITS

MAX_TIERS = 8
# Bytes charged per stored tensor when choosing the cuts: an ONNX initializer's name, dims and
# type cost about this much in the file, so a tier that saves fewer bytes is not worth adding.
TENSOR_OVERHEAD_BYTES = 64


def width_for(num_symbols: int) -> int:
    """Payload width of a tier of ``num_symbols`` symbols: ceil(log2(m)), 0 for a single symbol."""
    return (int(num_symbols) - 1).bit_length()


@dataclass(frozen=True, eq=False)
class TieredCodes:
    """Codes in the "tiers" layout (see the module docstring); built by ``encode``."""

    num_codes: int
    bits: int
    tables: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    payloads: tuple[np.ndarray, ...]

    @property
    def num_tiers(self) -> int:
        return len(self.tables)

    @property
    def widths(self) -> tuple[int, ...]:
        """Payload width of every tier, derived from its table size."""
        return tuple(width_for(t.size) for t in self.tables)

    @property
    def nbytes(self) -> int:
        """Bytes of every array (tables, masks, payloads): what the layout stores."""
        return sum(int(a.nbytes) for a in (*self.tables, *self.masks, *self.payloads))

    @property
    def num_tensors(self) -> int:
        """Tensors ``to_arrays`` stores: every table and mask, the payloads of non-zero width."""
        return len(self.tables) + len(self.masks) + sum(w > 0 for w in self.widths)

    @property
    def cost_bytes(self) -> int:
        """What the encoder minimizes: ``nbytes`` + TENSOR_OVERHEAD_BYTES per stored tensor."""
        return self.nbytes + TENSOR_OVERHEAD_BYTES * self.num_tensors

    @cached_property
    def tier_sizes(self) -> tuple[int, ...]:
        """n_i, the codes of each tier, implied by the masks (raises ValueError if they are inconsistent)."""
        return tuple(_tier_sizes(self, "tiers"))

    @property
    def bits_per_code(self) -> float:
        """Stored bits per code, tables included (not the per-tensor allowance)."""
        return 8.0 * self.nbytes / self.num_codes


# --- measuring ------------------------------------------------------------------------------

def entropy_bits(counts: np.ndarray) -> float:
    """Order-0 Shannon bound in total bits: sum c * log2(n / c); no prefix code does better."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    return float(np.sum(c * np.log2(c.sum() / c)))


def huffman_bits(counts: np.ndarray) -> int:
    """Total bits of an optimal (Huffman) prefix code for these counts; 0 with one symbol present
    (its codeword is empty), as for our layout, whose single-symbol tier has no payload."""
    heap = [int(c) for c in np.asarray(counts).reshape(-1) if c > 0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged  # every symbol under this node gets one more bit
        heapq.heappush(heap, merged)
    return total


def stream_bits(tc: TieredCodes) -> int:
    """Unpadded bits of the masks and payloads: the layout as a prefix code, without tables."""
    sizes = tc.tier_sizes
    reaching = tc.num_codes
    total = 0
    for i, (n_i, w_i) in enumerate(zip(sizes, tc.widths)):
        if i < tc.num_tiers - 1:
            total += reaching
        total += n_i * w_i
        reaching -= n_i
    return total


# --- encoding -------------------------------------------------------------------------------

def _check_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    if not isinstance(bits, (int, np.integer)) or not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be an int in [{MIN_BITS}, {MAX_BITS}], got {bits!r}")
    flat = np.asarray(codes).reshape(-1)
    if flat.size == 0:
        raise ValueError("the tiers layout needs at least one code")
    if not np.issubdtype(flat.dtype, np.integer):
        raise ValueError(f"codes must be integers, got dtype {flat.dtype}")
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi >= 1 << bits:
        raise ValueError(f"codes must lie in [0, {1 << bits}), got [{lo}, {hi}]")
    return flat.astype(np.uint8, copy=False)


def sorted_symbols(counts: np.ndarray) -> np.ndarray:
    """Symbols present, by descending count then ascending value: the order tiers are cut from."""
    counts = np.asarray(counts)
    present = np.flatnonzero(counts > 0)
    return present[np.lexsort((present, -counts[present]))]


def _tier_costs(sorted_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cost_mid[a, b]: bytes (+ allowance) of a non-last tier holding sorted symbols [a, b);
    cost_last[a]: the same for the last tier [a, K). Infinite where a >= b."""
    k = sorted_counts.size
    prefix = np.concatenate([[0], np.cumsum(sorted_counts, dtype=np.int64)])
    a = np.arange(k + 1)[:, None]
    b = np.arange(k + 1)[None, :]
    m = np.maximum(b - a, 1)
    width = np.array([width_for(size) for size in range(k + 1)], np.int64)[m]
    in_tier = prefix[None, :] - prefix[:, None]
    reaching = prefix[-1] - prefix[:, None]
    payload = -(-in_tier * width // 8) + TENSOR_OVERHEAD_BYTES * (width > 0)
    table = m + TENSOR_OVERHEAD_BYTES
    mask = -(-reaching // 8) + TENSOR_OVERHEAD_BYTES
    cost_mid = np.where(b > a, table + payload + mask, np.inf).astype(np.float64)
    cost_last = cost_mid[:, k] - mask[:, 0]  # same tier without its mask
    cost_last[k] = np.inf
    return cost_mid, cost_last


def optimal_tier_symbols(counts: np.ndarray, max_tiers: int = MAX_TIERS) -> tuple[int, ...]:
    """Symbols per tier minimizing ``cost_bytes``: exact DP over the cut points of the sorted
    symbols (a tier's cost depends only on its own first and last symbol)."""
    sorted_counts = np.asarray(counts)[sorted_symbols(counts)].astype(np.int64)
    k = sorted_counts.size
    if k == 0 or not 1 <= max_tiers <= MAX_TIERS:
        raise ValueError(f"need a symbol with a positive count and 1 <= max_tiers <= {MAX_TIERS}, "
                         f"got {k} symbols and max_tiers={max_tiers}")
    cost_mid, cost_last = _tier_costs(sorted_counts)
    best = np.full(k + 1, np.inf)  # best[b]: cheapest cover of [0, b) by t non-last tiers
    best[0] = 0.0
    parents: list[np.ndarray] = []
    best_total, best_layout = np.inf, (0, k)  # (non-last tier count, start of the last tier)
    for t in range(max_tiers):
        if t > 0:
            candidates = best[:, None] + cost_mid  # [a, b]
            parents.append(np.argmin(candidates, axis=0))
            best = candidates.min(axis=0)
        totals = best + cost_last
        a = int(np.argmin(totals))
        if totals[a] < best_total:  # strict: fewer tiers win ties
            best_total, best_layout = totals[a], (t, a)
    t, start = best_layout
    cuts = [k, start]
    for level in range(t - 1, -1, -1):
        start = int(parents[level][start])
        cuts.append(start)
    cuts = cuts[::-1]
    return tuple(int(y - x) for x, y in zip(cuts[:-1], cuts[1:]))


def encode(codes: np.ndarray, bits: int, *, tier_symbols: Sequence[int] | None = None) -> TieredCodes:
    """Encode flat codes (< 2**bits) in the tiers layout, with the DP's cuts unless
    ``tier_symbols`` (symbols per tier, in sorted order) forces them. Vectorized: one pass of
    table lookups plus one boolean selection per tier."""
    flat = _check_codes(codes, bits)
    counts = np.bincount(flat, minlength=1 << bits)
    order = sorted_symbols(counts)
    if tier_symbols is None:
        tier_symbols = optimal_tier_symbols(counts)
    tier_symbols = _check_tier_symbols(tier_symbols, order.size)
    starts = np.concatenate([[0], np.cumsum(tier_symbols)[:-1]]).astype(np.int64)
    tier_of_rank = np.repeat(np.arange(len(tier_symbols)), tier_symbols)
    tier_lut = np.zeros(256, np.uint8)
    index_lut = np.zeros(256, np.uint8)
    tier_lut[order] = tier_of_rank
    index_lut[order] = np.arange(order.size) - starts[tier_of_rank]

    tiers, index = tier_lut[flat], index_lut[flat]
    masks, payloads = [], []
    last = len(tier_symbols) - 1
    for i, m_i in enumerate(tier_symbols):
        if i < last:
            chosen = tiers == i
            masks.append(pack_codes(chosen.view(np.uint8), 1))
            tier_index = index[chosen]
            rest = ~chosen
            tiers, index = tiers[rest], index[rest]
        else:
            tier_index = index
        w = width_for(m_i)
        payloads.append(pack_codes(tier_index, w) if w else np.zeros(0, np.uint8))
    tables = tuple(order[s:s + m].astype(np.uint8) for s, m in zip(starts, tier_symbols))
    return TieredCodes(int(flat.size), int(bits), tables, tuple(masks), tuple(payloads))


def _check_tier_symbols(tier_symbols: Sequence[int], num_symbols: int) -> tuple[int, ...]:
    sizes = tuple(int(m) for m in tier_symbols)
    if not 1 <= len(sizes) <= MAX_TIERS or min(sizes) < 1 or sum(sizes) != num_symbols:
        raise ValueError(f"tier_symbols must be 1..{MAX_TIERS} positive sizes summing to the "
                         f"{num_symbols} symbols present, got {sizes}")
    return sizes


# --- validating and decoding ----------------------------------------------------------------

def _check_header(tc: TieredCodes, name: str) -> None:
    if not isinstance(tc.bits, (int, np.integer)) or not MIN_BITS <= tc.bits <= MAX_BITS:
        raise ValueError(f"{name}: bits must be in [{MIN_BITS}, {MAX_BITS}], got {tc.bits!r}")
    if not isinstance(tc.num_codes, (int, np.integer)) or tc.num_codes < 1:
        raise ValueError(f"{name}: num_codes must be an int >= 1, got {tc.num_codes!r}")
    tiers = len(tc.tables)
    if not 1 <= tiers <= MAX_TIERS:
        raise ValueError(f"{name}: {tiers} tiers, expected 1..{MAX_TIERS}")
    if len(tc.masks) != tiers - 1:
        raise ValueError(f"{name}: {tiers} tiers need {tiers - 1} masks, got {len(tc.masks)}")
    if len(tc.payloads) != tiers:
        raise ValueError(f"{name}: {tiers} tiers need {tiers} payloads, got {len(tc.payloads)}")
    for key, array in _named_arrays(tc):
        if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != 1:
            what = f"{array.dtype}, {array.ndim}-D" if isinstance(array, np.ndarray) else type(array).__name__
            raise ValueError(f"{name}.{key}: expected a 1-D uint8 array, got {what}")


def _check_tables(tc: TieredCodes, name: str) -> None:
    seen: dict[int, int] = {}
    for i, table in enumerate(tc.tables):
        if table.size == 0:
            raise ValueError(f"{name}.table{i}: empty table (every tier has at least one symbol)")
        if int(table.max()) >= 1 << tc.bits:
            raise ValueError(f"{name}.table{i}: symbol {int(table.max())} >= 2**bits = {1 << tc.bits}")
        for symbol in table.tolist():
            if symbol in seen:
                raise ValueError(f"{name}.table{i}: duplicate symbol {symbol} (already in table{seen[symbol]})")
            seen[symbol] = i


def _unpack_mask(mask: np.ndarray, count: int) -> np.ndarray:
    return np.unpackbits(mask, count=count, bitorder="little").view(bool)


def _tier_sizes(tc: TieredCodes, name: str) -> list[int]:
    """n_i from the masks, checking every mask's byte length and that no tier is empty."""
    _check_header(tc, name)
    sizes, reaching = [], int(tc.num_codes)
    for i, mask in enumerate(tc.masks):
        need = packed_nbytes(reaching, 1)
        if mask.size != need:
            raise ValueError(f"{name}.mask{i}: {mask.size} bytes, but {reaching} codes reach level {i} "
                             f"and need {need}")
        n_i = int(np.count_nonzero(_unpack_mask(mask, reaching)))
        if n_i == 0 or n_i == reaching:
            which = f"tier {i}" if n_i == 0 else f"tiers {i + 1}.. (every code of level {i} is in tier {i})"
            raise ValueError(f"{name}.mask{i}: {which} would be empty; the encoder never writes an empty tier")
        sizes.append(n_i)
        reaching -= n_i
    sizes.append(reaching)
    return sizes


def _check_payload_lengths(tc: TieredCodes, name: str, sizes: list[int]) -> None:
    for i, (payload, n_i, w) in enumerate(zip(tc.payloads, sizes, tc.widths)):
        need = packed_nbytes(n_i, w) if w else 0
        if payload.size != need:
            raise ValueError(f"{name}.payload{i}: {payload.size} bytes, but {n_i} codes of {w} bits "
                             f"(table{i} has {tc.tables[i].size} symbols) need {need}")


def _tier_indices(tc: TieredCodes, name: str, sizes: list[int]) -> list[np.ndarray | None]:
    """Unpacked payloads (None for a 0-width tier), checking every index is < its table size."""
    out: list[np.ndarray | None] = []
    for i, (payload, n_i, w) in enumerate(zip(tc.payloads, sizes, tc.widths)):
        if w == 0:
            out.append(None)
            continue
        index = unpack_codes(payload, w, n_i)
        m_i = tc.tables[i].size
        if m_i < 1 << w and index.size and int(index.max()) >= m_i:
            raise ValueError(f"{name}.payload{i}: index {int(index.max())} >= the {m_i} symbols of table{i}")
        out.append(index)
    return out


def _checked(tc: TieredCodes, name: str) -> tuple[list[int], list[np.ndarray | None]]:
    _check_header(tc, name)
    _check_tables(tc, name)
    sizes = _tier_sizes(tc, name)
    _check_payload_lengths(tc, name, sizes)
    return sizes, _tier_indices(tc, name, sizes)


def validate(tc: TieredCodes, name: str) -> None:
    """Raise ValueError naming ``name`` and the offending tensor unless ``tc`` follows the layout
    exactly (every length, count, symbol and index); run on anything read from a file."""
    _checked(tc, name)


def decode(tc: TieredCodes, name: str = "tiers") -> np.ndarray:
    """The numpy reference decoder: flat uint8 codes [num_codes]. Validates first (the same
    checks as ``validate``, sharing its unpacking), then fills levels from the innermost out."""
    sizes, indices = _checked(tc, name)
    last = tc.num_tiers - 1
    values = _tier_values(tc.tables[last], indices[last], sizes[last])
    reaching = sizes[last]
    for i in range(last - 1, -1, -1):
        reaching += sizes[i]
        chosen = _unpack_mask(tc.masks[i], reaching)
        level = np.empty(reaching, np.uint8)
        level[chosen] = _tier_values(tc.tables[i], indices[i], sizes[i])
        level[~chosen] = values
        values = level
    return values


def _tier_values(table: np.ndarray, index: np.ndarray | None, count: int) -> np.ndarray:
    return np.full(count, table[0], np.uint8) if index is None else table[index]


# --- storing as named arrays ----------------------------------------------------------------

def _named_arrays(tc: TieredCodes):
    for i, t in enumerate(tc.tables):
        yield f"table{i}", t
    for i, m in enumerate(tc.masks):
        yield f"mask{i}", m
    for i, p in enumerate(tc.payloads):
        yield f"payload{i}", p


def to_arrays(tc: TieredCodes) -> dict[str, np.ndarray]:
    """The tensors to store: ``table{i}``, ``mask{i}`` (i < L-1), ``payload{i}`` (w_i > 0 only:
    an empty tensor would still cost a header). Counts are implied by the masks."""
    return {key: array for key, array in _named_arrays(tc) if not key.startswith("payload") or array.size}


def from_arrays(arrays: Mapping[str, np.ndarray], num_codes: int, bits: int, name: str = "tiers") -> TieredCodes:
    """Inverse of ``to_arrays``, validated (ValueError naming ``name`` and the tensor): the number
    of tiers is the number of ``table{i}`` keys; a missing payload means an empty one."""
    tiers = 0
    while f"table{tiers}" in arrays:
        tiers += 1
    if not 1 <= tiers <= MAX_TIERS:
        raise ValueError(f"{name}: {tiers} tables (table0, table1, ...), expected 1..{MAX_TIERS}")
    expected = {f"table{i}" for i in range(tiers)} | {f"mask{i}" for i in range(tiers - 1)}
    unknown = sorted(set(arrays) - expected - {f"payload{i}" for i in range(tiers)})
    missing = sorted(expected - set(arrays))
    if unknown or missing:
        raise ValueError(f"{name}: unexpected tensors {unknown}, missing tensors {missing} for {tiers} tiers")
    empty = np.zeros(0, np.uint8)
    tc = TieredCodes(num_codes, bits,
                     tuple(np.asarray(arrays[f"table{i}"]) for i in range(tiers)),
                     tuple(np.asarray(arrays[f"mask{i}"]) for i in range(tiers - 1)),
                     tuple(np.asarray(arrays.get(f"payload{i}", empty)) for i in range(tiers)))
    validate(tc, name)
    return tc
