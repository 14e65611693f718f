// AVX2 + FMA micro-kernels. Only this file is compiled with -mavx2 -mfma; vq_kernel.cc
// selects the table at run time after a CPU check, so the library still loads and runs on
// a CPU without AVX2.
//
// Agreement with the scalar table (vq_kernel_scalar.cc):
//   fastscan_u8, fastscan_f32, quantize_luts, lut_order_stats, lut_gather_rows, lut_gather8
//                bit-identical
//   build_lut (d = 4 and d = 8)  float sums in a different order (pairwise instead of j
//                                ascending): within a few ulp of scalar, tested at 1e-5
//                                relative to the output scale
//   decode_codes  bit-identical (copies codebook values)
//   build_lut_d1  bit-identical (one multiply and the same 0.0f + per entry)
//   dense_gemm  bit-identical: one fused multiply-add chain per output, k ascending
//   decode_row (VQGather)  bit-identical: the same adds per element; d = 1 gathers 8
//                          subspaces per instruction, d >= 4 adds whole codeword chunks
//   int8 tier (vq_kernel_avx2_int8.cc)  bit-identical: exact integer sums
//   everything else: the scalar functions.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "vq_avx2_lanes.h"
#include "vq_kernel.h"

namespace onnxvq::kernels {
namespace {

// --- tables ---------------------------------------------------------------------------

// lut[c] = <x[0..d), codeword c> for d = 4 or 8 by multiplying whole codewords and
// reducing with horizontal adds; 8 codewords per step.
void build_lut_avx2(const float* x, size_t len, const float* codewords, size_t d,
                    size_t num_codewords, float* lut) {
  const size_t vectorized = len == d && (d == 4 || d == 8) ? num_codewords / 8 * 8 : 0;
  if (d == 4 && vectorized) {
    const __m128 x4 = _mm_loadu_ps(x);
    const __m256 xx = _mm256_set_m128(x4, x4);
    // After the hadd tree lane 0 holds codewords c, c+2, c+4, c+6 and lane 1 c+1, c+3, ...
    const __m256i natural = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (size_t c = 0; c < vectorized; c += 8) {
      const float* cw = codewords + c * 4;
      const __m256 p0 = _mm256_mul_ps(xx, _mm256_loadu_ps(cw));
      const __m256 p1 = _mm256_mul_ps(xx, _mm256_loadu_ps(cw + 8));
      const __m256 p2 = _mm256_mul_ps(xx, _mm256_loadu_ps(cw + 16));
      const __m256 p3 = _mm256_mul_ps(xx, _mm256_loadu_ps(cw + 24));
      const __m256 sums = _mm256_hadd_ps(_mm256_hadd_ps(p0, p1), _mm256_hadd_ps(p2, p3));
      _mm256_storeu_ps(lut + c, _mm256_permutevar8x32_ps(sums, natural));
    }
  } else if (d == 8 && vectorized) {
    const __m256 xx = _mm256_loadu_ps(x);
    for (size_t c = 0; c < vectorized; c += 8) {
      const float* cw = codewords + c * 8;
      __m256 p[8];
      for (int i = 0; i < 8; ++i) p[i] = _mm256_mul_ps(xx, _mm256_loadu_ps(cw + 8 * i));
      // Lane 0: half sums over j < 4, lane 1 over j >= 4, for codewords c..c+3 (a), c+4.. (b).
      const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(p[0], p[1]), _mm256_hadd_ps(p[2], p[3]));
      const __m256 b = _mm256_hadd_ps(_mm256_hadd_ps(p[4], p[5]), _mm256_hadd_ps(p[6], p[7]));
      const __m256 sums = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20),
                                        _mm256_permute2f128_ps(a, b, 0x31));
      _mm256_storeu_ps(lut + c, sums);
    }
  }
  for (size_t c = vectorized; c < num_codewords; ++c) {
    const float* codeword = codewords + c * d;
    float sum = 0.0f;
    for (size_t j = 0; j < len; ++j) sum += x[j] * codeword[j];
    lut[c] = sum;
  }
}

// Vectorized over the `rows` tables (8 at a time, one gather per code), so each output
// keeps the scalar summation order.
// Eight codewords per multiply, one broadcast per input: the scalar products, bit for bit.
void build_lut_d1_avx2(const float* x, size_t count, const float* codebook, size_t num_codewords,
                       float* lut) {
  const size_t wide = num_codewords / 8 * 8;
  const __m256 zero = _mm256_setzero_ps();
  for (size_t s = 0; s < count; ++s) {
    const __m256 xs = _mm256_set1_ps(x[s]);
    float* out = lut + s * num_codewords;
    for (size_t c = 0; c < wide; c += 8)
      _mm256_storeu_ps(out + c, _mm256_add_ps(zero, _mm256_mul_ps(xs, _mm256_loadu_ps(codebook + c))));
    for (size_t c = wide; c < num_codewords; ++c) out[c] = 0.0f + x[s] * codebook[c];
  }
}

void lut_gather_rows_avx2(const uint8_t* codes, size_t count, size_t num_codewords,
                          const float* luts, size_t lut_row_stride, size_t rows, float* out,
                          size_t out_stride) {
  size_t m = 0;
  if (lut_row_stride <= 0x7fffffff / 8 && count * num_codewords <= lut_row_stride) {
    const __m256i row_offsets =
        _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                           _mm256_set1_epi32(static_cast<int>(lut_row_stride)));
    for (; m + 8 <= rows; m += 8) {
      const float* base = luts + m * lut_row_stride;
      __m256 sum = _mm256_setzero_ps();
      for (size_t i = 0; i < count; ++i) {
        const int entry = static_cast<int>(i * num_codewords + codes[i]);
        const __m256i index = _mm256_add_epi32(row_offsets, _mm256_set1_epi32(entry));
        sum = _mm256_add_ps(sum, _mm256_i32gather_ps(base, index, 4));
      }
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, sum);
      for (int i = 0; i < 8; ++i) out[(m + i) * out_stride] = lanes[i];
    }
  }
  for (; m < rows; ++m) {
    const float* table = luts + m * lut_row_stride;
    float sum = 0.0f;
    for (size_t i = 0; i < count; ++i) sum += table[i * num_codewords + codes[i]];
    out[m * out_stride] = sum;
  }
}

// Eight outputs per gather; each lane keeps the scalar order (i ascending).
void lut_gather8_avx2(const uint8_t* codes, size_t count, size_t num_codewords, const float* lut,
                      float* out) {
  __m256 sum = _mm256_loadu_ps(out);
  if (count * num_codewords <= 0x7fffffff) {
    for (size_t i = 0; i < count; ++i) {
      const __m256i code = _mm256_cvtepu8_epi32(
          _mm_loadl_epi64(reinterpret_cast<const __m128i*>(codes + i * 8)));
      const __m256i index =
          _mm256_add_epi32(code, _mm256_set1_epi32(static_cast<int>(i * num_codewords)));
      sum = _mm256_add_ps(sum, _mm256_i32gather_ps(lut, index, 4));
    }
  } else {
    for (size_t i = 0; i < count; ++i) {
      alignas(32) float values[8];
      for (int j = 0; j < 8; ++j) values[j] = lut[i * num_codewords + codes[i * 8 + j]];
      sum = _mm256_add_ps(sum, _mm256_load_ps(values));
    }
  }
  _mm256_storeu_ps(out, sum);
}

// --- fast-scan ------------------------------------------------------------------------

