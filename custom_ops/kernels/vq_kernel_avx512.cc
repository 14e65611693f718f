// AVX-512 (F + BW + VL) micro-kernels. Only this file is compiled with -mavx512*; it is
// selected at run time on CPUs that have these extensions (and the OS saves zmm state).
//
// fastscan_u8 takes four entries per 512-bit register (one 16-byte group or table per
// 128-bit lane), two rows per code load; otherwise the same scheme as the AVX2 kernel (see there). dense_gemm runs
// 6 rows x 64 columns per block (24 accumulators), 8 x 32 and masked loads and stores for the last
// columns. Both bit-identical to scalar. build_lut at d = 4 takes 16 codewords a step with
// AVX2's pairwise sums (AVX2's bits); byte_table_moments is exact. The other functions come
// from the AVX2 table (every AVX-512 CPU has AVX2).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "vq_kernel.h"

namespace onnxvq::kernels {

const KernelTable& avx2_kernel_table();

namespace {

constexpr size_t kFlushQuads = 256;  // steps of <= 255 per 16-bit even sum (< 2^16)

inline void widen_add(__m512i words, __m512i* total) {
  const __m512i low = _mm512_cvtepu16_epi32(_mm512_castsi512_si256(words));
  const __m512i high = _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(words, 1));
  *total = _mm512_add_epi32(*total, _mm512_add_epi32(low, high));
}

// R rows of tables against one block's codes: each step's code bytes are loaded and split
// into nibbles once for all R rows.
template <int R>
void fastscan_rows_avx512(const uint8_t* codes, size_t entries, const uint8_t* tables,
                          size_t qlut_stride, uint32_t* out) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  __m512i total[R][4];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) total[r][i] = _mm512_setzero_si512();
  for (size_t e = 0; e < entries;) {
    const size_t end = std::min(entries, e + 4 * kFlushQuads);
    __m512i lo_all[R], lo_odd[R], hi_all[R], hi_odd[R];
    for (int r = 0; r < R; ++r) lo_all[r] = lo_odd[r] = hi_all[r] = hi_odd[r] = _mm512_setzero_si512();
    for (; e < end; e += 4) {
      // A tail of 1-3 entries loads only its own code bytes (masked: a masked load costs
      // several plain ones here, so only there); the tables are zero padded to a multiple
      // of 64 bytes, so the missing lanes add zero.
      // Cold codes: the next ones are asked for well ahead (the hardware prefetcher alone
      // left the scan waiting on DRAM: cold time = hot time + stream time).
      _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchBytes), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(codes + e * 16 + kCodePrefetchL2Bytes), _MM_HINT_T1);
      const size_t valid = std::min<size_t>(4, end - e);
      const __m512i group = valid == 4 ? _mm512_loadu_si512(codes + e * 16)
                                       : _mm512_maskz_loadu_epi8((__mmask64{1} << (16 * valid)) - 1, codes + e * 16);
      const __m512i lo_idx = _mm512_and_si512(group, nibble);
      const __m512i hi_idx = _mm512_and_si512(_mm512_srli_epi16(group, 4), nibble);
