// VQMatMul driver: path choice, tiling, threading and run-time kernel-table dispatch.
//
// Determinism: every output element is produced by exactly one task, with a summation
// order fixed by the layout alone (never by the tiling or the thread count), so results do
// not depend on intra_op_num_threads or on the batch size.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <vector>

#include "vq_kernel.h"
#include "vq_tasks.h"

namespace onnxvq::kernels {

// SIMD tables, defined in their own translation units (built with their own flags).
#if defined(ONNXVQ_HAVE_AVX2)
const KernelTable& avx2_kernel_table();
#endif
#if defined(ONNXVQ_HAVE_AVX512)
const KernelTable& avx512_kernel_table();
#endif
#if defined(ONNXVQ_HAVE_NEON)
const KernelTable& neon_kernel_table();
#endif

namespace {

// --- tuning constants (shape-only; changing them never changes results; task plumbing
// and its constants in vq_tasks.h) ------------------------------------------------------
using detail::Blocks;
using detail::ceil_div;
using detail::run_tasks;
using detail::task_count;
constexpr size_t kLutBudgetBytes = size_t{1} << 20;     // LUTs of one chunk of input rows
constexpr size_t kCodeTileBudgetBytes = size_t{1} << 20;  // unpacked codes kept per task
constexpr size_t kBucketBudgetBytes = size_t{256} << 10;  // bucket sums kept per task
constexpr size_t kGatherGroups = 16;                      // 8-output groups sharing a table slice
constexpr size_t kGatherSliceBytes = size_t{32} << 10;   // table bytes walked per slice
constexpr size_t kNever = static_cast<size_t>(-1);

// Input rows x output units (outputs n on axis 0, subspaces s on axis 1).
struct Grid {
  Blocks rows, units;
  static Grid plan(size_t num_rows, size_t num_units, double work_per_cell) {
    const size_t tasks = task_count(static_cast<double>(num_rows) * num_units * work_per_cell);
    const size_t row_parts = std::min(num_rows, tasks);
    const size_t unit_parts = ceil_div(tasks, row_parts);
    return {Blocks::split(num_rows, row_parts), Blocks::split(num_units, unit_parts)};
  }
  size_t tasks() const { return rows.count * units.count; }
};

// --- problem view ----------------------------------------------------------------------

// The problem plus its derived sizes and the index arithmetic every path shares.
struct Context {
  const VQProblem& p;
  const KernelTable& k;
  const TaskRunner& runner;
  const size_t R, L, ncw, Gs, Gr;

  Context(const VQProblem& problem, const KernelTable& kernels, const TaskRunner& task_runner)
      : p(problem), k(kernels), runner(task_runner), R(problem.rows()), L(problem.length()),
        ncw(problem.codewords()), Gs(problem.subspace_groups()), Gr(problem.row_groups()) {}

  /// Codebook (2^bits codewords of d floats) of stage t, subspace s, row group g.
  const float* codebook(size_t t, size_t s, size_t g) const {
    const size_t subspace_group = p.per_subspace ? s : 0;
    return p.codebooks + ((t * Gs + subspace_group) * Gr + g) * ncw * p.d;
  }
  /// Valid positions of subspace s: d, or fewer for the padded last subspace.
  size_t subspace_len(size_t s) const { return std::min(p.d, L - s * p.d); }
  size_t group_of_row(size_t r) const { return r / p.group_size; }
  size_t group_begin(size_t g) const { return g * p.group_size; }
  size_t group_end(size_t g) const { return std::min(R, (g + 1) * p.group_size); }

  /// Codes (t, r, s0 .. s0+count) into out[0 .. count).
  void unpack(size_t t, size_t r, size_t s0, size_t count, uint8_t* out) const {
    detail::unpack_codes_of_row(p, k, t, r, s0, count, out);
  }
  /// All codes of row r of M: out[t*S + s].
  void unpack_row(size_t r, uint8_t* out) const {
    for (size_t t = 0; t < p.T; ++t) unpack(t, r, 0, p.S, out + t * p.S);
  }
  float bias(size_t n) const { return p.bias ? p.bias[n] : 0.0f; }

  /// y[m][o] = 0 for m in [m0, m1), o in [o0, o1).
  void zero_outputs(size_t m0, size_t m1, size_t o0, size_t o1) const {
    for (size_t m = m0; m < m1; ++m) std::fill(p.y + m * p.N + o0, p.y + m * p.N + o1, 0.0f);
  }
  void add_bias(size_t m0, size_t m1, size_t o0, size_t o1) const {
    if (!p.bias) return;
    for (size_t m = m0; m < m1; ++m)
      for (size_t o = o0; o < o1; ++o) p.y[m * p.N + o] += p.bias[o];
  }
};

// --- axis 0, LUT path ------------------------------------------------------------------
// Per chunk of input rows and per row group g (usually one): build every LUT entry
// LUT[m][t][s][c] = <x_m,s, codeword c> (parallel over (m, t, s)), then gather
// y[m][n] = sum_t sum_s LUT[m][t][s][code(t, n, s)] (parallel over n; each output row's
// codes are unpacked once and applied to the whole chunk).

void build_luts(const Context& c, size_t m0, size_t rows, size_t g, float* luts) {
  const VQProblem& p = c.p;
  const size_t units = rows * p.T * p.S;  // one unit: the 2^bits entries of one (m, t, s)
  const Blocks blocks = Blocks::split(units, task_count(double(units) * c.ncw * p.d));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    for (size_t u = blocks.begin(task); u < blocks.end(task); ++u) {
      const size_t s = u % p.S;
      const size_t t = (u / p.S) % p.T;
      const size_t m = m0 + u / (p.S * p.T);
      c.k.build_lut(p.x + m * p.K + s * p.d, c.subspace_len(s), c.codebook(t, s, g), p.d, c.ncw,
                    luts + u * c.ncw);
    }
  });
}

