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
#include <cstring>

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

/// The same stream 64 codes at a time, one per byte. A step of 64 codes spans exactly 8 * bits
/// bytes, so its 8 codes 8i .. 8i + 7 start s bits into the bytes i * bits ..: one vpermb puts
/// those 8 bytes in 64-bit lane i, one vpmultishiftqb takes each code's 8 bits at s + q * bits
/// (at most 7 + 7 * 7 + 8 = 64 bits: no lane wraps), one and keeps its low bits.
class CodeBytes {
 public:
  explicit CodeBytes(unsigned bits) : bits_(bits), mask_(_mm512_set1_epi8(static_cast<char>((1u << bits) - 1))) {
    alignas(64) uint8_t index[64];
    for (unsigned i = 0; i < 8; ++i)
      for (unsigned t = 0; t < 8; ++t) index[8 * i + t] = static_cast<uint8_t>(i * bits + t);  // <= 63
    place_ = _mm512_load_si512(index);
  }

  /// Starts a row: codes first .. first + count of the stream.
  void start(uint64_t first, size_t count) {
    const uint64_t first_bit = first * bits_;
    end_byte_ = ((first + count) * bits_ + 7) / 8;
    byte_ = first_bit >> 3;
    const unsigned s = static_cast<unsigned>(first_bit & 7);
    if (s == placed_for_) return;
    alignas(64) uint8_t offset[64];
    for (unsigned q = 0; q < 64; ++q) offset[q] = static_cast<uint8_t>(s + (q % 8) * bits_);
    select_ = _mm512_load_si512(offset);
    placed_for_ = s;
  }

  /// The next 64 codes of the row, one per byte (reads only the row's bytes, as CodeSteps).
  __m512i next(const uint8_t* stream) {
    const uint64_t avail = end_byte_ - byte_;
    const __m512i raw = avail >= 64 ? _mm512_loadu_si512(stream + byte_)
                                    : _mm512_maskz_loadu_epi8((__mmask64(1) << avail) - 1, stream + byte_);
    byte_ += 8 * bits_;
    const __m512i lanes = _mm512_permutexvar_epi8(place_, raw);
    return _mm512_and_si512(_mm512_multishift_epi64_epi8(select_, lanes), mask_);
  }

  /// bits = 1: the next 64 codes as a mask, code q in bit q (a select replaces the lookup;
  /// bits past the row's last code are whatever its last byte holds).
  __mmask64 next_mask(const uint8_t* stream) {
    const uint64_t avail = end_byte_ - byte_;
    const uint8_t* at = stream + byte_;
    uint64_t word;
    if (avail >= 8)
      std::memcpy(&word, at, sizeof word);
    else
      word = static_cast<uint64_t>(_mm_cvtsi128_si64(_mm_maskz_loadu_epi8(__mmask16((1u << avail) - 1), at)));
    if (placed_for_ != 0) {
      word >>= placed_for_;
      if (avail > 8) word |= static_cast<uint64_t>(at[8]) << (64 - placed_for_);
    }
    byte_ += 8;
    return word;
  }

 private:
  unsigned bits_;
  __m512i mask_, place_;
  __m512i select_ = _mm512_setzero_si512();
  unsigned placed_for_ = 8;
  uint64_t byte_ = 0, end_byte_ = 0;
};

}  // namespace onnxvq::kernels::vbmi
