// AVX-512 VNNI: the panel GEMM's int8 tier (Ice Lake, Zen 4 and later; the table extends the
// VBMI one and is selected where the CPU has both). Only this file is compiled with
// -mavx512vnni (and -mavx512vbmi: the codes decode straight to int8 with byte permutes).
//
// int8_gemm: vpdpbusd multiplies 4 unsigned bytes of X by 4 signed bytes of W and adds the
// four products into a 32-bit lane: 64 multiply-adds per instruction against 16 for an fp32
// FMA. Blocks of 6 rows x 64 columns (24 accumulators, 4 panel loads and 6 broadcasts per 24
// dot products), then 4 / 2 / 1 rows, and the last 1-63 columns in 1-4 vectors, the last masked. The quantizers give the
// scalar table's bytes (exact max reductions, the same float multiply, nearest-even rounding);
// integer sums are exact: every result is the scalar table's bits.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "vq_codes_vbmi.h"
#include "vq_kernel.h"

namespace onnxvq::kernels {

const KernelTable& avx512vbmi_kernel_table();

namespace {

inline __mmask16 lanes(size_t count) { return count >= 16 ? __mmask16(0xffff) : __mmask16((1u << count) - 1); }

// acc += dot products of x's and w's 4-byte groups, in place. (GCC 12's _mm512_dpbusd_epi32
// copied every accumulator through another register and spilled the 6 x 4 block: 78 GMAC/s
// against 150+ with the accumulator tied to its register.)
inline void dpbusd(__m512i& acc, __m512i x, __m512i w) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
}

// rint(v * inv) as int32 lanes (round_s8 in the scalar table). vcvtps2dq rounds in the current
// mode, nearest-even as nearbyint() there; |v * inv| <= 127 (1 + 2^-23) rounds to 127 at most,
// so the scalar table's clamp never applies.
inline __m512i round_s8(__m512 v, __m512 inv) { return _mm512_cvtps_epi32(_mm512_mul_ps(v, inv)); }

// Per-lane |value| maxima over `count` vectors `stride` floats apart, as the bits of the
// float: for non-negative floats integer order is float order, and inf / NaN (exponent all
// ones) compare above every finite value, so one unsigned max per vector (four chains) finds
// both the maximum and the lanes that are not finite (returned in *bad).
inline __m512 abs_max(const float* v, size_t count, size_t stride, __mmask16 mask, __mmask16* bad) {
  const __m512i magnitude = _mm512_set1_epi32(0x7fffffff);
  auto bits = [&](size_t i) {
    return _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(mask, v + i * stride)), magnitude);
  };
  __m512i t0 = _mm512_setzero_si512(), t1 = t0, t2 = t0, t3 = t0;
  size_t i = 0;
  for (; i + 4 <= count; i += 4) {
    t0 = _mm512_max_epu32(t0, bits(i));
    t1 = _mm512_max_epu32(t1, bits(i + 1));
    t2 = _mm512_max_epu32(t2, bits(i + 2));
    t3 = _mm512_max_epu32(t3, bits(i + 3));
  }
  for (; i < count; ++i) t0 = _mm512_max_epu32(t0, bits(i));
  const __m512i top = _mm512_max_epu32(_mm512_max_epu32(t0, t1), _mm512_max_epu32(t2, t3));
  *bad |= _mm512_cmp_epu32_mask(top, _mm512_set1_epi32(0x7f800000), _MM_CMPINT_NLT);
  return _mm512_castsi512_ps(top);
}

void quantize_rows_u8_vnni(const float* x, size_t ldx, size_t rows, size_t len, uint8_t* q, size_t ldq,
                           float* scale, uint32_t* energy) {
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    uint8_t* out = q + r * ldq;
    __mmask16 bad = 0;
    __m512 top = _mm512_setzero_ps();
    for (size_t j = 0; j < len; j += 16) top = _mm512_max_ps(top, abs_max(row + j, 1, 0, lanes(len - j), &bad));
    const float a = _mm512_reduce_max_ps(top), inv = 127.0f / a;
    std::fill(out + len, out + ldq, uint8_t{128});
    energy[r] = 0;
    if (bad || !std::isfinite(inv)) {
      scale[r] = bad ? std::numeric_limits<float>::quiet_NaN() : 0.0f;
      std::fill(out, out + len, uint8_t{128});
      continue;
    }
    scale[r] = a / 127.0f;
    const __m512 vinv = _mm512_set1_ps(inv);
    __m512i squares = _mm512_setzero_si512();
    for (size_t j = 0; j < len; j += 16) {
      const __mmask16 m = lanes(len - j);
      const __m512i level = round_s8(_mm512_maskz_loadu_ps(m, row + j), vinv);
      squares = _mm512_add_epi32(squares, _mm512_mullo_epi32(level, level));
      _mm512_mask_cvtepi32_storeu_epi8(out + j, m, _mm512_add_epi32(level, _mm512_set1_epi32(128)));
    }
    energy[r] = static_cast<uint32_t>(_mm512_reduce_add_epi32(squares));
  }
}