void gather_luts(const Context& c, size_t m0, size_t rows, size_t g, const float* luts) {
  const VQProblem& p = c.p;
  const size_t n0 = c.group_begin(g), outputs = c.group_end(g) - n0;
  const size_t entries = p.T * p.S, lut_row = entries * c.ncw;
  // Few input rows: eight outputs per step (one gather serves eight outputs), else one
  // output against every row. Both sum entries in the same order: the same bits.
  const bool by_eight = rows < 8;
  const size_t unit = by_eight ? 8 : 1;
  const Blocks blocks = Blocks::split(ceil_div(outputs, unit),
                                      task_count(double(outputs) * rows * entries));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    std::vector<uint8_t> codes(entries), codes8(by_eight ? entries * 8 : 0);
    size_t n = n0 + blocks.begin(task) * unit;
    const size_t n_end = std::min(n0 + outputs, n0 + blocks.end(task) * unit);
    // Groups of 8 outputs, kGatherGroups at a time; the tables are walked in slices of
    // kGatherSliceBytes so a slice stays in L1/L2 while every group of the batch uses it
    // (large tables, e.g. 8-bit codes, would otherwise come from L3 for every group).
    while (by_eight && n + 8 <= n_end) {
      const size_t groups = std::min(kGatherGroups, (n_end - n) / 8);
      codes8.resize(groups * entries * 8);
      for (size_t q = 0; q < groups; ++q)
        for (size_t j = 0; j < 8; ++j) {
          c.unpack_row(n + q * 8 + j, codes.data());
          uint8_t* tile = &codes8[q * entries * 8];
          for (size_t i = 0; i < entries; ++i) tile[i * 8 + j] = codes[i];
        }
      const size_t slice = std::max<size_t>(1, kGatherSliceBytes / (c.ncw * sizeof(float)));
      for (size_t m = 0; m < rows; ++m) {
        float* y = p.y + (m0 + m) * p.N + n;
        std::fill(y, y + groups * 8, 0.0f);
        for (size_t i0 = 0; i0 < entries; i0 += slice) {
          const size_t len = std::min(slice, entries - i0);
          for (size_t q = 0; q < groups; ++q)
            c.k.lut_gather8(&codes8[(q * entries + i0) * 8], len, c.ncw,
                            luts + m * lut_row + i0 * c.ncw, y + q * 8);
        }
        if (p.bias)
          for (size_t j = 0; j < groups * 8; ++j) y[j] += p.bias[n + j];
      }
      n += groups * 8;
    }
    for (; n < n_end; ++n) {
      c.unpack_row(n, codes.data());
      float* y = p.y + m0 * p.N + n;
      c.k.lut_gather_rows(codes.data(), entries, c.ncw, luts, lut_row, rows, y, p.N);
      if (p.bias)
        for (size_t m = 0; m < rows; ++m) y[m * p.N] += p.bias[n];
    }
  });
}

void run_lut_path(const Context& c) {
  const VQProblem& p = c.p;
  const size_t lut_row_bytes = p.T * p.S * c.ncw * sizeof(float);
  const size_t chunk = std::clamp<size_t>(kLutBudgetBytes / lut_row_bytes, 1, p.M);
  std::vector<float> luts(chunk * p.T * p.S * c.ncw);
  for (size_t m0 = 0; m0 < p.M; m0 += chunk) {
    const size_t rows = std::min(chunk, p.M - m0);
    for (size_t g = 0; g < c.Gr; ++g) {
      build_luts(c, m0, rows, g, luts.data());
      gather_luts(c, m0, rows, g, luts.data());
    }
  }
}

// --- axis 0, d == 1 with one codebook per (stage, row group): bucket sums ---------------
// y[m][n] = sum_t sum_c codebook[t][g(n)][c] * (sum of x[m][k] with code(t, n, k) == c).

void run_row_buckets_path(const Context& c) {
  const VQProblem& p = c.p;
  const Grid grid = Grid::plan(p.M, p.N, double(p.T) * (p.S + c.ncw));
  run_tasks(c.runner, grid.tasks(), [&](size_t task) {
    const size_t rb = task / grid.units.count, ub = task % grid.units.count;
    std::vector<uint8_t> codes(p.T * p.S);
    std::vector<float> buckets(kBucketSets * c.ncw);
    for (size_t n = grid.units.begin(ub); n < grid.units.end(ub); ++n) {
      c.unpack_row(n, codes.data());
      const size_t g = c.group_of_row(n);
      for (size_t m = grid.rows.begin(rb); m < grid.rows.end(rb); ++m) {
        float sum = 0.0f;
        for (size_t t = 0; t < p.T; ++t)
          sum += c.k.bucket_dot(codes.data() + t * p.S, p.x + m * p.K, p.S, c.codebook(t, 0, g),
                                c.ncw, buckets.data());
        p.y[m * p.N + n] = sum + c.bias(n);
      }
    }
  });
}

// --- axis 0, binary codes (1 bit, d == 1, shared codebook per row group): byte tables -----
// With the two codewords c0, c1 of row n's group,
//   y[m][n] = c0 * sum_k x[m][k] + (c1 - c0) * P[m][n],  P = sum of the x[m][k] whose bit is 1.
// P reads row n's bits a byte at a time, from a table of the 256 subset sums of each 8
// consecutive inputs (8 inputs per lookup instead of one scatter-add per input):
//   table[i][b] = table[i][b & (b - 1)] + x[8i + lowest set bit of b]   (x = 0 past K)
//   P[m][n] = sum_i table[i][byte i of row n], i ascending
// The order depends on the layout only, so every kernel table and thread count gives the
// same bits.

bool bit_lut_covers(const VQProblem& p) {
  return p.format_version == 1 && p.axis == 0 && p.bits == 1 && p.d == 1 && !p.per_subspace &&
         p.T == 1;
}

