// AVX2: the panel GEMM's int8 tier on CPUs without a dot-product instruction (Zen 2/3,
// Haswell to Comet Lake). Only this file and vq_kernel_avx2.cc are compiled with -mavx2 -mfma;
// avx2_int8_tier() fills the AVX2 table's int8 entries.
//
// int8_gemm: vpmaddwd on 16-bit operands, X's bytes zero-extended once per block of rows and
// W's sign-extended as they are loaded: 16 exact multiply-adds per instruction, twice an fp32
// FMA's 8 at the same two per cycle (Zen 3: vpmaddwd and vfmadd231ps both 0.157 ns per
// instruction, /tmp throughput probe in the note of issue 13). vpmaddubsw would multiply 32
// bytes at once but saturates the 16-bit sum of two u8 x s8 products (255 * 127 * 2 > 32767),
// and X's bytes span 1-255. Since X is widened anyway, the table quantizes it to 16 bits
// (wide_x: quantize_rows_s16, int16_gemm): the same vpmaddwd count, no widening pass, and no
// second rows for outlier activations (MiniLM: most rows needed one at int8, twice the
// multiply-adds). Integer sums are exact and the quantizers give the scalar table's
// bytes (exact max reductions, the same float multiply, nearest-even rounding): every result
// is the scalar table's bits.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "vq_avx2_lanes.h"
#include "vq_kernel.h"

namespace onnxvq::kernels {
namespace {

// Lanes [0, count) of 8 as a vpmaskmov mask.
inline __m256i first_lanes(size_t count) {
  const __m256i index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(std::min<size_t>(count, 8))), index);
}

// Per-lane |value| maxima over `count` vectors `stride` floats apart, as the bits of the float
// (non-negative floats order as integers; inf / NaN, exponent all ones, above every finite
// value), and the lanes that are not finite as an all-ones mask in *bad.
inline __m256i abs_max_bits(const float* v, size_t count, size_t stride, __m256i live, __m256i* bad) {
  const __m256i magnitude = _mm256_set1_epi32(0x7fffffff);
  auto bits = [&](size_t i) {
    return _mm256_and_si256(_mm256_castps_si256(_mm256_maskload_ps(v + i * stride, live)), magnitude);
  };
  __m256i t0 = _mm256_setzero_si256(), t1 = t0;
  size_t i = 0;
  for (; i + 2 <= count; i += 2) {
    t0 = _mm256_max_epu32(t0, bits(i));
    t1 = _mm256_max_epu32(t1, bits(i + 1));
  }
  if (i < count) t0 = _mm256_max_epu32(t0, bits(i));
  const __m256i top = _mm256_max_epu32(t0, t1);
  // top >= 0x7f800000 (unsigned; top < 2^31 after the and, so a signed compare is the same)
  *bad = _mm256_or_si256(*bad, _mm256_cmpgt_epi32(top, _mm256_set1_epi32(0x7f7fffff)));
  return top;
}

inline int32_t horizontal_max(__m256i v) {
  __m128i m = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(1, 0, 3, 2)));
  m = _mm_max_epu32(m, _mm_shuffle_epi32(m, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(m);
}

// max |row[j]| over j < len (exact: the float's bits), lanes not finite or-ed into *bad.
inline float row_abs_max(const float* row, size_t len, __m256i* bad) {
  __m256i top = _mm256_setzero_si256();
  size_t j = 0;
  for (; j + 8 <= len; j += 8) top = _mm256_max_epu32(top, abs_max_bits(row + j, 1, 0, _mm256_set1_epi32(-1), bad));
  if (j < len) top = _mm256_max_epu32(top, abs_max_bits(row + j, 1, 0, first_lanes(len - j), bad));
  const int32_t top_bits = horizontal_max(top);
  float a;
  std::memcpy(&a, &top_bits, sizeof a);
  return a;
}

using avx2::horizontal_sum;

// rint(v * inv) as int32 lanes (the scalar table's round_s8): vcvtps2dq rounds nearest-even in
// the default mode, and |v * inv| <= 127 (1 + 2^-23) rounds to 127 at most, so its clamp never
// applies.
inline __m256i round_levels(__m256 v, __m256 inv) { return _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)); }