#pragma GCC unroll 2
      for (int r = 0; r < R; ++r) {
        const __m512i lut = _mm512_loadu_si512(tables + r * qlut_stride + e * 16);
        const __m512i lo = _mm512_shuffle_epi8(lut, lo_idx);
        const __m512i hi = _mm512_shuffle_epi8(lut, hi_idx);
        lo_all[r] = _mm512_add_epi16(lo_all[r], lo);
        lo_odd[r] = _mm512_add_epi16(lo_odd[r], _mm512_srli_epi16(lo, 8));
        hi_all[r] = _mm512_add_epi16(hi_all[r], hi);
        hi_odd[r] = _mm512_add_epi16(hi_odd[r], _mm512_srli_epi16(hi, 8));
      }
    }
    e = end;
    for (int r = 0; r < R; ++r) {
      widen_add(_mm512_sub_epi16(lo_all[r], _mm512_slli_epi16(lo_odd[r], 8)), &total[r][0]);
      widen_add(lo_odd[r], &total[r][1]);
      widen_add(_mm512_sub_epi16(hi_all[r], _mm512_slli_epi16(hi_odd[r], 8)), &total[r][2]);
      widen_add(hi_odd[r], &total[r][3]);
    }
  }
  // Each total holds 16 u32: lanes 0-7 and 8-15 are the two 256-bit halves of the four
  // 128-bit entry lanes after widening; fold the halves (entries e..e+1 vs e+2..e+3).
  for (int r = 0; r < R; ++r) {
    alignas(64) uint32_t parts[4][16];
    for (int i = 0; i < 4; ++i) _mm512_store_si512(parts[i], total[r][i]);
    uint32_t* sums = out + r * kFastScanBlockRows;
    for (int i = 0; i < 8; ++i) {
      sums[2 * i] = parts[0][i] + parts[0][i + 8];
      sums[2 * i + 1] = parts[1][i] + parts[1][i + 8];
      sums[16 + 2 * i] = parts[2][i] + parts[2][i + 8];
      sums[17 + 2 * i] = parts[3][i] + parts[3][i + 8];
    }
  }
}

void fastscan_u8_avx512(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                        size_t qlut_stride, size_t rows, uint32_t* out) {
  size_t m = 0;
  for (; m + 2 <= rows; m += 2)
    fastscan_rows_avx512<2>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kFastScanBlockRows);
  if (m < rows) fastscan_rows_avx512<1>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kFastScanBlockRows);
}

// lut_order_stats for 16 tables at once (lane l: table e + l; value c of every table in one
// gather), by the scalar table's insertions: minps(a, b) is its vmin(a, b) and maxps(b, a)
// its vmax(a, b), signed zeros included, so the selections are its bits.
bool lut_order_stats_avx512(const float* lut, size_t entries, float* range, float* high3, float* low3) {
  const __m512i table_starts = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                                  _mm512_set1_epi32(static_cast<int>(kFastScanCodewords)));
  const __m512 inf = _mm512_set1_ps(INFINITY), minus_inf = _mm512_set1_ps(-INFINITY), zero = _mm512_setzero_ps();
  for (size_t e = 0; e < entries; e += 16) {
    const __mmask16 live = entries - e >= 16 ? __mmask16(0xffff) : __mmask16((1u << (entries - e)) - 1);
    const float* tables = lut + e * kFastScanCodewords;
    __m512 a1 = minus_inf, a2 = minus_inf, a3 = minus_inf, b1 = inf, b2 = inf, b3 = inf, bad = zero;
    for (size_t c = 0; c < kFastScanCodewords; ++c) {
      const __m512 v = _mm512_mask_i32gather_ps(zero, live, table_starts, tables + c, 4);
      bad = _mm512_add_ps(bad, _mm512_sub_ps(v, v));  // 0 for finite values, NaN otherwise
      const __m512 ta = _mm512_min_ps(a1, v), ua = _mm512_min_ps(a2, ta);
      a1 = _mm512_max_ps(v, a1), a2 = _mm512_max_ps(ta, a2), a3 = _mm512_max_ps(ua, a3);
      const __m512 tb = _mm512_max_ps(v, b1), ub = _mm512_max_ps(tb, b2);
      b1 = _mm512_min_ps(b1, v), b2 = _mm512_min_ps(b2, tb), b3 = _mm512_min_ps(b3, ub);
    }
    if (_mm512_mask_cmp_ps_mask(live, bad, zero, _CMP_NEQ_UQ)) return false;
    _mm512_mask_storeu_ps(range + e, live, _mm512_sub_ps(a1, b1));
    _mm512_mask_storeu_ps(high3 + e, live, a3);
    _mm512_mask_storeu_ps(low3 + e, live, b3);
  }
  return true;
}