void run_bit_lut_path(const Context& c) {
  const VQProblem& p = c.p;
  const size_t row_bytes = (p.K + 7) / 8;
  const uint64_t stream_bytes = (static_cast<uint64_t>(p.N) * p.K + 7) / 8;
  std::vector<float> table(row_bytes * 256);
  const Blocks blocks = Blocks::split(p.N, task_count(double(p.N) * row_bytes * 2));
  for (size_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * p.K;
    for (size_t i = 0; i < row_bytes; ++i) {
      float* t = &table[i * 256];
      t[0] = 0.0f;
      for (unsigned b = 1; b < 256; ++b) {
        const size_t k = 8 * i + static_cast<size_t>(__builtin_ctz(b));
        t[b] = t[b & (b - 1)] + (k < p.K ? x[k] : 0.0f);
      }
    }
    float total = 0.0f;
    for (size_t k = 0; k < p.K; ++k) total += x[k];
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      for (size_t n = blocks.begin(task); n < blocks.end(task); ++n) {
        const uint64_t first_bit = static_cast<uint64_t>(n) * p.K;
        const unsigned shift = static_cast<unsigned>(first_bit & 7);
        const uint8_t* bytes = p.codes + (first_bit >> 3);
        float sum = 0.0f;
        if (shift == 0 && p.K % 8 == 0 && n + 4 <= blocks.end(task)) {
          // Four byte-aligned rows at once: four independent chains, each in i order.
          float s4[4] = {0.0f, 0.0f, 0.0f, 0.0f};
          for (size_t i = 0; i < row_bytes; ++i)
            for (size_t j = 0; j < 4; ++j) s4[j] += table[i * 256 + bytes[j * row_bytes + i]];
          for (size_t j = 0; j < 4; ++j) {
            const float* cb = c.codebook(0, 0, c.group_of_row(n + j));
            p.y[m * p.N + n + j] = (cb[0] * total + (cb[1] - cb[0]) * s4[j]) + c.bias(n + j);
          }
          n += 3;
          continue;
        }
        if (shift == 0) {
          for (size_t i = 0; i < row_bytes; ++i) sum += table[i * 256 + bytes[i]];
        } else {  // the row starts inside a byte: splice two bytes (never past the stream)
          for (size_t i = 0; i < row_bytes; ++i) {
            unsigned b = bytes[i] >> shift;
            if ((first_bit >> 3) + i + 1 < stream_bytes) b |= (bytes[i + 1] << (8 - shift)) & 0xffu;
            sum += table[i * 256 + b];
          }
        }
        const float* cb = c.codebook(0, 0, c.group_of_row(n));
        p.y[m * p.N + n] = (cb[0] * total + (cb[1] - cb[0]) * sum) + c.bias(n);
      }
    });
  }
}

// --- axis 1: bucket sums per subspace ----------------------------------------------------
// For each input row m, row group g and subspace s:
//   bucket[t][s][c] = sum of x[m][k] over k in g with code(t, k, s) == c
//   y[m][s*d + j] += sum_t sum_c bucket[t][s][c] * codebook[t][s][g][c][j]
// A task owns a block of rows and of subspaces; it walks its subspaces in sub-blocks small
// enough that their unpacked codes (one group of k) and buckets stay in cache, and reuses
// the unpacked codes for all its rows.

void column_buckets_block(const Context& c, size_t m0, size_t m1, size_t s0, size_t s1) {
  const VQProblem& p = c.p;
  const size_t width = s1 - s0;
  const size_t o0 = s0 * p.d, o1 = std::min(p.N, s1 * p.d);
  std::vector<uint8_t> tile(p.group_size * p.T * width);  // (k in group, t, s) codes
  std::vector<float> buckets(p.T * width * c.ncw);        // (t, s, c)
  c.zero_outputs(m0, m1, o0, o1);
  for (size_t g = 0; g < c.Gr; ++g) {
    const size_t k0 = c.group_begin(g), k1 = c.group_end(g);
    for (size_t k = k0; k < k1; ++k)
      for (size_t t = 0; t < p.T; ++t) c.unpack(t, k, s0, width, &tile[((k - k0) * p.T + t) * width]);
    for (size_t m = m0; m < m1; ++m) {
      std::fill(buckets.begin(), buckets.end(), 0.0f);
      for (size_t k = k0; k < k1; ++k)
        c.k.scatter_add(&tile[(k - k0) * p.T * width], p.T * width, p.x[m * p.K + k],
                        buckets.data(), c.ncw);
      for (size_t t = 0; t < p.T; ++t) {
        for (size_t s = s0; s < s1; ++s) {
          const float* bucket = &buckets[(t * width + (s - s0)) * c.ncw];
          const float* codebook = c.codebook(t, s, g);
          float* y = p.y + m * p.N + s * p.d;
          const size_t len = c.subspace_len(s);
          for (size_t code = 0; code < c.ncw; ++code)
            c.k.axpy(bucket[code], codebook + code * p.d, len, y);
        }
      }
    }
  }
  c.add_bias(m0, m1, o0, o1);
}

void run_column_buckets_path(const Context& c) {
  const VQProblem& p = c.p;
  // Subspaces per sub-block: bounded by the unpacked code tile and by the buckets.
  const size_t max_width = std::max<size_t>(
      1, std::min(kCodeTileBudgetBytes / (p.group_size * p.T),
                  kBucketBudgetBytes / (p.T * c.ncw * sizeof(float))));
  const Grid grid = Grid::plan(p.M, p.S, double(p.T) * (p.K + c.ncw * p.d));
  run_tasks(c.runner, grid.tasks(), [&](size_t task) {
    const size_t rb = task / grid.units.count, ub = task % grid.units.count;
    for (size_t s0 = grid.units.begin(ub); s0 < grid.units.end(ub); s0 += max_width) {
      const size_t s1 = std::min(grid.units.end(ub), s0 + max_width);
      column_buckets_block(c, grid.rows.begin(rb), grid.rows.end(rb), s0, s1);
    }
  });
}

// --- direct gather-dot, any layout --------------------------------------------------------

// axis 0: y[m][n] = sum_t sum_s <x_m,s, codeword(t, s, g(n), code(t, n, s))>
void run_direct_axis0(const Context& c) {
  const VQProblem& p = c.p;
  const Grid grid = Grid::plan(p.M, p.N, double(p.T) * p.S * p.d);
  run_tasks(c.runner, grid.tasks(), [&](size_t task) {
    const size_t rb = task / grid.units.count, ub = task % grid.units.count;
    std::vector<uint8_t> codes(p.T * p.S);
    for (size_t n = grid.units.begin(ub); n < grid.units.end(ub); ++n) {
      c.unpack_row(n, codes.data());
      const size_t g = c.group_of_row(n);
      for (size_t m = grid.rows.begin(rb); m < grid.rows.end(rb); ++m) {
        const float* x = p.x + m * p.K;
        float sum = 0.0f;
        for (size_t t = 0; t < p.T; ++t)
          for (size_t s = 0; s < p.S; ++s) {
            const float* codeword = c.codebook(t, s, g) + codes[t * p.S + s] * p.d;
            sum += c.k.dot(x + s * p.d, codeword, c.subspace_len(s));
          }
        p.y[m * p.N + n] = sum + c.bias(n);
      }
    }
  });
}

