// AArch64 Advanced SIMD (NEON) micro-kernels; NEON is part of the AArch64 baseline, so
// this file needs no extra flag and its table is always usable on AArch64.
//
// fastscan_u8: one 16-byte code group and one 16-byte table per entry; vqtbl1q_u8 looks up
// 16 outputs per instruction (low nibbles: outputs 0..15, high nibbles: 16..31). The bytes
// are widened into 16-bit sums (vaddw), flushed to 32 bits every kFlushEntries entries
// (256 * 255 < 2^16). Exact integer sums: bit-identical to scalar. Everything else: the
// scalar functions.
//
// decode_row (VQGather): whole codeword chunks, 4 floats per step, the same adds per element
// as scalar (bit-identical); d < 4 tails are scalar.
//
// dense_gemm (the tile path's built-in GEMM, used where no host GEMM is lent, e.g. outside
// ONNX Runtime): 4 rows x 8 columns per block, one vfmaq_f32 chain per output in k order,
// the scalar table's std::fma sequence: bit-identical.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>

#include "vq_kernel.h"

namespace onnxvq::kernels {
namespace {

constexpr size_t kFlushEntries = 256;

void fastscan_u8_neon(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                      size_t qlut_stride, size_t rows, uint32_t* out) {
  const uint8x16_t nibble = vdupq_n_u8(0x0f);
  for (size_t m = 0; m < rows; ++m) {
    const uint8_t* table = qluts + m * qlut_stride;
    uint32x4_t total[8];
    for (auto& t : total) t = vdupq_n_u32(0);
    for (size_t e = 0; e < entries;) {
      const size_t end = std::min(entries, e + kFlushEntries);
      uint16x8_t acc[4] = {vdupq_n_u16(0), vdupq_n_u16(0), vdupq_n_u16(0), vdupq_n_u16(0)};
      for (; e < end; ++e) {
        const uint8x16_t group = vld1q_u8(codes + e * 16);
        const uint8x16_t lut = vld1q_u8(table + e * 16);
        const uint8x16_t lo = vqtbl1q_u8(lut, vandq_u8(group, nibble));
        const uint8x16_t hi = vqtbl1q_u8(lut, vshrq_n_u8(group, 4));
        acc[0] = vaddw_u8(acc[0], vget_low_u8(lo));  // outputs 0..7
        acc[1] = vaddw_high_u8(acc[1], lo);          // 8..15
        acc[2] = vaddw_u8(acc[2], vget_low_u8(hi));  // 16..23
        acc[3] = vaddw_high_u8(acc[3], hi);          // 24..31
      }
      for (int i = 0; i < 4; ++i) {
        total[2 * i] = vaddw_u16(total[2 * i], vget_low_u16(acc[i]));
        total[2 * i + 1] = vaddw_high_u16(total[2 * i + 1], acc[i]);
      }
    }
    for (int i = 0; i < 8; ++i) vst1q_u32(out + m * kFastScanBlockRows + 4 * i, total[i]);
  }
}

void decode_row_neon(const uint8_t* codes, size_t T, size_t S, size_t d, size_t L,
                     const float* books, size_t stage_stride, size_t subspace_stride, float* out) {
  for (size_t s = 0; s < S; ++s) {
    const size_t len = std::min(d, L - s * d);
    const float* book = books + s * subspace_stride;
    const float* first = book + codes[s] * d;
    float* chunk = out + s * d;
    size_t j = 0;
    for (; j + 4 <= len; j += 4) {
      float32x4_t acc = vld1q_f32(first + j);
      for (size_t t = 1; t < T; ++t)
        acc = vaddq_f32(acc, vld1q_f32(book + t * stage_stride + codes[t * S + s] * d + j));
      vst1q_f32(chunk + j, acc);
    }
    for (; j < len; ++j) {
      float acc = first[j];
      for (size_t t = 1; t < T; ++t) acc += book[t * stage_stride + codes[t * S + s] * d + j];
      chunk[j] = acc;
    }
  }
}

// One (row, output) pair at a time: four q registers of lane chains (lanes 0-3, 4-7, 8-11,
// 12-15); tails and the reduction by the shared scalar helpers (the same order as every table).
void dot_rows_neon(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw,
                   size_t outputs, size_t K, float* out, size_t out_stride) {
  const size_t whole = K / 16 * 16;
  for (size_t m = 0; m < rows; ++m)
    for (size_t j = 0; j < outputs; ++j) {
      const float* xr = x + m * ldx;
      const float* wr = w + j * ldw;
      float32x4_t a[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
      for (size_t k = 0; k < whole; k += 16)
        for (int q = 0; q < 4; ++q) a[q] = vfmaq_f32(a[q], vld1q_f32(xr + k + 4 * q), vld1q_f32(wr + k + 4 * q));
      float lanes[16];
      for (int q = 0; q < 4; ++q) vst1q_f32(lanes + 4 * q, a[q]);
      dot_rows_tail(xr, wr, whole, K, lanes);
      out[m * out_stride + j] = reduce16(lanes);
    }
}

// MR rows x 8 columns, one fused multiply-add chain per output in k order (as scalar).
template <int MR>
inline void dense_block8(const float* x, size_t ldx, size_t K, const float* w, size_t N, float* y,
                         size_t ldy, bool accumulate) {
  float32x4_t a[MR][2];  // rows unrolled: GCC 12 otherwise keeps a[][] on the stack (AVX2's twin)
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    a[i][0] = accumulate ? vld1q_f32(y + i * ldy) : vdupq_n_f32(0.0f);
    a[i][1] = accumulate ? vld1q_f32(y + i * ldy + 4) : vdupq_n_f32(0.0f);
  }
  for (size_t k = 0; k < K; ++k) {
    const float32x4_t w0 = vld1q_f32(w + k * N), w1 = vld1q_f32(w + k * N + 4);
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const float32x4_t xv = vdupq_n_f32(x[i * ldx + k]);
      a[i][0] = vfmaq_f32(a[i][0], xv, w0);
      a[i][1] = vfmaq_f32(a[i][1], xv, w1);
    }
  }
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
    vst1q_f32(y + i * ldy, a[i][0]);
    vst1q_f32(y + i * ldy + 4, a[i][1]);
  }
}

void dense_gemm_neon(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N,
                     float* y, size_t ldy, bool accumulate) {
  const size_t wide = N / 8 * 8;
  for (size_t n = 0; n < wide; n += 8) {
    size_t m = 0;
    for (; m + 4 <= M; m += 4)
      dense_block8<4>(x + m * ldx, ldx, K, w + n, N, y + m * ldy + n, ldy, accumulate);
    for (; m < M; ++m) dense_block8<1>(x + m * ldx, ldx, K, w + n, N, y + m * ldy + n, ldy, accumulate);
  }
  for (size_t m = 0; m < M; ++m)  // the last N % 8 columns
    for (size_t n = wide; n < N; ++n) {
      float acc = accumulate ? y[m * ldy + n] : 0.0f;
      for (size_t k = 0; k < K; ++k) acc = std::fma(x[m * ldx + k], w[k * N + n], acc);
      y[m * ldy + n] = acc;
    }
}

}  // namespace

const KernelTable& neon_kernel_table() {
  static const KernelTable table = [] {
    KernelTable t = scalar_kernel_table();
    t.name = "neon";
    t.fastscan_u8 = fastscan_u8_neon;
    t.decode_row = decode_row_neon;
    t.dense_gemm = dense_gemm_neon;
    t.dot_rows = dot_rows_neon;
    return t;
  }();
  return table;
}

}  // namespace onnxvq::kernels