// 16 columns at a time: per-column maxima down the panel, then 4 depths x 16 columns per step:
// two saturating packs put each 128-bit lane's 4 columns x 4 depths in bytes, depth-major, and
// one byte shuffle makes them column-major (a column's 4 depths in its 32-bit lane); one
// vpdpbusd against bytes of 1 sums them for bias128.
void quantize_panel_s8_vnni(const float* w, size_t K, size_t N, int8_t* wq, float* scale, int32_t* bias128) {
  const __m512i depth_to_column = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  const __m512i ones = _mm512_set1_epi8(1);
  for (size_t n = 0; n < N; n += 16) {
    const __mmask16 m = lanes(N - n);
    __mmask16 bad = 0;
    const __m512 a = abs_max(w + n, K, N, m, &bad);
    const __m512 inv = _mm512_div_ps(_mm512_set1_ps(127.0f), a);
    const __mmask16 zero = _mm512_cmp_ps_mask(inv, _mm512_set1_ps(INFINITY), _CMP_EQ_OQ) & ~bad;
    const __mmask16 live = m & ~(zero | bad);
    const __m512 col_scale = _mm512_mask_blend_ps(bad, _mm512_maskz_div_ps(live, a, _mm512_set1_ps(127.0f)),
                                                  _mm512_set1_ps(std::numeric_limits<float>::quiet_NaN()));
    _mm512_mask_storeu_ps(scale + n, m, col_scale);
    auto level = [&](size_t k) {  // zero past K
      return k < K ? _mm512_maskz_cvtps_epi32(live, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + k * N + n), inv))
                   : _mm512_setzero_si512();
    };
    __m512i sum = _mm512_setzero_si512();
    for (size_t k = 0; k < K; k += 4) {
      const __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(level(k), level(k + 1)),
                                               _mm512_packs_epi32(level(k + 2), level(k + 3)));
      const __m512i packed = _mm512_shuffle_epi8(bytes, depth_to_column);
      dpbusd(sum, ones, packed);
      _mm512_mask_storeu_epi32(wq + k * N + 4 * n, m, packed);
    }
    _mm512_mask_storeu_epi32(bias128 + n, m, _mm512_mullo_epi32(sum, _mm512_set1_epi32(128)));
  }
}