// axis 1: y[m][s*d + j] += x[m][k] * codeword(t, s, g(k), code(t, k, s))[j], k then t ascending.
void run_direct_axis1(const Context& c) {
  const VQProblem& p = c.p;
  const Grid grid = Grid::plan(p.M, p.S, double(p.T) * p.K * p.d);
  run_tasks(c.runner, grid.tasks(), [&](size_t task) {
    const size_t m0 = grid.rows.begin(task / grid.units.count);
    const size_t m1 = grid.rows.end(task / grid.units.count);
    const size_t s0 = grid.units.begin(task % grid.units.count);
    const size_t s1 = grid.units.end(task % grid.units.count);
    const size_t width = s1 - s0;
    const size_t o0 = s0 * p.d, o1 = std::min(p.N, s1 * p.d);
    std::vector<uint8_t> codes(p.T * width);
    c.zero_outputs(m0, m1, o0, o1);
    for (size_t k = 0; k < p.K; ++k) {
      for (size_t t = 0; t < p.T; ++t) c.unpack(t, k, s0, width, codes.data() + t * width);
      const size_t g = c.group_of_row(k);
      for (size_t m = m0; m < m1; ++m) {
        const float xk = p.x[m * p.K + k];
        float* y_row = p.y + m * p.N;
        for (size_t t = 0; t < p.T; ++t)
          for (size_t s = s0; s < s1; ++s) {
            const float* codeword = c.codebook(t, s, g) + codes[t * width + (s - s0)] * p.d;
            c.k.axpy(xk, codeword, c.subspace_len(s), y_row + s * p.d);
          }
      }
    }
    c.add_bias(m0, m1, o0, o1);
  });
}

// --- format_version 2: fast-scan ---------------------------------------------------------
// Per chunk of input rows and per row group g: build the float tables LUT[m][e][c]
// (e = t*S + s), quantize each row's tables to uint8 with one scale (kFastScan) or keep them
// (kFastScanExact), then hand blocks of 32 outputs to the micro-kernel, which reads each
// block's codes once per chunk (they stay in L1 across the chunk's rows):
//   y[m][n] = scale[m] * Q[m][n] + offset[m] (+ bias[n])   (uint8 tables)
//   y[m][n] = F[m][n] (+ bias[n])                           (float tables)
// A row whose tables are not finite (inf/NaN inputs) takes the float tables, so non-finite
// values propagate as in the other paths; so does a row whose uint8 tables the guard
// (fastscan_uint8_error, vq_kernel.h) estimates too coarse.

std::atomic<uint64_t> g_uint8_rows{0}, g_exact_rows{0};  // onnxvq_fastscan_row_counts

bool fastscan_covers(const VQProblem& p) {
  return p.format_version == 2 && p.axis == 0 && p.bits == 4 &&
         (p.row_groups() == 1 || p.group_size % kFastScanBlockRows == 0);
}

void run_fastscan_path(const Context& c, bool exact) {
  const VQProblem& p = c.p;
  const size_t E = p.entries();
  const size_t lut_row = E * kFastScanCodewords;  // floats (and uint8 entries) per row
  const size_t q_stride = (lut_row + kFastScanTablePad - 1) / kFastScanTablePad * kFastScanTablePad;
  const size_t lut_row_bytes = lut_row * sizeof(float);
  const size_t chunk = std::clamp<size_t>(4 * kLutBudgetBytes / lut_row_bytes, 1, p.M);
  const size_t blocks_per_group =
      c.Gr == 1 ? p.fastscan_blocks() : p.group_size / kFastScanBlockRows;

  std::vector<float> luts(chunk * lut_row);
  std::vector<uint8_t> qluts(exact ? 0 : chunk * q_stride, 0);  // padding stays zero
  std::vector<float> scale(chunk), offset(chunk);
  std::vector<char> quantized(chunk);
  for (size_t m0 = 0; m0 < p.M; m0 += chunk) {
    const size_t rows = std::min(chunk, p.M - m0);
    for (size_t g = 0; g < c.Gr; ++g) {
      build_luts(c, m0, rows, g, luts.data());
      if (!exact) {
        // The guard decides per row from its own tables (the same on every table and
        // thread count); a row it rejects is never quantized and takes the float tables.
        const double limit = fastscan_max_rel_error();
        run_tasks(c.runner, task_count(double(rows) * lut_row * 4), [&](size_t task) {
          const Blocks b = Blocks::split(rows, task_count(double(rows) * lut_row * 4));
          for (size_t m = b.begin(task); m < b.end(task); ++m) {
            const float* row = luts.data() + m * lut_row;
            quantized[m] = fastscan_uint8_error(row, E) <= limit &&
                           c.k.quantize_luts(row, E, qluts.data() + m * q_stride, &scale[m],
                                             &offset[m]);
          }
        });
        const size_t fast = static_cast<size_t>(std::count(quantized.begin(), quantized.begin() + rows, 1));
        g_uint8_rows.fetch_add(fast, std::memory_order_relaxed);
        g_exact_rows.fetch_add(rows - fast, std::memory_order_relaxed);
      }
      const size_t first_block = g * blocks_per_group;
      const size_t num_blocks = std::min(blocks_per_group, p.fastscan_blocks() - first_block);
      const Blocks blocks = Blocks::split(
          num_blocks, task_count(double(num_blocks) * kFastScanBlockRows * E * rows / 8));
      run_tasks(c.runner, blocks.count, [&](size_t task) {
        std::vector<uint32_t> sums(exact ? 0 : rows * kFastScanBlockRows);
        std::vector<float> fsums(rows * kFastScanBlockRows);
        bool all_quantized = !exact;
        for (size_t m = 0; m < rows && all_quantized; ++m) all_quantized = quantized[m];
        for (size_t b = first_block + blocks.begin(task); b < first_block + blocks.end(task); ++b) {
          const uint8_t* codes = p.codes + b * E * kFastScanGroupBytes;
          const size_t n0 = b * kFastScanBlockRows;
          const size_t count = std::min(kFastScanBlockRows, p.N - n0);
          if (!exact) c.k.fastscan_u8(codes, E, qluts.data(), q_stride, rows, sums.data());
          if (!all_quantized) c.k.fastscan_f32(codes, E, luts.data(), lut_row, rows, fsums.data());
          for (size_t m = 0; m < rows; ++m) {
            float* y = p.y + (m0 + m) * p.N + n0;
            const size_t at = m * kFastScanBlockRows;
            if (!exact && quantized[m]) {
              for (size_t i = 0; i < count; ++i)
                y[i] = (scale[m] * static_cast<float>(sums[at + i]) + offset[m]) + c.bias(n0 + i);
            } else {
              for (size_t i = 0; i < count; ++i) y[i] = fsums[at + i] + c.bias(n0 + i);
            }
          }
        }
      });
    }
  }
}