// The min of mn's 8 lanes and the max of mx's, broadcast to every lane.
inline void lanes_min_max(__m256 mn, __m256 mx, __m256* lo, __m256* hi) {
  mn = _mm256_min_ps(mn, _mm256_permute2f128_ps(mn, mn, 0x01));
  mx = _mm256_max_ps(mx, _mm256_permute2f128_ps(mx, mx, 0x01));
  mn = _mm256_min_ps(mn, _mm256_shuffle_ps(mn, mn, _MM_SHUFFLE(1, 0, 3, 2)));
  mx = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(1, 0, 3, 2)));
  *lo = _mm256_min_ps(mn, _mm256_shuffle_ps(mn, mn, _MM_SHUFFLE(2, 3, 0, 1)));
  *hi = _mm256_max_ps(mx, _mm256_shuffle_ps(mx, mx, _MM_SHUFFLE(2, 3, 0, 1)));
}

// out[c] = value c of rows r[0..8) (an 8 x 8 transpose: unpacks, shuffles, lane swaps).
inline void transpose8(const __m256* r, __m256* out) {
  __m256 t[8], u[8];
#pragma GCC unroll 4
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
#pragma GCC unroll 2
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    out[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    out[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// lut_order_stats for 8 tables at once (lane l: table e + l, the last table repeated past
// `entries`; values in c order from two 8 x 8 transposes), by the scalar table's insertions:
// minps(a, b) is its vmin(a, b) and maxps(b, a) its vmax(a, b), signed zeros included, so the
// selections are its bits. (Scalar, it was a quarter of pq4-d4 and rq 2x4 on 1536x384 at 8-64
// rows; 17% with one gather per value, 11% so.)
bool lut_order_stats_avx2(const float* lut, size_t entries, float* range, float* high3, float* low3) {
  const __m256 inf = _mm256_set1_ps(INFINITY), minus_inf = _mm256_set1_ps(-INFINITY), zero = _mm256_setzero_ps();
  for (size_t e = 0; e < entries; e += 8) {
    const size_t count = std::min<size_t>(8, entries - e);
    // Every loop unrolled, so rows[] and values[] live in registers (GCC 12 kept them on the stack).
    __m256 rows[8], values[16];
#pragma GCC unroll 8
    for (size_t l = 0; l < 8; ++l) rows[l] = _mm256_loadu_ps(lut + (e + std::min(l, count - 1)) * kFastScanCodewords);
    transpose8(rows, values);
#pragma GCC unroll 8
    for (size_t l = 0; l < 8; ++l) rows[l] = _mm256_loadu_ps(lut + (e + std::min(l, count - 1)) * kFastScanCodewords + 8);
    transpose8(rows, values + 8);
    __m256 a1 = minus_inf, a2 = minus_inf, a3 = minus_inf, b1 = inf, b2 = inf, b3 = inf, bad = zero;
#pragma GCC unroll 16
    for (size_t c = 0; c < kFastScanCodewords; ++c) {
      const __m256 v = values[c];
      bad = _mm256_add_ps(bad, _mm256_sub_ps(v, v));  // 0 for finite values, NaN otherwise
      const __m256 ta = _mm256_min_ps(a1, v), ua = _mm256_min_ps(a2, ta);
      a1 = _mm256_max_ps(v, a1), a2 = _mm256_max_ps(ta, a2), a3 = _mm256_max_ps(ua, a3);
      const __m256 tb = _mm256_max_ps(v, b1), ub = _mm256_max_ps(tb, b2);
      b1 = _mm256_min_ps(b1, v), b2 = _mm256_min_ps(b2, tb), b3 = _mm256_min_ps(b3, ub);
    }
    if (_mm256_movemask_ps(_mm256_cmp_ps(bad, zero, _CMP_NEQ_UQ))) return false;  // repeats: no new lanes
    const __m256i store = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(count)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    _mm256_maskstore_ps(range + e, store, _mm256_sub_ps(a1, b1));
    _mm256_maskstore_ps(high3 + e, store, a3);
    _mm256_maskstore_ps(low3 + e, store, b3);
  }
  return true;
}

// quantize_tables (scalar) on tables of kCodewords floats (16 fast-scan, 256 byte-scan): min
// and max per table (exact, any order), the widest range and the minima summed in entry order;
// then each value's level, rounded to nearest even as std::nearbyint (the MXCSR default), in
// [0, 255]: the packs never saturate below and clamp above. (The scalar byte-table one's
// nearbyintf calls were 18% of pq8-d4 at one row on 4096x4096.)
template <size_t kCodewords>
inline void tables_min_max(const float* table, __m256* lo, __m256* hi, __m256* not_finite) {
  __m256 mn = _mm256_loadu_ps(table), mx = mn;
  for (size_t c = 0; c < kCodewords; c += 8) {
    const __m256 v = _mm256_loadu_ps(table + c);
    *not_finite = _mm256_or_ps(*not_finite, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_sub_ps(v, v), _CMP_UNORD_Q));
    mn = _mm256_min_ps(mn, v), mx = _mm256_max_ps(mx, v);
  }
  lanes_min_max(mn, mx, lo, hi);
}

template <size_t kCodewords>
bool quantize_tables_avx2(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  __m256 range = _mm256_setzero_ps(), not_finite = _mm256_setzero_ps();
  float offset_sum = 0.0f;
  for (size_t e = 0; e < entries; ++e) {
    __m256 lo, hi;
    tables_min_max<kCodewords>(lut + e * kCodewords, &lo, &hi, &not_finite);
    range = _mm256_max_ps(range, _mm256_sub_ps(hi, lo));
    offset_sum += _mm256_cvtss_f32(lo);  // e ascending, as the scalar table
  }
  if (_mm256_movemask_ps(not_finite) != 0) return false;
  const float r = _mm256_cvtss_f32(range);
  if (!(r - r == 0.0f)) return false;
  const __m256 inv = _mm256_set1_ps(r > 0.0f ? 255.0f / r : 0.0f);
  for (size_t e = 0; e < entries; ++e) {
    const float* table = lut + e * kCodewords;
    __m256 lo, hi, ignored = _mm256_setzero_ps();
    tables_min_max<kCodewords>(table, &lo, &hi, &ignored);
    auto levels = [&](size_t c) { return _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(table + c), lo), inv)); };
    if constexpr (kCodewords == kFastScanCodewords) {
      const __m256i words = _mm256_permute4x64_epi64(_mm256_packs_epi32(levels(0), levels(8)), 0xD8);
      const __m256i bytes = _mm256_permute4x64_epi64(_mm256_packus_epi16(words, words), 0x08);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + e * kCodewords), _mm256_castsi256_si128(bytes));
    } else {
      const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // the packs interleave 128-bit lanes
      for (size_t c = 0; c < kCodewords; c += 32) {
        const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(levels(c), levels(c + 8)),
                                                  _mm256_packs_epi32(levels(c + 16), levels(c + 24)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + e * kCodewords + c), _mm256_permutevar8x32_epi32(bytes, in_order));
      }
    }
  }
  *scale = r / 255.0f;
  *offset = offset_sum;
  return true;
}
bool quantize_luts_avx2(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  return quantize_tables_avx2<kFastScanCodewords>(lut, entries, q, scale, offset);
}
bool quantize_byte_luts_avx2(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  return quantize_tables_avx2<kByteScanCodewords>(lut, entries, q, scale, offset);
}

// --- byte-scan (format 3: 8-bit codes, 256-entry tables) -------------------------------