// Scalar-codebook decode, 16 codes per step: the step's bytes in one masked 16-byte load
// (never past the last byte holding a requested code), two 64-bit words of eight codes each
// (the AVX2 scheme), spread to 16 lanes, shifted per lane and looked up in up to 32 codewords
// held in two registers (one two-source permute), gathered beyond that; the last step masked.
void decode_codes_avx512(const uint8_t* stream, uint64_t first_code, uint64_t row_stride,
                         size_t rows, size_t count, unsigned bits, const float* book, float* out_rows) {
  const size_t ncw = size_t{1} << bits;
  const int b = static_cast<int>(bits);
  const __m512i shifts = _mm512_setr_epi32(0, b, 2 * b, 3 * b, 0, b, 2 * b, 3 * b, 0, b, 2 * b,
                                           3 * b, 0, b, 2 * b, 3 * b);
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  const __m512i mask = _mm512_set1_epi32(static_cast<int>(ncw - 1));
  float padded[32] = {};
  std::memcpy(padded, book, std::min<size_t>(ncw, 32) * sizeof(float));
  const __m512 t0 = _mm512_loadu_ps(padded), t1 = _mm512_loadu_ps(padded + 16);
  const unsigned half = bits == 8 ? 32 : 4 * bits;  // bits of the first four codes of eight
  for (size_t r = 0; r < rows; ++r) {
    const uint64_t first = first_code + r * row_stride;
    const uint64_t end_byte = ((first + count) * bits + 7) / 8;
    float* out = out_rows + r * count;
    for (size_t i = 0; i < count; i += 16) {
      // Eight codes of b < 8 bits after a start offset of at most 7 fit in 64 bits; the
      // second eight start exactly b bytes later (8-bit codes are byte aligned).
      const uint64_t pos = (first + i) * bits, byte = pos >> 3;
      const uint64_t avail = end_byte - byte;
      alignas(16) uint8_t raw[16];
      const __m128i* src = reinterpret_cast<const __m128i*>(stream + byte);
      // (a masked load only where needed: on this AMD core it costs several plain ones)
      _mm_store_si128(reinterpret_cast<__m128i*>(raw),
                      avail >= 16 ? _mm_loadu_si128(src) : _mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), src));
      uint64_t first8, second8;
      std::memcpy(&first8, raw, 8);
      std::memcpy(&second8, raw + bits, 8);
      first8 >>= pos & 7;
      second8 >>= pos & 7;
      const __m128i words = _mm_setr_epi32(static_cast<int>(first8), static_cast<int>(first8 >> half),
                                           static_cast<int>(second8), static_cast<int>(second8 >> half));
      const __m512i idx = _mm512_and_si512(
          _mm512_srlv_epi32(_mm512_permutexvar_epi32(spread, _mm512_castsi128_si512(words)), shifts), mask);
      const __m512 v = ncw <= 32 ? _mm512_permutex2var_ps(t0, idx, t1) : _mm512_i32gather_ps(idx, book, 4);
      const size_t n = std::min<size_t>(16, count - i);
      _mm512_mask_storeu_ps(out + i, n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), v);
    }
  }
}

// The first min(n, 16) lanes.
inline __mmask16 half_mask(size_t n) { return n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1); }

// One panel row per group: 16 nibbles of each half as 32-bit indices into the 16 floats.
void decode_fastscan_d1_avx512(const uint8_t* groups, size_t depth, size_t cols, const float* book,
                               float* out, size_t ld) {
  const __m512 table = _mm512_loadu_ps(book);
  const __mmask16 low = half_mask(cols), high = half_mask(cols > 16 ? cols - 16 : 0);
  for (size_t j = 0; j < depth; ++j) {
    const __m512i bytes = _mm512_cvtepu8_epi32(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(groups + j * kFastScanGroupBytes)));
    const __m512 w0 = _mm512_permutexvar_ps(_mm512_and_si512(bytes, _mm512_set1_epi32(0x0f)), table);
    const __m512 w1 = _mm512_permutexvar_ps(_mm512_srli_epi32(bytes, 4), table);
    _mm512_mask_storeu_ps(out + j * ld, low, w0);
    _mm512_mask_storeu_ps(out + j * ld + 16, high, w1);
  }
}