// --- decode-tile GEMM (large batches) ------------------------------------------------------
// A task owns whole tiles of kGemmTileCols outputs. For each K block (whole subspaces, bytes
// or input rows, so that every summation group lies in one block) it decodes the tile's
// block of W_hat (at most kGemmTileBytes) and runs KernelTable::decode_gemm over all M rows,
// continuing an M x kGemmTileCols accumulator. The per-output summation order is the
// replaced path's (see KernelTable::decode_gemm), fixed by the layout: neither the tiling
// nor the thread count changes a bit.

constexpr size_t kGemmTileCols = 64;
// Decoded tile bytes per K block (64 rows of 64 outputs): its rows and the packed inputs
// the micro-GEMM streams stay in L1. Measured 8/16/32/64 KiB (4096x4096 pq8 and binary at
// M = 8 and 64): 16 KiB best or tied; a 64 KiB decode with 64-row GEMM sub-blocks tied.
constexpr size_t kGemmTileBytes = size_t{16} << 10;
constexpr size_t kGemmRowChunk = 256;  // batch rows per packed input chunk

struct GemmBlock {
  size_t u0, u1;                  // units: (t, s) flattened (axis 0), bytes (binary), k (axis 1)
  std::vector<uint32_t> xi;       // per tile row: input column
  std::vector<uint32_t> groups;   // run starts, plus the end
};