// fastscan_u8 on byte permutes. A step's 64 code bytes (4 entries x 16, byte 16j + i:
// entry j, outputs i and 16 + i) are regrouped by one vpermb to byte 4i + j, so each 32-bit
// lane holds one output's codes for the 4 entries. A nibble with its entry number in bits 4-5
// indexes the step's four 16-byte tables as one 64-byte table (vpermb), and vpdpbusd against
// bytes of 1 adds each output's 4 lookups into its 32-bit sum: per 128 codes 1 + 3 shared
// instructions and 4 per row, against 3 + 9 for the 16-bit shuffle scheme (which also
// flushes its sums every 1024 entries). Exact integer sums: the scalar table's bits.
template <int R>
void fastscan_rows_vnni(const uint8_t* codes, size_t entries, const uint8_t* tables, size_t qlut_stride,
                        uint32_t* out) {
  static_assert(R == 1 || R == 2 || R == 4, "rows per code load");
  alignas(64) uint8_t regroup_bytes[64], entry_of_byte[64];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 4; ++j) {
      regroup_bytes[4 * i + j] = static_cast<uint8_t>(16 * j + i);
      entry_of_byte[4 * i + j] = static_cast<uint8_t>(16 * j);
    }
  const __m512i regroup = _mm512_load_si512(regroup_bytes), entry_bits = _mm512_load_si512(entry_of_byte);
  const __m512i nibble = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1);
  constexpr int kNibbleOrEntry = 0xEA;  // ternary logic: (a & b) | c
  // Per 4 entries: the code bytes regrouped by output, and each nibble's index into the
  // 64-byte table of the step's 4 entries.
  auto indices = [&](size_t e, __m512i& lo_idx, __m512i& hi_idx) {
    // Cold codes are asked for ahead, as in the AVX-512 kernel. A tail of 1-3 entries loads
    // only its own bytes; the missing entries' zero codes index the tables' zero padding.
    _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchBytes), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchL2Bytes), _MM_HINT_T1);
    const size_t valid = std::min<size_t>(4, entries - e);
    const __m512i group = valid == 4 ? _mm512_loadu_si512(codes + e * 16)
                                     : _mm512_maskz_loadu_epi8((__mmask64{1} << (16 * valid)) - 1, codes + e * 16);
    const __m512i by_output = _mm512_permutexvar_epi8(regroup, group);
    lo_idx = _mm512_ternarylogic_epi32(by_output, nibble, entry_bits, kNibbleOrEntry);
    hi_idx = _mm512_ternarylogic_epi32(_mm512_srli_epi16(by_output, 4), nibble, entry_bits, kNibbleOrEntry);
  };
  auto lookup = [&](__m512i lo_idx, __m512i hi_idx, size_t e, int r, __m512i& lo, __m512i& hi) {
    const __m512i lut = _mm512_loadu_si512(tables + r * qlut_stride + e * 16);
    dpbusd(lo, _mm512_permutexvar_epi8(lo_idx, lut), ones);
    dpbusd(hi, _mm512_permutexvar_epi8(hi_idx, lut), ones);
  };
  // Named sums, not an array: GCC 12 kept an array of 8 on the stack (a store per update).
  const __m512i zero = _mm512_setzero_si512();
  __m512i lo0 = zero, hi0 = zero, lo1 = zero, hi1 = zero, lo2 = zero, hi2 = zero, lo3 = zero, hi3 = zero;
  __m512i lo_idx, hi_idx;
  size_t e = 0;
  if constexpr (R == 1) {
    // One row's two sums would wait on vpdpbusd's latency (~6 cycles) every step: even and
    // odd steps go to two sets of sums.
    for (; e + 8 <= entries; e += 8) {
      indices(e, lo_idx, hi_idx);
      lookup(lo_idx, hi_idx, e, 0, lo0, hi0);
      indices(e + 4, lo_idx, hi_idx);
      lookup(lo_idx, hi_idx, e + 4, 0, lo1, hi1);
    }
  }
  for (; e < entries; e += 4) {
    indices(e, lo_idx, hi_idx);
    lookup(lo_idx, hi_idx, e, 0, lo0, hi0);
    if constexpr (R >= 2) lookup(lo_idx, hi_idx, e, 1, lo1, hi1);
    if constexpr (R == 4) {
      lookup(lo_idx, hi_idx, e, 2, lo2, hi2);
      lookup(lo_idx, hi_idx, e, 3, lo3, hi3);
    }
  }
  auto store = [&](int r, __m512i lo, __m512i hi) {
    _mm512_storeu_si512(out + r * kFastScanBlockRows, lo);
    _mm512_storeu_si512(out + r * kFastScanBlockRows + 16, hi);
  };
  if constexpr (R == 1) {
    store(0, _mm512_add_epi32(lo0, lo1), _mm512_add_epi32(hi0, hi1));
  } else {
    store(0, lo0, hi0);
    store(1, lo1, hi1);
    if constexpr (R == 4) {
      store(2, lo2, hi2);
      store(3, lo3, hi3);
    }
  }
}

void fastscan_u8_vnni(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride,
                      size_t rows, uint32_t* out) {
  size_t m = 0;
  for (; m + 4 <= rows; m += 4)
    fastscan_rows_vnni<4>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kFastScanBlockRows);
  if (m + 2 <= rows) {
    fastscan_rows_vnni<2>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kFastScanBlockRows);
    m += 2;
  }
  if (m < rows) fastscan_rows_vnni<1>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kFastScanBlockRows);
}