// Eight codes a gather: each lane's 32-bit load at table + code keeps its low byte, the level
// (and reads up to 3 bytes past the table: kByteScanTableSlack). Sums exact in 32 bits. The
// scalar loop was half of pq8-d4's byte-scan time at one row on 4096x4096.
void bytescan_u8_avx2(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride, size_t rows,
                      uint32_t* out) {
  const __m256i low_byte = _mm256_set1_epi32(0xff);
  for (size_t m = 0; m < rows; ++m) {
    __m256i acc[8];
    for (int q = 0; q < 8; ++q) acc[q] = _mm256_setzero_si256();
    for (size_t e = 0; e < entries; ++e) {
      const int* table = reinterpret_cast<const int*>(qluts + m * qlut_stride + e * kByteScanCodewords);
      const uint8_t* entry = codes + e * kByteScanBlockRows;
      _mm_prefetch(reinterpret_cast<const char*>(entry + kCodePrefetchBytes), _MM_HINT_T0);  // as fastscan_u8
      _mm_prefetch(reinterpret_cast<const char*>(entry + kCodePrefetchL2Bytes), _MM_HINT_T1);
#pragma GCC unroll 8
      for (int q = 0; q < 8; ++q) {
        const __m256i code = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(entry + 8 * q)));
        acc[q] = _mm256_add_epi32(acc[q], _mm256_and_si256(_mm256_i32gather_epi32(table, code, 1), low_byte));
      }
    }
    for (int q = 0; q < 8; ++q)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + m * kByteScanBlockRows + 8 * q), acc[q]);
  }
}

// The block's 32 codes per entry are one 16-byte group: low nibbles are outputs 0..15, high
// nibbles outputs 16..31. A 256-bit register takes two entries (lane 0: e, lane 1: e + 1)
// and two 16-byte tables the same way, so each vpshufb does 32 lookups.
//
// 16-bit accumulation without unpacking: adding the looked-up bytes as u16 words gives
// even + 256 * odd (mod 2^16) per word, and adding them shifted right by 8 gives odd, so
// even = acc - (odd_acc << 8) mod 2^16, exact while every even sum is < 2^16: at most
// kFlushPairs = 256 steps of <= 255. Then both are widened to 32 bits and the two lanes
// (entries e and e + 1) are added.
constexpr size_t kFlushPairs = 256;

inline void widen_add(__m256i words, __m256i* total) {
  const __m256i low = _mm256_cvtepu16_epi32(_mm256_castsi256_si128(words));
  const __m256i high = _mm256_cvtepu16_epi32(_mm256_extracti128_si256(words, 1));
  *total = _mm256_add_epi32(*total, _mm256_add_epi32(low, high));
}

void fastscan_u8_avx2(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                      size_t qlut_stride, size_t rows, uint32_t* out) {
  const __m256i nibble = _mm256_set1_epi8(0x0f);
  for (size_t m = 0; m < rows; ++m) {
    const uint8_t* table = qluts + m * qlut_stride;
    // Outputs 0,2,..,14 | 1,3,..,15 | 16,18,..,30 | 17,19,..,31.
    __m256i total[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(),
                        _mm256_setzero_si256()};
    for (size_t e = 0; e < entries;) {
      const size_t end = std::min(entries, e + 2 * kFlushPairs);
      __m256i lo_all = _mm256_setzero_si256(), lo_odd = _mm256_setzero_si256();
      __m256i hi_all = _mm256_setzero_si256(), hi_odd = _mm256_setzero_si256();
      // Two entries' 32 lookups each: outputs 0-15 by the low nibbles, 16-31 by the high ones.
      auto lookup = [&](__m256i group, __m256i lut, __m256i* lo, __m256i* hi) {
        *lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(group, nibble));
        *hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(group, 4), nibble));
      };
      auto step = [&](__m256i group, __m256i lut) {
        __m256i lo, hi;
        lookup(group, lut, &lo, &hi);
        lo_all = _mm256_add_epi16(lo_all, lo);
        lo_odd = _mm256_add_epi16(lo_odd, _mm256_srli_epi16(lo, 8));
        hi_all = _mm256_add_epi16(hi_all, hi);
        hi_odd = _mm256_add_epi16(hi_odd, _mm256_srli_epi16(hi, 8));
      };
      // Four entries a step: two lookups' bytes added as words first, their odd bytes taken by
      // vpmaddubsw (x 1, on the multiply ports, where the shifts share the shuffles' ports).
      // The sums mod 2^16 are the pairwise loop's, so are the bits (0.90x its time on 4096x4096).
      const __m256i odd_byte = _mm256_set1_epi16(0x0100);
      for (; e + 4 <= end; e += 4) {
        // Cold codes asked for ahead, one 64-byte line a step, as the AVX-512 scan (prefetches never fault).
        _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchBytes), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchL2Bytes), _MM_HINT_T1);
        const __m256i g0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + e * 16));
        const __m256i g1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + e * 16 + 32));
        const __m256i t0 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + e * 16));
        const __m256i t1 = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + e * 16 + 32));
        __m256i lo0, hi0, lo1, hi1;
        lookup(g0, t0, &lo0, &hi0);
        lookup(g1, t1, &lo1, &hi1);
        lo_all = _mm256_add_epi16(lo_all, _mm256_add_epi16(lo0, lo1));
        hi_all = _mm256_add_epi16(hi_all, _mm256_add_epi16(hi0, hi1));
        lo_odd = _mm256_add_epi16(lo_odd, _mm256_add_epi16(_mm256_maddubs_epi16(lo0, odd_byte),
                                                           _mm256_maddubs_epi16(lo1, odd_byte)));
        hi_odd = _mm256_add_epi16(hi_odd, _mm256_add_epi16(_mm256_maddubs_epi16(hi0, odd_byte),
                                                           _mm256_maddubs_epi16(hi1, odd_byte)));
      }
      for (; e + 2 <= end; e += 2)
        step(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(codes + e * 16)),
             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + e * 16)));
      if (e < end) {  // a last odd entry: lane 1 reads zero codes and the zero table padding
        step(_mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + e * 16))),
             _mm256_loadu_si256(reinterpret_cast<const __m256i*>(table + e * 16)));
        ++e;
      }
      widen_add(_mm256_sub_epi16(lo_all, _mm256_slli_epi16(lo_odd, 8)), &total[0]);
      widen_add(lo_odd, &total[1]);
      widen_add(_mm256_sub_epi16(hi_all, _mm256_slli_epi16(hi_odd, 8)), &total[2]);
      widen_add(hi_odd, &total[3]);
    }
    alignas(32) uint32_t parts[4][8];
    for (int i = 0; i < 4; ++i) _mm256_store_si256(reinterpret_cast<__m256i*>(parts[i]), total[i]);
    uint32_t* sums = out + m * kFastScanBlockRows;
    for (int i = 0; i < 8; ++i) {
      sums[2 * i] = parts[0][i];
      sums[2 * i + 1] = parts[1][i];
      sums[16 + 2 * i] = parts[2][i];
      sums[17 + 2 * i] = parts[3][i];
    }
  }
}

// Exact float tables: a 16-entry float lookup is two 8-entry permutes and a blend on bit 3
// of the index. Outputs are vectorized, entries summed in order: bit-identical to scalar.
inline __m256 lookup16(__m256 table_lo, __m256 table_hi, __m256i index) {
  const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(index, 28));  // bit 3 -> sign
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(table_lo, index),
                          _mm256_permutevar8x32_ps(table_hi, index), upper);
}