void run_decode_gemm_path(const Context& c, VQPath base) {
  const VQProblem& p = c.p;
  const bool binary = base == VQPath::kBitLut;
  const int mode = binary                        ? kGemmMask
                   : base == VQPath::kFastScan      ? kGemmFma
                   : base == VQPath::kDirect        ? kGemmExact
                                                    : kGemmLut;  // kLut, kFastScanExact
  const size_t NT = kGemmTileCols;
  const size_t max_rows = std::max<size_t>(8 * p.T, kGemmTileBytes / (NT * sizeof(float)));

  // Units and their tile rows, in summation order.
  const size_t units = p.axis == 1 ? p.K : binary ? ceil_div(p.K, 8) : p.T * p.S;
  auto unit_rows = [&](size_t u, std::vector<uint32_t>& xi, std::vector<uint32_t>& groups) {
    if (p.axis == 1) {  // input row u, stages in order, one term per run
      for (size_t t = 0; t < p.T; ++t) {
        groups.push_back(static_cast<uint32_t>(xi.size()));
        xi.push_back(static_cast<uint32_t>(u));
      }
    } else if (binary) {  // byte u: highest input first (the subset-sum table's order)
      groups.push_back(static_cast<uint32_t>(xi.size()));
      for (size_t k = std::min(p.K, 8 * u + 8); k-- > 8 * u;) xi.push_back(static_cast<uint32_t>(k));
    } else {  // subspace s of stage t
      const size_t s = u % p.S;
      groups.push_back(static_cast<uint32_t>(xi.size()));
      for (size_t j = 0; j < c.subspace_len(s); ++j) xi.push_back(static_cast<uint32_t>(s * p.d + j));
    }
  };
  std::vector<GemmBlock> blocks;
  for (size_t u = 0; u < units;) {
    GemmBlock b;
    b.u0 = u;
    while (u < units) {
      const size_t before = b.xi.size(), runs = b.groups.size();
      unit_rows(u, b.xi, b.groups);
      if (b.xi.size() > max_rows && u > b.u0) {  // does not fit: leave it for the next block
        b.xi.resize(before);
        b.groups.resize(runs);
        break;
      }
      ++u;
    }
    b.u1 = u;
    b.groups.push_back(static_cast<uint32_t>(b.xi.size()));
    blocks.push_back(std::move(b));
  }

  std::vector<float> totals(binary ? p.M : 0);  // binary: sum_k x[m][k], k ascending
  for (size_t m = 0; m < totals.size(); ++m) {
    float total = 0.0f;
    for (size_t k = 0; k < p.K; ++k) total += p.x[m * p.K + k];
    totals[m] = total;
  }
  std::vector<size_t> offsets;  // first packed row of each block
  size_t packed_rows = 0, block_rows = 0;  // a block exceeds max_rows when one unit does
  for (const GemmBlock& b : blocks) {
    offsets.push_back(packed_rows);
    packed_rows += b.xi.size();
    block_rows = std::max(block_rows, b.xi.size());
  }

  // Batch rows in chunks; per chunk the inputs are packed as (tile row, batch row).
  const size_t chunk = std::min(p.M, kGemmRowChunk);
  std::vector<float> xpack(packed_rows * chunk);
  const size_t tiles = ceil_div(p.N, NT);
  for (size_t m0 = 0; m0 < p.M; m0 += chunk) {
  const size_t rows_m = std::min(chunk, p.M - m0);
  for (size_t bi = 0; bi < blocks.size(); ++bi)
    for (size_t r = 0; r < blocks[bi].xi.size(); ++r) {
      float* dst = &xpack[(offsets[bi] + r) * rows_m];
      const float* src = p.x + m0 * p.K + blocks[bi].xi[r];
      for (size_t m = 0; m < rows_m; ++m) dst[m] = src[m * p.K];
    }
  const Blocks split =
      Blocks::split(tiles, task_count(double(rows_m) * p.N * p.K * p.T / 16));
  run_tasks(c.runner, split.count, [&](size_t task) {
    std::vector<float> w(block_rows * NT);
    std::vector<float> acc(rows_m * NT);
    std::vector<uint8_t> codes(std::max(p.S, p.K) + 1);
    std::vector<uint8_t> tcodes(block_rows * NT);  // codes of one block, (unit or k, column)
    for (size_t tile = split.begin(task); tile < split.end(task); ++tile) {
      const size_t n0 = tile * NT, count = std::min(NT, p.N - n0);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (const GemmBlock& b : blocks) {
        const size_t rows = b.xi.size();
        if (count < NT)  // columns past N stay zero
          for (size_t row = 0; row < rows; ++row) std::fill(&w[row * NT + count], &w[row * NT + NT], 0.0f);
        if (p.axis == 1) {
          const size_t sa = n0 / p.d, sb = ceil_div(n0 + count, p.d);
          size_t row = 0;
          for (size_t k = b.u0; k < b.u1; ++k) {
            const size_t g = c.group_of_row(k);
            for (size_t t = 0; t < p.T; ++t, ++row) {
              c.unpack(t, k, sa, sb - sa, codes.data());
              for (size_t col = 0; col < count; ++col) {
                const size_t o = n0 + col, s = o / p.d;
                w[row * NT + col] = c.codebook(t, s, g)[codes[s - sa] * p.d + o % p.d];
              }
            }
          }
        } else if (binary) {
          // Bits of the tile's outputs, transposed to (k, column), then one mask row per k.
          const size_t k0 = 8 * b.u0, k1 = std::min(p.K, 8 * b.u1);
          for (size_t col = 0; col < count; ++col) {
            c.unpack(0, n0 + col, k0, k1 - k0, codes.data());
            for (size_t k = k0; k < k1; ++k) tcodes[(k - k0) * NT + col] = codes[k - k0];
          }
          for (size_t row = 0; row < rows; ++row) {
            const uint8_t* bits = &tcodes[(b.xi[row] - k0) * NT];
            uint32_t* out = reinterpret_cast<uint32_t*>(&w[row * NT]);
            for (size_t col = 0; col < count; ++col) out[col] = 0u - static_cast<uint32_t>(bits[col]);
          }
        } else {
          // Codes of the tile's outputs transposed to (unit, column); then each unit's d
          // rows are written a row at a time (contiguous stores, codebook gathers).
          const size_t width = b.u1 - b.u0;
          for (size_t col = 0; col < count; ++col) {
            const size_t n = n0 + col;
            for (size_t u = b.u0; u < b.u1;) {  // one run of subspaces of one stage
              const size_t t = u / p.S, s0 = u % p.S, len = std::min(b.u1 - u, p.S - s0);
              c.unpack(t, n, s0, len, codes.data());
              for (size_t i = 0; i < len; ++i) tcodes[(u - b.u0 + i) * NT + col] = codes[i];
              u += len;
            }
          }
          size_t row = 0;
          const bool one_group = c.Gr == 1 || c.group_of_row(n0) == c.group_of_row(n0 + count - 1);
          for (size_t i = 0; i < width; ++i) {
            const size_t u = b.u0 + i, t = u / p.S, s = u % p.S, len = c.subspace_len(s);
            const uint8_t* code = &tcodes[i * NT];
            if (one_group) {
              const float* cb = c.codebook(t, s, c.group_of_row(n0));
              for (size_t j = 0; j < len; ++j) {
                float* out = &w[(row + j) * NT];
                const float* cbj = cb + j;
                for (size_t col = 0; col < count; ++col) out[col] = cbj[code[col] * p.d];
              }
            } else {
              for (size_t j = 0; j < len; ++j)
                for (size_t col = 0; col < count; ++col)
                  w[(row + j) * NT + col] =
                      c.codebook(t, s, c.group_of_row(n0 + col))[code[col] * p.d + j];
            }
            row += len;
          }
        }
        c.k.decode_gemm(&xpack[offsets[&b - blocks.data()] * rows_m], rows_m, rows_m,
                        b.groups.data(), b.groups.size() - 1, rows, w.data(), NT, mode, p.d,
                        c.ncw, acc.data());
      }
      for (size_t m = 0; m < rows_m; ++m) {
        float* y = p.y + (m0 + m) * p.N + n0;
        const float* a = &acc[m * NT];
        if (binary) {
          for (size_t col = 0; col < count; ++col) {
            const float* cb = c.codebook(0, 0, c.group_of_row(n0 + col));
            y[col] = (cb[0] * totals[m0 + m] + (cb[1] - cb[0]) * a[col]) + c.bias(n0 + col);
          }
        } else {
          for (size_t col = 0; col < count; ++col) y[col] = a[col] + c.bias(n0 + col);
        }
      }
    }
  });
  }
}

// --- dispatch ---------------------------------------------------------------------------

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

// The tables this build has and this CPU runs, best last. __builtin_cpu_supports also
// checks that the OS saves the wide registers (XGETBV), so AVX state is usable.
struct TableList {
  const KernelTable* tables[4];
  size_t count = 0;
  std::string names;
  TableList() {
    tables[count++] = &scalar_kernel_table();
#if defined(ONNXVQ_HAVE_AVX2)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
      tables[count++] = &avx2_kernel_table();
#endif
#if defined(ONNXVQ_HAVE_AVX512)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma"))
      tables[count++] = &avx512_kernel_table();
#endif
#if defined(ONNXVQ_HAVE_NEON)
    tables[count++] = &neon_kernel_table();  // NEON is mandatory on AArch64
#endif
    for (size_t i = 0; i < count; ++i) names += (i ? "," : "") + std::string(tables[i]->name);
  }
};

const TableList& table_list() {
  static const TableList list;
  return list;
}

// ONNXVQ_FORCE_ISA=name picks that table (tests and benchmarks run every table the host has,
// not only the best one); nullptr when unset or when this build and CPU lack it.
const KernelTable* forced_table() {
  const char* want = std::getenv("ONNXVQ_FORCE_ISA");
  if (want == nullptr || want[0] == '\0') return nullptr;
  const TableList& list = table_list();
  for (size_t i = 0; i < list.count; ++i)
    if (std::strcmp(list.tables[i]->name, want) == 0) return list.tables[i];
  return nullptr;
}

