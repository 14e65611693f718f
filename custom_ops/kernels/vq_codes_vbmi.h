// Format-1 code extraction with AVX-512 VBMI, shared by the translation units built with
// -mavx512vbmi (vq_kernel_avx512vbmi.cc, vq_kernel_avx512vnni.cc); include it nowhere else.
//
// A row's codes start s = (first * bits) % 8 bits into its first byte, and each step of 16
// codes spans exactly 2 * bits bytes, so lane q's code always sits s + q * bits bits into the
// step: one vpermb places its two bytes in lane q, one variable shift and one mask extract it.
#pragma once

#include <immintrin.h>

#include <cstddef>
#include <cstdint>

namespace onnxvq::kernels::vbmi {

class CodeSteps {
 public:
  explicit CodeSteps(unsigned bits) : bits_(bits), mask_(_mm512_set1_epi32(static_cast<int>((1u << bits) - 1))) {}

  /// Starts a row: codes first .. first + count of the stream.
  void start(uint64_t first, size_t count) {
    const uint64_t first_bit = first * bits_;
    end_byte_ = ((first + count) * bits_ + 7) / 8;
    byte_ = first_bit >> 3;
    const unsigned s = static_cast<unsigned>(first_bit & 7);
    if (s == placed_for_) return;  // rows usually share their start bit (row_stride * bits % 8 == 0)
    alignas(64) uint8_t index[64];
    alignas(64) uint32_t shift[16];
    for (unsigned q = 0; q < 16; ++q) {
      const unsigned offset = s + q * bits_;  // < 8 + 15 * 8: within the step's 16 + 1 bytes
      index[4 * q] = static_cast<uint8_t>(offset >> 3);
      index[4 * q + 1] = static_cast<uint8_t>((offset >> 3) + 1);  // byte 16 only for bits = 8, unused
      index[4 * q + 2] = index[4 * q + 3] = 0;
      shift[q] = offset & 7;
    }
    place_ = _mm512_load_si512(index), shifts_ = _mm512_load_si512(shift);
    placed_for_ = s;
  }

  /// The next 16 codes of the row, one per 32-bit lane (reads only the row's bytes: plain loads
  /// where 16 bytes stay within them, masked at the end).
  __m512i next(const uint8_t* stream) {
    const uint64_t avail = end_byte_ - byte_;
    const __m128i raw = avail >= 16 ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(stream + byte_))
                                    : _mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), stream + byte_);
    byte_ += 2 * bits_;
    const __mmask64 two_bytes = 0x3333333333333333ull;  // bytes 0 and 1 of every 32-bit lane
    const __m512i lanes = _mm512_maskz_permutexvar_epi8(two_bytes, place_, _mm512_zextsi128_si512(raw));
    return _mm512_and_si512(_mm512_srlv_epi32(lanes, shifts_), mask_);
  }

 private:
  unsigned bits_;
  __m512i mask_;
  __m512i place_ = _mm512_setzero_si512(), shifts_ = _mm512_setzero_si512();
  unsigned placed_for_ = 8;  // the start bit place_ and shifts_ were built for (8: none yet)
  uint64_t byte_ = 0, end_byte_ = 0;
};

/// The same stream 64 codes at a time, one per byte: a step of 64 codes spans exactly 8 * bits
/// bytes, so code q sits s + q * bits bits into the step's (at most 64) bytes. Two vpermb place
/// each code's two bytes in a 16-bit lane, two variable word shifts align them, and one
/// two-source vpermb packs the low bytes: 4x fewer instructions per code than CodeSteps.
class CodeBytes {
 public:
  explicit CodeBytes(unsigned bits) : bits_(bits), mask_(_mm512_set1_epi8(static_cast<char>((1u << bits) - 1))) {
    alignas(64) uint8_t even[64];
    for (unsigned q = 0; q < 64; ++q) even[q] = static_cast<uint8_t>(2 * q);  // byte 2q of (low, high)
    pack_ = _mm512_load_si512(even);
  }

  /// Starts a row: codes first .. first + count of the stream.
  void start(uint64_t first, size_t count) {
    const uint64_t first_bit = first * bits_;
    end_byte_ = ((first + count) * bits_ + 7) / 8;
    byte_ = first_bit >> 3;
    const unsigned s = static_cast<unsigned>(first_bit & 7);
    if (s == placed_for_) return;
    alignas(64) uint8_t index[128];
    alignas(64) uint16_t shift[64];
    for (unsigned q = 0; q < 64; ++q) {
      const unsigned offset = s + q * bits_;  // < 8 + 63 * 8 bits: within the step's 64 bytes
      index[2 * q] = static_cast<uint8_t>(offset >> 3);
      index[2 * q + 1] = static_cast<uint8_t>(((offset >> 3) + 1) & 63);  // wraps only for bits = 8, unused
      shift[q] = static_cast<uint16_t>(offset & 7);
    }
    place_low_ = _mm512_load_si512(index), place_high_ = _mm512_load_si512(index + 64);
    shift_low_ = _mm512_load_si512(shift), shift_high_ = _mm512_load_si512(shift + 32);
    placed_for_ = s;
  }

  /// The next 64 codes of the row, one per byte (reads only the row's bytes, as CodeSteps).
  __m512i next(const uint8_t* stream) {
    const uint64_t avail = end_byte_ - byte_;
    const __m512i raw = avail >= 64 ? _mm512_loadu_si512(stream + byte_)
                                    : _mm512_maskz_loadu_epi8((__mmask64(1) << avail) - 1, stream + byte_);
    byte_ += 8 * bits_;
    const __m512i low = _mm512_srlv_epi16(_mm512_permutexvar_epi8(place_low_, raw), shift_low_);
    const __m512i high = _mm512_srlv_epi16(_mm512_permutexvar_epi8(place_high_, raw), shift_high_);
    return _mm512_and_si512(_mm512_permutex2var_epi8(low, pack_, high), mask_);
  }

 private:
  unsigned bits_;
  __m512i mask_, pack_;
  __m512i place_low_ = _mm512_setzero_si512(), place_high_ = _mm512_setzero_si512();
  __m512i shift_low_ = _mm512_setzero_si512(), shift_high_ = _mm512_setzero_si512();
  unsigned placed_for_ = 8;
  uint64_t byte_ = 0, end_byte_ = 0;
};

}  // namespace onnxvq::kernels::vbmi
