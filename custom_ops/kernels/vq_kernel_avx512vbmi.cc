// AVX-512 VBMI micro-kernels (Ice Lake, Zen 4 and later). Only this file is compiled with
// -mavx512vbmi; the table is selected at run time where the CPU has VBMI, and tested as a
// table of its own (the plain AVX-512 table stays tested on the same host).
//
// decode_codes: 16 codes per step with one byte permute. A row's codes start s = (first *
// bits) % 8 bits into its first byte, and each step of 16 codes spans exactly 2 * bits bytes,
// so lane q's code always sits s + q * bits bits into the step: one vpermb places its two
// bytes in lane q, one variable shift and one mask extract it, and up to 32 codewords in two
// registers are looked up with one two-source permute (gathered beyond 32). Bit-identical to
// scalar (it copies codebook values).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "vq_kernel.h"

namespace onnxvq::kernels {

const KernelTable& avx512_kernel_table();

namespace {

void decode_codes_vbmi(const uint8_t* stream, uint64_t first_code, uint64_t row_stride, size_t rows,
                       size_t count, unsigned bits, const float* book, float* out_rows) {
  const size_t ncw = size_t{1} << bits;
  const __m512i mask = _mm512_set1_epi32(static_cast<int>(ncw - 1));
  float padded[32] = {};
  std::memcpy(padded, book, std::min<size_t>(ncw, 32) * sizeof(float));
  const __m512 t0 = _mm512_loadu_ps(padded), t1 = _mm512_loadu_ps(padded + 16);
  const __mmask64 two_bytes = 0x3333333333333333ull;  // bytes 0 and 1 of every 32-bit lane
  for (size_t r = 0; r < rows; ++r) {
    const uint64_t first = first_code + r * row_stride;
    const uint64_t first_bit = first * bits, end_byte = ((first + count) * bits + 7) / 8;
    const unsigned s = static_cast<unsigned>(first_bit & 7);
    alignas(64) uint8_t index[64];
    alignas(64) uint32_t shift[16];
    for (unsigned q = 0; q < 16; ++q) {
      const unsigned offset = s + q * bits;  // < 8 + 15 * 8: within the step's 16 + 1 bytes
      index[4 * q] = static_cast<uint8_t>(offset >> 3);
      index[4 * q + 1] = static_cast<uint8_t>((offset >> 3) + 1);  // byte 16 only for bits = 8, unused
      index[4 * q + 2] = index[4 * q + 3] = 0;
      shift[q] = offset & 7;
    }
    const __m512i place = _mm512_load_si512(index), shifts = _mm512_load_si512(shift);
    float* out = out_rows + r * count;
    uint64_t byte = first_bit >> 3;
    for (size_t i = 0; i < count; i += 16, byte += 2 * bits) {
      // Plain loads where 16 bytes stay within the codes asked for; masked at the end.
      const uint64_t avail = end_byte - byte;
      const __m128i raw = avail >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(stream + byte))
                                      : _mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), stream + byte);
      const __m512i lanes = _mm512_maskz_permutexvar_epi8(two_bytes, place, _mm512_zextsi128_si512(raw));
      const __m512i idx = _mm512_and_si512(_mm512_srlv_epi32(lanes, shifts), mask);
      const __m512 v = ncw <= 32 ? _mm512_permutex2var_ps(t0, idx, t1) : _mm512_i32gather_ps(idx, book, 4);
      const size_t n = std::min<size_t>(16, count - i);
      _mm512_mask_storeu_ps(out + i, n == 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1), v);
    }
  }
}

}  // namespace

const KernelTable& avx512vbmi_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = avx512_kernel_table();
    t.name = "avx512vbmi";
    t.decode_codes = decode_codes_vbmi;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