const KernelTable& select_kernel_table() {
  if (env_flag("ONNXVQ_FORCE_SCALAR")) return scalar_kernel_table();
  if (const KernelTable* forced = forced_table()) return *forced;
  const TableList& list = table_list();
  return *list.tables[list.count - 1];  // an unusable ONNXVQ_FORCE_ISA fails kernel creation instead
}

}  // namespace

const char* kernel_selection_error() {
  static const std::string error = [] {
    const char* want = std::getenv("ONNXVQ_FORCE_ISA");
    if (want == nullptr || want[0] == '\0' || forced_table() != nullptr) return std::string();
    return "ONNXVQ_FORCE_ISA=" + std::string(want) + " names no kernel table this build and CPU have (" +
           table_list().names + ")";
  }();
  return error.empty() ? nullptr : error.c_str();
}

size_t supported_kernel_tables(const KernelTable** tables, size_t capacity) {
  const TableList& list = table_list();
  for (size_t i = 0; i < list.count && i < capacity; ++i) tables[i] = list.tables[i];
  return list.count;
}

bool exact_lut_requested() {
  static const bool exact = env_flag("ONNXVQ_EXACT_LUT");
  return exact;
}

namespace {
// Four lanes of one generic type: SSE2 / NEON / scalar code from the same source, and only
// exact operations (min, max, v - v), so every build gives the same values.
typedef float Vec4 __attribute__((vector_size(16)));
inline Vec4 vmin(Vec4 a, Vec4 b) { return a < b ? a : b; }
inline Vec4 vmax(Vec4 a, Vec4 b) { return a < b ? b : a; }

struct EntryStats {  // per lane: largest, 3rd largest, smallest, 3rd smallest; v - v sums
  Vec4 a1, a3, b1, b3, bad;
};

// Top-3 / bottom-3 of the 16 values of four tables at once (lane l: table tables[l]).
inline EntryStats entry_stats(const float* const tables[4]) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
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
  return {a1, a3, b1, b3, bad};
}
}  // namespace

double fastscan_uint8_error(const float* lut, size_t entries) {
  constexpr double kInfD = std::numeric_limits<double>::infinity();
  float range = 0.0f;
  double spread = 0.0;  // sum_e r_e^2, e ascending
  size_t varying = 0;
  for (size_t e = 0; e < entries; e += 4) {
    const size_t lanes = std::min<size_t>(4, entries - e);
    const float* tables[4];
    for (size_t l = 0; l < 4; ++l) tables[l] = lut + (e + std::min(l, lanes - 1)) * kFastScanCodewords;
    const EntryStats st = entry_stats(tables);
    for (size_t l = 0; l < lanes; ++l) {
      if (!(st.bad[l] == 0.0f)) return kInfD;
      const float r = st.a1[l] - st.b1[l];
      range = std::max(range, r);
      varying += r > 0.0f;
      const double r3 = static_cast<double>(st.a3[l]) - static_cast<double>(st.b3[l]);
      spread += r3 * r3;
    }
  }
  if (!(range - range == 0.0f)) return kInfD;  // a range overflowed to inf
  if (range == 0.0f) return 0.0;                // constant tables: uint8 is exact
  if (!(spread > 0.0)) return kInfD;
  const double step = static_cast<double>(range) / 255.0;
  return step * std::sqrt(static_cast<double>(varying) / spread);
}

double fastscan_max_rel_error() {
  static const double limit = [] {
    const char* value = std::getenv("ONNXVQ_LUT_GUARD");
    if (value == nullptr || value[0] == '\0') return kFastScanMaxRelError;
    char* end = nullptr;
    const double v = std::strtod(value, &end);
    return end != value ? v : kFastScanMaxRelError;
  }();
  return limit;
}

const KernelTable& active_kernel_table() {
  static const KernelTable& table = select_kernel_table();
  return table;
}

namespace {
// The batch-size-independent path (what vq_matmul() runs below the decode-GEMM threshold).
VQPath choose_small_path(const VQProblem& p) {
  if (fastscan_covers(p))
    return p.exact_lut || exact_lut_requested() ? VQPath::kFastScanExact : VQPath::kFastScan;
  const size_t ncw = p.codewords();
  // One LUT (or bucket set) per row group pays off when the group has at least as many
  // rows as there are codewords; otherwise building it costs more than it saves.
  const bool tables_pay_off = p.row_groups() == 1 || p.group_size >= ncw;
  if (p.axis == 0) {
    // Scalar codebooks shared across the row: adding inputs that share a code and
    // multiplying once per codeword needs 2^bits floats, where a LUT needs K * 2^bits.
    if (bit_lut_covers(p)) return VQPath::kBitLut;
    if (p.d == 1 && p.subspace_groups() == 1 && p.S >= ncw) return VQPath::kRowBuckets;
    return tables_pay_off ? VQPath::kLut : VQPath::kDirect;
  }
  return tables_pay_off ? VQPath::kColumnBuckets : VQPath::kDirect;
}

size_t env_size(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0') return 0;
  return static_cast<size_t>(std::strtoull(value, nullptr, 10));
}

// Measured thresholds: 4096x4096, 1 thread, AVX2 table, forced small path vs forced decode
// path (ONNXVQ_DECODE_GEMM_MIN_ROWS) at M = 2, 4, 8, 16, 32, 64 on 2026-11-23 (ms):
//   lut 8-bit d=4     M=2 21.7 vs 33.0   M=4 44.2 vs 21.9   -> 4
//   lut 4-bit d=4     M=4 14.5 vs 20.9   M=8 30.6 vs 24.5   -> 8 (also used for 1..6 bits)
//   direct 6-bit d=2 (groups of 9 rows)  M=2 890 vs 159     -> 1
//   bit_lut (binary)  M=16 25.9 vs 39.8  M=32 55.5 vs 52.5  -> 32
//   fastscan (uint8 tables, km4 d=1) M=64 39.3 vs 106.6: the decode path never wins
//   fastscan_exact 4-bit d=4  M=64 115.2 vs 238.7: never
// SIZE_MAX: the decode path never runs for that layout.
size_t measured_min_rows(const VQProblem& p, VQPath small) {
  switch (small) {
    case VQPath::kLut: return p.bits >= 7 ? 4 : 8;
    case VQPath::kDirect: return 1;
    case VQPath::kFastScanExact: return kNever;  // M=64: 115 vs 239 (format-2 decode is slow)
    case VQPath::kBitLut: return 32;
    // uint8 tables in registers stay faster than decoding at every measured batch.
    case VQPath::kFastScan: return kNever;
    // Bucket paths sum in an order no dense GEMM reproduces; results would then depend on
    // the batch size (tests/test_kernel.py requires they do not).
    case VQPath::kRowBuckets:
    case VQPath::kColumnBuckets:
    default: return kNever;
  }
}
}  // namespace