// Four depths at a time: their 4 groups are 64 consecutive bytes (byte 16j + i: depth j,
// outputs i and 16 + i in its nibbles); one byte shuffle per half looks the nibbles up in the
// int8 codebook, one VBMI byte permute moves byte 16j + i to 4i + j (output i's 4 depths in
// its 32-bit lane), and vpdpbusd against bytes of 1 adds the column sums.
void decode_fastscan_d1_s8_vnni(const uint8_t* groups, size_t depth, size_t cols, const int8_t* book_q,
                                int8_t* out, size_t ld, int32_t* sums) {
  alignas(64) uint8_t to_columns[64];
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 4; ++j) to_columns[4 * i + j] = static_cast<uint8_t>(16 * j + i);
  const __m512i permute = _mm512_load_si512(to_columns);
  const __m512i table = _mm512_broadcast_i32x4(_mm_loadu_si128(reinterpret_cast<const __m128i*>(book_q)));
  const __m512i nibble = _mm512_set1_epi8(0x0f), ones = _mm512_set1_epi8(1);
  const __mmask16 low = lanes(cols), high = lanes(cols > 16 ? cols - 16 : 0);
  __m512i sum_low = _mm512_setzero_si512(), sum_high = sum_low;
  for (size_t k = 0; k < depth; k += 4) {
    const size_t valid = std::min<size_t>(4, depth - k);  // depths in this step
    const __mmask64 bytes = valid == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * valid)) - 1;
    const __m512i codes = _mm512_maskz_loadu_epi8(bytes, groups + k * kFastScanGroupBytes);
    const __m512i lo = _mm512_permutexvar_epi8(permute, _mm512_maskz_shuffle_epi8(bytes, table, _mm512_and_si512(codes, nibble)));
    const __m512i hi = _mm512_permutexvar_epi8(
        permute, _mm512_maskz_shuffle_epi8(bytes, table, _mm512_and_si512(_mm512_srli_epi16(codes, 4), nibble)));
    dpbusd(sum_low, ones, lo);
    dpbusd(sum_high, ones, hi);
    int8_t* row = out + k * ld;  // (k / 4) * 4 * ld
    _mm512_mask_storeu_epi32(row, low, lo);
    _mm512_mask_storeu_epi32(row + 64, high, hi);
  }
  _mm512_mask_storeu_epi32(sums, low, sum_low);
  _mm512_mask_storeu_epi32(sums + 16, high, sum_high);
}

// decode_codes_vbmi's extraction (vq_codes_vbmi.h: 16 codes per step), then the codes as bytes
// look up a 256-entry byte table (two two-source byte permutes, the code's top bit picks one).
// A codebook's 2^bits bytes in up to four registers, and the lookup of 64 codes in them: one
// register up to 6 bits, two for 7, four for 8 (the code's top bit picks the half).
// Two codewords (1 bit: binary) are a select between two broadcasts, on the codes as a mask.
struct ByteBook {
  __m512i t[4];
  size_t ncw;
  explicit ByteBook(unsigned bits) : ncw(size_t{1} << bits) {}
  void load(const int8_t* book) {  // masked loads: exactly its bytes
    if (ncw == 2) {
      t[0] = _mm512_set1_epi8(book[0]), t[1] = _mm512_set1_epi8(book[1]);
      return;
    }
    for (size_t i = 0; i < 4; ++i)
      t[i] = 64 * i >= ncw ? _mm512_setzero_si512()
                           : _mm512_maskz_loadu_epi8(ncw - 64 * i >= 64 ? ~__mmask64(0) : (__mmask64(1) << (ncw - 64 * i)) - 1,
                                                     book + 64 * i);
  }
  // The next 64 codes of `steps`, decoded.
  __m512i next(vbmi::CodeBytes& steps, const uint8_t* stream) const {
    if (ncw == 2) return _mm512_mask_blend_epi8(steps.next_mask(stream), t[0], t[1]);
    const __m512i codes = steps.next(stream);
    if (ncw <= 64) return _mm512_permutexvar_epi8(codes, t[0]);
    if (ncw == 128) return _mm512_permutex2var_epi8(t[0], codes, t[1]);
    return _mm512_mask_blend_epi8(_mm512_movepi8_mask(codes), _mm512_permutex2var_epi8(t[0], codes, t[1]),
                                  _mm512_permutex2var_epi8(t[2], codes, t[3]));
  }
};