void quantize_rows_u8_avx2(const float* x, size_t ldx, size_t rows, size_t len, uint8_t* q, size_t ldq,
                           float* scale, uint32_t* energy) {
  const __m256i all = _mm256_set1_epi32(-1), offset = _mm256_set1_epi32(128);
  const __m256i in_order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);  // packs interleave 128-bit lanes
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    uint8_t* out = q + r * ldq;
    __m256i bad = _mm256_setzero_si256();
    const float a = row_abs_max(row, len, &bad);
    const float inv = 127.0f / a;
    std::fill(out + len, out + ldq, uint8_t{128});
    energy[r] = 0;
    if (!_mm256_testz_si256(bad, bad) || !std::isfinite(inv)) {
      scale[r] = _mm256_testz_si256(bad, bad) ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      std::fill(out, out + len, uint8_t{128});
      continue;
    }
    scale[r] = a / 127.0f;
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i squares = _mm256_setzero_si256();
    auto levels = [&](size_t at, __m256i live) {  // zero in the lanes that are not live
      const __m256i level = _mm256_and_si256(round_levels(_mm256_maskload_ps(row + at, live), vinv), live);
      squares = _mm256_add_epi32(squares, _mm256_mullo_epi32(level, level));
      return _mm256_add_epi32(level, offset);
    };
    size_t j = 0;
    for (; j + 32 <= len; j += 32) {  // 32 levels + 128 to bytes (1..255: the packs do not saturate)
      const __m256i a0 = levels(j, all), a1 = levels(j + 8, all), a2 = levels(j + 16, all), a3 = levels(j + 24, all);
      const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(a0, a1), _mm256_packs_epi32(a2, a3));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permutevar8x32_epi32(bytes, in_order));
    }
    for (; j < len; j += 8) {
      const size_t count = std::min<size_t>(8, len - j);
      alignas(32) int32_t level[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(level), levels(j, first_lanes(count)));
      for (size_t i = 0; i < count; ++i) out[j + i] = static_cast<uint8_t>(level[i]);
    }
    energy[r] = static_cast<uint32_t>(horizontal_sum(squares));
  }
}

// 8 columns at a time: per-column maxima down the panel, then 4 depths x 8 columns per step:
// two saturating packs put each 128-bit lane's 4 columns x 4 depths in bytes, depth-major, and
// one byte shuffle makes them column-major (a column's 4 depths in its 32-bit lane, stored
// under the column mask).
void quantize_panel_s8_avx2(const float* w, size_t K, size_t N, int8_t* wq, float* scale, int32_t* bias128) {
  const __m256i depth_to_column = _mm256_broadcastsi128_si256(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  const __m256 nan = _mm256_set1_ps(std::numeric_limits<float>::quiet_NaN());
  for (size_t n = 0; n < N; n += 8) {
    const __m256i columns = first_lanes(N - n);
    __m256i bad_bits = _mm256_setzero_si256();
    const __m256 a = _mm256_castsi256_ps(abs_max_bits(w + n, K, N, columns, &bad_bits));
    const __m256 bad = _mm256_castsi256_ps(bad_bits);
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(127.0f), a);
    const __m256 zero = _mm256_andnot_ps(bad, _mm256_cmp_ps(inv, _mm256_set1_ps(INFINITY), _CMP_EQ_OQ));
    const __m256i live = _mm256_andnot_si256(_mm256_castps_si256(_mm256_or_ps(zero, bad)), columns);
    const __m256 col_scale = _mm256_blendv_ps(_mm256_andnot_ps(zero, _mm256_div_ps(a, _mm256_set1_ps(127.0f))), nan, bad);
    _mm256_maskstore_ps(scale + n, columns, col_scale);
    auto level = [&](size_t k) {  // zero past K and in the lanes that are not live
      if (k >= K) return _mm256_setzero_si256();
      return _mm256_and_si256(round_levels(_mm256_maskload_ps(w + k * N + n, live), inv), live);
    };
    __m256i sum = _mm256_setzero_si256();
    for (size_t k = 0; k < K; k += 4) {
      const __m256i l0 = level(k), l1 = level(k + 1), l2 = level(k + 2), l3 = level(k + 3);
      sum = _mm256_add_epi32(sum, _mm256_add_epi32(_mm256_add_epi32(l0, l1), _mm256_add_epi32(l2, l3)));
      const __m256i bytes = _mm256_packs_epi16(_mm256_packs_epi32(l0, l1), _mm256_packs_epi32(l2, l3));
      _mm256_maskstore_epi32(reinterpret_cast<int*>(wq + k * N + 4 * n), columns, _mm256_shuffle_epi8(bytes, depth_to_column));
    }
    _mm256_maskstore_epi32(bias128 + n, columns, _mm256_slli_epi32(sum, 7));
  }
}

