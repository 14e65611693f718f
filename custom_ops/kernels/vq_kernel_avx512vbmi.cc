// AVX-512 VBMI micro-kernels (Ice Lake, Zen 4 and later). Only this file is compiled with
// -mavx512vbmi; the table is selected at run time where the CPU has VBMI, and tested as a
// table of its own (the plain AVX-512 table stays tested on the same host).
//
// decode_codes: 16 codes per step with one byte permute (vq_codes_vbmi.h), and up to 32
// codewords in two registers are looked up with one two-source permute (gathered beyond 32).
// Bit-identical to scalar (it copies codebook values).
//
// bytescan_u8: 8-bit codes against 256-entry byte tables with two-source byte permutes (see
// there).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "vq_codes_vbmi.h"
#include "vq_kernel.h"

namespace onnxvq::kernels {

const KernelTable& avx512_kernel_table();

namespace {

void decode_codes_vbmi(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows,
                       size_t count, unsigned bits, const float* book, float* out_rows) {
  const size_t ncw = size_t{1} << bits;
  float padded[32] = {};
  std::memcpy(padded, book, std::min<size_t>(ncw, 32) * sizeof(float));
  const __m512 t0 = _mm512_loadu_ps(padded), t1 = _mm512_loadu_ps(padded + 16);
  vbmi::CodeSteps steps(bits);
  for (size_t r = 0; r < rows; ++r) {
    steps.start(first_code + r * row_stride, count);
    float* out = out_rows + r * count;
    for (size_t i = 0; i < count; i += 16) {
      const __m512i idx = steps.next(stream);
      const __m512 v = ncw <= 32 ? _mm512_permutex2var_ps(t0, idx, t1) : _mm512_i32gather_ps(idx, book, 4);
      const size_t n = std::min<size_t>(16, count - i);
      _mm512_mask_storeu_ps(out + i, n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), v);
    }
  }
}

// Byte-scan: a 256-entry byte table is four registers; two two-source byte permutes look up
// the low and high halves for all 64 codes of an entry (index bits 0-6) and the code's top
// bit picks between them. The 64 bytes are added into 16-bit sums of the even and odd
// outputs (at most 255 * 256 < 2^16 before each flush to 32 bits); R rows of tables share
// each entry's code load. Exact integer sums: the scalar table's bits.
constexpr size_t kByteFlushEntries = 256;

template <int R>
void bytescan_rows_vbmi(const uint8_t* codes, size_t entries, const uint8_t* tables, size_t stride,
                        uint32_t* out) {
  const __m512i low_byte = _mm512_set1_epi16(0x00ff);
  __m512i total[R][4];  // u32: even outputs 0-30, 32-62, odd outputs 1-31, 33-63
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < 4; ++i) total[r][i] = _mm512_setzero_si512();
  for (size_t e = 0; e < entries;) {
    const size_t end = std::min(entries, e + kByteFlushEntries);
    __m512i even[R], odd[R];
    for (int r = 0; r < R; ++r) even[r] = odd[r] = _mm512_setzero_si512();
    for (; e < end; ++e) {
      const __m512i idx = _mm512_loadu_si512(codes + e * kByteScanBlockRows);
      const __mmask64 upper = _mm512_movepi8_mask(idx);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const uint8_t* table = tables + r * stride + e * kByteScanCodewords;
        const __m512i lo = _mm512_permutex2var_epi8(_mm512_loadu_si512(table), idx, _mm512_loadu_si512(table + 64));
        const __m512i hi =
            _mm512_permutex2var_epi8(_mm512_loadu_si512(table + 128), idx, _mm512_loadu_si512(table + 192));
        const __m512i v = _mm512_mask_blend_epi8(upper, lo, hi);
        even[r] = _mm512_add_epi16(even[r], _mm512_and_si512(v, low_byte));
        odd[r] = _mm512_add_epi16(odd[r], _mm512_srli_epi16(v, 8));
      }
    }
    for (int r = 0; r < R; ++r) {
      total[r][0] = _mm512_add_epi32(total[r][0], _mm512_cvtepu16_epi32(_mm512_castsi512_si256(even[r])));
      total[r][1] = _mm512_add_epi32(total[r][1], _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(even[r], 1)));
      total[r][2] = _mm512_add_epi32(total[r][2], _mm512_cvtepu16_epi32(_mm512_castsi512_si256(odd[r])));
      total[r][3] = _mm512_add_epi32(total[r][3], _mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(odd[r], 1)));
    }
  }
  for (int r = 0; r < R; ++r) {
    alignas(64) uint32_t parts[4][16];
    for (int i = 0; i < 4; ++i) _mm512_store_si512(parts[i], total[r][i]);
    uint32_t* sums = out + r * kByteScanBlockRows;
    for (size_t i = 0; i < 32; ++i) {
      sums[2 * i] = parts[i / 16][i % 16];
      sums[2 * i + 1] = parts[2 + i / 16][i % 16];
    }
  }
}

void bytescan_u8_vbmi(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride,
                      size_t rows, uint32_t* out) {
  size_t m = 0;
  for (; m + 4 <= rows; m += 4)
    bytescan_rows_vbmi<4>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kByteScanBlockRows);
  for (; m + 2 <= rows; m += 2)
    bytescan_rows_vbmi<2>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kByteScanBlockRows);
  for (; m < rows; ++m)
    bytescan_rows_vbmi<1>(codes, entries, qluts + m * qlut_stride, qlut_stride, out + m * kByteScanBlockRows);
}

}  // namespace

const KernelTable& avx512vbmi_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernel_table();
    t.name = "avx512vbmi";
    t.decode_codes = decode_codes_vbmi;
    t.bytescan_u8 = bytescan_u8_vbmi;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