inline __mmask64 first_bytes(size_t n) { return n >= 64 ? ~__mmask64(0) : (__mmask64(1) << n) - 1; }

void decode_codes_s8_vnni(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows,
                          size_t count, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                          int8_t* out_rows, size_t ld, int32_t* sums) {
  ByteBook book(bits);
  book.load(book_q);
  const __m512i ones = _mm512_set1_epi8(1);
  vbmi::CodeBytes steps(bits);
  for (size_t r = 0, in_book = phase; r < rows; ++r, ++in_book) {
    if (in_book == rows_per_book) {  // the next group's codebook
      book.load(book_q += book.ncw);
      in_book = 0;
    }
    steps.start(first_code + r * row_stride, count);
    int8_t* out = out_rows + r * ld;
    __m512i sum = _mm512_setzero_si512();
    for (size_t i = 0; i < count; i += 64) {
      const __mmask64 kept_lanes = first_bytes(count - i);
      const __m512i kept = _mm512_maskz_mov_epi8(kept_lanes, book.next(steps, stream));
      sum = _mm512_dpbusd_epi32(sum, ones, kept);
      _mm512_mask_storeu_epi8(out + i, kept_lanes, kept);
    }
    std::memset(out + count, 0, ld - count);
    sums[r] = _mm512_reduce_add_epi32(sum);
  }
}

// MR rows of X against each decoded row of W, 64 codes a step: the decode is shared by the
// rows, each adds one vpdpbusd.
template <int MR>
void decode_dot_rows(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows, size_t count,
                     unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase, const uint8_t* xq,
                     size_t ldq, int32_t* dots, int32_t* sums) {
  ByteBook book(bits);
  book.load(book_q);
  const __m512i ones = _mm512_set1_epi8(1);
  vbmi::CodeBytes steps(bits);
  for (size_t r = 0, in_book = phase; r < rows; ++r, ++in_book) {
    if (in_book == rows_per_book) {
      book.load(book_q += book.ncw);
      in_book = 0;
    }
    steps.start(first_code + r * row_stride, count);
    __m512i sum = _mm512_setzero_si512(), acc[MR];
    for (int m = 0; m < MR; ++m) acc[m] = _mm512_setzero_si512();
    auto step = [&](size_t i, __mmask64 kept_lanes) {  // kept_lanes: all but in the last step
      const __m512i w = _mm512_maskz_mov_epi8(kept_lanes, book.next(steps, stream));
      if (sums != nullptr) sum = _mm512_dpbusd_epi32(sum, ones, w);
      for (int m = 0; m < MR; ++m)
        acc[m] = _mm512_dpbusd_epi32(acc[m], _mm512_maskz_loadu_epi8(kept_lanes, xq + m * ldq + i), w);
    };
    size_t i = 0;
    for (; i + 64 <= count; i += 64) step(i, ~__mmask64(0));
    if (i < count) step(i, first_bytes(count - i));
    if (sums != nullptr) sums[r] = _mm512_reduce_add_epi32(sum);
    for (int m = 0; m < MR; ++m) dots[m * rows + r] = _mm512_reduce_add_epi32(acc[m]);
  }
}

// One depth chunk of decode_dot_s8 (its rows' codes from code first_code, count each).
void decode_dot_chunk_vnni(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows, size_t count,
                           unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase, const uint8_t* xq,
                           size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  // Blocks of up to 4 rows of X (each block decodes again; the sums come with the first).
  for (size_t m = 0; m < M; m += 4) {
    auto block = [&](auto rows_of_x) {
      decode_dot_rows<decltype(rows_of_x)::value>(stream, first_code, row_stride, rows, count, bits, book_q,
                                                  rows_per_book, phase, xq + m * ldq, ldq, dots + m * rows,
                                                  m == 0 ? sums : nullptr);
    };
    switch (std::min<size_t>(4, M - m)) {
      case 1: block(std::integral_constant<int, 1>()); break;
      case 2: block(std::integral_constant<int, 2>()); break;
      case 3: block(std::integral_constant<int, 3>()); break;
      default: block(std::integral_constant<int, 4>()); break;
    }
  }
}

void decode_dot_s8_vnni(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows, size_t count,
                        size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                        const uint8_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  for (size_t q = 0, k0 = 0; k0 < count; ++q, k0 += depth)
    decode_dot_chunk_vnni(stream, first_code + k0, row_stride, rows, std::min(depth, count - k0), bits, book_q,
                          rows_per_book, phase, xq + q * M * ldq, ldq, M, dots + q * M * rows, sums + q * rows);
}