// decode_fastscan_d1_s8: per depth one 16-byte group (32 codes: low nibbles outputs 0-15, high
// ones 16-31) looked up in the 16 int8 codewords by pshufb; 4 depths' values interleaved by
// byte then 16-bit unpacks into 4 columns x 4 depths per 16 bytes (int8_gemm's layout), and
// summed per column by one maddubs / madd pair. Writes only the block's columns.
void decode_fastscan_d1_s8_avx2(const uint8_t* groups, size_t depth, size_t cols, const int8_t* book_q, int8_t* out,
                                size_t ld, int32_t* sums) {
  const __m128i book = _mm_loadu_si128(reinterpret_cast<const __m128i*>(book_q));
  const __m128i nibble = _mm_set1_epi8(0x0f), ones8 = _mm_set1_epi8(1), ones16 = _mm_set1_epi16(1);
  __m128i total[8];  // columns 4j .. 4j + 3
  for (auto& t : total) t = _mm_setzero_si128();
  const size_t quads = (cols + 3) / 4;
  for (size_t k = 0; k < depth; k += 4) {
    __m128i low[4], high[4];  // depth k + j: outputs 0-15, 16-31
    for (size_t j = 0; j < 4; ++j) {
      if (k + j < depth) {  // no group read past the depth
        const __m128i g = _mm_loadu_si128(reinterpret_cast<const __m128i*>(groups + (k + j) * kFastScanGroupBytes));
        low[j] = _mm_shuffle_epi8(book, _mm_and_si128(g, nibble));
        high[j] = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(g, 4), nibble));
      } else {
        low[j] = high[j] = _mm_setzero_si128();
      }
    }
    __m128i words[8];  // 4 columns x 4 depths each, columns 0-3, 4-7, ..., 28-31
    for (int half = 0; half < 2; ++half) {
      const __m128i* v = half ? high : low;
      const __m128i a = _mm_unpacklo_epi8(v[0], v[1]), b = _mm_unpacklo_epi8(v[2], v[3]);
      const __m128i c = _mm_unpackhi_epi8(v[0], v[1]), d = _mm_unpackhi_epi8(v[2], v[3]);
      words[4 * half + 0] = _mm_unpacklo_epi16(a, b);
      words[4 * half + 1] = _mm_unpackhi_epi16(a, b);
      words[4 * half + 2] = _mm_unpacklo_epi16(c, d);
      words[4 * half + 3] = _mm_unpackhi_epi16(c, d);
    }
    int8_t* row = out + (k / 4) * 4 * ld;
    for (size_t q = 0; q < quads; ++q) {
      total[q] = _mm_add_epi32(total[q], _mm_madd_epi16(_mm_maddubs_epi16(ones8, words[q]), ones16));
      if (4 * q + 4 <= cols)
        _mm_storeu_si128(reinterpret_cast<__m128i*>(row + 16 * q), words[q]);
      else
        std::memcpy(row + 16 * q, &words[q], 4 * (cols - 4 * q));
    }
  }
  for (size_t q = 0; q < quads; ++q) {
    alignas(16) int32_t column[4];
    _mm_store_si128(reinterpret_cast<__m128i*>(column), total[q]);
    std::memcpy(sums + 4 * q, column, sizeof(int32_t) * std::min<size_t>(4, cols - 4 * q));
  }
}

