// Lane helpers shared by the AVX2 translation units (vq_kernel_avx2.cc, vq_kernel_avx2_int8.cc):
// include only from files compiled with -mavx2.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace onnxvq::kernels::avx2 {

// The sum of 8 int32 lanes.
inline int32_t horizontal_sum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

}  // namespace onnxvq::kernels::avx2