size_t decode_gemm_min_rows(const VQProblem& p) {
  const VQPath small = choose_small_path(p);
  const size_t measured = measured_min_rows(p, small);
  if (measured == kNever) return kNever;
  static const size_t forced = env_size("ONNXVQ_DECODE_GEMM_MIN_ROWS");
  return forced ? forced : measured;
}

VQPath choose_path(const VQProblem& p) {
  const VQPath small = choose_small_path(p);
  if (p.M > 0 && p.M >= decode_gemm_min_rows(p)) return VQPath::kDecodeGemm;
  return small;
}

const char* path_name(VQPath path) {
  switch (path) {
    case VQPath::kLut: return "lut";
    case VQPath::kRowBuckets: return "row_buckets";
    case VQPath::kBitLut: return "bit_lut";
    case VQPath::kColumnBuckets: return "column_buckets";
    case VQPath::kDirect: return "direct";
    case VQPath::kFastScan: return "fastscan";
    case VQPath::kFastScanExact: return "fastscan_exact";
    case VQPath::kDecodeGemm: return "decode_gemm";
  }
  return "unknown";
}

void vq_matmul(const VQProblem& problem, const TaskRunner& runner, const KernelTable& kernels) {
  if (problem.M == 0 || problem.N == 0) return;
  const Context context(problem, kernels, runner);
  if (choose_path(problem) == VQPath::kDecodeGemm)
    return run_decode_gemm_path(context, choose_small_path(problem));
  switch (choose_path(problem)) {
    case VQPath::kDecodeGemm: return;
    case VQPath::kLut: return run_lut_path(context);
    case VQPath::kRowBuckets: return run_row_buckets_path(context);
    case VQPath::kBitLut: return run_bit_lut_path(context);
    case VQPath::kColumnBuckets: return run_column_buckets_path(context);
    case VQPath::kDirect:
      return problem.axis == 0 ? run_direct_axis0(context) : run_direct_axis1(context);
    case VQPath::kFastScan: return run_fastscan_path(context, /*exact=*/false);
    case VQPath::kFastScanExact: return run_fastscan_path(context, /*exact=*/true);
  }
}

}  // namespace onnxvq::kernels

// --- C entry points ---------------------------------------------------------------------

extern "C" const char* onnxvq_kernel_name(void) {
  return onnxvq::kernels::active_kernel_table().name;
}

extern "C" void onnxvq_fastscan_row_counts(uint64_t* uint8_rows, uint64_t* exact_rows, int reset) {
  using onnxvq::kernels::g_exact_rows;
  using onnxvq::kernels::g_uint8_rows;
  const uint64_t fast = reset ? g_uint8_rows.exchange(0) : g_uint8_rows.load();
  const uint64_t exact = reset ? g_exact_rows.exchange(0) : g_exact_rows.load();
  if (uint8_rows) *uint8_rows = fast;
  if (exact_rows) *exact_rows = exact;
}

extern "C" const char* onnxvq_kernel_tables(void) {
  return onnxvq::kernels::table_list().names.c_str();
}

extern "C" const char* onnxvq_kernel_path(int64_t in_features, int64_t out_features, int64_t bits,
                                          int64_t subvector_len, int64_t stages, int64_t axis,
                                          int64_t group_size, int64_t codebook_per_subspace) {
  return onnxvq_kernel_path_v(1, in_features, out_features, bits, subvector_len, stages, axis,
                              group_size, codebook_per_subspace);
}

extern "C" const char* onnxvq_kernel_path_v(int64_t format_version, int64_t in_features,
                                            int64_t out_features, int64_t bits,
                                            int64_t subvector_len, int64_t stages, int64_t axis,
                                            int64_t group_size, int64_t codebook_per_subspace) {
  return onnxvq_kernel_path_m(0, format_version, in_features, out_features, bits, subvector_len,
                              stages, axis, group_size, codebook_per_subspace);
}

extern "C" const char* onnxvq_kernel_path_m(int64_t rows, int64_t format_version,
                                            int64_t in_features, int64_t out_features,
                                            int64_t bits, int64_t subvector_len, int64_t stages,
                                            int64_t axis, int64_t group_size,
                                            int64_t codebook_per_subspace) {
  if (rows < 0) return "invalid";
  using onnxvq::kernels::VQProblem;
  const bool v2_ok = format_version == 2 && axis == 0 && bits == 4;
  const bool valid = (format_version == 1 || v2_ok) && in_features >= 1 && out_features >= 1 && bits >= 1 && bits <= 8 &&
                     subvector_len >= 1 && stages >= 1 && (axis == 0 || axis == 1) &&
                     group_size >= 1 && (codebook_per_subspace == 0 || codebook_per_subspace == 1);
  if (!valid) return "invalid";
  VQProblem p;
  p.K = static_cast<size_t>(in_features);
  p.N = static_cast<size_t>(out_features);
  p.bits = static_cast<unsigned>(bits);
  p.d = static_cast<size_t>(subvector_len);
  p.T = static_cast<size_t>(stages);
  p.axis = static_cast<int>(axis);
  p.group_size = static_cast<size_t>(group_size);
  p.per_subspace = codebook_per_subspace != 0;
  p.format_version = static_cast<int>(format_version);
  if (p.group_size > p.rows()) return "invalid";
  p.S = (p.length() + p.d - 1) / p.d;
  p.M = static_cast<size_t>(rows);
  return onnxvq::kernels::path_name(onnxvq::kernels::choose_path(p));
}