// --- d = 4 vector codebooks: one int32 word of int8_gemm's layout per code ----------------
// 8 codes' words at once: by two vpermd from a 16-word codebook in registers (pq 4-bit), or
// one vpgatherdd from 256 words (pq 8-bit, rq 2x4's combined codebook): against a load and a
// store per code in the scalar decoders, which left these layouts on the float panels.

// Lanes [0, n) of 8 words to out (n < 8: masked), and each lane's 4 signed bytes added to *total.
inline void put_words(__m256i words, size_t n, __m256i live, int8_t* out, __m256i* total) {
  int* const to = reinterpret_cast<int*>(out);
  if (n == 8)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(to), words);
  else
    _mm256_maskstore_epi32(to, live, words);
  *total = _mm256_add_epi32(*total, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), words),
                                                      _mm256_set1_epi16(1)));
}

inline void put_sums(__m256i total, size_t n, __m256i live, int32_t* sums) {
  if (n == 8)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(sums), total);
  else
    _mm256_maskstore_epi32(reinterpret_cast<int*>(sums), live, total);
}

// 8 byte codes (from the low 8 bytes of `codes`) to their words of a 256-word codebook.
inline __m256i gather_words(const int32_t* book, __m128i codes) {
  return _mm256_i32gather_epi32(reinterpret_cast<const int*>(book), _mm256_cvtepu8_epi32(codes), 4);
}

void decode_fastscan_words_s8_avx2(const uint8_t* groups, size_t subspaces, size_t cols, const int32_t* words,
                                   size_t book_stride, int8_t* out, size_t ld, int32_t* sums) {
  const size_t octets = (cols + 7) / 8;
  __m256i total[4] = {};
  const __m128i nibble = _mm_set1_epi8(0x0f);
  for (size_t j = 0; j < subspaces; ++j) {
    const int32_t* book = words + j * book_stride;
    const __m256i low = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(book));        // codewords 0-7
    const __m256i high = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(book + 8));   // 8-15
    const __m128i g = _mm_loadu_si128(reinterpret_cast<const __m128i*>(groups + j * kFastScanGroupBytes));
    const __m128i codes[2] = {_mm_and_si128(g, nibble), _mm_and_si128(_mm_srli_epi16(g, 4), nibble)};  // 0-15, 16-31
    for (size_t q = 0; q < octets; ++q) {
      const size_t n = std::min<size_t>(8, cols - 8 * q);
      const __m128i bytes = q % 2 ? _mm_srli_si128(codes[q / 2], 8) : codes[q / 2];
      const __m256i index = _mm256_cvtepu8_epi32(bytes);
      const __m256i upper = _mm256_slli_epi32(index, 28);  // bit 3 to the sign: codewords 8-15
      const __m256i word = _mm256_castps_si256(_mm256_blendv_ps(
          _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(low, index)),
          _mm256_castsi256_ps(_mm256_permutevar8x32_epi32(high, index)), _mm256_castsi256_ps(upper)));
      put_words(word, n, first_lanes(n), out + (j * ld + 8 * q) * 4, &total[q]);
    }
  }
  for (size_t q = 0; q < octets; ++q) {
    const size_t n = std::min<size_t>(8, cols - 8 * q);
    put_sums(total[q], n, first_lanes(n), sums + 8 * q);
  }
}

void decode_bytescan_words_s8_avx2(const uint8_t* codes, size_t block_stride, size_t subspaces, size_t cols,
                                   const uint8_t* /*planes*/, size_t /*book_stride*/, const int32_t* words,
                                   size_t word_stride, int8_t* out, size_t ld, int32_t* sums) {
  for (size_t i0 = 0; i0 < cols; i0 += 8) {  // 8 columns of one 64-output block (i0 % 64 <= 56)
    const size_t n = std::min<size_t>(8, cols - i0);
    const __m256i live = first_lanes(n);
    const uint8_t* block = codes + (i0 / kByteScanBlockRows) * block_stride + i0 % kByteScanBlockRows;
    __m256i total = _mm256_setzero_si256();
    for (size_t j = 0; j < subspaces; ++j) {
      const uint8_t* at = block + j * kByteScanBlockRows;
      __m128i bytes;
      if (n == 8) {
        bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(at));
      } else {  // only the columns' bytes (the last block's entry may end there)
        uint64_t padded = 0;
        std::memcpy(&padded, at, n);
        bytes = _mm_cvtsi64_si128(static_cast<long long>(padded));
      }
      put_words(gather_words(words + j * word_stride, bytes), n, live, out + (j * ld + i0) * 4, &total);
    }
    put_sums(total, n, live, sums + i0);
  }
}

