// Portable micro-kernels: the reference every SIMD table is compared with.
// Summation orders are fixed (see vq_kernel.h) so results do not depend on tiling.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "vq_kernel.h"

namespace onnxvq::kernels {
namespace {

void unpack_codes_scalar(const uint8_t* stream, uint64_t first, size_t count, unsigned bits,
                         uint8_t* out) {
  if (count == 0) return;
  if (bits == 8) {
    std::memcpy(out, stream + first, count);
    return;
  }
  // A little bit reader: `pending` holds `available` not yet consumed bits, LSB first.
  // A byte is loaded only when the current code needs it, so the reader never touches a
  // byte past the one holding the last requested bit.
  const uint64_t first_bit = first * bits;
  const uint8_t* next_byte = stream + (first_bit >> 3);
  const unsigned skip = static_cast<unsigned>(first_bit & 7);
  uint32_t pending = static_cast<uint32_t>(*next_byte++) >> skip;
  unsigned available = 8 - skip;
  const uint32_t mask = (1u << bits) - 1u;
  for (size_t i = 0; i < count; ++i) {
    if (available < bits) {  // bits <= 7 here, so one more byte always suffices
      pending |= static_cast<uint32_t>(*next_byte++) << available;
      available += 8;
    }
    out[i] = static_cast<uint8_t>(pending & mask);
    pending >>= bits;
    available -= bits;
  }
}

void build_lut_scalar(const float* x, size_t len, const float* codewords, size_t d,
                      size_t num_codewords, float* lut) {
  for (size_t c = 0; c < num_codewords; ++c) {
    const float* codeword = codewords + c * d;
    float sum = 0.0f;
    for (size_t j = 0; j < len; ++j) sum += x[j] * codeword[j];
    lut[c] = sum;
  }
}

void build_lut_d1_scalar(const float* x, size_t count, const float* codebook, size_t num_codewords,
                         float* lut) {
  for (size_t s = 0; s < count; ++s)
    for (size_t c = 0; c < num_codewords; ++c) lut[s * num_codewords + c] = 0.0f + x[s] * codebook[c];
}

void lut_gather_rows_scalar(const uint8_t* codes, size_t count, size_t num_codewords,
                            const float* luts, size_t lut_row_stride, size_t rows, float* out,
                            size_t out_stride) {
  for (size_t m = 0; m < rows; ++m) {
    const float* table = luts + m * lut_row_stride;
    float sum = 0.0f;
    for (size_t i = 0; i < count; ++i) sum += table[i * num_codewords + codes[i]];
    out[m * out_stride] = sum;
  }
}

void lut_gather8_scalar(const uint8_t* codes, size_t count, size_t num_codewords, const float* lut,
                        float* out) {
  float sums[8];
  std::memcpy(sums, out, sizeof sums);
  for (size_t i = 0; i < count; ++i)
    for (size_t j = 0; j < 8; ++j) sums[j] += lut[i * num_codewords + codes[i * 8 + j]];
  std::memcpy(out, sums, sizeof sums);
}

void scatter_add_scalar(const uint8_t* codes, size_t count, float value, float* buckets,
                        size_t num_codewords) {
  for (size_t i = 0; i < count; ++i) buckets[i * num_codewords + codes[i]] += value;
}

float bucket_dot_scalar(const uint8_t* codes, const float* x, size_t count,
                        const float* codebook, size_t num_codewords, float* buckets) {
  // kBucketSets interleaved bucket arrays (element i goes to set i % kBucketSets): runs of
  // equal codes no longer serialize on one memory location.
  static_assert(kBucketSets == 4, "the reduction below combines four partial buckets");
  float* sets[kBucketSets];
  for (size_t b = 0; b < kBucketSets; ++b) sets[b] = buckets + b * num_codewords;
  std::memset(buckets, 0, kBucketSets * num_codewords * sizeof(float));
  size_t i = 0;
  for (; i + kBucketSets <= count; i += kBucketSets)
    for (size_t b = 0; b < kBucketSets; ++b) sets[b][codes[i + b]] += x[i + b];
  for (size_t b = 0; i < count; ++i, ++b) sets[b][codes[i]] += x[i];
  float sum = 0.0f;
  for (size_t c = 0; c < num_codewords; ++c) {
    const float bucket = (sets[0][c] + sets[1][c]) + (sets[2][c] + sets[3][c]);
    sum += codebook[c] * bucket;
  }
  return sum;
}

float dot_scalar(const float* a, const float* b, size_t n) {
  float sum = 0.0f;
  for (size_t j = 0; j < n; ++j) sum += a[j] * b[j];
  return sum;
}

void axpy_scalar(float a, const float* x, size_t n, float* y) {
  for (size_t j = 0; j < n; ++j) y[j] += a * x[j];
}

template <size_t kCodewords>
bool quantize_tables(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  float range = 0.0f, offset_sum = 0.0f;
  bool finite = true;
  for (size_t e = 0; e < entries; ++e) {
    const float* table = lut + e * kCodewords;
    float lo = table[0], hi = table[0];
    for (size_t c = 0; c < kCodewords; ++c) {
      finite = finite && std::isfinite(table[c]);
      lo = std::min(lo, table[c]);
      hi = std::max(hi, table[c]);
    }
    range = std::max(range, hi - lo);
    offset_sum += lo;
  }
  if (!finite || !std::isfinite(range)) return false;
  const float inv = range > 0.0f ? 255.0f / range : 0.0f;
  for (size_t e = 0; e < entries; ++e) {
    const float* table = lut + e * kCodewords;
    float lo = table[0];
    for (size_t c = 1; c < kCodewords; ++c) lo = std::min(lo, table[c]);
    for (size_t c = 0; c < kCodewords; ++c) {
      const float level = std::nearbyint((table[c] - lo) * inv);  // ties to even
      q[e * kCodewords + c] = static_cast<uint8_t>(std::clamp(level, 0.0f, 255.0f));
    }
  }
  *scale = range / 255.0f;
  *offset = offset_sum;
  return true;
}

bool quantize_luts_scalar(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  return quantize_tables<kFastScanCodewords>(lut, entries, q, scale, offset);
}
bool quantize_byte_luts_scalar(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset) {
  return quantize_tables<kByteScanCodewords>(lut, entries, q, scale, offset);
}

// Byte-scan: table m's entry e looked up by the block's 64 codes of entry e, e ascending.
template <typename Sum, typename Table>
void bytescan_rows(const uint8_t* codes, size_t entries, const Table* tables, size_t stride, size_t rows,
                   Sum* out) {
  for (size_t m = 0; m < rows; ++m) {
    Sum* sums = out + m * kByteScanBlockRows;
    std::fill(sums, sums + kByteScanBlockRows, Sum(0));
    for (size_t e = 0; e < entries; ++e) {
      const Table* entry = tables + m * stride + e * kByteScanCodewords;
      for (size_t i = 0; i < kByteScanBlockRows; ++i) sums[i] += entry[codes[e * kByteScanBlockRows + i]];
    }
  }
}
void byte_table_moments_scalar(const uint8_t* q, size_t entries, uint32_t* sums, uint32_t* squares) {
  for (size_t e = 0; e < entries; ++e) {
    const uint8_t* table = q + e * kByteScanCodewords;
    uint32_t sum = 0, square_sum = 0;
    for (size_t c = 0; c < kByteScanCodewords; ++c) {
      sum += table[c];
      square_sum += uint32_t{table[c]} * table[c];
    }
    sums[e] = sum;
    squares[e] = square_sum;
  }
}

void bytescan_u8_scalar(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride,
                        size_t rows, uint32_t* out) {
  bytescan_rows(codes, entries, qluts, qlut_stride, rows, out);
}
void bytescan_f32_scalar(const uint8_t* codes, size_t entries, const float* luts, size_t lut_stride,
                         size_t rows, float* out) {
  bytescan_rows(codes, entries, luts, lut_stride, rows, out);
}

// Code of row i (0..31) of a block in the 16-byte group `group`.
inline unsigned block_code(const uint8_t* group, size_t i) {
  return i < 16 ? group[i] & 0x0fu : group[i - 16] >> 4;
}

// Four lanes of one generic type (SSE2 / NEON / scalar code from the same source) and only
// exact operations (min, max, v - v), so every build gives the same values.
typedef float Vec4 __attribute__((vector_size(16)));
inline Vec4 vmin(Vec4 a, Vec4 b) { return a < b ? a : b; }
inline Vec4 vmax(Vec4 a, Vec4 b) { return a < b ? b : a; }

// Top-3 / bottom-3 of the 16 values of four tables at once (lane l: table e + l; the last
// tables repeated past `entries`), by insertion into three sorted registers per side.
bool lut_order_stats_scalar(const float* lut, size_t entries, float* range, float* high3, float* low3) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  for (size_t e = 0; e < entries; e += 4) {
    const size_t count = std::min<size_t>(4, entries - e);
    const float* tables[4];
    for (size_t l = 0; l < 4; ++l) tables[l] = lut + (e + std::min(l, count - 1)) * kFastScanCodewords;
    Vec4 a1 = {-kInf, -kInf, -kInf, -kInf}, a2 = a1, a3 = a1;
    Vec4 b1 = {kInf, kInf, kInf, kInf}, b2 = b1, b3 = b1, bad = {0, 0, 0, 0};
    for (size_t c = 0; c < kFastScanCodewords; ++c) {
      const Vec4 v = {tables[0][c], tables[1][c], tables[2][c], tables[3][c]};
      bad += v - v;  // 0 for finite values, NaN otherwise
      const Vec4 ta = vmin(a1, v), ua = vmin(a2, ta);
      a1 = vmax(a1, v), a2 = vmax(a2, ta), a3 = vmax(a3, ua);
      const Vec4 tb = vmax(b1, v), ub = vmax(b2, tb);
      b1 = vmin(b1, v), b2 = vmin(b2, tb), b3 = vmin(b3, ub);
    }
    for (size_t l = 0; l < count; ++l) {
      if (!(bad[l] == 0.0f)) return false;
      range[e + l] = a1[l] - b1[l];
      high3[e + l] = a3[l];
      low3[e + l] = b3[l];
    }
  }
  return true;
}

void fastscan_u8_scalar(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                        size_t qlut_stride, size_t rows, uint32_t* out) {
  for (size_t m = 0; m < rows; ++m) {
    const uint8_t* table = qluts + m * qlut_stride;
    uint32_t* sums = out + m * kFastScanBlockRows;
    std::fill(sums, sums + kFastScanBlockRows, 0u);
    for (size_t e = 0; e < entries; ++e) {
      const uint8_t* group = codes + e * kFastScanGroupBytes;
      const uint8_t* entry = table + e * kFastScanCodewords;
      for (size_t i = 0; i < kFastScanBlockRows; ++i) sums[i] += entry[block_code(group, i)];
    }
  }
}

void fastscan_f32_scalar(const uint8_t* codes, size_t entries, const float* luts,
                         size_t lut_stride, size_t rows, float* out) {
  for (size_t m = 0; m < rows; ++m) {
    const float* table = luts + m * lut_stride;
    float* sums = out + m * kFastScanBlockRows;
    std::fill(sums, sums + kFastScanBlockRows, 0.0f);
    for (size_t e = 0; e < entries; ++e) {
      const uint8_t* group = codes + e * kFastScanGroupBytes;
      const float* entry = table + e * kFastScanCodewords;
      for (size_t i = 0; i < kFastScanBlockRows; ++i) sums[i] += entry[block_code(group, i)];
    }
  }
}

void decode_codes_scalar(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows,
                         size_t count, unsigned bits, const float* book, float* out) {
  uint8_t codes[256];
  for (size_t r = 0; r < rows; ++r)
    for (size_t i = 0; i < count; i += sizeof codes) {
      const size_t n = std::min(sizeof codes, count - i);
      unpack_codes_scalar(stream, first + r * row_stride + i, n, bits, codes);
      for (size_t j = 0; j < n; ++j) out[r * count + i + j] = book[codes[j]];
    }
}

void decode_fastscan_d1_scalar(const uint8_t* groups, size_t depth, size_t cols, const float* book,
                               float* out, size_t ld) {
  for (size_t j = 0; j < depth; ++j)
    for (size_t i = 0; i < cols; ++i) {
      const uint8_t byte = groups[j * kFastScanGroupBytes + i % 16];
      out[j * ld + i] = book[i < 16 ? byte & 0x0f : byte >> 4];
    }
}

void decode_fastscan_group_scalar(const uint8_t* group, const float* table, size_t len, size_t cols,
                                  float* out, size_t ld, bool accumulate) {
  for (size_t j = 0; j < len; ++j)
    for (size_t i = 0; i < cols; ++i) {
      const uint8_t byte = group[i % 16];
      const float v = table[j * 16 + (i < 16 ? byte & 0x0f : byte >> 4)];
      out[j * ld + i] = accumulate ? out[j * ld + i] + v : v;
    }
}

}  // namespace

