// AVX-512 (F + BW + VL) micro-kernels. Only this file is compiled with -mavx512*; it is
// selected at run time on CPUs that have these extensions (and the OS saves zmm state).
//
// fastscan_u8 takes four entries per 512-bit register (one 16-byte group or table per
// 128-bit lane); otherwise the same scheme as the AVX2 kernel (see there). Bit-identical
// to scalar. The other functions come from the AVX2 table (every AVX-512 CPU has AVX2).
#include <immintrin.h>

#include <algorithm>

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

void fastscan_u8_avx512(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                        size_t qlut_stride, size_t rows, uint32_t* out) {
  const __m512i nibble = _mm512_set1_epi8(0x0f);
  for (size_t m = 0; m < rows; ++m) {
    const uint8_t* table = qluts + m * qlut_stride;
    __m512i total[4] = {_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(),
                        _mm512_setzero_si512()};
    for (size_t e = 0; e < entries;) {
      const size_t end = std::min(entries, e + 4 * kFlushQuads);
      __m512i lo_all = _mm512_setzero_si512(), lo_odd = _mm512_setzero_si512();
      __m512i hi_all = _mm512_setzero_si512(), hi_odd = _mm512_setzero_si512();
      for (; e < end; e += 4) {
        // A tail of 1-3 entries loads only its own code bytes; the table is zero padded
        // to a multiple of 64 bytes, so the missing lanes add zero.
        const size_t valid = std::min<size_t>(4, end - e);
        const __mmask64 mask = valid == 4 ? ~__mmask64{0} : (__mmask64{1} << (16 * valid)) - 1;
        const __m512i group = _mm512_maskz_loadu_epi8(mask, codes + e * 16);
        const __m512i lut = _mm512_loadu_si512(table + e * 16);
        const __m512i lo = _mm512_shuffle_epi8(lut, _mm512_and_si512(group, nibble));
        const __m512i hi =
            _mm512_shuffle_epi8(lut, _mm512_and_si512(_mm512_srli_epi16(group, 4), nibble));
        lo_all = _mm512_add_epi16(lo_all, lo);
        lo_odd = _mm512_add_epi16(lo_odd, _mm512_srli_epi16(lo, 8));
        hi_all = _mm512_add_epi16(hi_all, hi);
        hi_odd = _mm512_add_epi16(hi_odd, _mm512_srli_epi16(hi, 8));
      }
      e = end;
      widen_add(_mm512_sub_epi16(lo_all, _mm512_slli_epi16(lo_odd, 8)), &total[0]);
      widen_add(lo_odd, &total[1]);
      widen_add(_mm512_sub_epi16(hi_all, _mm512_slli_epi16(hi_odd, 8)), &total[2]);
      widen_add(hi_odd, &total[3]);
    }
    // Each total holds 16 u32: lanes 0-7 and 8-15 are the two 256-bit halves of the four
    // 128-bit entry lanes after widening; fold the halves (entries e..e+1 vs e+2..e+3).
    alignas(64) uint32_t parts[4][16];
    for (int i = 0; i < 4; ++i) _mm512_store_si512(parts[i], total[i]);
    uint32_t* sums = out + m * kFastScanBlockRows;
    for (int i = 0; i < 8; ++i) {
      sums[2 * i] = parts[0][i] + parts[0][i + 8];
      sums[2 * i + 1] = parts[1][i] + parts[1][i + 8];
      sums[16 + 2 * i] = parts[2][i] + parts[2][i + 8];
      sums[17 + 2 * i] = parts[3][i] + parts[3][i + 8];
    }
  }
}

}  // namespace

const KernelTable& avx512_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx2_kernel_table();
    t.name = "avx512";
    t.fastscan_u8 = fastscan_u8_avx512;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