void decode_fastscan2_words_s8_avx2(const uint8_t* groups, size_t stage_stride, size_t block_stride, size_t subspaces,
                                    size_t cols, const uint8_t* /*planes*/, size_t /*book_stride*/,
                                    const int32_t* words, size_t word_stride, int8_t* out, size_t ld, int32_t* sums) {
  const __m128i low = _mm_set1_epi8(0x0f), high = _mm_set1_epi8(static_cast<char>(0xf0));
  for (size_t b0 = 0; b0 < cols; b0 += kFastScanBlockRows) {  // a block's groups only when it has columns
    const uint8_t* block = groups + (b0 / kFastScanBlockRows) * block_stride;
    const size_t block_cols = std::min(kFastScanBlockRows, cols - b0), octets = (block_cols + 7) / 8;
    __m256i total[4] = {};
    for (size_t j = 0; j < subspaces; ++j) {
      const __m128i g0 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + j * kFastScanGroupBytes));
      const __m128i g1 = _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + stage_stride + j * kFastScanGroupBytes));
      const __m128i codes[2] = {  // byte codes n0 | n1 << 4 of outputs 0-15, 16-31
          _mm_or_si128(_mm_and_si128(g0, low), _mm_slli_epi16(_mm_and_si128(g1, low), 4)),
          _mm_or_si128(_mm_and_si128(_mm_srli_epi16(g0, 4), low), _mm_and_si128(g1, high))};
      for (size_t q = 0; q < octets; ++q) {
        const size_t n = std::min<size_t>(8, block_cols - 8 * q);
        const __m128i bytes = q % 2 ? _mm_srli_si128(codes[q / 2], 8) : codes[q / 2];
        put_words(gather_words(words + j * word_stride, bytes), n, first_lanes(n), out + (j * ld + b0 + 8 * q) * 4,
                  &total[q]);
      }
    }
    for (size_t q = 0; q < octets; ++q) {
      const size_t n = std::min<size_t>(8, block_cols - 8 * q);
      put_sums(total[q], n, first_lanes(n), sums + b0 + 8 * q);
    }
  }
}

// acc0 += madd(x, w0), acc1 += madd(x, w1), x = the 4 16-bit values at `four` broadcast: one
// row's step, in two scratch registers. (With intrinsics GCC 12 hoisted all 6 rows' broadcasts
// and spilled half the 12 accumulators: 247 ms on 4096x4096 at 512 rows, fp32's 196.)
inline void madd_row(__m256i& acc0, __m256i& acc1, const int16_t* four, __m256i w0, __m256i w1) {
  __m256i x, product;
  asm("vpbroadcastq %[four], %[x]\n\t"
      "vpmaddwd %[w0], %[x], %[product]\n\t"
      "vpaddd %[product], %[acc0], %[acc0]\n\t"
      "vpmaddwd %[w1], %[x], %[x]\n\t"
      "vpaddd %[x], %[acc1], %[acc1]"
      : [acc0] "+x"(acc0), [acc1] "+x"(acc1), [x] "=&x"(x), [product] "=&x"(product)
      : [four] "m"(*reinterpret_cast<const int64_t*>(four)), [w0] "x"(w0), [w1] "x"(w1));
}