float reduce16(const float* lanes) {
  float r8[8], r4[4];
  for (int j = 0; j < 8; ++j) r8[j] = lanes[j] + lanes[j + 8];
  for (int j = 0; j < 4; ++j) r4[j] = r8[j] + r8[j + 4];
  return (r4[0] + r4[2]) + (r4[1] + r4[3]);
}

void dot_rows_tail(const float* x, const float* w, size_t k0, size_t K, float* lanes) {
  for (size_t k = k0; k < K; ++k) lanes[k % 16] = std::fma(x[k], w[k], lanes[k % 16]);
}

namespace {

void dot_rows_scalar(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw,
                     size_t outputs, size_t K, float* out, size_t out_stride) {
  for (size_t m = 0; m < rows; ++m)
    for (size_t j = 0; j < outputs; ++j) {
      float lanes[16] = {};
      dot_rows_tail(x + m * ldx, w + j * ldw, 0, K, lanes);
      out[m * out_stride + j] = reduce16(lanes);
    }
}

void transpose_scalar(const float* src, size_t rows, size_t cols, size_t ld_src, float* dst,
                      size_t ld_dst) {
  for (size_t i = 0; i < rows; ++i)
    for (size_t j = 0; j < cols; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
}

void dense_gemm_scalar(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N,
                       float* y, size_t ldy, bool accumulate) {
  for (size_t m = 0; m < M; ++m)
    for (size_t n = 0; n < N; ++n) {
      float acc = accumulate ? y[m * ldy + n] : 0.0f;
      for (size_t k = 0; k < K; ++k) acc = std::fma(x[m * ldx + k], w[k * N + n], acc);
      y[m * ldy + n] = acc;
    }
}

void decode_row_scalar(const uint8_t* codes, size_t T, size_t S, size_t d, size_t L,
                       const float* books, size_t stage_stride, size_t subspace_stride,
                       float* out) {
  for (size_t s = 0; s < S; ++s) {
    const size_t len = std::min(d, L - s * d);
    const float* book = books + s * subspace_stride;
    float* chunk = out + s * d;
    const float* first = book + codes[s] * d;
    for (size_t j = 0; j < len; ++j) chunk[j] = first[j];
    for (size_t t = 1; t < T; ++t) {
      const float* word = book + t * stage_stride + codes[t * S + s] * d;
      for (size_t j = 0; j < len; ++j) chunk[j] += word[j];
    }
  }
}

// The int8 tier's rounding, shared by both quantizers: nearest even, clamped to +-127.
inline int round_s8(float value) {
  return static_cast<int>(std::clamp(std::nearbyint(value), -127.0f, 127.0f));
}

// a = max |v[i*stride]| over i < count; false when a value is not finite.
bool finite_abs_max(const float* v, size_t count, size_t stride, float* a) {
  float top = 0.0f;
  for (size_t i = 0; i < count; ++i) {
    const float value = v[i * stride];
    if (!std::isfinite(value)) return false;
    top = std::max(top, std::abs(value));
  }
  *a = top;
  return true;
}

void quantize_rows_u8_scalar(const float* x, size_t ldx, size_t rows, size_t len, uint8_t* q,
                             size_t ldq, float* scale, uint32_t* energy) {
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    uint8_t* out = q + r * ldq;
    std::fill(out, out + ldq, uint8_t{128});
    float a = 0.0f;
    energy[r] = 0;
    if (!finite_abs_max(row, len, 1, &a)) {
      scale[r] = std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    const float inv = 127.0f / a;
    scale[r] = std::isfinite(inv) ? a / 127.0f : 0.0f;
    if (!std::isfinite(inv)) continue;  // a == 0, or so small that 127 / a overflows: zeros
    for (size_t j = 0; j < len; ++j) {
      const int level = round_s8(row[j] * inv);
      out[j] = static_cast<uint8_t>(128 + level);
      energy[r] += static_cast<uint32_t>(level * level);
    }
  }
}

void quantize_panel_s8_scalar(const float* w, size_t K, size_t N, int8_t* wq, float* scale,
                              int32_t* bias128) {
  const size_t K4 = (K + 3) / 4 * 4;
  for (size_t n = 0; n < N; ++n) {
    float a = 0.0f;
    const bool finite = finite_abs_max(w + n, K, N, &a);
    const float inv = finite ? 127.0f / a : 0.0f;
    const bool zero = finite && !std::isfinite(inv);  // as quantize_rows_u8_scalar
    scale[n] = !finite ? std::numeric_limits<float>::quiet_NaN() : zero ? 0.0f : a / 127.0f;
    int32_t sum = 0;
    for (size_t k = 0; k < K4; ++k) {
      const int level = k < K && finite && !zero ? round_s8(w[k * N + n] * inv) : 0;
      wq[(k / 4) * 4 * N + 4 * n + k % 4] = static_cast<int8_t>(level);
      sum += level;
    }
    bias128[n] = 128 * sum;
  }
}

void decode_fastscan_d1_s8_scalar(const uint8_t* groups, size_t depth, size_t cols, const int8_t* book_q,
                                  int8_t* out, size_t ld, int32_t* sums) {
  const size_t K4 = (depth + 3) / 4 * 4;
  for (size_t i = 0; i < cols; ++i) {
    int32_t sum = 0;
    for (size_t k = 0; k < K4; ++k) {
      int8_t value = 0;  // past the depth: zero (and no group read)
      if (k < depth) {
        const uint8_t byte = groups[k * kFastScanGroupBytes + i % 16];
        value = book_q[i < 16 ? byte & 0x0f : byte >> 4];
      }
      out[(k / 4) * 4 * ld + 4 * i + k % 4] = value;
      sum += value;
    }
    sums[i] = sum;
  }
}

void decode_codes_s8_scalar(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows,
                            size_t count, unsigned bits, const int8_t* book_q, size_t rows_per_book,
                            size_t phase, int8_t* out, size_t ld, int32_t* sums) {
  uint8_t codes[256];
  for (size_t r = 0; r < rows; ++r) {
    const int8_t* book = book_q + ((phase + r) / rows_per_book << bits);
    int32_t sum = 0;
    for (size_t i = 0; i < count; i += sizeof codes) {
      const size_t n = std::min(sizeof codes, count - i);
      unpack_codes_scalar(stream, first + r * row_stride + i, n, bits, codes);
      for (size_t j = 0; j < n; ++j) sum += out[r * ld + i + j] = book[codes[j]];
    }
    std::fill(out + r * ld + count, out + (r + 1) * ld, int8_t{0});
    sums[r] = sum;
  }
}

template <typename X>
void decode_dot_scalar(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                          size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                          const X* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  uint8_t codes[256];
  for (size_t r = 0; r < rows; ++r) {
    const int8_t* book = book_q + ((phase + r) / rows_per_book << bits);
    for (size_t q = 0, k0 = 0; k0 < count; ++q, k0 += depth) {
      const size_t len = std::min(depth, count - k0);
      const X* x = xq + q * M * ldq;
      int32_t* dot = dots + q * M * rows + r;
      int32_t sum = 0;
      for (size_t m = 0; m < M; ++m) dot[m * rows] = 0;
      for (size_t i = 0; i < len; i += sizeof codes) {
        const size_t n = std::min(sizeof codes, len - i);
        unpack_codes_scalar(stream, first + r * row_stride + k0 + i, n, bits, codes);
        for (size_t j = 0; j < n; ++j) {
          const int32_t w = book[codes[j]];
          sum += w;
          for (size_t m = 0; m < M; ++m) dot[m * rows] += int32_t{x[m * ldq + i + j]} * w;
        }
      }
      sums[q * rows + r] = sum;
    }
  }
}

void decode_dot_s8_scalar(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                          size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                          const uint8_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  decode_dot_scalar(stream, first, row_stride, rows, count, depth, bits, book_q, rows_per_book, phase, xq, ldq, M, dots,
                    sums);
}
void decode_dot_s16_scalar(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                           size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                           const int16_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums) {
  decode_dot_scalar(stream, first, row_stride, rows, count, depth, bits, book_q, rows_per_book, phase, xq, ldq, M, dots,
                    sums);
}

// One int32 word's 4 signed bytes, summed.
int32_t word_byte_sum(int32_t word) {
  int8_t bytes[4];
  std::memcpy(bytes, &word, 4);
  return int32_t{bytes[0]} + bytes[1] + bytes[2] + bytes[3];
}

void decode_fastscan_words_s8_scalar(const uint8_t* groups, size_t subspaces, size_t cols, const int32_t* words,
                                     size_t book_stride, int8_t* out, size_t ld, int32_t* sums) {
  for (size_t i = 0; i < cols; ++i) {
    int32_t sum = 0;
    for (size_t j = 0; j < subspaces; ++j) {
      const uint8_t byte = groups[j * kFastScanGroupBytes + i % 16];
      const int32_t word = words[j * book_stride + (i < 16 ? byte & 0x0f : byte >> 4)];
      std::memcpy(out + (j * ld + i) * 4, &word, 4);
      sum += word_byte_sum(word);
    }
    sums[i] = sum;
  }
}

void decode_bytescan_words_s8_scalar(const uint8_t* codes, size_t block_stride, size_t subspaces, size_t cols,
                                     const uint8_t* planes, size_t book_stride, const int32_t* /*words*/,
                                     size_t /*word_stride*/, int8_t* out, size_t ld, int32_t* sums) {
  for (size_t i = 0; i < cols; ++i) {
    int32_t sum = 0;
    for (size_t j = 0; j < subspaces; ++j) {
      const uint8_t* book = planes + j * book_stride;
      const size_t code = codes[(i / kByteScanBlockRows) * block_stride + j * kByteScanBlockRows + i % kByteScanBlockRows];
      for (size_t b = 0; b < 4; ++b) {
        const int8_t value = static_cast<int8_t>(book[b * kByteScanCodewords + code]);
        out[(j * ld + i) * 4 + b] = value;
        sum += value;
      }
    }
    sums[i] = sum;
  }
}

void decode_fastscan2_words_s8_scalar(const uint8_t* groups, size_t stage_stride, size_t block_stride,
                                      size_t subspaces, size_t cols, const uint8_t* planes, size_t book_stride,
                                      const int32_t* /*words*/, size_t /*word_stride*/, int8_t* out, size_t ld,
                                      int32_t* sums) {
  for (size_t i = 0; i < cols; ++i) {
    int32_t sum = 0;
    const uint8_t* block = groups + (i / 32) * block_stride;
    for (size_t j = 0; j < subspaces; ++j) {
      const uint8_t b0 = block[j * kFastScanGroupBytes + i % 16];
      const uint8_t b1 = block[stage_stride + j * kFastScanGroupBytes + i % 16];
      const size_t code = i % 32 < 16 ? (b0 & 0x0f) | (b1 & 0x0f) << 4 : (b0 >> 4) | (b1 & 0xf0);
      for (size_t b = 0; b < 4; ++b) {
        const int8_t value = static_cast<int8_t>(planes[j * book_stride + b * kByteScanCodewords + code]);
        out[(j * ld + i) * 4 + b] = value;
        sum += value;
      }
    }
    sums[i] = sum;
  }
}

void int8_gemm_scalar(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N,
                      const float* xs, const float* ws, const int32_t* bias128, float* y, size_t ldy,
                      bool accumulate) {
  for (size_t m = 0; m < M; ++m)
    for (size_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (size_t k = 0; k < K4; ++k) acc += int32_t{xq[m * ldq + k]} * wq[(k / 4) * 4 * N + 4 * n + k % 4];
      const float v = xs[m] * (ws[n] * static_cast<float>(acc - bias128[n]));
      y[m * ldy + n] = accumulate ? y[m * ldy + n] + v : v;
    }
}

void quantize_rows_s16_scalar(const float* x, size_t ldx, size_t rows, size_t len, int16_t* q, size_t ldq,
                              float* scale, uint64_t* energy) {
  for (size_t r = 0; r < rows; ++r) {
    const float* row = x + r * ldx;
    int16_t* out = q + r * ldq;
    float a = 0.0f;
    bool finite = true;
    for (size_t j = 0; j < len; ++j) {
      const float v = std::abs(row[j]);
      finite = finite && v <= std::numeric_limits<float>::max();
      a = std::max(a, v);
    }
    const float inv = static_cast<float>(kWideLevels) / a;
    std::fill(out, out + ldq, int16_t{0});
    energy[r] = 0;
    if (!finite || !std::isfinite(inv)) {
      scale[r] = finite ? 0.0f : std::numeric_limits<float>::quiet_NaN();
      continue;
    }
    scale[r] = a / static_cast<float>(kWideLevels);
    uint64_t sum = 0;
    for (size_t j = 0; j < len; ++j) {
      const float level = std::clamp(std::nearbyint(row[j] * inv), -static_cast<float>(kWideLevels),
                                     static_cast<float>(kWideLevels));
      out[j] = static_cast<int16_t>(level);
      sum += static_cast<uint64_t>(int64_t{out[j]} * out[j]);
    }
    energy[r] = sum;
  }
}

void int16_gemm_scalar(const int16_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N,
                       const float* xs, const float* ws, float* y, size_t ldy, bool accumulate) {
  for (size_t m = 0; m < M; ++m)
    for (size_t n = 0; n < N; ++n) {
      int32_t acc = 0;
      for (size_t k = 0; k < K4; ++k) acc += int32_t{xq[m * ldq + k]} * wq[(k / 4) * 4 * N + 4 * n + k % 4];
      const float v = xs[m] * (ws[n] * static_cast<float>(acc));
      y[m * ldy + n] = accumulate ? y[m * ldy + n] + v : v;
    }
}

}  // namespace

const KernelTable& scalar_kernel_table() {
  static const KernelTable table = {
      "scalar",           unpack_codes_scalar, build_lut_scalar,     build_lut_d1_scalar, lut_gather_rows_scalar,
      lut_gather8_scalar, scatter_add_scalar,  bucket_dot_scalar,    dot_scalar,
      axpy_scalar,
      quantize_luts_scalar, lut_order_stats_scalar, fastscan_u8_scalar, fastscan_f32_scalar,
      quantize_byte_luts_scalar, byte_table_moments_scalar, bytescan_u8_scalar, bytescan_f32_scalar,
      decode_codes_scalar, decode_fastscan_d1_scalar, dot_rows_scalar, decode_fastscan_group_scalar,
      transpose_scalar, dense_gemm_scalar, /*dense_gemm_cols=*/32, decode_row_scalar,
      quantize_rows_u8_scalar, quantize_panel_s8_scalar, decode_fastscan_d1_s8_scalar, decode_codes_s8_scalar,
      decode_dot_s8_scalar, decode_fastscan_words_s8_scalar, decode_bytescan_words_s8_scalar,
      decode_fastscan2_words_s8_scalar, int8_gemm_scalar, quantize_rows_s16_scalar, int16_gemm_scalar,
      decode_dot_s16_scalar,
      /*int8_panels=*/false, /*int8_fastscan_d1_decoder=*/false, /*int8_stream_decoders=*/false,
      /*int8_word_decoders=*/false, /*wide_x=*/false,
  };
  return table;
}

}  // namespace onnxvq::kernels