// Nibbles widened once, then one permute of the transposed codebook per row and half.
void decode_fastscan_group_avx512(const uint8_t* group, const float* table, size_t len, size_t cols,
                                  float* out, size_t ld, bool accumulate) {
  const __mmask16 low = half_mask(cols), high = half_mask(cols > 16 ? cols - 16 : 0);
  const __m512i bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(group)));
  const __m512i lo = _mm512_and_si512(bytes, _mm512_set1_epi32(0x0f)), hi = _mm512_srli_epi32(bytes, 4);
  for (size_t j = 0; j < len; ++j) {
    const __m512 values = _mm512_loadu_ps(table + j * 16);
    __m512 w0 = _mm512_permutexvar_ps(lo, values), w1 = _mm512_permutexvar_ps(hi, values);
    float* row = out + j * ld;
    if (accumulate) {
      w0 = _mm512_add_ps(_mm512_maskz_loadu_ps(low, row), w0);
      w1 = _mm512_add_ps(_mm512_maskz_loadu_ps(high, row + 16), w1);
    }
    _mm512_mask_storeu_ps(row, low, w0);
    _mm512_mask_storeu_ps(row + 16, high, w1);
  }
}

// reduce16() of 16 vectors at once, as the same halving tree (lane l + lane l+8, then +4,
// +2, +1) with the vectors interleaved by shuffles: result lane 4k + q is vector 4q + k's.
inline __m512 reduce16_x16(const __m512 (&v)[16]) {
  __m512 u[8], w[4], g[2];
  for (int i = 0; i < 8; ++i)  // lanes 0-7: v[2i]'s l + (l + 8); lanes 8-15: v[2i+1]'s
    u[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xee));
  for (int i = 0; i < 4; ++i)  // quarter k: v[4i + k]'s l + (l + 4), l < 4
    w[i] = _mm512_add_ps(_mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0x88),
                         _mm512_shuffle_f32x4(u[2 * i], u[2 * i + 1], 0xdd));
  for (int i = 0; i < 2; ++i)  // quarter k: v[8i + k]'s pairs (0+2, 1+3), then v[8i + 4 + k]'s
    g[i] = _mm512_add_ps(_mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(w[2 * i], w[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// R rows x J outputs at once: one zmm of 16 lane chains per pair (J independent chains even
// at one row, which hides the FMA latency); whole 16-input steps in registers. A 4 x 4 block
// takes its last K % 16 inputs with merge-masked FMAs (lane k % 16, as dot_rows_tail) and
// reduces all 16 pairs at once (reduce16_x16: a scalar reduction per output cost more than
// the multiply-adds at K = 384); other blocks use the shared scalar helpers (the same order).
template <int R, int J>
void dot_block_avx512(const float* x, size_t ldx, const float* w, size_t ldw, size_t K, float* out,
                      size_t out_stride) {
  __m512 acc[R][J];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) acc[r][j] = _mm512_setzero_ps();
  const size_t whole = K / 16 * 16;
  for (size_t k = 0; k < whole; k += 16) {
    __m512 wv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) wv[j] = _mm512_loadu_ps(w + j * ldw + k);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512 xv = _mm512_loadu_ps(x + r * ldx + k);
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
    }
  }
  if constexpr (R == 4 && J == 4) {
    if (whole < K) {
      const __mmask16 tail = __mmask16((1u << (K - whole)) - 1);
      __m512 wv[4];
      for (int j = 0; j < 4; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, w + j * ldw + whole);
      for (int r = 0; r < 4; ++r) {
        const __m512 xv = _mm512_maskz_loadu_ps(tail, x + r * ldx + whole);
        for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_mask3_fmadd_ps(xv, wv[j], acc[r][j], tail);
      }
    }
    const __m512 v[16] = {acc[0][0], acc[0][1], acc[0][2], acc[0][3], acc[1][0], acc[1][1], acc[1][2], acc[1][3],
                          acc[2][0], acc[2][1], acc[2][2], acc[2][3], acc[3][0], acc[3][1], acc[3][2], acc[3][3]};
    // Lane 4j + r holds (row r, output j); transposed so each row's four outputs are a quarter.
    const __m512i by_row = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    const __m512 sums = _mm512_permutexvar_ps(by_row, reduce16_x16(v));
    _mm_storeu_ps(out, _mm512_castps512_ps128(sums));
    _mm_storeu_ps(out + out_stride, _mm512_extractf32x4_ps(sums, 1));
    _mm_storeu_ps(out + 2 * out_stride, _mm512_extractf32x4_ps(sums, 2));
    _mm_storeu_ps(out + 3 * out_stride, _mm512_extractf32x4_ps(sums, 3));
  } else {
    for (int r = 0; r < R; ++r)
      for (int j = 0; j < J; ++j) {
        alignas(64) float lanes[16];
        _mm512_store_ps(lanes, acc[r][j]);
        dot_rows_tail(x + r * ldx, w + j * ldw, whole, K, lanes);
        out[r * out_stride + j] = reduce16(lanes);
      }
  }
}