// R rows (X widened to 16 bits, row stride K4) x 8 columns of the panel strip at w (4 depths
// of a column per 32-bit word, rows of 4*N bytes): per 4 depths two sign-extending loads (4
// columns x 4 depths each) and per row one 64-bit broadcast of its 4 values, two vpmaddwd
// (each 32-bit lane: 2 depths of one column) and two adds. 12 accumulators at R = 6.
template <int R, bool kTail, bool kBias>
void int8_block8(const int16_t* xw, size_t ldx, size_t K4, const int8_t* w, size_t N, __m256i columns, const float* xs,
                 const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  __m256i acc[R][2];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
  for (size_t k = 0; k < K4; k += 4) {
    __m256i w0, w1;
    if (kTail) {  // only the strip's columns are read
      const __m256i bytes = _mm256_maskload_epi32(reinterpret_cast<const int*>(w + k * N), columns);
      w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(bytes));
      w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(bytes, 1));
    } else {
      w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k * N)));
      w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(w + k * N + 16)));
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) madd_row(acc[r][0], acc[r][1], xw + r * ldx + k, w0, w1);
  }
  const __m256i bias = kBias ? _mm256_maskload_epi32(bias128, columns) : _mm256_setzero_si256();
  const __m256 column_scale = _mm256_maskload_ps(ws, columns);
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r) {
    // Lanes (column c, depths 0-1), (c, 2-3): the pairwise sums of the two are columns 0, 1,
    // 4, 5 | 2, 3, 6, 7; one 64-bit permute puts them in order.
    const __m256i dots = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]), _MM_SHUFFLE(3, 1, 2, 0));
    __m256 value = _mm256_mul_ps(_mm256_set1_ps(xs[r]),
                                 _mm256_mul_ps(column_scale, _mm256_cvtepi32_ps(_mm256_sub_epi32(dots, bias))));
    float* out = y + r * ldy;
    if (accumulate) value = _mm256_add_ps(kTail ? _mm256_maskload_ps(out, columns) : _mm256_loadu_ps(out), value);
    if (kTail)
      _mm256_maskstore_ps(out, columns, value);
    else
      _mm256_storeu_ps(out, value);
  }
}

// bias128 == nullptr: no bias (16-bit X).
template <int R>
void int8_rows(const int16_t* xw, size_t ldx, size_t K4, const int8_t* wq, size_t N, const float* xs, const float* ws,
               const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  const __m256i all = _mm256_set1_epi32(-1);
  size_t n = 0;
  if (bias128 == nullptr) {
    for (; n + 8 <= N; n += 8)
      int8_block8<R, false, false>(xw, ldx, K4, wq + 4 * n, N, all, xs, ws + n, nullptr, y + n, ldy, accumulate);
    if (n < N)
      int8_block8<R, true, false>(xw, ldx, K4, wq + 4 * n, N, first_lanes(N - n), xs, ws + n, nullptr, y + n, ldy,
                                  accumulate);
    return;
  }
  for (; n + 8 <= N; n += 8)
    int8_block8<R, false, true>(xw, ldx, K4, wq + 4 * n, N, all, xs, ws + n, bias128 + n, y + n, ldy, accumulate);
  if (n < N)
    int8_block8<R, true, true>(xw, ldx, K4, wq + 4 * n, N, first_lanes(N - n), xs, ws + n, bias128 + n, y + n, ldy,
                               accumulate);
}

// Blocks of up to 6 rows of 16-bit X (row stride ldx) through int8_rows.
constexpr size_t kGemmRows = 6;
void gemm_rows(const int16_t* xw, size_t ldx, size_t rows, size_t K4, const int8_t* wq, size_t N, const float* xs,
               const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  switch (rows) {
    case 6: int8_rows<6>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
    case 5: int8_rows<5>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
    case 4: int8_rows<4>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
    case 3: int8_rows<3>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
    case 2: int8_rows<2>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
    default: int8_rows<1>(xw, ldx, K4, wq, N, xs, ws, bias128, y, ldy, accumulate); break;
  }
}