void fastscan_f32_avx2(const uint8_t* codes, size_t entries, const float* luts,
                       size_t lut_stride, size_t rows, float* out) {
  const __m256i nibble = _mm256_set1_epi32(0x0f);
  for (size_t m = 0; m < rows; ++m) {
    const float* table = luts + m * lut_stride;
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                     _mm256_setzero_ps()};  // outputs 0-7, 8-15, 16-23, 24-31
    for (size_t e = 0; e < entries; ++e) {
      const __m256 t_lo = _mm256_loadu_ps(table + e * 16), t_hi = _mm256_loadu_ps(table + e * 16 + 8);
      const __m128i group = _mm_loadu_si128(reinterpret_cast<const __m128i*>(codes + e * 16));
      const __m256i first = _mm256_cvtepu8_epi32(group);                       // bytes 0..7
      const __m256i second = _mm256_cvtepu8_epi32(_mm_srli_si128(group, 8));  // bytes 8..15
      acc[0] = _mm256_add_ps(acc[0], lookup16(t_lo, t_hi, _mm256_and_si256(first, nibble)));
      acc[1] = _mm256_add_ps(acc[1], lookup16(t_lo, t_hi, _mm256_and_si256(second, nibble)));
      acc[2] = _mm256_add_ps(acc[2], lookup16(t_lo, t_hi, _mm256_srli_epi32(first, 4)));
      acc[3] = _mm256_add_ps(acc[3], lookup16(t_lo, t_hi, _mm256_srli_epi32(second, 4)));
    }
    for (int i = 0; i < 4; ++i) _mm256_storeu_ps(out + m * kFastScanBlockRows + 8 * i, acc[i]);
  }
}

// --- scalar-codebook decode (tile GEMM) -------------------------------------------------

using avx2::horizontal_sum;

// Codes of 1-5 bits to bytes, 32 per step: each 128-bit lane takes 16 codes (2 * bits bytes; the
// same bit phase in both lanes, as 32 codes are whole bytes), a byte shuffle puts every code's
// two bytes in a 16-bit lane, one multiply by a power of 2 moves its bits to the top and a shift
// brings them down. Reads bytes [at, at + 2 * bits + 16) of the stream.
class CodeUnpack32 {
 public:
  static constexpr unsigned kMaxBits = 5;
  explicit CodeUnpack32(unsigned bits)
      : bits_(bits), constants_(bits <= kMaxBits ? &phase_constants()[bits - 1][0] : nullptr) {}
  size_t read_bytes() const { return 2 * bits_ + 16; }
  // For codes starting `phase` bits into their first byte (rows of odd-width codes start at
  // every phase).
  void set_phase(unsigned phase) { phase_ = phase; }
  // The set phase's constants as values, for loops that store bytes: int8 stores may alias
  // any object (char aliasing), so a loop reading the members reloaded them every step (Int8RowDecoder:
  // 9 loads per 32 codes, most of its time on 384x1536 at one row).
  struct Phase {
    __m256i shuffle0, shuffle1, multiply0, multiply1;
    unsigned bits;
    size_t read_bytes() const { return 2 * bits + 16; }
    // 32 codes as bytes in order, from the byte at `at`.
    __m256i unpack(const uint8_t* at) const {
      const __m256i bytes = _mm256_loadu2_m128i(reinterpret_cast<const __m128i*>(at + 2 * bits),
                                                reinterpret_cast<const __m128i*>(at));
      const int down = static_cast<int>(16 - bits);
      const __m256i a = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(bytes, shuffle0), multiply0), down);
      const __m256i b = _mm256_srli_epi16(_mm256_mullo_epi16(_mm256_shuffle_epi8(bytes, shuffle1), multiply1), down);
      return _mm256_packus_epi16(a, b);  // lanes: codes 0-7, 8-15 | 16-23, 24-31
    }
    // The same from a zero-padded copy of the bytes [at, end_byte): for the last steps of a run
    // of codes, so that no load passes its last byte and no scalar tail is left (1-bit rows of
    // a 384-deep panel lost a third of their codes to one).
    __m256i unpack_last(const uint8_t* at, const uint8_t* end_byte) const {
      alignas(32) uint8_t padded[64] = {};
      std::memcpy(padded, at, std::min<size_t>(static_cast<size_t>(end_byte - at), read_bytes()));
      return unpack(padded);
    }
  };
  Phase phase() const {
    const PhaseConstants& k = constants_[phase_];
    return {_mm256_load_si256(reinterpret_cast<const __m256i*>(k.shuffle[0])),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(k.shuffle[1])),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(k.multiply[0])),
            _mm256_load_si256(reinterpret_cast<const __m256i*>(k.multiply[1])), bits_};
  }
  // 32 codes as bytes in order, from the byte at `at` (the phase set for it).
  __m256i unpack(const uint8_t* at) const { return phase().unpack(at); }
  __m256i unpack_last(const uint8_t* at, const uint8_t* end_byte) const { return phase().unpack_last(at, end_byte); }

 private:
  // Lane code j at bit phase + j*bits, in bytes q, q + 1 (q + 1 <= 10 at 5 bits): the byte
  // shuffle and the power of 2 that lifts its bits to the top of the 16-bit lane.
  struct PhaseConstants {
    alignas(32) int8_t shuffle[2][32];
    alignas(32) int16_t multiply[2][16];
  };
  using Table = PhaseConstants[kMaxBits][8];
  // Built once per process (a decoder is made per panel: building its phases there cost
  // more than decoding one 384-code row).
  static const Table& phase_constants() {
    static const Table* table = [] {
      static Table t;
      for (unsigned bits = 1; bits <= kMaxBits; ++bits)
        for (unsigned phase = 0; phase < 8; ++phase)
          for (int half = 0; half < 2; ++half)
            for (int lane = 0; lane < 2; ++lane)
              for (int k = 0; k < 8; ++k) {
                const unsigned offset = phase + (8 * half + k) * bits, q = offset / 8, o = offset % 8;
                PhaseConstants& c = t[bits - 1][phase];
                c.shuffle[half][16 * lane + 2 * k] = static_cast<int8_t>(q);
                c.shuffle[half][16 * lane + 2 * k + 1] = static_cast<int8_t>(q + 1);
                c.multiply[half][8 * lane + k] = static_cast<int16_t>(1u << (16 - bits - o));
              }
      return &t;
    }();
    return *table;
  }

  unsigned bits_, phase_ = 0;
  const PhaseConstants* constants_;
};