template <int J>
void dot_rows_j_avx512(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw, size_t K,
                       float* out, size_t out_stride) {
  size_t m = 0;
  for (; m + 4 <= rows; m += 4)
    dot_block_avx512<4, J>(x + m * ldx, ldx, w, ldw, K, out + m * out_stride, out_stride);
  for (; m < rows; ++m) dot_block_avx512<1, J>(x + m * ldx, ldx, w, ldw, K, out + m * out_stride, out_stride);
}

void dot_rows_avx512(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw,
                     size_t outputs, size_t K, float* out, size_t out_stride) {
  if (outputs == 4) return dot_rows_j_avx512<4>(x, ldx, rows, w, ldw, K, out, out_stride);
  for (size_t j = 0; j < outputs; ++j)
    dot_rows_j_avx512<1>(x, ldx, rows, w + j * ldw, ldw, K, out + j, out_stride);
}

// MR rows x V vectors of 16 columns (when Masked, the last one masked to `last` lanes; full
// blocks take plain loads, cheaper on AMD): each lane is one output's chain of fused
// multiply-adds in k order, the scalar table's exact sequence.
template <int MR, int V, bool Masked>
inline void dense_block(const float* x, size_t ldx, size_t K, const float* w, size_t N, float* y,
                        size_t ldy, bool accumulate, __mmask16 last) {
  // Unrolled by hand-held pragmas: GCC keeps a[][] in registers only when every index is a
  // constant (otherwise it spills the accumulators on every k).
  __mmask16 mask[V];
#pragma GCC unroll 4
  for (int v = 0; v < V; ++v) mask[v] = Masked && v == V - 1 ? last : __mmask16(0xffff);
  __m512 a[MR][V];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v)
      a[i][v] = accumulate ? _mm512_maskz_loadu_ps(mask[v], y + i * ldy + 16 * v) : _mm512_setzero_ps();
  for (size_t k = 0; k < K; ++k) {
    __m512 wv[V];
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) wv[v] = _mm512_maskz_loadu_ps(mask[v], w + k * N + 16 * v);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_set1_ps(x[i * ldx + k]);
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) a[i][v] = _mm512_fmadd_ps(xv, wv[v], a[i][v]);
    }
  }
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) _mm512_mask_storeu_ps(y + i * ldy + 16 * v, mask[v], a[i][v]);
}

// Rows in blocks of MR, then 4 / 2 / 1 (MR 8 or 6).
template <int MR, int V, bool Masked = false>
void dense_rows(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N, float* y,
                size_t ldy, bool accumulate, __mmask16 last = 0xffff) {
  size_t m = 0;
  for (; m + MR <= M; m += MR)
    dense_block<MR, V, Masked>(x + m * ldx, ldx, K, w, N, y + m * ldy, ldy, accumulate, last);
  for (; m + 4 <= M; m += 4) dense_block<4, V, Masked>(x + m * ldx, ldx, K, w, N, y + m * ldy, ldy, accumulate, last);
  for (; m + 2 <= M; m += 2) dense_block<2, V, Masked>(x + m * ldx, ldx, K, w, N, y + m * ldy, ldy, accumulate, last);
  for (; m < M; ++m) dense_block<1, V, Masked>(x + m * ldx, ldx, K, w, N, y + m * ldy, ldy, accumulate, last);
}