// d = 4 vector codebooks: a codebook of 16 words is one register, and one vpermd looks 16
// outputs' codes up in it (the low nibbles, then the high ones); vpdpbusd against bytes of 1
// adds each word's 4 bytes to its column sum.
void decode_fastscan_words_s8_vnni(const uint8_t* groups, size_t subspaces, size_t cols, const int32_t* words,
                                   size_t book_stride, int8_t* out, size_t ld, int32_t* sums) {
  const __mmask16 low = lanes(cols), high = lanes(cols > 16 ? cols - 16 : 0);
  const __m512i nibble = _mm512_set1_epi32(0x0f), ones = _mm512_set1_epi8(1);
  __m512i sum_low = _mm512_setzero_si512(), sum_high = sum_low;
  __m512i table = _mm512_loadu_si512(words);
  int32_t* row = reinterpret_cast<int32_t*>(out);
  for (size_t j = 0; j < subspaces; ++j, row += ld) {
    if (book_stride != 0) table = _mm512_loadu_si512(words + j * book_stride);
    const __m512i codes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(groups + j * kFastScanGroupBytes)));
    const __m512i lo = _mm512_permutexvar_epi32(_mm512_and_si512(codes, nibble), table);
    const __m512i hi = _mm512_permutexvar_epi32(_mm512_srli_epi32(codes, 4), table);
    dpbusd(sum_low, ones, lo);
    dpbusd(sum_high, ones, hi);
    _mm512_mask_storeu_epi32(row, low, lo);
    _mm512_mask_storeu_epi32(row + 16, high, hi);
  }
  _mm512_mask_storeu_epi32(sums, low, sum_low);
  _mm512_mask_storeu_epi32(sums + 16, high, sum_high);
}