// Eight codes per step from one unaligned 64-bit load, four per 32-bit half, shifted per
// lane; the codebook sits in
// registers (one to four ymm, selected by permutes and blends on the index bits) up to 32
// codewords, and is gathered from beyond that. A load never passes the last byte holding a
// requested code: the last steps and the tail read byte by byte.
void decode_codes_avx2(const uint8_t* stream, uint64_t first_code, uint64_t row_stride,
                       size_t rows, size_t count, unsigned bits, const float* book, float* out_rows) {
  const size_t ncw = size_t{1} << bits;
  const int b = static_cast<int>(bits);
  const __m256i shifts = _mm256_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b);
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(ncw - 1));
  float padded[32] = {};  // the codebook in whole registers
  std::memcpy(padded, book, std::min<size_t>(ncw, 32) * sizeof(float));
  __m256 t[4];
  for (int j = 0; j < 4; ++j) t[j] = _mm256_loadu_ps(padded + 8 * j);
  auto lookup = [&](__m256i idx) {
    if (ncw <= 8) return _mm256_permutevar8x32_ps(t[0], idx);
    if (ncw > 32) return _mm256_i32gather_ps(book, idx, 4);
    const __m256 bit3 = _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28));
    const __m256 low = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[0], idx),
                                        _mm256_permutevar8x32_ps(t[1], idx), bit3);
    if (ncw == 16) return low;
    const __m256 high = _mm256_blendv_ps(_mm256_permutevar8x32_ps(t[2], idx),
                                         _mm256_permutevar8x32_ps(t[3], idx), bit3);
    return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
  };
  CodeUnpack32 unpack32(bits);
  // Loads may pass a row's last byte up to the span's: only the last row has a tail.
  const uint64_t end_byte = rows == 0 ? 0 : ((first_code + (rows - 1) * row_stride + count) * bits + 7) / 8;
  for (size_t r = 0; r < rows; ++r) {
    const uint64_t first = first_code + r * row_stride;
    float* out = out_rows + r * count;
    size_t i = 0;
    // 32 codes per step up to 16 codewords (bench/ab.py at 1 and 8 rows: km3 per 16 rows 0.73-
    // 0.93x the time); at 5 bits, where the four-register lookup dominates, it was 1.03-1.26x.
    if (bits <= 4) {
      unpack32.set_phase(static_cast<unsigned>((first * bits) % 8));
      for (; i + 32 <= count; i += 32) {
        const uint64_t at = (first * bits) / 8 + i * bits / 8;
        if (at + unpack32.read_bytes() > end_byte) break;  // no load past the last code's byte
        const __m256i codes = unpack32.unpack(stream + at);
        const __m128i low = _mm256_castsi256_si128(codes), high = _mm256_extracti128_si256(codes, 1);
        _mm256_storeu_ps(out + i, lookup(_mm256_cvtepu8_epi32(low)));
        _mm256_storeu_ps(out + i + 8, lookup(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8))));
        _mm256_storeu_ps(out + i + 16, lookup(_mm256_cvtepu8_epi32(high)));
        _mm256_storeu_ps(out + i + 24, lookup(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8))));
      }
    }
    for (; i + 8 <= count; i += 8) {
      // Eight codes of b < 8 bits and a start offset of at most 7 fit in one 64-bit load;
      // 8-bit codes always start byte aligned.
      const uint64_t pos = (first + i) * bits;
      if ((pos >> 3) + 8 > end_byte) break;
      uint64_t word;
      std::memcpy(&word, stream + (pos >> 3), sizeof word);
      word >>= pos & 7;
      const int low = static_cast<int>(static_cast<uint32_t>(word));
      const int high = static_cast<int>(static_cast<uint32_t>(bits == 8 ? word >> 32 : word >> (4 * bits)));
      const __m256i words = _mm256_set_m128i(_mm_set1_epi32(high), _mm_set1_epi32(low));
      _mm256_storeu_ps(out + i, lookup(_mm256_and_si256(_mm256_srlv_epi32(words, shifts), mask)));
    }
    for (; i < count; ++i) {
      const uint64_t pos = (first + i) * bits;
      const unsigned shift = static_cast<unsigned>(pos & 7);
      unsigned word = stream[pos >> 3];
      if (shift + bits > 8) word |= static_cast<unsigned>(stream[(pos >> 3) + 1]) << 8;
      out[i] = book[(word >> shift) & (ncw - 1)];
    }
  }
}

// decode_codes_s8 and decode_dot_s8. Codes of 1-5 bits decode straight to bytes, 32 per step:
// each 128-bit lane takes 16 codes (2 * bits bytes, the same bit phase in both lanes), a byte
// shuffle puts every code's two bytes in a 16-bit lane, one multiply by a power of 2 moves its
// bits to the top and a shift brings them down; two byte shuffles into the 32 int8 codewords
// (a blend on bit 4) look them up, and a maddubs / madd pair sums them. 6-8 bits (codebooks
// beyond two registers) go through decode_codes_avx2 on the codewords as floats (exact) and
// pack back. (Through floats at 5 bits, the decode was 23% of km5 on 4096x4096 at 64 rows.)
class Int8RowDecoder {
 public:
  Int8RowDecoder(unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase)
      : bits_(bits), ncw_(size_t{1} << bits), book_q_(book_q), rows_per_book_(rows_per_book), phase_(phase) {}
  // Row r's `count` codes from code number `first` to out[0 .. count); returns their sum. Loads
  // stay before `readable_end` (the end of the call's span: later rows' bytes may be read).
  // Whether decode_each() serves these codes (bits <= 5; wider ones decode through floats).
  bool steps() const { return bits_ <= kDirectBits; }
  // decode()'s values for row r handed to step(i, values, valid), 32 at a time (valid < 32 only
  // in the last step, its lanes from `valid` on zero), not stored: a caller that consumes them
  // at once saves the store and the reload. Returns their sum. Only where steps().
  template <class Step>
  int32_t decode_each(const uint8_t* stream, uint64_t first, size_t r, size_t count, const uint8_t* readable_end,
                      Step&& step) {
    const size_t group = (phase_ + r) / rows_per_book_;
    if (group != group_) load_book(group);
    return decode_steps(stream, first, count, readable_end, step);
  }
  int32_t decode(const uint8_t* stream, uint64_t first, size_t r, size_t count, int8_t* out,
                 const uint8_t* readable_end) {
    const size_t group = (phase_ + r) / rows_per_book_;
    if (group != group_) load_book(group);
    return bits_ <= kDirectBits ? decode_direct(stream, first, count, out, readable_end)
                                : decode_via_floats(stream, first, count, out);
  }

 private:
  static constexpr unsigned kDirectBits = CodeUnpack32::kMaxBits;
  static constexpr size_t kChunk = 256;