void int8_gemm_avx2(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N,
                    const float* xs, const float* ws, const int32_t* bias128, float* y, size_t ldy, bool accumulate) {
  thread_local std::vector<int16_t> widened;  // kGemmRows rows of X as 16-bit values, row stride K4
  widened.resize(kGemmRows * K4);
  for (size_t m = 0; m < M; m += kGemmRows) {
    const size_t rows = std::min(kGemmRows, M - m);
    for (size_t r = 0; r < rows; ++r) {
      const uint8_t* from = xq + (m + r) * ldq;
      int16_t* to = widened.data() + r * K4;
      size_t k = 0;
      for (; k + 16 <= K4; k += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + k),
                            _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(from + k))));
      for (; k < K4; ++k) to[k] = from[k];
    }
    gemm_rows(widened.data(), K4, rows, K4, wq, N, xs + m, ws, bias128, y + m * ldy, ldy, accumulate);
  }
}

void int16_gemm_avx2(const int16_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N, const float* xs,
                     const float* ws, float* y, size_t ldy, bool accumulate) {
  for (size_t m = 0; m < M; m += kGemmRows)
    gemm_rows(xq + m * ldq, ldq, std::min(kGemmRows, M - m), K4, wq, N, xs + m, ws, nullptr, y + m * ldy, ldy,
              accumulate);
}

// quantize_rows_u8_avx2's steps at 16 bits: |x * inv| <= 32767 (1 + 2^-23) rounds to 32767 at
// most, so the clamp never applies and the signed packs never saturate.
void quantize_rows_s16_avx2(const float* x, size_t ldx, size_t rows, size_t len, int16_t* q, size_t ldq, float* scale,
                            uint64_t* energy) {
  const __m256i all = _mm256_set1_epi32(-1);
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    int16_t* out = q + r * ldq;
    __m256i bad = _mm256_setzero_si256();
    const float a = row_abs_max(row, len, &bad);
    const float inv = static_cast<float>(kWideLevels) / a;
    std::fill(out, out + ldq, int16_t{0});
    energy[r] = 0;
    if (!_mm256_testz_si256(bad, bad) || !std::isfinite(inv)) {
      scale[r] = _mm256_testz_si256(bad, bad) ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    scale[r] = a / static_cast<float>(kWideLevels);
    const __m256 vinv = _mm256_set1_ps(inv);
    __m256i squares = _mm256_setzero_si256();  // 4 x 64-bit
    auto levels = [&](size_t at, __m256i live) {  // zero in the lanes that are not live
      const __m256i level = _mm256_and_si256(round_levels(_mm256_maskload_ps(row + at, live), vinv), live);
      const __m256i square = _mm256_mullo_epi32(level, level);  // < 2^31
      squares = _mm256_add_epi64(squares, _mm256_add_epi64(_mm256_cvtepu32_epi64(_mm256_castsi256_si128(square)),
                                                           _mm256_cvtepu32_epi64(_mm256_extracti128_si256(square, 1))));
      return level;
    };
    size_t j = 0;
    for (; j + 16 <= len; j += 16) {
      const __m256i packed = _mm256_packs_epi32(levels(j, all), levels(j + 8, all));  // 128-bit lanes interleaved
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + j), _mm256_permute4x64_epi64(packed, _MM_SHUFFLE(3, 1, 2, 0)));
    }
    for (; j < len; j += 8) {
      const size_t count = std::min<size_t>(8, len - j);
      alignas(32) int32_t level[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(level), levels(j, first_lanes(count)));
      for (size_t i = 0; i < count; ++i) out[j + i] = static_cast<int16_t>(level[i]);
    }
    alignas(32) uint64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), squares);
    energy[r] = lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
}

}  // namespace

void avx2_int8_tier(KernelTable& t) {
  t.quantize_rows_u8 = quantize_rows_u8_avx2;
  t.quantize_panel_s8 = quantize_panel_s8_avx2;
  t.decode_fastscan_d1_s8 = decode_fastscan_d1_s8_avx2;
  t.int8_gemm = int8_gemm_avx2;
  t.quantize_rows_s16 = quantize_rows_s16_avx2;
  t.int16_gemm = int16_gemm_avx2;
  t.decode_fastscan_words_s8 = decode_fastscan_words_s8_avx2;
  t.decode_bytescan_words_s8 = decode_bytescan_words_s8_avx2;
  t.decode_fastscan2_words_s8 = decode_fastscan2_words_s8_avx2;
  t.int8_word_decoders = true;
}

}  // namespace onnxvq::kernels