// 256-word codebooks do not fit registers, but their 4 byte planes do (4 x 4 registers): 64
// codes a step look each plane up with two two-source byte permutes (the code's top bit picks
// one, as ByteBook), and byte unpacks interleave the planes into words. The codes are first
// permuted so that the unpacks, which work within 128-bit lanes, leave the words in column
// order (position 16L + 4v + j holds column 16v + 4L + j). (vpgatherdd, 16 words a step, took
// 3x as long on Zen 4.) Masked code loads and stores: nothing past the columns is touched.
// Codes in column order from codes_of(j, q): subspace j's codes of columns 64q .. 64q + 63 (any
// value past cols). Each subspace's planes are loaded once for up to kPlaneGroups groups of 64
// columns (the planes come from L2: loading them per 64 columns bounded the decode).
constexpr size_t kPlaneGroups = 4;
template <typename CodesOf>
void decode_plane_words(CodesOf codes_of, size_t subspaces, size_t cols, const uint8_t* planes, size_t book_stride,
                        int8_t* out, size_t ld, int32_t* sums) {
  alignas(64) uint8_t order[64];
  for (int lane = 0; lane < 4; ++lane)
    for (int v = 0; v < 4; ++v)
      for (int j = 0; j < 4; ++j) order[16 * lane + 4 * v + j] = static_cast<uint8_t>(16 * v + 4 * lane + j);
  const __m512i to_lanes = _mm512_load_si512(order), ones = _mm512_set1_epi8(1);
  for (size_t c0 = 0; c0 < cols; c0 += 64 * kPlaneGroups) {
    const size_t piece = std::min(cols - c0, 64 * kPlaneGroups), groups = (piece + 63) / 64;
    const size_t vectors = (piece + 15) / 16;
    __mmask16 mask[4 * kPlaneGroups];
    __m512i sum[4 * kPlaneGroups];
    for (size_t v = 0; v < vectors; ++v) {
      mask[v] = lanes(piece - 16 * v);
      sum[v] = _mm512_setzero_si512();
    }
    __m512i t[16];
    for (size_t j = 0; j < subspaces; ++j) {
      const uint8_t* book = planes + j * book_stride;
      if (j == 0 || book_stride != 0)
        for (size_t r = 0; r < 16; ++r) t[r] = _mm512_loadu_si512(book + 64 * r);
      int32_t* row = reinterpret_cast<int32_t*>(out) + j * ld + c0;
      for (size_t q = 0; q < groups; ++q) {
        const __m512i code = _mm512_permutexvar_epi8(to_lanes, codes_of(j, c0 / 64 + q));
        const __mmask64 top = _mm512_movepi8_mask(code);
        __m512i plane[4];
        for (size_t b = 0; b < 4; ++b)
          plane[b] = _mm512_mask_blend_epi8(top, _mm512_permutex2var_epi8(t[4 * b], code, t[4 * b + 1]),
                                            _mm512_permutex2var_epi8(t[4 * b + 2], code, t[4 * b + 3]));
        const __m512i lo01 = _mm512_unpacklo_epi8(plane[0], plane[1]), hi01 = _mm512_unpackhi_epi8(plane[0], plane[1]);
        const __m512i lo23 = _mm512_unpacklo_epi8(plane[2], plane[3]), hi23 = _mm512_unpackhi_epi8(plane[2], plane[3]);
        const __m512i word[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                                 _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
        for (size_t v = 4 * q; v < std::min(vectors, 4 * q + 4); ++v) {
          dpbusd(sum[v], ones, word[v - 4 * q]);
          _mm512_mask_storeu_epi32(row + 16 * v, mask[v], word[v - 4 * q]);
        }
      }
    }
    for (size_t v = 0; v < vectors; ++v) _mm512_mask_storeu_epi32(sums + c0 + 16 * v, mask[v], sum[v]);
  }
}

void decode_bytescan_words_s8_vnni(const uint8_t* codes, size_t block_stride, size_t subspaces, size_t cols,
                                   const uint8_t* planes, size_t book_stride, const int32_t* /*words*/,
                                   size_t /*word_stride*/, int8_t* out, size_t ld, int32_t* sums) {
  auto codes_of = [&](size_t j, size_t q) {
    return _mm512_maskz_loadu_epi8(first_bytes(cols - 64 * q), codes + q * block_stride + j * kByteScanBlockRows);
  };
  decode_plane_words(codes_of, subspaces, cols, planes, book_stride, out, ld, sums);
}

// rq 2x4: the byte codes of a block's 32 outputs from the two stages' 16-byte groups (low
// nibbles: outputs 0-15, high ones 16-31), then the planes of the combined codebook.
void decode_fastscan2_words_s8_vnni(const uint8_t* groups, size_t stage_stride, size_t block_stride, size_t subspaces,
                                    size_t cols, const uint8_t* planes, size_t book_stride, const int32_t* /*words*/,
                                    size_t /*word_stride*/, int8_t* out, size_t ld, int32_t* sums) {
  const __m128i low = _mm_set1_epi8(0x0f), high = _mm_set1_epi8(static_cast<char>(0xf0));
  auto block_codes = [&](const uint8_t* block, size_t j) {  // 32 outputs' byte codes
    const __m128i g0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + j * kFastScanGroupBytes));
    const __m128i g1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + stage_stride + j * kFastScanGroupBytes));
    const __m128i first = _mm_or_si128(_mm_and_si128(g0, low), _mm_slli_epi16(_mm_and_si128(g1, low), 4));
    const __m128i second = _mm_or_si128(_mm_and_si128(_mm_srli_epi16(g0, 4), low), _mm_and_si128(g1, high));
    return _mm256_set_m128i(second, first);
  };
  auto codes_of = [&](size_t j, size_t q) {  // blocks 2q and 2q + 1 (read only when it has columns)
    const __m512i first = _mm512_zextsi256_si512(block_codes(groups + 2 * q * block_stride, j));
    return cols > 64 * q + 32 ? _mm512_inserti64x4(first, block_codes(groups + (2 * q + 1) * block_stride, j), 1) : first;
  };
  decode_plane_words(codes_of, subspaces, cols, planes, book_stride, out, ld, sums);
}