  void load_book(size_t group) {
    const int8_t* book = book_q_ + (group << bits_);
    group_ = group;
    if (bits_ > kDirectBits) {
      for (size_t c = 0; c < ncw_; ++c) floats_book_[c] = book[c];
      return;
    }
    alignas(16) int8_t padded[32] = {};
    std::memcpy(padded, book, ncw_);
    low_ = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(padded)));
    high_ = _mm256_broadcastsi128_si256(_mm_load_si128(reinterpret_cast<const __m128i*>(padded + 16)));
  }

  template <class Step>
  int32_t decode_steps(const uint8_t* stream, uint64_t first, size_t count, const uint8_t* readable_end, Step&& step) {
    const unsigned bits = bits_;
    const uint64_t start_bit = first * bits, end_byte = static_cast<uint64_t>(readable_end - stream);
    unpack_.set_phase(static_cast<unsigned>(start_bit % 8));
    // Values, not members, in the loops (see CodeUnpack32::Phase).
    const CodeUnpack32::Phase unpack = unpack_.phase();
    const __m256i low = low_, high = high_;
    const bool two_tables = ncw_ > 16;
    auto lookup = [&](__m256i codes) {
      const __m256i values = _mm256_shuffle_epi8(low, codes);
      return two_tables ? _mm256_blendv_epi8(values, _mm256_shuffle_epi8(high, codes), _mm256_slli_epi16(codes, 3))
                        : values;
    };
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i total = _mm256_setzero_si256();
    auto add = [&](__m256i values) {
      total = _mm256_add_epi32(total, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, values), ones16));
    };
    size_t i = 0;
    for (; i + 32 <= count; i += 32) {
      const uint64_t at = start_bit / 8 + i * bits / 8;   // 32 codes: whole bytes
      if (at + unpack.read_bytes() > end_byte) break;      // no load past the readable end
      const __m256i values = lookup(unpack.unpack(stream + at));
      step(i, values, size_t{32});
      add(values);
    }
    for (; i < count; i += 32) {  // the last steps, through a padded copy (the span's last row), and a partial one
      const uint64_t at = start_bit / 8 + i * bits / 8;
      const size_t valid = std::min<size_t>(32, count - i);
      const __m256i lanes = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                                             21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31);
      const __m256i live = _mm256_cmpgt_epi8(_mm256_set1_epi8(static_cast<char>(valid)), lanes);
      const __m256i values = _mm256_and_si256(lookup(unpack.unpack_last(stream + at, stream + end_byte)), live);
      step(i, values, valid);
      add(values);
    }
    return horizontal_sum(total);
  }
  int32_t decode_direct(const uint8_t* stream, uint64_t first, size_t count, int8_t* out,
                        const uint8_t* readable_end) {
    return decode_steps(stream, first, count, readable_end, [&](size_t i, __m256i values, size_t valid) {
      if (valid == 32)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), values);
      else
        std::memcpy(out + i, &values, valid);
    });
  }
  int32_t decode_via_floats(const uint8_t* stream, uint64_t first, size_t count, int8_t* out) {
    const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // packs interleave 128-bit lanes
    __m256i total = _mm256_setzero_si256();
    int32_t sum = 0;
    for (size_t i = 0; i < count; i += kChunk) {
      const size_t n = std::min(kChunk, count - i);
      decode_codes_avx2(stream, first + i, 0, 1, n, bits_, floats_book_, floats_);
      size_t j = 0;
      for (; j + 32 <= n; j += 32) {
        const __m256i a = _mm256_cvtps_epi32(_mm256_loadu_ps(floats_ + j)), b = _mm256_cvtps_epi32(_mm256_loadu_ps(floats_ + j + 8));
        const __m256i c = _mm256_cvtps_epi32(_mm256_loadu_ps(floats_ + j + 16)), d = _mm256_cvtps_epi32(_mm256_loadu_ps(floats_ + j + 24));
        total = _mm256_add_epi32(total, _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(c, d)));
        const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, d));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i + j), _mm256_permutevar8x32_epi32(bytes, in_order));
      }
      for (; j < n; ++j) sum += out[i + j] = static_cast<int8_t>(floats_[j]);
    }
    return sum + horizontal_sum(total);
  }

  unsigned bits_;
  size_t ncw_;
  const int8_t* book_q_;
  size_t rows_per_book_, phase_, group_ = static_cast<size_t>(-1);
  CodeUnpack32 unpack_{bits_};
  __m256i low_, high_;
  float floats_book_[256];
  float floats_[kChunk];
};

// Rows of a panel are a row stride apart in the stream (rows of M: the panel's depth out of K
// codes each), too far for the hardware's prefetch: each row asks for the one kPrefetchRows on.
// Prefetches never fault, so the last rows' requests past the stream are harmless.
constexpr size_t kPrefetchRows = 4;
// One past the last byte holding a code of the call (rows >= 1).
inline const uint8_t* span_end(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                               unsigned bits) {
  return stream + ((first + (rows - 1) * row_stride + count) * bits + 7) / 8;
}
inline void prefetch_row(const uint8_t* stream, uint64_t first, size_t count, unsigned bits) {
  const uintptr_t begin = reinterpret_cast<uintptr_t>(stream) + first * bits / 8;
  for (uintptr_t at = begin; at < begin + (count * bits + 7) / 8 + 1; at += 64)
    _mm_prefetch(reinterpret_cast<const char*>(at), _MM_HINT_T0);
}

void decode_codes_s8_avx2(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                          unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase, int8_t* out,
                          size_t ld, int32_t* sums) {
  Int8RowDecoder decoder(bits, book_q, rows_per_book, phase);
  const uint8_t* const end = span_end(stream, first, row_stride, rows, count, bits);
  for (size_t r = 0; r < rows; ++r) {
    prefetch_row(stream, first + (r + kPrefetchRows) * row_stride, count, bits);
    sums[r] = decoder.decode(stream, first + r * row_stride, r, count, out + r * ld, end);
    std::memset(out + r * ld + count, 0, ld - count);
  }
}

// 16 values of X as 16-bit lanes: bytes zero-extended, 16-bit values as they are.
inline __m256i load16(const uint8_t* x) {
  return _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x)));
}
inline __m256i load16(const int16_t* x) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)); }

// Each decoded row of W against the M rows of X: both as 16 bits, 16 exact products per
// vpmaddwd. A row's chunks decode one after the other (the stream in order).
// decode_dot for kRows (1-4) rows of X, meeting each 32 decoded values in registers as they
// come (decode_each): no row buffer written and read back. The same exact int32 sums.
template <int kRows, typename X>
void decode_dot_fused(Int8RowDecoder& decoder, const uint8_t* stream, uint64_t first, uint64_t row_stride,
                      size_t rows, size_t count, size_t depth, const X* xq, size_t ldq, const uint8_t* end,
                      int32_t* dots, int32_t* sums) {
  for (size_t r = 0; r < rows; ++r)
    for (size_t q = 0, k0 = 0; k0 < count; ++q, k0 += depth) {
      const size_t len = std::min(depth, count - k0);
      __m256i acc[kRows];
      for (int m = 0; m < kRows; ++m) acc[m] = _mm256_setzero_si256();
      const X* const x = xq + q * kRows * ldq;
      sums[q * rows + r] = decoder.decode_each(stream, first + r * row_stride + k0, r, len, end,
                                               [&](size_t i, __m256i values, size_t valid) {
        const __m256i w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(values));
        const __m256i w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(values, 1));
        auto madd = [&](int m, const X* row) {
          acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(_mm256_madd_epi16(load16(row), w0),
                                                             _mm256_madd_epi16(load16(row + 16), w1)));
        };
        if (valid == 32) {
          for (int m = 0; m < kRows; ++m) madd(m, x + m * ldq + i);
          return;
        }
        for (int m = 0; m < kRows; ++m) {  // the last step: X's row may end before 32 values
          X padded[32] = {};
          std::copy(x + m * ldq + i, x + m * ldq + i + valid, padded);
          madd(m, padded);
        }
      });
      for (int m = 0; m < kRows; ++m) dots[(q * kRows + m) * rows + r] = horizontal_sum(acc[m]);
    }
}