// 64 columns at a time as 6 rows x 4 vectors (24 accumulators, 4 loads of W and 6 broadcasts
// per 24 fused multiply-adds: 5-15% faster than 8 x 2 on 1152 x 384 x 1536 here), then 32,
// then the last 1-31 columns masked.
void dense_gemm_avx512(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N,
                       float* y, size_t ldy, bool accumulate) {
  size_t n = 0;
  for (; n + 64 <= N; n += 64) dense_rows<6, 4>(x, ldx, M, K, w + n, N, y + n, ldy, accumulate);
  if (n + 32 <= N) {
    dense_rows<8, 2>(x, ldx, M, K, w + n, N, y + n, ldy, accumulate);
    n += 32;
  }
  const size_t rest = N - n;  // 0 .. 31 columns: one full vector and/or one masked one
  if (rest > 16)
    dense_rows<8, 2, true>(x, ldx, M, K, w + n, N, y + n, ldy, accumulate, __mmask16((1u << (rest - 16)) - 1));
  else if (rest > 0)
    dense_rows<8, 1, true>(x, ldx, M, K, w + n, N, y + n, ldy, accumulate, __mmask16((1u << rest) - 1));
}

// Byte-scan tables quantized as quantize_tables<256> in the scalar table: exact min / max
// reductions, the same float formula per value, rounding to nearest even (roundscale), so
// the same bytes, scale and offset.
bool quantize_byte_luts_avx512(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  constexpr size_t kVectors = kByteScanCodewords / 16;
  float range = 0.0f, offset_sum = 0.0f;
  // Each table's minimum; on the stack up to 1024 tables (K = 4096 at d = 4), no allocation per row.
  float stack_lows[1024];
  std::vector<float> heap_lows(entries > 1024 ? entries : 0);
  float* const lows = entries > 1024 ? heap_lows.data() : stack_lows;
  for (size_t e = 0; e < entries; ++e) {
    const float* table = lut + e * kByteScanCodewords;
    __m512 lo = _mm512_loadu_ps(table), hi = lo;
    __mmask16 bad = 0;
    for (size_t v = 0; v < kVectors; ++v) {
      const __m512 x = _mm512_loadu_ps(table + 16 * v);
      bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(x, x), _mm512_setzero_ps(), _CMP_NEQ_UQ);  // inf or NaN
      lo = _mm512_min_ps(lo, x);
      hi = _mm512_max_ps(hi, x);
    }
    if (bad) return false;
    const float low = _mm512_reduce_min_ps(lo), high = _mm512_reduce_max_ps(hi);
    range = std::max(range, high - low);
    offset_sum += low;
    lows[e] = low;
  }
  if (!std::isfinite(range)) return false;
  const float inv_scalar = range > 0.0f ? 255.0f / range : 0.0f;
  const __m512 inv = _mm512_set1_ps(inv_scalar), top = _mm512_set1_ps(255.0f), zero = _mm512_setzero_ps();
  for (size_t e = 0; e < entries; ++e) {
    const float* table = lut + e * kByteScanCodewords;
    const __m512 low = _mm512_set1_ps(lows[e]);
    for (size_t v = 0; v < kVectors; ++v) {
      const __m512 level = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(table + 16 * v), low), inv),
                                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512i bytes = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(level, zero), top));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(q + e * kByteScanCodewords + 16 * v), _mm512_cvtusepi32_epi8(bytes));
    }
  }
  *scale = range / 255.0f;
  *offset = offset_sum;
  return true;
}

// 256-byte tables: sums by vpsadbw, squares by vpmaddwd on the bytes widened to words. Exact
// integers, the scalar table's values.
void byte_table_moments_avx512(const uint8_t* q, size_t entries, uint32_t* sums, uint32_t* squares) {
  const __m512i zero = _mm512_setzero_si512();
  for (size_t e = 0; e < entries; ++e) {
    const uint8_t* table = q + e * kByteScanCodewords;
    __m512i sum = zero, square = zero;
    for (size_t v = 0; v < kByteScanCodewords; v += 64) {
      const __m512i bytes = _mm512_loadu_si512(table + v);
      sum = _mm512_add_epi64(sum, _mm512_sad_epu8(bytes, zero));
      const __m512i low = _mm512_unpacklo_epi8(bytes, zero), high = _mm512_unpackhi_epi8(bytes, zero);
      square = _mm512_add_epi32(square, _mm512_add_epi32(_mm512_madd_epi16(low, low), _mm512_madd_epi16(high, high)));
    }
    sums[e] = static_cast<uint32_t>(_mm512_reduce_add_epi64(sum));
    squares[e] = static_cast<uint32_t>(_mm512_reduce_add_epi32(square));
  }
}