// MR rows x V vectors of 16 columns; `last` masks the last vector's columns.
template <int MR, int V>
void int8_block(const uint8_t* xq, size_t ldq, size_t K4, const int8_t* wq, size_t N, const float* xs,
                const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate, __mmask16 last) {
  __m512i acc[MR][V];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_si512();
  __mmask16 mask[V];
  for (int v = 0; v < V; ++v) mask[v] = v == V - 1 ? last : __mmask16(0xffff);
  for (size_t k = 0; k < K4; k += 4) {
    __m512i wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) wv[v] = _mm512_maskz_loadu_epi32(mask[v], wq + k * N + 64 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      int32_t four;
      __builtin_memcpy(&four, xq + i * ldq + k, 4);
      const __m512i xv = _mm512_set1_epi32(four);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) dpbusd(acc[i][v], xv, wv[v]);
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) {
    const __m512i b = _mm512_maskz_loadu_epi32(mask[v], bias128 + 16 * v);
    const __m512 s = _mm512_maskz_loadu_ps(mask[v], ws + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 value = _mm512_mul_ps(_mm512_set1_ps(xs[i]), _mm512_mul_ps(s, _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[i][v], b))));
      float* out = y + i * ldy + 16 * v;
      _mm512_mask_storeu_ps(out, mask[v], accumulate ? _mm512_add_ps(_mm512_maskz_loadu_ps(mask[v], out), value) : value);
    }
  }
}

template <int V>
void int8_rows(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N, const float* xs,
               const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate, __mmask16 last) {
  size_t m = 0;
  for (; m + 6 <= M; m += 6)
    int8_block<6, V>(xq + m * ldq, ldq, K4, wq, N, xs + m, ws, bias128, y + m * ldy, ldy, accumulate, last);
  for (; m + 4 <= M; m += 4)
    int8_block<4, V>(xq + m * ldq, ldq, K4, wq, N, xs + m, ws, bias128, y + m * ldy, ldy, accumulate, last);
  for (; m + 2 <= M; m += 2)
    int8_block<2, V>(xq + m * ldq, ldq, K4, wq, N, xs + m, ws, bias128, y + m * ldy, ldy, accumulate, last);
  for (; m < M; ++m)
    int8_block<1, V>(xq + m * ldq, ldq, K4, wq, N, xs + m, ws, bias128, y + m * ldy, ldy, accumulate, last);
}

void int8_gemm_vnni(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N,
                    const float* xs, const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  // Column n's 4-byte groups sit at wq + k*N + 4n: a strip starting at n0 is wq + 4*n0.
  size_t n = 0;
  for (; n + 64 <= N; n += 64)
    int8_rows<4>(xq, ldq, M, K4, wq + 4 * n, N, xs, ws + n, bias128 + n, y + n, ldy, accumulate, 0xffff);
  const size_t rest = N - n;  // 0 .. 63 columns: up to 4 vectors, the last one masked
  if (rest > 48)
    int8_rows<4>(xq, ldq, M, K4, wq + 4 * n, N, xs, ws + n, bias128 + n, y + n, ldy, accumulate, lanes(rest - 48));
  else if (rest > 32)
    int8_rows<3>(xq, ldq, M, K4, wq + 4 * n, N, xs, ws + n, bias128 + n, y + n, ldy, accumulate, lanes(rest - 32));
  else if (rest > 16)
    int8_rows<2>(xq, ldq, M, K4, wq + 4 * n, N, xs, ws + n, bias128 + n, y + n, ldy, accumulate, lanes(rest - 16));
  else if (rest > 0)
    int8_rows<1>(xq, ldq, M, K4, wq + 4 * n, N, xs, ws + n, bias128 + n, y + n, ldy, accumulate, lanes(rest));
}

}  // namespace

const KernelTable& avx512vnni_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx512vbmi_kernel_table();
    t.name = "avx512vbmi-vnni";  // keeps the "avx512vbmi" threshold rows
    t.quantize_rows_u8 = quantize_rows_u8_vnni;
    t.quantize_panel_s8 = quantize_panel_s8_vnni;
    t.decode_fastscan_d1_s8 = decode_fastscan_d1_s8_vnni;
    t.decode_codes_s8 = decode_codes_s8_vnni;
    t.decode_dot_s8 = decode_dot_s8_vnni;
    t.decode_fastscan_words_s8 = decode_fastscan_words_s8_vnni;
    t.decode_bytescan_words_s8 = decode_bytescan_words_s8_vnni;
    t.decode_fastscan2_words_s8 = decode_fastscan2_words_s8_vnni;
    t.int8_gemm = int8_gemm_vnni;
    t.fastscan_u8 = fastscan_u8_vnni;
    t.int8_panels = true;
    t.int8_fastscan_d1_decoder = t.int8_stream_decoders = t.int8_word_decoders = true;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