template <typename X>
void decode_dot_avx2(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                     size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                     const X* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  Int8RowDecoder decoder(bits, book_q, rows_per_book, phase);
  const uint8_t* const end = span_end(stream, first, row_stride, rows, count, bits);
  if (decoder.steps() && M <= 4) {
    switch (M) {
      case 1: return decode_dot_fused<1>(decoder, stream, first, row_stride, rows, count, depth, xq, ldq, end, dots, sums);
      case 2: return decode_dot_fused<2>(decoder, stream, first, row_stride, rows, count, depth, xq, ldq, end, dots, sums);
      case 3: return decode_dot_fused<3>(decoder, stream, first, row_stride, rows, count, depth, xq, ldq, end, dots, sums);
      default: return decode_dot_fused<4>(decoder, stream, first, row_stride, rows, count, depth, xq, ldq, end, dots, sums);
    }
  }
  thread_local std::vector<int8_t> row;
  row.resize(count);
  for (size_t r = 0; r < rows; ++r) {
    for (size_t q = 0, k0 = 0; k0 < count; ++q, k0 += depth) {
      const size_t len = std::min(depth, count - k0);
      const int8_t* const w = row.data() + k0;
      sums[q * rows + r] = decoder.decode(stream, first + r * row_stride + k0, r, len, row.data() + k0, end);
      for (size_t m = 0; m < M; ++m) {
        const X* x = xq + (q * M + m) * ldq;
        __m256i acc = _mm256_setzero_si256();
        size_t i = 0;
        for (; i + 16 <= len; i += 16) {
          const __m256i xv = load16(x + i);
          const __m256i wv = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + i)));
          acc = _mm256_add_epi32(acc, _mm256_madd_epi16(xv, wv));
        }
        int32_t dot = horizontal_sum(acc);
        for (; i < len; ++i) dot += int32_t{x[i]} * w[i];
        dots[(q * M + m) * rows + r] = dot;
      }
    }
  }
}
void decode_dot_s8_avx2(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                        size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                        const uint8_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  decode_dot_avx2(stream, first, row_stride, rows, count, depth, bits, book_q, rows_per_book, phase, xq, ldq, M, dots,
                  sums);
}
void decode_dot_s16_avx2(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                         size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                         const int16_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  decode_dot_avx2(stream, first, row_stride, rows, count, depth, bits, book_q, rows_per_book, phase, xq, ldq, M, dots,
                  sums);
}

// Store masks for the first `cols` of a block's 32 outputs, 8 per register.
inline void block_masks(size_t cols, __m256i masks[4]) {
  for (int v = 0; v < 4; ++v) {
    const int valid = static_cast<int>(std::min<size_t>(8, cols > size_t(8 * v) ? cols - 8 * v : 0));
    masks[v] = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
}

// A group's 32 nibbles as 32-bit indices: outputs 0-7, 8-15 (low nibbles), 16-23, 24-31.
inline void group_indices(const uint8_t* group, __m256i index[4]) {
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(group));
  const __m256i b0 = _mm256_cvtepu8_epi32(bytes), b1 = _mm256_cvtepu8_epi32(_mm_srli_si128(bytes, 8));
  const __m256i nibble = _mm256_set1_epi32(0x0f);
  index[0] = _mm256_and_si256(b0, nibble);
  index[1] = _mm256_and_si256(b1, nibble);
  index[2] = _mm256_srli_epi32(b0, 4);
  index[3] = _mm256_srli_epi32(b1, 4);
}

// One panel row per group, looked up in the 16 floats (lookup16); masked stores for a short
// block.
void decode_fastscan_d1_avx2(const uint8_t* groups, size_t depth, size_t cols, const float* book,
                             float* out, size_t ld) {
  const __m256 lo_book = _mm256_loadu_ps(book), hi_book = _mm256_loadu_ps(book + 8);
  __m256i masks[4];
  block_masks(cols, masks);
  for (size_t j = 0; j < depth; ++j) {
    __m256i index[4];
    group_indices(groups + j * kFastScanGroupBytes, index);
    float* row = out + j * ld;
    for (int v = 0; v < 4 && size_t(8 * v) < cols; ++v) {
      const __m256 w = lookup16(lo_book, hi_book, index[v]);
      cols == 32 ? _mm256_storeu_ps(row + 8 * v, w) : _mm256_maskstore_ps(row + 8 * v, masks[v], w);
    }
  }
}

// Nibbles widened once; each row's 16 table values looked up as in decode_fastscan_d1.
void decode_fastscan_group_avx2(const uint8_t* group, const float* table, size_t len, size_t cols,
                                float* out, size_t ld, bool accumulate) {
  __m256i index[4], masks[4];
  group_indices(group, index);
  block_masks(cols, masks);
  for (size_t j = 0; j < len; ++j) {
    const __m256 lo_book = _mm256_loadu_ps(table + j * 16), hi_book = _mm256_loadu_ps(table + j * 16 + 8);
    float* row = out + j * ld;
    for (int v = 0; v < 4 && size_t(8 * v) < cols; ++v) {
      __m256 w = lookup16(lo_book, hi_book, index[v]);
      if (accumulate) w = _mm256_add_ps(_mm256_maskload_ps(row + 8 * v, masks[v]), w);
      _mm256_maskstore_ps(row + 8 * v, masks[v], w);
    }
  }
}

// R rows x J outputs at once: two ymm (lanes 0-7, 8-15) of lane chains per pair; tails and
// the reduction by the shared scalar helpers (the same order as every table).
template <int R, int J>
void dot_block_avx2(const float* x, size_t ldx, const float* w, size_t ldw, size_t K, float* out,
                    size_t out_stride) {
  __m256 lo[R][J], hi[R][J];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) lo[r][j] = hi[r][j] = _mm256_setzero_ps();
  const size_t whole = K / 16 * 16;
  for (size_t k = 0; k < whole; k += 16) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 x0 = _mm256_loadu_ps(x + r * ldx + k), x1 = _mm256_loadu_ps(x + r * ldx + k + 8);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) {
        lo[r][j] = _mm256_fmadd_ps(x0, _mm256_loadu_ps(w + j * ldw + k), lo[r][j]);
        hi[r][j] = _mm256_fmadd_ps(x1, _mm256_loadu_ps(w + j * ldw + k + 8), hi[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < J; ++j) {
      alignas(32) float lanes[16];
      _mm256_store_ps(lanes, lo[r][j]);
      _mm256_store_ps(lanes + 8, hi[r][j]);
      dot_rows_tail(x + r * ldx, w + j * ldw, whole, K, lanes);
      out[r * out_stride + j] = reduce16(lanes);
    }
}

void dot_rows_avx2(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw,
                   size_t outputs, size_t K, float* out, size_t out_stride) {
  for (size_t m = 0; m < rows; m += 2) {
    const bool pair = m + 2 <= rows;
    size_t j = 0;
    for (; j + 4 <= outputs; j += 4)
      pair ? dot_block_avx2<2, 4>(x + m * ldx, ldx, w + j * ldw, ldw, K, out + m * out_stride + j, out_stride)
           : dot_block_avx2<1, 4>(x + m * ldx, ldx, w + j * ldw, ldw, K, out + m * out_stride + j, out_stride);
    for (; j < outputs; ++j)
      pair ? dot_block_avx2<2, 1>(x + m * ldx, ldx, w + j * ldw, ldw, K, out + m * out_stride + j, out_stride)
           : dot_block_avx2<1, 1>(x + m * ldx, ldx, w + j * ldw, ldw, K, out + m * out_stride + j, out_stride);
  }
}

// 8 x 8 blocks in registers (unpack, shuffle, lane permute), the edges one float at a time.
void transpose_avx2(const float* src, size_t rows, size_t cols, size_t ld_src, float* dst,
                    size_t ld_dst) {
  size_t i = 0;
  for (; i + 8 <= rows; i += 8) {
    size_t j = 0;
    for (; j + 8 <= cols; j += 8) {
      __m256 r[8], t[8];
      for (int q = 0; q < 8; ++q) r[q] = _mm256_loadu_ps(src + (i + q) * ld_src + j);
      for (int q = 0; q < 8; q += 2) {
        t[q] = _mm256_unpacklo_ps(r[q], r[q + 1]);
        t[q + 1] = _mm256_unpackhi_ps(r[q], r[q + 1]);
      }
      for (int q = 0; q < 8; q += 4) {
        r[q] = _mm256_shuffle_ps(t[q], t[q + 2], 0x44);
        r[q + 1] = _mm256_shuffle_ps(t[q], t[q + 2], 0xee);
        r[q + 2] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0x44);
        r[q + 3] = _mm256_shuffle_ps(t[q + 1], t[q + 3], 0xee);
      }
      for (int q = 0; q < 4; ++q) {
        t[q] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x20);
        t[q + 4] = _mm256_permute2f128_ps(r[q], r[q + 4], 0x31);
      }
      for (int q = 0; q < 8; ++q) _mm256_storeu_ps(dst + (j + q) * ld_dst + i, t[q]);  // column j + q
    }
    for (; j < cols; ++j)
      for (size_t q = i; q < i + 8; ++q) dst[j * ld_dst + q] = src[q * ld_src + j];
  }
  for (; i < rows; ++i)
    for (size_t j = 0; j < cols; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
}