// Lookup tables for d = 4, 16 codewords a step: AVX2's pairwise sums ((x0 c0 + x1 c1) +
// (x2 c2 + x3 c3), hadd within 128-bit lanes, emulated by two shuffles and an add), so the
// same bits as the AVX2 table; the other lengths and the last codewords go to it.
inline __m512 hadd_lanes(__m512 a, __m512 b) {
  return _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(2, 0, 2, 0)), _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
}

void build_lut_avx512(const float* x, size_t len, const float* codewords, size_t d, size_t num_codewords,
                      float* lut) {
  const size_t wide = len == 4 && d == 4 ? num_codewords / 16 * 16 : 0;
  if (wide > 0) {
    const __m512 xx = _mm512_broadcast_f32x4(_mm_loadu_ps(x));
    // After the hadd tree element 4L + i holds codeword c + 4i + L.
    const __m512i natural = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (size_t c = 0; c < wide; c += 16) {
      const float* cw = codewords + c * 4;
      const __m512 p0 = _mm512_mul_ps(xx, _mm512_loadu_ps(cw)), p1 = _mm512_mul_ps(xx, _mm512_loadu_ps(cw + 16));
      const __m512 p2 = _mm512_mul_ps(xx, _mm512_loadu_ps(cw + 32)), p3 = _mm512_mul_ps(xx, _mm512_loadu_ps(cw + 48));
      const __m512 sums = hadd_lanes(hadd_lanes(p0, p1), hadd_lanes(p2, p3));
      _mm512_storeu_ps(lut + c, _mm512_permutexvar_ps(natural, sums));
    }
  }
  if (wide < num_codewords)
    avx2_kernel_table().build_lut(x, len, codewords + wide * d, d, num_codewords - wide, lut + wide);
}

// Float byte-scan: four 16-lane gathers per entry, each output one chain of adds in entry
// order (the scalar table's bits).
void bytescan_f32_avx512(const uint8_t* codes, size_t entries, const float* luts, size_t lut_stride,
                         size_t rows, float* out) {
  for (size_t m = 0; m < rows; ++m) {
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (size_t e = 0; e < entries; ++e) {
      const float* table = luts + m * lut_stride + e * kByteScanCodewords;
      const uint8_t* entry = codes + e * kByteScanBlockRows;
      for (int v = 0; v < 4; ++v) {
        const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(entry + 16 * v)));
        acc[v] = _mm512_add_ps(acc[v], _mm512_i32gather_ps(idx, table, 4));
      }
    }
    for (int v = 0; v < 4; ++v) _mm512_storeu_ps(out + m * kByteScanBlockRows + 16 * v, acc[v]);
  }
}

}  // namespace

const KernelTable& avx512_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx2_kernel_table();
    t.name = "avx512";
    // AVX2's int8 tier stays off here: its 16-bit multiply-adds match, not beat, 16-lane FMAs
    // (the VNNI table turns on its own).
    t.int8_panels = false;
    t.wide_x = false;  // VNNI's vpdpbusd takes X as bytes
    t.fastscan_u8 = fastscan_u8_avx512;
    t.lut_order_stats = lut_order_stats_avx512;
    t.dense_gemm = dense_gemm_avx512;
    t.dense_gemm_cols = 64;
    t.decode_codes = decode_codes_avx512;
    t.dot_rows = dot_rows_avx512;
    t.decode_fastscan_group = decode_fastscan_group_avx512;
    t.decode_fastscan_d1 = decode_fastscan_d1_avx512;
    t.quantize_byte_luts = quantize_byte_luts_avx512;
    t.byte_table_moments = byte_table_moments_avx512;
    t.build_lut = build_lut_avx512;
    t.bytescan_f32 = bytescan_f32_avx512;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