// --- tile GEMM ------------------------------------------------------------------------

// MR rows x 16 columns: each lane is one output's chain of fused multiply-adds in k order,
// the scalar table's exact sequence, so the result is bit-identical.
template <int MR>
inline void dense_block16(const float* x, size_t ldx, size_t K, const float* w, size_t N,
                          float* y, size_t ldy, bool accumulate) {
  // Every loop over the rows unrolled: GCC 12 otherwise keeps a[][] on the stack, one load
  // and store per FMA (4096x4096 at 64 rows ran at a third of ORT's fp32 MatMul).
  __m256 a[MR][2];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    a[i][0] = accumulate ? _mm256_loadu_ps(y + i * ldy) : _mm256_setzero_ps();
    a[i][1] = accumulate ? _mm256_loadu_ps(y + i * ldy + 8) : _mm256_setzero_ps();
  }
  for (size_t k = 0; k < K; ++k) {
    const __m256 w0 = _mm256_loadu_ps(w + k * N), w1 = _mm256_loadu_ps(w + k * N + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 xv = _mm256_broadcast_ss(x + i * ldx + k);
      a[i][0] = _mm256_fmadd_ps(xv, w0, a[i][0]);
      a[i][1] = _mm256_fmadd_ps(xv, w1, a[i][1]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    _mm256_storeu_ps(y + i * ldy, a[i][0]);
    _mm256_storeu_ps(y + i * ldy + 8, a[i][1]);
  }
}

void dense_gemm_avx2(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N,
                     float* y, size_t ldy, bool accumulate) {
  const size_t wide = N / 16 * 16;
  for (size_t n = 0; n < wide; n += 16) {
    size_t m = 0;
    for (; m + 6 <= M; m += 6)
      dense_block16<6>(x + m * ldx, ldx, K, w + n, N, y + m * ldy + n, ldy, accumulate);
    for (; m < M; ++m) dense_block16<1>(x + m * ldx, ldx, K, w + n, N, y + m * ldy + n, ldy, accumulate);
  }
  for (size_t m = 0; m < M; ++m)  // the last N % 16 columns
    for (size_t n = wide; n < N; ++n) {
      float acc = accumulate ? y[m * ldy + n] : 0.0f;
      for (size_t k = 0; k < K; ++k) acc = std::fma(x[m * ldx + k], w[k * N + n], acc);
      y[m * ldy + n] = acc;
    }
}

// --- VQGather ---------------------------------------------------------------------------

// One subspace: out[j] = w0[j] + w1[j] + ... (stage order), 8 then 4 floats per step.
inline void decode_chunk_avx2(const uint8_t* codes, size_t T, size_t S, size_t s, size_t d,
                              size_t len, const float* book, size_t stage_stride, float* out) {
  const float* first = book + codes[s] * d;
  size_t j = 0;
  for (; j + 8 <= len; j += 8) {
    __m256 acc = _mm256_loadu_ps(first + j);
    for (size_t t = 1; t < T; ++t)
      acc = _mm256_add_ps(acc, _mm256_loadu_ps(book + t * stage_stride + codes[t * S + s] * d + j));
    _mm256_storeu_ps(out + j, acc);
  }
  for (; j + 4 <= len; j += 4) {
    __m128 acc = _mm_loadu_ps(first + j);
    for (size_t t = 1; t < T; ++t)
      acc = _mm_add_ps(acc, _mm_loadu_ps(book + t * stage_stride + codes[t * S + s] * d + j));
    _mm_storeu_ps(out + j, acc);
  }
  for (; j < len; ++j) {
    float acc = first[j];
    for (size_t t = 1; t < T; ++t) acc += book[t * stage_stride + codes[t * S + s] * d + j];
    out[j] = acc;
  }
}

void decode_row_avx2(const uint8_t* codes, size_t T, size_t S, size_t d, size_t L,
                     const float* books, size_t stage_stride, size_t subspace_stride, float* out) {
  size_t s = 0;
  // d = 1 (scalar k-means, binary): 8 subspaces per gather, when every offset fits in int32.
  const bool gather = d == 1 && S >= 8 &&
                      S * subspace_stride + 256 <= static_cast<size_t>(std::numeric_limits<int32_t>::max());
  if (gather) {
    const __m256i lanes = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                             _mm256_set1_epi32(static_cast<int32_t>(subspace_stride)));
    for (; s + 8 <= S; s += 8) {
      const __m256i base = _mm256_add_epi32(
          lanes, _mm256_set1_epi32(static_cast<int32_t>(s * subspace_stride)));
      auto load = [&](size_t t) {
        uint64_t bytes;
        std::memcpy(&bytes, codes + t * S + s, sizeof bytes);
        const __m256i code = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(static_cast<long long>(bytes)));
        return _mm256_i32gather_ps(books + t * stage_stride, _mm256_add_epi32(base, code), 4);
      };
      __m256 acc = load(0);
      for (size_t t = 1; t < T; ++t) acc = _mm256_add_ps(acc, load(t));
      _mm256_storeu_ps(out + s, acc);
    }
  }
  for (; s < S; ++s)
    decode_chunk_avx2(codes, T, S, s, d, std::min(d, L - s * d), books + s * subspace_stride,
                      stage_stride, out + s * d);
}

}  // namespace

void avx2_int8_tier(KernelTable& t);  // vq_kernel_avx2_int8.cc

const KernelTable& avx2_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = scalar_kernel_table();
    t.name = "avx2";
    t.build_lut = build_lut_avx2;
    t.build_lut_d1 = build_lut_d1_avx2;
    t.lut_gather_rows = lut_gather_rows_avx2;
    t.lut_gather8 = lut_gather8_avx2;
    t.quantize_luts = quantize_luts_avx2;
    t.quantize_byte_luts = quantize_byte_luts_avx2;
    t.bytescan_u8 = bytescan_u8_avx2;
    t.lut_order_stats = lut_order_stats_avx2;
    t.fastscan_u8 = fastscan_u8_avx2;
    t.fastscan_f32 = fastscan_f32_avx2;
    t.decode_codes = decode_codes_avx2;
    t.dense_gemm = dense_gemm_avx2;
    t.decode_fastscan_d1 = decode_fastscan_d1_avx2;
    t.transpose = transpose_avx2;
    t.dot_rows = dot_rows_avx2;
    t.decode_fastscan_group = decode_fastscan_group_avx2;
    t.decode_row = decode_row_avx2;
    avx2_int8_tier(t);
    t.int8_panels = true;
    t.decode_codes_s8 = decode_codes_s8_avx2;
    t.decode_dot_s8 = decode_dot_s8_avx2;
    t.decode_dot_s16 = decode_dot_s16_avx2;
    t.int8_fastscan_d1_decoder = t.int8_stream_decoders = true;  // the d = 4 word decoders: avx2_int8_tier
    t.wide_x = true;  // the GEMM widens X to 16 bits anyway
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
