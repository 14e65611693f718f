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
#include <memory>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>
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
const KernelTable& avx512vbmi_kernel_table();
const KernelTable& avx512vnni_kernel_table();
const KernelTable& amx_kernel_table();
bool amx_int8_usable();
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
  if (p.d == 1 && !p.per_subspace) {  // scalar codebooks: a whole (m, t) per call
    const Blocks blocks = Blocks::split(rows * p.T, task_count(double(rows) * p.T * p.S * c.ncw));
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      for (size_t u = blocks.begin(task); u < blocks.end(task); ++u)
        c.k.build_lut_d1(p.x + (m0 + u / p.T) * p.K, p.S, c.codebook(u % p.T, 0, g), c.ncw,
                         luts + u * p.S * c.ncw);
    });
    return;
  }
  const size_t units = rows * p.T * p.S;  // one unit: the 2^bits entries of one (m, t, s)
  const Blocks blocks = Blocks::split(units, task_count(double(units) * c.ncw * p.d));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    // (m, t, s) counted along, not divided out of u: with three divisions per unit this loop's
    // own share of pq4-d4 on 4096x4096 at one row was 3.0% (perf), 1.8% without.
    const size_t first = blocks.begin(task);
    size_t s = first % p.S, t = (first / p.S) % p.T, m = m0 + first / (p.S * p.T);
    for (size_t u = first; u < blocks.end(task); ++u) {
      c.k.build_lut(p.x + m * p.K + s * p.d, c.subspace_len(s), c.codebook(t, s, g), p.d, c.ncw,
                    luts + u * c.ncw);
      if (++s == p.S) {
        s = 0;
        if (++t == p.T) t = 0, ++m;
      }
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
  // The tables are built in parallel too: serial, they held 2 threads to 1.46x at M = 8 on
  // 4096x4096 (each table on its own, so the same bits).
  const Blocks table_blocks = Blocks::split(row_bytes, task_count(double(row_bytes) * 256));
  for (size_t m = 0; m < p.M; ++m) {
    const float* x = p.x + m * p.K;
    run_tasks(c.runner, table_blocks.count, [&](size_t task) {
      for (size_t i = table_blocks.begin(task); i < table_blocks.end(task); ++i) {
        float* t = &table[i * 256];
        t[0] = 0.0f;
        for (unsigned b = 1; b < 256; ++b) {
          const size_t k = 8 * i + static_cast<size_t>(__builtin_ctz(b));
          t[b] = t[b & (b - 1)] + (k < p.K ? x[k] : 0.0f);
        }
      }
    });
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

// --- axis 0, scalar codebooks in a format-1 stream, few rows: decode and dot ---------------
// Each output's codes decode into its row of W_hat (decode_codes: K floats, in L1), which
// every input row then meets in dot_rows (16 lane chains added in a fixed tree). The order
// depends on K alone, so every table, thread count and M gives the same bits. Per output
// the cost is one decode plus M dense dot products: no tables, no scatter, no repacking.

bool decode_dot_covers(const VQProblem& p) {
  return p.format_version == 1 && p.axis == 0 && p.d == 1 && p.T == 1 && !p.per_subspace &&
         p.bits >= 2;
}

void decode_tile_rows(const Context& c, size_t k0, size_t depth, size_t n0, size_t count,
                      size_t i0, size_t i1, float* tile, size_t ld = 0);

void run_decode_dot_path(const Context& c) {
  const VQProblem& p = c.p;
  constexpr size_t kOutputs = 4;  // decoded rows per dot_rows call (independent chains)
  const Blocks blocks = Blocks::split(ceil_div(p.N, kOutputs), task_count(double(p.M + 4) * p.K * p.N / 16));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    std::vector<float> rows(kOutputs * p.K);
    const size_t n_end = std::min(p.N, blocks.end(task) * kOutputs);
    for (size_t n0 = blocks.begin(task) * kOutputs; n0 < n_end; n0 += kOutputs) {
      const size_t count = std::min(kOutputs, p.N - n0);
      decode_tile_rows(c, 0, p.K, n0, count, 0, count, rows.data());
      c.k.dot_rows(p.x, p.K, p.M, rows.data(), p.K, count, p.K, p.y + n0, p.N);
      if (p.bias)
        for (size_t m = 0; m < p.M; ++m)
          for (size_t j = 0; j < count; ++j) p.y[m * p.N + n0 + j] += p.bias[n0 + j];
    }
  });
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
// (fastscan_uint8_error, vq_kernel.h) estimates too coarse. Only those rows pay for the float
// tables. When a chunk has as many rejected rows as the float tables' tile threshold, they
// go to the tile GEMM instead (tile_gemm_rows); when more than 1 in 16 rows of the first
// chunk is rejected (transformer activations), the whole input does (run_tile_gemm_path).

std::atomic<uint64_t> g_uint8_rows{0}, g_exact_rows{0};  // onnxvq_fastscan_row_counts

bool fastscan_covers(const VQProblem& p) {
  return p.format_version == 2 && p.axis == 0 && p.bits == 4 &&
         (p.row_groups() == 1 || p.group_size % kFastScanBlockRows == 0);
}
// Format 3 runs the same driver with 256-entry tables and blocks of 64 outputs.
bool bytescan_panels(const VQProblem& p);
bool bytescan_covers(const VQProblem& p) { return bytescan_panels(p) && p.bits == 8 && p.d >= 2; }

// What run_fastscan_path needs to know of a blocked layout (format 2 or 3).
struct ScanFormat {
  size_t block_rows, entry_bytes, codewords;
  bool (*quantize)(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset);
  void (*scan_u8)(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride,
                  size_t rows, uint32_t* out);
  void (*scan_f32)(const uint8_t* codes, size_t entries, const float* luts, size_t lut_stride,
                   size_t rows, float* out);
  // The guard's estimate from the float tables (format 2) or from the uint8 ones (format 3).
  double (*error)(const KernelTable& k, const float* lut, size_t entries);
  double (*error_quantized)(const KernelTable& k, const uint8_t* q, size_t entries);
  VQPath exact_path;  // the float tables' row in kTileGemmThresholds
};
ScanFormat scan_format(const Context& c) {
  if (c.p.format_version == 3)
    return {kByteScanBlockRows, kByteScanBlockRows, kByteScanCodewords, c.k.quantize_byte_luts,
            c.k.bytescan_u8, c.k.bytescan_f32, nullptr, bytescan_uint8_error, VQPath::kByteScanExact};
  return {kFastScanBlockRows, kFastScanGroupBytes, kFastScanCodewords, c.k.quantize_luts,
          c.k.fastscan_u8, c.k.fastscan_f32, fastscan_uint8_error, nullptr, VQPath::kFastScanExact};
}

void run_tile_gemm_path(const Context& c, const DenseGemm& host);

// fastscan_uint8_error() for scalar codebooks (d = 1, one stage, 16 codewords), from the
// row's inputs and the codebook's order statistics instead of its 16 * K table values: table
// s is x[s] * codebook, so its range is |x[s]| (c1 - c16) and its 3rd-largest minus
// 3rd-smallest |x[s]| (c3 - c14) for the sorted codewords c1 >= ... >= c16. The same
// estimate up to the tables' rounding, in scalar double: the same choice on every ISA.
double scalar_codebook_uint8_error(const float* x, size_t count, const float* codebook) {
  double sorted[kFastScanCodewords];
  for (size_t c = 0; c < kFastScanCodewords; ++c) sorted[c] = codebook[c];
  std::sort(sorted, sorted + kFastScanCodewords);
  const double full = sorted[kFastScanCodewords - 1] - sorted[0];
  const double inner = sorted[kFastScanCodewords - 3] - sorted[2];
  if (!std::isfinite(full)) return std::numeric_limits<double>::infinity();
  double widest = 0.0, spread = 0.0;
  size_t varying = 0;
  for (size_t s = 0; s < count; ++s) {
    const double a = std::abs(static_cast<double>(x[s]));
    if (!std::isfinite(a)) return std::numeric_limits<double>::infinity();
    widest = std::max(widest, a * full);
    varying += a * full > 0.0;
    spread += (a * inner) * (a * inner);
  }
  if (widest == 0.0) return 0.0;
  if (!(spread > 0.0)) return std::numeric_limits<double>::infinity();
  return widest / 255.0 * std::sqrt(static_cast<double>(varying) / spread);
}

size_t tile_threshold(const VQProblem& p, VQPath small, const KernelTable& kernels);

// Rows the uint8 guard rejects need exact arithmetic; when a chunk has as many of them as the
// float tables' tile-GEMM threshold, the tile GEMM computes them (gathered into a dense X)
// instead of the slower float tables. Which rows go there depends only on the rows' own
// tables (and, for the all-or-nothing switch in run_fastscan_path, on the first chunk's),
// never on the thread count.
// Runs `run` on a copy of the problem holding only rows `picked` of X (ascending), and
// copies its outputs back into those rows of Y.
template <typename Run>
void run_on_rows(const Context& c, const std::vector<size_t>& picked, Run&& run) {
  const VQProblem& p = c.p;
  std::vector<float> x(picked.size() * p.K), y(picked.size() * p.N);
  for (size_t i = 0; i < picked.size(); ++i)
    std::copy(p.x + picked[i] * p.K, p.x + (picked[i] + 1) * p.K, &x[i * p.K]);
  VQProblem sub = p;
  sub.M = picked.size();
  sub.x = x.data();
  sub.y = y.data();
  run(Context(sub, c.k, c.runner));
  for (size_t i = 0; i < picked.size(); ++i)
    std::copy(&y[i * p.N], &y[(i + 1) * p.N], p.y + picked[i] * p.N);
}

void tile_gemm_rows(const Context& c, const DenseGemm& host, size_t m0, const char* state,
                    size_t rows) {
  std::vector<size_t> picked;
  for (size_t m = 0; m < rows; ++m)
    if (state[m] == 2) picked.push_back(m0 + m);
  run_on_rows(c, picked, [&](const Context& sub) { run_tile_gemm_path(sub, host); });
}

void run_fastscan_path(const Context& c, bool exact, const DenseGemm& host) {
  const VQProblem& p = c.p;
  const ScanFormat f = scan_format(c);
  const size_t E = p.entries(), num_blocks_total = ceil_div(c.R, f.block_rows);
  const size_t lut_row = E * f.codewords;  // floats (and uint8 entries) per row
  const size_t q_stride = (lut_row + kFastScanTablePad - 1) / kFastScanTablePad * kFastScanTablePad;
  const size_t lut_row_bytes = lut_row * sizeof(float);
  const size_t chunk = std::clamp<size_t>(4 * kLutBudgetBytes / lut_row_bytes, 1, p.M);
  const size_t blocks_per_group =
      c.Gr == 1 ? num_blocks_total : p.group_size / f.block_rows;

  // Uninitialized (a chunk's tables are megabytes, rebuilt on every call); only the uint8
  // tables' padding must be zero.
  const std::unique_ptr<float[]> lut_memory(new float[chunk * lut_row]);
  const std::unique_ptr<uint8_t[]> qlut_memory(new uint8_t[exact ? 1 : chunk * q_stride + kByteScanTableSlack]);
  float* const luts = lut_memory.get();
  uint8_t* const qluts = qlut_memory.get();
  for (size_t m = 0; m < chunk && !exact; ++m)
    std::memset(qluts + m * q_stride + lut_row, 0, q_stride - lut_row);
  std::vector<float> scale(chunk), offset(chunk);
  std::vector<char> quantized(chunk);  // per row: 1 uint8 tables, 0 float tables, 2 tile GEMM
  const size_t tile_rows = exact || c.Gr != 1 ? kNever : tile_threshold(p, f.exact_path, c.k);
  const bool scalar_books = p.d == 1 && p.T == 1 && !p.per_subspace;
  // The switch to the tile GEMM for inputs the guard mostly rejects (see below).
  auto all_on_tile_gemm = [&] {
    g_exact_rows.fetch_add(p.M, std::memory_order_relaxed);
    run_tile_gemm_path(c, host);
  };
  if (scalar_books && p.M >= tile_rows) {
    // Scalar codebooks: the guard needs no tables, so the switch below is decided first.
    const size_t rows = std::min(chunk, p.M), limit_rows = rows / 16;
    size_t rejected = 0;
    for (size_t m = 0; m < rows && rejected <= limit_rows; ++m)
      rejected += !(scalar_codebook_uint8_error(p.x + m * p.K, p.K, c.codebook(0, 0, 0)) <=
                    fastscan_max_rel_error());
    if (rejected > limit_rows) return all_on_tile_gemm();
  }
  for (size_t m0 = 0; m0 < p.M; m0 += chunk) {
    const size_t rows = std::min(chunk, p.M - m0);
    for (size_t g = 0; g < c.Gr; ++g) {
      build_luts(c, m0, rows, g, luts);
      if (!exact) {
        // The guard decides per row from its own tables (the same on every table and
        // thread count); a row it rejects is never quantized and takes the float tables.
        const double limit = fastscan_max_rel_error();
        run_tasks(c.runner, task_count(double(rows) * lut_row * 4), [&](size_t task) {
          const Blocks b = Blocks::split(rows, task_count(double(rows) * lut_row * 4));
          for (size_t m = b.begin(task); m < b.end(task); ++m) {
            const float* row = luts + m * lut_row;
            uint8_t* q = qluts + m * q_stride;
            if (f.error_quantized) {
              quantized[m] = f.quantize(row, E, q, &scale[m], &offset[m]) && f.error_quantized(c.k, q, E) <= limit;
              continue;
            }
            const double error =
                scalar_books ? scalar_codebook_uint8_error(p.x + (m0 + m) * p.K, p.K, c.codebook(0, 0, g))
                             : f.error(c.k, row, E);
            quantized[m] = error <= limit && f.quantize(row, E, q, &scale[m], &offset[m]);
          }
        });
        const size_t fast = static_cast<size_t>(std::count(quantized.begin(), quantized.begin() + rows, 1));
        // Inputs whose first chunk the guard mostly rejects (transformer activations) would
        // run mostly on float tables: the tile GEMM computes all of them instead. MiniLM at
        // batch 1 (36 rows): km4 233 ms routed row by row, 64 ms all on the tile path.
        if (m0 == 0 && g == 0 && p.M >= tile_rows && 16 * (rows - fast) > rows) return all_on_tile_gemm();
        g_uint8_rows.fetch_add(fast, std::memory_order_relaxed);
        g_exact_rows.fetch_add(rows - fast, std::memory_order_relaxed);
        if (rows - fast >= tile_rows) {
          for (size_t m = 0; m < rows; ++m) quantized[m] = quantized[m] ? 1 : 2;
          tile_gemm_rows(c, host, m0, quantized.data(), rows);
        }
      }
      const size_t first_block = g * blocks_per_group;
      const size_t num_blocks = std::min(blocks_per_group, num_blocks_total - first_block);
      const Blocks blocks = Blocks::split(
          num_blocks, task_count(double(num_blocks) * f.block_rows * E * rows / 8));
      run_tasks(c.runner, blocks.count, [&](size_t task) {
        std::vector<uint32_t> sums(exact ? 0 : rows * f.block_rows);
        std::vector<float> fsums(rows * f.block_rows);
        bool all_quantized = !exact;  // no row needs the float tables
        for (size_t m = 0; m < rows && all_quantized; ++m) all_quantized = quantized[m] != 0;
        for (size_t b = first_block + blocks.begin(task); b < first_block + blocks.end(task); ++b) {
          const uint8_t* codes = p.codes + b * E * f.entry_bytes;
          const size_t n0 = b * f.block_rows;
          const size_t count = std::min(f.block_rows, p.N - n0);
          if (!exact) f.scan_u8(codes, E, qluts, q_stride, rows, sums.data());
          if (exact) {
            f.scan_f32(codes, E, luts, lut_row, rows, fsums.data());
          } else if (!all_quantized) {  // only the rows on float tables pay for them
            for (size_t m = 0; m < rows; ++m)
              if (quantized[m] == 0)
                f.scan_f32(codes, E, luts + m * lut_row, lut_row, 1, fsums.data() + m * f.block_rows);
          }
          for (size_t m = 0; m < rows; ++m) {
            if (!exact && quantized[m] == 2) continue;  // computed by the tile GEMM
            float* y = p.y + (m0 + m) * p.N + n0;
            const size_t at = m * f.block_rows;
            if (!exact && quantized[m] == 1) {
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

// --- tile GEMM (many rows) -----------------------------------------------------------------
// Once there are enough rows to amortize decoding W_hat, the fastest way through the codes
// is a dense GEMM. W_hat is decoded one tile at a time (at most kTileDepth inputs x the
// outputs that fit kTileBytes), so only a tile is ever decoded and the codes stay packed:
//   for each tile of outputs [n0, n1), for each depth chunk [k0, k1):
//     P = X[:, k0:k1] . W_hat[k0:k1, n0:n1]        (the GEMM, into a scratch M x tile)
//     S = P (first chunk) or S + P (the others, k0 ascending); then Y[:, n0:n1] = S + bias
// The GEMM is the caller's (ONNX Runtime's Gemm in the op: the dense model's own MLAS
// kernels, threads and ISA dispatch) or the table's dense_gemm. Tiles are decoded in
// parallel by rows of M with decode_row, the VQGather decoder, so every layout (stages, row
// groups, both axes, binary, fast-scan blocks) takes this path.
//
// Why chunks of kTileDepth: MLAS splits K into blocks whose size depends on how many
// columns each thread gets, and adds the blocks' partial sums into C, so one big call's bits
// depend on the thread count. No MLAS block is shorter than 128 (MLAS_SGEMM_STRIDEK), so a
// call over at most 128 inputs is one chain per output whatever the threads; the chunks are
// added here in a fixed order, in a tile small enough to stay in L2 (one add per output per
// chunk; with the sums of all of Y instead, 4096x4096 at M = 512 ran 14% slower than fp32).

constexpr size_t kTileDepth = 128;                // inputs per GEMM call (see above)
constexpr size_t kTileBytes = size_t{256} << 10;    // decoded W_hat per tile
constexpr size_t kTileScratchBytes = size_t{512} << 10;  // partial products + sums of a tile (L2)

// Decodes W_hat[k0 .. k0+depth, n0 .. n0+count): axis 0 as tile[i*depth + j] =
// W_hat[k0 + j][n0 + i] (N x K, the GEMM's w_nk), axis 1 as tile[j*count + i] (K x N).
// Chunks start at subspace boundaries along the axis the subvectors run on (k0 on axis 0,
// n0 on axis 1), so each row of M's piece is whole subspaces (the last may be cut by L).
// Rows [i0, i1) of the tile (serial; decode_tile runs them as tasks), `ld` floats apart
// (0: dense).
void decode_tile_rows(const Context& c, size_t k0, size_t depth, size_t n0, size_t count,
                      size_t i0, size_t i1, float* tile, size_t ld) {
  const VQProblem& p = c.p;
  const size_t stage_stride = c.Gs * c.Gr * c.ncw * p.d;
  const size_t subspace_stride = p.per_subspace ? c.Gr * c.ncw * p.d : 0;
  const bool by_output = p.axis == 0;                  // rows of M are outputs
  const size_t first_row = by_output ? n0 : k0;
  const size_t along = by_output ? k0 : n0;            // offset along a row of M
  const size_t length = by_output ? depth : count;     // floats per row of M in the tile
  const size_t s0 = along / p.d, width = ceil_div(along + length, p.d) - s0;
  // Scalar codebooks (k-means, binary) in a format-1 stream decode straight from the stream.
  const bool scalar_codes = p.format_version == 1 && p.d == 1 && p.T == 1 && !p.per_subspace;
  if (ld == 0) ld = length;
  std::vector<uint8_t> codes(scalar_codes ? 0 : p.T * width);
  for (size_t i = i0; i < i1; ++i) {
    const size_t r = first_row + i;
    if (scalar_codes) {  // the rest of these rows in r's row group, in one call when dense
      const size_t last = ld == length ? std::min(first_row + i1, c.group_end(c.group_of_row(r))) : r + 1;
      c.k.decode_codes(p.codes, static_cast<uint64_t>(r) * p.S + s0, p.S, last - r, length,
                       p.bits, c.codebook(0, 0, c.group_of_row(r)), tile + i * ld);
      i += last - r - 1;
      continue;
    }
    for (size_t t = 0; t < p.T; ++t) c.unpack(t, r, s0, width, codes.data() + t * width);
    c.k.decode_row(codes.data(), p.T, width, p.d, length, c.codebook(0, s0, c.group_of_row(r)),
                   stage_stride, subspace_stride, tile + i * ld);
  }
}

void decode_tile(const Context& c, size_t k0, size_t depth, size_t n0, size_t count,
                 float* tile) {
  const size_t rows = c.p.axis == 0 ? count : depth;  // rows of M in the tile
  const size_t length = c.p.axis == 0 ? depth : count;
  const Blocks blocks = Blocks::split(rows, task_count(double(rows) * length * c.p.T));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    decode_tile_rows(c, k0, depth, n0, count, blocks.begin(task), blocks.end(task), tile);
  });
}

void run_panel_gemm_path(const Context& c);
bool int8_tier(const Context& c);

bool fastscan_panels(const VQProblem& p);
bool bytescan_panels(const VQProblem& p);

// The built-in panel GEMM or the host's: measured side by side (gemm pass-through forced at
// every M, 1 thread, AVX-512 host, 2026-12-02, ms own / ORT Gemm): fast-scan panels decode
// straight from the 16-byte groups and win at every M (4096x4096: 3.3 / 22.4 at M = 8, 12.1 /
// 33.1 at 64, 105 / 140 at 512); every layout wins from 64 rows (km5 19.6 / 21.9, binary 17.6 /
// 20.4, pq4-d4 31.1 / 36.1 at M = 64; 384x1536 0.58 / 0.63 for km5) except pq8-d4 on 4096x4096
// (54.5 / 44.6); below 32 rows the host's wins on format-1 rows (km5 at M = 1: 9.9 / 6.1).
// The int8 tier beats the host's float GEMM at any M.
constexpr size_t kOwnGemmMinRows = 32;
bool use_own_gemm(const Context& c, const DenseGemm& host) {
  const VQProblem& p = c.p;
  return host.run == nullptr || fastscan_panels(p) || bytescan_panels(p) || p.M >= kOwnGemmMinRows ||
         int8_tier(c);
}

void run_tile_gemm_path(const Context& c, const DenseGemm& host) {
  if (use_own_gemm(c, host)) return run_panel_gemm_path(c);
  const VQProblem& p = c.p;
  // Depth chunks: whole subspaces on axis 0 (at least one). Output tiles: whole subspaces on
  // axis 1, within kTileBytes of decoded W_hat, and few enough that the tile's partial
  // products and sums (2 x M x tile floats) stay in L2 across the chunks.
  const size_t depth_unit = p.axis == 0 ? p.d : 1, out_unit = p.axis == 1 ? p.d : 1;
  const size_t depth = std::min(p.K, std::max<size_t>(1, kTileDepth / depth_unit) * depth_unit);
  const size_t fit = std::min(kTileBytes / (depth * sizeof(float)),
                              kTileScratchBytes / (2 * p.M * sizeof(float)));
  const size_t cols = std::min(p.N, std::max<size_t>(1, std::max<size_t>(16, fit) / out_unit) * out_unit);
  const size_t chunks = ceil_div(p.K, depth);
  // X by depth chunk, each dense M x len (the GEMM's A), packed once.
  std::vector<float> xpack(chunks > 1 ? p.M * p.K : 0);
  for (size_t q = 0; q < chunks && chunks > 1; ++q) {
    const size_t k0 = q * depth, len = std::min(depth, p.K - k0);
    for (size_t m = 0; m < p.M; ++m)
      std::copy(p.x + m * p.K + k0, p.x + m * p.K + k0 + len, &xpack[p.M * k0 + m * len]);
  }
  std::vector<float> tile(depth * cols);
  std::vector<float> part(p.M * cols), sum(p.M * cols);
  for (size_t n0 = 0; n0 < p.N; n0 += cols) {
    const size_t count = std::min(cols, p.N - n0);
    for (size_t q = 0; q < chunks; ++q) {
      const size_t k0 = q * depth, len = std::min(depth, p.K - k0);
      const float* x = chunks > 1 ? &xpack[p.M * k0] : p.x;  // X[:, k0 : k0 + len], dense
      decode_tile(c, k0, len, n0, count, tile.data());
      float* out = q == 0 ? sum.data() : part.data();
      host.run(host.context, p.M, len, count, x, tile.data(), p.axis == 0, out);
      if (q > 0)
        for (size_t e = 0; e < p.M * count; ++e) sum[e] += part[e];
    }
    for (size_t m = 0; m < p.M; ++m) {
      const float* src = &sum[m * count];
      float* dst = p.y + m * p.N + n0;
      for (size_t i = 0; i < count; ++i) dst[i] = src[i] + c.bias(n0 + i);
    }
  }
}

// --- panel GEMM (many rows, the built-in GEMM) ---------------------------------------------
// W_hat is decoded a panel at a time (up to kPanelMaxDepth inputs x dense_gemm_cols outputs, K x N,
// in L1) and the table's dense_gemm multiplies all of X with it, accumulating into Y:
//   for each depth chunk [k0, k1) (one parallel pass each), for each panel column [n0, n1):
//     Y[:, n0:n1] (+)= X[:, k0:k1] . W_hat[k0:k1, n0:n1];  after the last chunk Y[:, n0:n1] += bias
// dense_gemm continues each output's one fused multiply-add chain across the panels, so
// every output is one chain over k ascending: its bits depend on neither the panels, the
// thread count nor M. Tasks own panel columns (each panel decoded once).

// Panel depth and width: panels are the table's dense_gemm_cols wide, the columns its
// register block covers (32: a panel of kPanelMaxDepth inputs, 48 KB, stays in L1 while every
// block of input rows meets it; the 8 x 32 block on 64-wide panels used every other L1 set.
// AVX-512's 6 x 64 block reads whole 256-byte panel rows: 5-15% faster from L2);
// X's rows over the depth come packed chunk by chunk (x_block below), so a row block's
// rows do not alias in L1 either (rows 16 KB apart met in the same sets: on 4096x4096 at M =
// 512, 62 vs 104 GFLOP/s for the same panels).
// Depth chunks as even as the subspaces allow, at most 384 deep (K = 384 layers in one chunk;
// 4096x4096 at M = 512 ran 1.6x faster than with the 1024-deep 64-wide panels before).
constexpr size_t kPanelMaxDepth = 384;
// The int8 tier's chunks are whole multiples of 64 inputs where the subvector length allows
// (AMX tiles take 64 depths: a chunk of 376 left every tile row a padded copy, 15% of the
// time); the last chunk's panel and X rows are zero-padded up to it (zero weights add 0).
constexpr size_t kInt8DepthStep = 64;
// Up to kDeepPanelMaxRows rows decoding costs as much as the GEMM, and decoders run best on
// long runs of codes: panels up to kDeepPanelDepth deep there (4096x4096 at M = 64: km5 48
// ms with 1024-deep panels, 68 with 256-deep ones).
constexpr size_t kDeepPanelDepth = 1024, kDeepPanelMaxRows = 128;
constexpr size_t kAxis1PanelCols = 64;  // axis 1 decodes a panel row (cols / d codewords) per call
constexpr size_t kVectorPanelCols = 128;  // the int8 vector route (PanelPlan): 0.83-0.86x the time of 64 at 8 rows, 256 no better
constexpr size_t kPanelXBytes = size_t{1} << 20;  // a row block's X over one chunk (L2)

// Per-thread scratch kept across calls: a panel task's buffers are megabytes, and fresh
// ones (mmap'ed by malloc) cost page faults on every call (8% of km5 on 4096x4096 at M =
// 512). Grows to the largest request; one buffer per thread of the runner.
// (One buffer per element type, so a task may hold a float and an int8 one at once.)
template <typename T = float>
T* thread_scratch(size_t count) {
  thread_local std::unique_ptr<T[]> buffer;
  thread_local size_t size = 0;
  if (size < count) {
    buffer.reset();  // first, so the old and new buffers are never held together
    size = 0;
    buffer.reset(new T[count]);
    size = count;
  }
  return buffer.get();
}

// Format-2 layouts whose blocks of 32 outputs each use one codebook decode straight from
// the 16-byte groups into K x N panels (a group is a panel row for 32 outputs); scalar
// codebooks (km4) a whole depth per call, the others (pq4, rq) a group per call through
// their codebooks transposed once per call.
bool fastscan_panels(const VQProblem& p) {
  return p.format_version == 2 && p.axis == 0 &&
         (p.row_groups() == 1 || p.group_size % kFastScanBlockRows == 0);
}
bool fastscan_d1_panels(const VQProblem& p) {
  return fastscan_panels(p) && p.d == 1 && p.T == 1 && !p.per_subspace;
}

// Other axis-0 layouts decode along rows of M (outputs), N x K: a panel column's rows over
// one depth chunk, then transposed into a K x N panel. (Y^T = W_hat^T
// X^T on the decoded rows, without the transposes, measured no better: 0.43 vs 0.37 ms on
// 384x1536 at M = 36, 36 vs 28 ms for pq8-d4 on 4096x4096 at M = 64; dense_gemm's columns
// are then M, often not 32-wide.)
bool bytescan_panels(const VQProblem& p) {
  return p.format_version == 3 && p.axis == 0 &&
         (p.row_groups() == 1 || p.group_size % kByteScanBlockRows == 0);
}
bool decodes_whole_rows(const VQProblem& p) { return p.axis == 0 && !fastscan_panels(p); }

// Format-3 panel columns (32 outputs, half a block of 64) decode by rows of M (N x depth,
// ld apart; the caller transposes): each (stage, subspace) entry holds the column's codes as
// consecutive bytes, and a row's codewords are whole copies (decoded into the panel directly,
// d strided stores per code ran at half the speed). Copies values, one float add per
// further stage.
void decode_bytescan_rows(const Context& c, size_t k0, size_t depth, size_t n0, size_t count, float* rows,
                          size_t ld) {
  const VQProblem& p = c.p;
  const size_t block = n0 / kByteScanBlockRows, lane = n0 % kByteScanBlockRows, g = c.group_of_row(n0);
  const size_t d = p.d, s0 = k0 / d, s1 = ceil_div(std::min(p.K, k0 + depth), d);  // k0: a subspace boundary
  const size_t book_stride = p.per_subspace ? c.Gr * c.ncw * d : 0;  // between subspaces' codebooks
  const size_t whole = std::min(s1, p.K / d);                           // subspaces of d values
  for (size_t t = 0; t < p.T; ++t)
    for (size_t i = 0; i < count; ++i) {
      // Locals only in the loop: stores through `out` could alias the problem's fields.
      const uint8_t* codes = p.codes + (block * p.T + t) * p.S * kByteScanBlockRows + lane + i;
      const float* book = c.codebook(t, s0, g);
      float* out = rows + i * ld + (s0 * d - k0);
      size_t s = s0;
      if (t == 0 && d == 4)  // constant sizes: inlined copies
        for (; s < whole; ++s, book += book_stride, out += 4)
          std::memcpy(out, book + codes[s * kByteScanBlockRows] * 4, 4 * sizeof(float));
      for (; s < s1; ++s, book += book_stride, out += d) {
        const float* word = book + codes[s * kByteScanBlockRows] * d;
        const size_t len = c.subspace_len(s);
        for (size_t j = 0; j < len; ++j) out[j] = t == 0 ? word[j] : out[j] + word[j];
      }
    }
}


// panel[j*count + i] = W_hat[k0 + j][n0 + i] for j < depth, i < count (K x N layouts);
// `books_t`: every codebook transposed (fastscan_panels() other than km4).
void decode_panel(const Context& c, size_t k0, size_t depth, size_t n0, size_t count,
                  const float* books_t, float* panel) {
  const VQProblem& p = c.p;
  if (p.axis == 1) return decode_tile_rows(c, k0, depth, n0, count, 0, depth, panel);
  const bool d1 = fastscan_d1_panels(p);
  for (size_t b = 0; b * kFastScanBlockRows < count; ++b) {
    const size_t first = n0 + b * kFastScanBlockRows;  // n0 is a block boundary
    const size_t block = first / kFastScanBlockRows, g = c.group_of_row(first);
    const size_t cols = std::min(kFastScanBlockRows, count - b * kFastScanBlockRows);
    float* out = panel + b * kFastScanBlockRows;
    if (d1) {
      c.k.decode_fastscan_d1(p.codes + (block * p.S + k0) * kFastScanGroupBytes, depth, cols,
                             c.codebook(0, 0, g), out, count);
      continue;
    }
    for (size_t t = 0; t < p.T; ++t)
      for (size_t s = k0 / p.d; s * p.d < k0 + depth; ++s) {  // k0 is a subspace boundary
        const uint8_t* group = p.codes + ((block * p.T + t) * p.S + s) * kFastScanGroupBytes;
        const float* table = books_t + (c.codebook(t, s, g) - p.codebooks);
        c.k.decode_fastscan_group(group, table, c.subspace_len(s), cols, out + (s * p.d - k0) * count,
                                  count, t > 0);
      }
  }
}

// Every codebook of a format-2 layout transposed: books_t[base + j*16 + c] = codeword c's
// value j, base the codebook's offset in p.codebooks.
std::vector<float> transposed_books(const Context& c) {
  const VQProblem& p = c.p;
  const size_t books = p.T * c.Gs * c.Gr, size = c.ncw * p.d;
  std::vector<float> out(books * size);
  for (size_t b = 0; b < books; ++b)
    for (size_t code = 0; code < c.ncw; ++code)
      for (size_t j = 0; j < p.d; ++j) out[b * size + j * c.ncw + code] = p.codebooks[b * size + code * p.d + j];
  return out;
}

// How a layout's panels are cut and decoded, shared by both tiers: depth chunks of at most
// `max_depth` inputs, as even as the subspaces allow, and panel columns `cols` wide.
struct PanelPlan {
  size_t depth, cols, columns, chunks;
  bool whole_rows;
  std::vector<float> books_t;

  // float_decode: false when no float panel is decoded (the int8 vector route): no transposed books.
  // The int8 vector route (no float decode) takes wider panels: its decoders load each
  // subspace's codebook once per panel (kVectorPanelCols).
  PanelPlan(const Context& c, size_t max_depth, bool float_decode = true, size_t depth_step = 1) {
    const VQProblem& p = c.p;
    // Panels start at subspace boundaries along the axis the subvectors run on, and at
    // fast-scan block boundaries; depth_step, when a multiple of it fits max_depth, too.
    size_t depth_unit = p.axis == 0 ? p.d : 1;
    if (std::lcm(depth_unit, depth_step) <= max_depth) depth_unit = std::lcm(depth_unit, depth_step);
    const size_t col_unit = p.axis == 1 ? p.d : p.format_version == 2 ? kFastScanBlockRows : p.format_version == 3 ? kByteScanBlockRows / 2 : 1;
    depth = std::min(p.K, ceil_div(ceil_div(p.K, ceil_div(p.K, max_depth)), depth_unit) * depth_unit);
    chunks = ceil_div(p.K, depth);
    whole_rows = decodes_whole_rows(p);
    const size_t wanted_cols = !float_decode ? kVectorPanelCols : std::max(c.k.dense_gemm_cols, p.axis == 1 ? kAxis1PanelCols : 0);
    cols = std::min(p.N, std::max<size_t>(1, wanted_cols / col_unit) * col_unit);
    columns = ceil_div(p.N, cols);
    if (float_decode && fastscan_panels(p) && !fastscan_d1_panels(p)) books_t = transposed_books(c);
  }
  /// Floats of per-task scratch decode() needs.
  size_t scratch_floats() const { return (whole_rows ? cols * depth : 0) + depth * cols; }
  /// W_hat[k0 .. k0+len, n0 .. n0+count) as a K x N panel (count wide) at the returned pointer,
  /// inside `scratch` (uninitialized: every element is written before it is read). Whole-row
  /// layouts decode a panel column's rows (N x len, dense, so the rows of one codebook group
  /// decode in one call) and transpose them.
  float* decode(const Context& c, size_t k0, size_t len, size_t n0, size_t count, float* scratch) const {
    float* const panel = scratch + (whole_rows ? cols * depth : 0);
    if (!whole_rows) {
      decode_panel(c, k0, len, n0, count, books_t.data(), panel);
      return panel;
    }
    if (bytescan_panels(c.p))
      decode_bytescan_rows(c, k0, len, n0, count, scratch, len);
    else
      decode_tile_rows(c, k0, len, n0, count, 0, count, scratch, len);
    c.k.transpose(scratch, count, len, len, panel, count);
    return panel;
  }
};

void add_bias_columns(const Context& c, size_t rows, size_t n0, size_t count, float* y) {
  if (!c.p.bias) return;
  // Distinct restrict pointers per row, so the compiler vectorizes the adds (with y and bias
  // possibly aliased it did not: 8% of MiniLM km4 at batch 32 on AVX2).
  const float* __restrict bias = c.p.bias + n0;
  for (size_t m = 0; m < rows; ++m) {
    float* __restrict out = y + m * c.p.N + n0;
    for (size_t i = 0; i < count; ++i) out[i] += bias[i];
  }
}

void run_float_panels(const Context& c) {
  const VQProblem& p = c.p;
  const PanelPlan plan(c, p.M > kDeepPanelMaxRows ? kPanelMaxDepth : kDeepPanelDepth);
  const size_t depth = plan.depth;
  const bool packed = depth < p.K;
  // Depth chunks outermost, one parallel pass over the panel columns each: the codebooks a
  // chunk uses (pq8-d4: 256 KB for 256 inputs) and its rows of X stay in L2 while every
  // column decodes and meets them (columns outermost re-read pq8-d4's 4 MB of codebooks
  // once per task: 4096x4096 at M = 36 took 91 ms).
  // Many rows go in blocks whose rows of X over a chunk fit kPanelXBytes (L2): every panel
  // column reads them again (1536x384 at M = 1152: 1.8 MB a chunk, from L3 otherwise). Each
  // block decodes the panels again: a K x N decode per ~340 rows.
  const size_t block_rows = std::max<size_t>(8, kPanelXBytes / (depth * sizeof(float)) / 8 * 8);
  const size_t row_blocks = ceil_div(p.M, block_rows), rows_per_block = ceil_div(p.M, row_blocks);
  // A row block's X over a chunk, dense (rows len apart), packed just before its pass: it is
  // then in L2 when the GEMM reads it (packing all of X first wrote and re-read it from
  // memory: 1536x384 at M = 1152, 19.4 vs 16.7 ms).
  std::vector<float> x_block(packed ? rows_per_block * depth : 0);
  const Blocks blocks = Blocks::split(
      plan.columns, task_count(double(rows_per_block + 4) * p.K * p.N / 16 / plan.chunks));
  for (size_t m0 = 0; m0 < p.M; m0 += rows_per_block)
  for (size_t k0 = 0; k0 < p.K; k0 += depth) {
    const size_t len = std::min(depth, p.K - k0), rows = std::min(rows_per_block, p.M - m0);
    const size_t ldx = packed ? len : p.K;
    if (packed)
      for (size_t m = 0; m < rows; ++m) std::copy_n(p.x + (m0 + m) * p.K + k0, len, x_block.data() + m * len);
    const float* x = packed ? x_block.data() : p.x + m0 * p.K;
    float* const y = p.y + m0 * p.N;
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      float* const scratch = thread_scratch(plan.scratch_floats());
      for (size_t q = blocks.begin(task); q < blocks.end(task); ++q) {
        const size_t n0 = q * plan.cols, count = std::min(plan.cols, p.N - n0);
        const float* panel = plan.decode(c, k0, len, n0, count, scratch);
        c.k.dense_gemm(x, ldx, rows, len, panel, count, y + n0, p.N, k0 > 0);
        if (k0 + len == p.K) add_bias_columns(c, rows, n0, count, y);
      }
    });
  }
}

// --- the int8 tier (kernels with int8_panels; kInt8MaxRelError in vq_kernel.h) -------------
// The float tier's panels, each quantized per column (quantize_panel_s8) after it is decoded,
// against X quantized once per row and depth chunk: int8 dot products (exact int32 sums),
// one float scale-and-add per output and chunk. Depth chunks are kPanelMaxDepth deep at
// every M (a 24 KB int8 panel stays in L1), so a row's result depends on its own inputs and
// the layout only: not on M, the other rows or the thread count.

bool int8_tier(const Context& c) { return int8_panels_enabled(c.k); }
double int8_max_rel_error() {
  static const double limit = [] {
    const char* value = std::getenv("ONNXVQ_INT8_GUARD");
    return value && *value ? std::strtod(value, nullptr) : kInt8MaxRelError;
  }();
  return limit;
}

// Outlier activations (a few input channels far larger than the rest, as in transformers'
// LayerNorm and GELU outputs) set a row's int8 step, and the guard rejects the row (MiniLM:
// most rows at 2%). Such a row gets a second int8 row in its chunk: the residual
// x - scale * (q - 128), quantized in its own scale (at most half the first step, so 254x
// finer), which meets the same int8 panel; its products are added after the first row's.
// Both rows are int8, so the row still runs at int8 speed (an outlier split with exact float
// corrections and a float fallback per row, before this, made MiniLM km5 slower than the
// float tier). Rows whose two levels still exceed the limit (only with ONNXVQ_INT8_GUARD far
// below 2%: the second level's estimate is at most the first's / 254) and rows that are not
// finite run on the float panels.

// X over every depth chunk, quantized: chunk q's row m at q_rows[(q*M + m)*ldq] (ldq the chunk
// depth rounded up to 4), its scale at scale[q*M + m]; chunk q's second rows are i in
// [first_second[q], first_second[q + 1]), at second_q[i*ldq] with second_scale[i], for row
// second_row[i] (ascending within a chunk); float_rows: the rows that run on the float panels
// (ascending; their second rows, if any, are overwritten with the rest of them).
// On tables with wide_x the rows are 16-bit (wide_rows, the same layout as q_rows; no second
// rows): one level of 32767 steps is finer than two of 127 and costs vpmaddwd nothing more.
struct QuantizedRows {
  size_t ldq = 0;
  bool wide = false;
  std::vector<int16_t> wide_rows;
  std::vector<uint8_t> q_rows;
  std::vector<float> scale;
  std::vector<size_t> first_second;
  std::vector<uint8_t> second_q;
  std::vector<float> second_scale;
  std::vector<size_t> second_row;
  std::vector<size_t> float_rows;
  size_t seconds(size_t q) const { return first_second[q + 1] - first_second[q]; }
  size_t max_seconds() const {
    size_t most = 0;
    for (size_t q = 0; q + 1 < first_second.size(); ++q) most = std::max(most, seconds(q));
    return most;
  }
};

// est^2 = len / (12 energy) <= limit^2 (a zero row is exact; a NaN scale is not finite).
bool int8_row_ok(float scale, uint32_t energy, size_t len) {
  return scale == 0.0f || double(len) <= 12.0 * int8_max_rel_error() * int8_max_rel_error() * energy;
}

// A chunk's row x (len floats) that failed the guard with (q, scale, energy): its residual
// quantized into q2 / scale2. False when the two levels still exceed the limit:
// est^2 = len scale2^2 / (12 scale^2 energy) (the second step's noise against the row's
// energy in the first step's units).
bool quantize_residual(const Context& c, const float* x, size_t len, const uint8_t* q, float scale,
                       uint32_t energy, float* residual, uint8_t* q2, size_t ldq, float* scale2) {
  for (size_t j = 0; j < len; ++j) residual[j] = x[j] - scale * static_cast<float>(int{q[j]} - 128);
  uint32_t residual_energy = 0;
  c.k.quantize_rows_u8(residual, len, 1, len, q2, ldq, scale2, &residual_energy);
  const double limit = int8_max_rel_error(), ratio = double(*scale2) / double(scale);
  return *scale2 >= 0.0f && double(len) * ratio * ratio <= 12.0 * limit * limit * energy;
}

// The int32 sums of 16-bit X stay exact up to this depth: 516 * 127 * 32767 < 2^31.
constexpr size_t kWideMaxDepth = 516;
static_assert(kPanelMaxDepth <= kWideMaxDepth, "the int8 tier's chunks must fit 16-bit X");

// est^2 = len / (12 energy) <= limit^2 for 16-bit levels (a zero row is exact; NaN: not finite).
bool wide_row_ok(float scale, uint64_t energy, size_t len) {
  return scale == 0.0f || (scale == scale && double(len) <= 12.0 * int8_max_rel_error() * int8_max_rel_error() * double(energy));
}

QuantizedRows quantize_rows(const Context& c, const PanelPlan& plan) {
  const VQProblem& p = c.p;
  QuantizedRows out;
  out.ldq = ceil_div(plan.depth, 4) * 4;
  out.wide = c.k.wide_x && out.ldq <= kWideMaxDepth;
  (out.wide ? out.wide_rows.resize(plan.chunks * p.M * out.ldq) : out.q_rows.resize(plan.chunks * p.M * out.ldq));
  out.scale.resize(plan.chunks * p.M);
  std::vector<char> rejected(p.M), failed(plan.chunks * p.M);  // failed: (chunk, row) needs a second row
  std::vector<uint32_t> energy(plan.chunks * p.M);
  std::vector<uint64_t> wide_energy(out.wide ? plan.chunks * p.M : 0);
  const Blocks blocks = Blocks::split(p.M, task_count(double(p.M) * p.K * 2));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    const size_t m0 = blocks.begin(task), rows = blocks.end(task) - m0;
    for (size_t q = 0; q < plan.chunks; ++q) {
      const size_t k0 = q * plan.depth, len = std::min(plan.depth, p.K - k0), i0 = q * p.M + m0;
      if (out.wide) {  // one level: a row the guard still rejects (or not finite) takes the float panels
        c.k.quantize_rows_s16(p.x + m0 * p.K + k0, p.K, rows, len, &out.wide_rows[i0 * out.ldq], out.ldq,
                              &out.scale[i0], &wide_energy[i0]);
        for (size_t m = 0; m < rows; ++m)
          if (!wide_row_ok(out.scale[i0 + m], wide_energy[i0 + m], len)) rejected[m0 + m] = 1;
        continue;
      }
      c.k.quantize_rows_u8(p.x + m0 * p.K + k0, p.K, rows, len, &out.q_rows[i0 * out.ldq], out.ldq, &out.scale[i0],
                           &energy[i0]);
      for (size_t m = 0; m < rows; ++m) {
        if (rejected[m0 + m] || int8_row_ok(out.scale[i0 + m], energy[i0 + m], len)) continue;
        if (out.scale[i0 + m] > 0.0f)
          failed[i0 + m] = 1;
        else
          rejected[m0 + m] = 1;  // not finite
      }
    }
  });
  // Second rows only where the guard asked for them (most inputs need none): slots in row order.
  std::vector<size_t> slot(plan.chunks * p.M);
  out.first_second.assign(plan.chunks + 1, 0);
  for (size_t q = 0; q < plan.chunks; ++q) {
    size_t next = out.first_second[q];
    for (size_t m = 0; m < p.M; ++m)
      if (failed[q * p.M + m]) {
        slot[q * p.M + m] = next++;
        out.second_row.push_back(m);
      }
    out.first_second[q + 1] = next;
  }
  const size_t total = out.first_second[plan.chunks];
  if (total > 0) {
    out.second_q.resize(total * out.ldq);
    out.second_scale.resize(total);
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      std::vector<float> residual(plan.depth);
      for (size_t q = 0; q < plan.chunks; ++q) {
        const size_t k0 = q * plan.depth, len = std::min(plan.depth, p.K - k0);
        for (size_t m = blocks.begin(task); m < blocks.end(task); ++m) {
          const size_t i = q * p.M + m, to = slot[i];
          if (failed[i] && !quantize_residual(c, p.x + m * p.K + k0, len, &out.q_rows[i * out.ldq], out.scale[i],
                                              energy[i], residual.data(), &out.second_q[to * out.ldq], out.ldq,
                                              &out.second_scale[to]))
            rejected[m] = 1;
        }
      }
    });
  }
  for (size_t m = 0; m < p.M; ++m)
    if (rejected[m]) out.float_rows.push_back(m);
  return out;
}

// Scalar codebooks (k-means, binary: d = 1, one stage) skip the float panel: each row group's
// codewords are quantized once per call (scale max |c| / 127, quantize_rows_u8's rounding) and
// the codes decode straight to int8 bytes: from fast-scan blocks in int8_gemm's layout
// (decode_fastscan_d1_s8), from a format-1 stream as rows of M (decode_codes_s8) transposed
// 4 bytes at a time. 3-4x fewer instructions than decoding floats and quantizing them (km4 on
// 384x1536 at 8 rows: 0.046 vs 0.152 ms). Layouts whose codebooks are not all finite keep the
// float route (a NaN codeword then spoils only the columns that use it), and so do codebooks
// one step of which is coarse against their typical codeword: a rare outlier codeword (7.9
// against an RMS of 0.045 in MiniLM's FFN output) would set the step of every weight, 39% error
// where per-column steps keep the rest fine. The estimate, the rounding noise step / sqrt(12)
// against the median |codeword|, must stay within kInt8BookMaxRelError. A format-1 stream with
// such a codebook still decodes to bytes, through a table per column (kStreamColumnBytes).
constexpr double kInt8BookMaxRelError = 0.01;

enum class BookFit { kFine, kCoarse, kNotFinite };
BookFit int8_book_fit(const float* book, size_t count) {  // count <= 256 (8-bit codes)
  float magnitude[256];
  float largest = 0.0f;
  for (size_t i = 0; i < count; ++i) {
    magnitude[i] = std::abs(book[i]);
    if (!(magnitude[i] <= std::numeric_limits<float>::max())) return BookFit::kNotFinite;
    largest = std::max(largest, magnitude[i]);
  }
  if (count <= 2) return BookFit::kFine;  // the median is the largest (binary: one codebook per output, checked per call)
  std::nth_element(magnitude, magnitude + count / 2, magnitude + count);
  const double median = magnitude[count / 2], step = largest / 127.0f;  // quantize_rows_u8's scale
  return step <= std::sqrt(12.0) * kInt8BookMaxRelError * median ? BookFit::kFine : BookFit::kCoarse;
}

// Vector codebooks of d = 4 (pq 4- and 8-bit, one stage, one row group, K a multiple of 4)
// quantize per codebook (per subspace, or one shared), each codeword becoming one int32 word
// of int8_gemm's panel layout: the decode is one word lookup per code (decode_*_words_s8), no
// float panel, transpose or per-column quantization. A subspace's scale varies along the
// depth, where int8_gemm has none, so it is folded into X (x[k] times the scale of k's
// subspace) before X is quantized; the columns' scales are 1.
// The check: rounding noise step / sqrt(12) within kInt8VectorBookMaxRelError of the
// codebook's spread, taken robustly as median |value| / 0.6745 (a normal's sigma). An RMS
// would let one outlier hide itself (a codeword of 400 among 63 normal values is only 8 RMS),
// and the scalar check's median alone refuses normal 8-bit codebooks (1024 values reach 4.5
// sigma). At 1% one normal 8-bit codebook in a hundred failed (each failing one costs a second
// digit, below); 2% (the largest value within 8.8 sigma) still catches an outlier codeword and
// is small next to the codes' own error (pq8-d4: 10-20% of W).
constexpr double kInt8VectorBookMaxRelError = 0.02;
// The largest step the check allows a codebook (count <= 1024 values: 8-bit codes, d = 4);
// negative when a value is not finite.
double vector_book_max_step(const float* book, size_t count) {
  float magnitude[1024];
  for (size_t i = 0; i < count; ++i) {
    magnitude[i] = std::abs(book[i]);
    if (!(magnitude[i] <= std::numeric_limits<float>::max())) return -1.0;
  }
  std::nth_element(magnitude, magnitude + count / 2, magnitude + count);
  return std::sqrt(12.0) * kInt8VectorBookMaxRelError * (magnitude[count / 2] / 0.6745);
}
// A codebook that fails the check (an outlier codeword, a long tail: MiniLM's FFN outputs, up
// to 280 sigma) still takes the route, as two int8 digits: its step is the largest the check
// allows, its levels clamp at +-127, and what the clamp cut off (the residual) is quantized on
// its own scale. The second digits run as a second vector route over those subspaces only
// (run_vector_overflow), added to Y: every weight's error stays within the check's step, or
// the residual's, where the float panels this replaces took 1.5-1.8x the time of the whole
// model (MiniLM pq 4-bit and rq 2x4 at batch 1).
// Two 4-bit stages (rq 2x4, format 2) take it too, as one 8-bit codebook per subspace group:
// codeword c0 + 16 c1 = stage 0's c0 + stage 1's c1 (decode_row's float add), looked up by the
// byte nibble(stage 0) | nibble(stage 1) << 4 (decode_fastscan2_words_s8).
bool vector_bytes_cover(const VQProblem& p) {
  const bool stages = p.T == 1 || (p.T == 2 && p.format_version == 2);
  return (fastscan_panels(p) || bytescan_panels(p)) && p.d == 4 && stages && p.row_groups() == 1 && p.K % 4 == 0;
}
// The codebooks the vector route quantizes, (Gs, codewords, 4): p's own for one stage, the
// combined ones for two (256 codewords).
std::vector<float> vector_codebooks(const VQProblem& p, size_t* codewords) {
  const size_t ncw = p.codewords(), Gs = p.subspace_groups(), book = ncw * 4;
  if (p.T == 1) {
    *codewords = ncw;
    return std::vector<float>(p.codebooks, p.codebooks + Gs * book);
  }
  *codewords = ncw * ncw;
  std::vector<float> out(Gs * ncw * book);
  for (size_t g = 0; g < Gs; ++g)
    for (size_t c1 = 0; c1 < ncw; ++c1)
      for (size_t c0 = 0; c0 < ncw; ++c0)
        for (size_t j = 0; j < 4; ++j)
          out[((g * ncw + c1) * ncw + c0) * 4 + j] =
              p.codebooks[(g * ncw + c0) * 4 + j] + p.codebooks[((Gs + g) * ncw + c1) * 4 + j];
  return out;
}

// kStreamColumnBytes: a format-1 stream whose scalar codebook is coarse as int8 (an outlier
// codeword) gets each panel column's own int8 table, scaled to the largest codeword that
// column uses in the depth chunk: quantize_panel_s8's scale and levels for the decoded panel,
// so the float route's bits, without decoding floats (MiniLM km5's FFN outputs: 27% of the
// model's time at batch 1 went to the float decode, its transpose and quantize_panel_s8).
// Which codewords a column uses comes from decoding the codes once through a table of their
// magnitudes' ranks; the second decode takes the column's table.
enum class Int8Route { kFloatPanels, kFastScanBytes, kStreamBytes, kStreamColumnBytes, kVectorBytes };
// The route p's codebooks take on the int8 tier (a few float operations per codeword); a
// shape-only problem (no codebooks: onnxvq_path_name) is taken to have typical ones.
Int8Route int8_route(const VQProblem& p) {
  if (vector_bytes_cover(p)) {
    if (p.codebooks == nullptr) return Int8Route::kVectorBytes;
    size_t codewords = 0;
    const std::vector<float> books = vector_codebooks(p, &codewords);
    for (size_t g = 0; g < p.subspace_groups(); ++g)  // coarse ones take a second digit
      if (vector_book_max_step(books.data() + g * codewords * 4, codewords * 4) < 0.0) return Int8Route::kFloatPanels;
    return Int8Route::kVectorBytes;
  }
  const bool stream = p.format_version == 1 && p.axis == 0 && p.d == 1 && p.T == 1 && !p.per_subspace;
  if (!fastscan_d1_panels(p) && !stream) return Int8Route::kFloatPanels;
  bool coarse = false;
  for (size_t g = 0; g < p.row_groups() && p.codebooks != nullptr; ++g) {  // layout (Gr, 2^bits): d = 1, one stage, one subspace group
    const BookFit fit = int8_book_fit(p.codebooks + g * p.codewords(), p.codewords());
    if (fit == BookFit::kNotFinite) return Int8Route::kFloatPanels;  // a NaN codeword spoils only its columns there
    coarse |= fit == BookFit::kCoarse;
  }
  if (!stream) return coarse ? Int8Route::kFloatPanels : Int8Route::kFastScanBytes;
  return coarse ? Int8Route::kStreamColumnBytes : Int8Route::kStreamBytes;
}
// The routes whose speed kTileGemmThresholds' byte-route rows measured.
bool measured_byte_route(Int8Route route) {
  return route == Int8Route::kFastScanBytes || route == Int8Route::kStreamBytes || route == Int8Route::kVectorBytes;
}
// The route on a table: a byte route only where the table's decoders for it are SIMD.
Int8Route route_on(const KernelTable& k, Int8Route route) {
  const bool simd = route == Int8Route::kFastScanBytes ? k.int8_fastscan_d1_decoder
                    : route == Int8Route::kStreamBytes || route == Int8Route::kStreamColumnBytes ? k.int8_stream_decoders
                    : route == Int8Route::kVectorBytes ? k.int8_word_decoders : true;
  return simd ? route : Int8Route::kFloatPanels;
}
struct Int8Books {
  Int8Route route = Int8Route::kFloatPanels;
  std::vector<int8_t> q;         // scalar routes: group g's codewords at q[g * 2^bits]
  std::vector<int32_t> words;    // kVectorBytes: codebook g's codeword c at words[g * codewords + c]
  std::vector<int8_t> ranks;     // kStreamColumnBytes: group g's codeword c's rank by |value| at ranks[g * 2^bits + c] (as a byte)
  std::vector<float> by_rank;    // kStreamColumnBytes: the |value| of rank r at by_rank[g * 2^bits + r]
  std::vector<uint8_t> planes;   // kVectorBytes, 256 codewords: byte b of that word at planes[(g * 4 + b) * 256 + c]
  std::vector<float> scale;      // per group (kVectorBytes: per codebook, folded into X)
  std::vector<uint32_t> overflow_subspaces;  // kVectorBytes: the subspaces of coarse codebooks, ascending
  std::unique_ptr<Int8Books> overflow;       // their second digits (a codebook per coarse one, or the shared one)
};
}  // namespace

// What prepare_codebooks() keeps (vq_kernel.h).
struct PreparedCodebooks {
  Int8Books books;
};

namespace {
// Codebook g's int8 levels (ncw codewords of 4) as its words, and as byte planes for 256.
void store_vector_levels(const int8_t* levels, size_t g, size_t ncw, Int8Books* books) {
  std::memcpy(&books->words[g * ncw], levels, ncw * 4);
  if (ncw != kByteScanCodewords) return;  // the byte-plane decoders' layout
  for (size_t code = 0; code < ncw; ++code)
    for (size_t b = 0; b < 4; ++b) books->planes[(g * 4 + b) * ncw + code] = static_cast<uint8_t>(levels[code * 4 + b]);
}
// `count` codebooks of ncw codewords of 4 floats as words: one quantize_rows_u8 row each.
void vector_word_books(const KernelTable& k, const float* floats, size_t count, size_t ncw, Int8Books* books) {
  const size_t values = ncw * 4;
  std::vector<uint8_t> levels(count * values);
  std::vector<uint32_t> energy(count);
  books->scale.resize(count);
  k.quantize_rows_u8(floats, values, count, values, levels.data(), values, books->scale.data(), energy.data());
  for (uint8_t& level : levels) level = static_cast<uint8_t>(level - 128);  // the int8 value's byte
  books->words.resize(count * ncw);
  if (ncw == kByteScanCodewords) books->planes.resize(levels.size());
  for (size_t g = 0; g < count; ++g)
    store_vector_levels(reinterpret_cast<const int8_t*>(&levels[g * values]), g, ncw, books);
}

Int8Books int8_books(const Context& c) {
  Int8Books books;
  books.route = route_on(c.k, int8_route(c.p));
  if (books.route == Int8Route::kFloatPanels) return books;
  if (books.route == Int8Route::kVectorBytes) {
    size_t ncw = 0;
    const std::vector<float> floats = vector_codebooks(c.p, &ncw);
    const size_t values = ncw * 4;
    vector_word_books(c.k, floats.data(), c.Gs, ncw, &books);
    std::vector<float> residuals;  // the coarse codebooks' second digits, before quantization
    for (size_t g = 0; g < c.Gs; ++g) {
      const float* book = floats.data() + g * values;
      const float step = static_cast<float>(vector_book_max_step(book, values));
      if (books.scale[g] <= step) continue;  // the check passes: one digit
      std::vector<int8_t> levels(values);
      for (size_t i = 0; i < values; ++i) {
        const float level = step > 0.0f ? std::clamp(std::nearbyint(book[i] / step), -127.0f, 127.0f) : 0.0f;
        levels[i] = static_cast<int8_t>(level);
        residuals.push_back(book[i] - step * level);
      }
      store_vector_levels(levels.data(), g, ncw, &books);
      books.scale[g] = step;
      if (c.p.per_subspace) books.overflow_subspaces.push_back(static_cast<uint32_t>(g));
      else for (size_t s = 0; s < c.p.S; ++s) books.overflow_subspaces.push_back(static_cast<uint32_t>(s));
    }
    if (!residuals.empty()) {
      books.overflow = std::make_unique<Int8Books>();
      books.overflow->route = Int8Route::kVectorBytes;
      vector_word_books(c.k, residuals.data(), residuals.size() / values, ncw, books.overflow.get());
    }
    return books;
  }
  if (books.route == Int8Route::kStreamColumnBytes) {  // tables per column come per panel
    books.ranks.resize(c.Gr * c.ncw);
    books.by_rank.resize(c.Gr * c.ncw);
    std::vector<uint32_t> order(c.ncw);
    for (size_t g = 0; g < c.Gr; ++g) {
      const float* book = c.codebook(0, 0, g);
      for (size_t i = 0; i < c.ncw; ++i) order[i] = static_cast<uint32_t>(i);
      std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return std::abs(book[a]) < std::abs(book[b]); });
      for (size_t r = 0; r < c.ncw; ++r) {
        books.ranks[g * c.ncw + order[r]] = static_cast<int8_t>(static_cast<uint8_t>(r));
        books.by_rank[g * c.ncw + r] = std::abs(book[order[r]]);
      }
    }
    return books;
  }
  books.q.resize(c.Gr * c.ncw);
  books.scale.resize(c.Gr);
  // One call for every group (binary has one per output): the groups' codewords are
  // contiguous, (Gr, 2^bits) with d = 1 and one stage. Levels land in q, then lose the 128.
  uint8_t* const levels = reinterpret_cast<uint8_t*>(books.q.data());
  std::vector<uint32_t> energy(c.Gr);
  c.k.quantize_rows_u8(c.codebook(0, 0, 0), c.ncw, c.Gr, c.ncw, levels, c.ncw, books.scale.data(), energy.data());
  for (size_t i = 0; i < books.q.size(); ++i) books.q[i] = static_cast<int8_t>(levels[i] - 128);
  return books;
}

void int8_column_scales(const Context& c, const Int8Books& books, size_t n0, size_t count, float* column_scale) {
  for (size_t i = 0; i < count; ++i)
    column_scale[i] = books.route == Int8Route::kVectorBytes ? 1.0f : books.scale[c.group_of_row(n0 + i)];
}

// The codebooks' int8 form: prepared once (the op's constant codebooks), else for this call.
const Int8Books& books_for(const Context& c, Int8Books& local) {
  if (c.p.prepared != nullptr) return c.p.prepared->books;
  local = int8_books(c);
  return local;
}

// The largest of count bytes, 16 lanes at a time (a generic vector: SSE2 / NEON; the same
// loop over an array of 16 lanes compiled to a scalar byte loop, 13% of MiniLM km5 at batch 1).
uint8_t largest_byte(const uint8_t* v, size_t count) {
  using Bytes16 = uint8_t __attribute__((vector_size(16)));
  Bytes16 lanes = {};
  size_t i = 0;
  for (; i + 16 <= count; i += 16) {
    Bytes16 next;
    std::memcpy(&next, v + i, sizeof next);
    lanes = lanes > next ? lanes : next;
  }
  uint8_t top = 0;
  for (size_t j = 0; j < 16; ++j) top = std::max(top, static_cast<uint8_t>(lanes[j]));
  for (; i < count; ++i) top = std::max(top, v[i]);
  return top;
}

// kStreamColumnBytes' per-column tables (count x 2^bits) from the ranks decoded into `rows`
// (count x len4 bytes; zeros past len, rank 0, never above a used codeword's): column i's
// scale and levels are quantize_panel_s8's for its decoded floats (a = its largest |value|).
// Columns share few distinct top ranks, so each group's table per top rank is built once.
void column_tables(const Context& c, const Int8Books& books, size_t n0, size_t count, size_t len4,
                   const uint8_t* rows, int8_t* tables, float* column_scale) {
  thread_local std::vector<int8_t> by_top;
  thread_local std::vector<float> scale_by_top;
  thread_local std::vector<char> built;
  by_top.resize(c.ncw * c.ncw);
  scale_by_top.resize(c.ncw);
  built.assign(c.ncw, 0);
  size_t group = c.group_of_row(n0);
  for (size_t i = 0; i < count; ++i) {
    const size_t g = c.group_of_row(n0 + i), top = largest_byte(rows + i * len4, len4);
    if (g != group) std::fill(built.begin(), built.end(), 0), group = g;
    int8_t* const table = &by_top[top * c.ncw];
    if (!built[top]) {
      built[top] = 1;
      const float a = books.by_rank[g * c.ncw + top];
      const float inv = 127.0f / a;
      const bool zero = !std::isfinite(inv);  // a == 0 or tiny: zeros, as quantize_panel_s8
      scale_by_top[top] = zero ? 0.0f : a / 127.0f;
      const float* book = c.codebook(0, 0, g);
      for (size_t code = 0; code < c.ncw; ++code)
        table[code] = zero ? int8_t{0} : static_cast<int8_t>(std::clamp(std::nearbyint(book[code] * inv), -127.0f, 127.0f));
    }
    column_scale[i] = scale_by_top[top];
    std::memcpy(tables + i * c.ncw, table, c.ncw);
  }
}

// Panel columns [n0, n0 + count) over the chunk [k0, k0 + len) as int8 (int8_gemm's layout,
// len4 deep) with their scales and 128 x column sums, on a byte route; `rows` is scratch of
// count x len4 bytes in float storage (the transpose moves 4 bytes as one float).
void decode_int8_panel(const Context& c, const Int8Books& books, size_t k0, size_t len, size_t n0, size_t count,
                       float* rows, int8_t* panel_q, float* column_scale, int32_t* bias128) {
  const VQProblem& p = c.p;
  const size_t len4 = ceil_div(len, 4) * 4;
  if (books.route == Int8Route::kStreamColumnBytes) {  // ranks, then each column's own table
    const size_t g = c.group_of_row(n0);
    int8_t* const bytes = reinterpret_cast<int8_t*>(rows);
    int8_t* const tables = thread_scratch<int8_t>(count * c.ncw);
    c.k.decode_codes_s8(p.codes, static_cast<uint64_t>(n0) * p.S + k0, p.S, count, len, p.bits, &books.ranks[g * c.ncw],
                        p.group_size, n0 - c.group_begin(g), bytes, len4, bias128);
    column_tables(c, books, n0, count, len4, reinterpret_cast<const uint8_t*>(bytes), tables, column_scale);
    c.k.decode_codes_s8(p.codes, static_cast<uint64_t>(n0) * p.S + k0, p.S, count, len, p.bits, tables, 1, 0, bytes,
                        len4, bias128);
    c.k.transpose(rows, count, len4 / 4, len4 / 4, reinterpret_cast<float*>(panel_q), count);
    for (size_t i = 0; i < count; ++i) bias128[i] *= 128;
    return;
  }
  int8_column_scales(c, books, n0, count, column_scale);
  if (books.route == Int8Route::kVectorBytes) {  // len: whole subspaces of 4 (K % 4 == 0), k0 one's start
    const size_t s0 = k0 / 4, subspaces = len / 4, stride = p.per_subspace ? c.ncw : 0;
    const int32_t* words = books.words.data() + s0 * stride;  // one stage's (two: combined, stride * ncw apart)
    for (size_t i0 = 0; i0 < count;) {
      const size_t n = n0 + i0;
      if (p.format_version == 2) {  // n: a block boundary (whole blocks of 32)
        const uint8_t* groups = p.codes + ((n / kFastScanBlockRows) * p.T * p.S + s0) * kFastScanGroupBytes;
        if (p.T == 2) {  // 256 combined codewords per codebook, every block in one call
          const size_t cols = count - i0;
          c.k.decode_fastscan2_words_s8(groups, p.S * kFastScanGroupBytes, p.T * p.S * kFastScanGroupBytes, subspaces,
                                        cols, books.planes.data() + 4 * s0 * stride * c.ncw, 4 * stride * c.ncw,
                                        books.words.data() + s0 * stride * c.ncw, stride * c.ncw, panel_q + 4 * i0,
                                        count, bias128 + i0);
          i0 += cols;
          continue;
        }
        const size_t cols = std::min(kFastScanBlockRows, count - i0);
        c.k.decode_fastscan_words_s8(groups, subspaces, cols, words, stride, panel_q + 4 * i0, count, bias128 + i0);
        i0 += cols;
      } else {  // n: a half-block boundary of 64-output blocks; from a block boundary, every block in one call
        const size_t lane = n % kByteScanBlockRows, cols = lane != 0 ? std::min(kByteScanBlockRows - lane, count - i0) : count - i0;
        c.k.decode_bytescan_words_s8(p.codes + ((n / kByteScanBlockRows) * p.S + s0) * kByteScanBlockRows + lane,
                                     p.S * kByteScanBlockRows, subspaces, cols, books.planes.data() + 4 * s0 * stride,
                                     4 * stride, words, stride, panel_q + 4 * i0, count, bias128 + i0);
        i0 += cols;
      }
    }
  } else if (books.route == Int8Route::kStreamBytes) {  // one call over every group (binary: a codebook per row)
    const size_t g = c.group_of_row(n0);
    c.k.decode_codes_s8(p.codes, static_cast<uint64_t>(n0) * p.S + k0, p.S, count, len, p.bits, &books.q[g * c.ncw],
                        p.group_size, n0 - c.group_begin(g), reinterpret_cast<int8_t*>(rows), len4, bias128);
    c.k.transpose(rows, count, len4 / 4, len4 / 4, reinterpret_cast<float*>(panel_q), count);
  } else {
    for (size_t i0 = 0; i0 < count; i0 += kFastScanBlockRows) {  // one block of 32: one group (whole blocks)
      const size_t block = (n0 + i0) / kFastScanBlockRows, g = c.group_of_row(n0 + i0);  // n0 + i0: a block boundary
      c.k.decode_fastscan_d1_s8(p.codes + (block * p.S + k0) * kFastScanGroupBytes, len,
                                std::min(count - i0, kFastScanBlockRows), &books.q[g * c.ncw], panel_q + 4 * i0, count,
                                bias128 + i0);
    }
  }
  for (size_t i = 0; i < count; ++i) bias128[i] *= 128;
}

// Few rows on the stream route meet the codes as they are decoded (decode_dot_s8): no panel
// is written or transposed. The int32 sums and the epilogue are int8_gemm's, so are the bits.
// (Measured by bench/thresholds.py with ONNXVQ_TILE_GEMM_MIN_ROWS=1: see kTileGemmThresholds.)
constexpr size_t kInt8DecodeDotMaxRows = 4;

void int8_epilogue(size_t M, const int32_t* dots, size_t count, const float* xs, const float* ws,
                   const int32_t* bias128, float* y, size_t ldy, bool accumulate) {  // int8_gemm's formula
  for (size_t m = 0; m < M; ++m)
    for (size_t n = 0; n < count; ++n) {
      const float v = xs[m] * (ws[n] * static_cast<float>(dots[m * count + n] - bias128[n]));
      float& out = y[m * ldy + n];
      out = accumulate ? out + v : v;
    }
}

// Few rows on the stream route (decode_dot_s8): no panel is written, and each output's codes
// are read in order over the whole depth, chunk after chunk. X's chunks hold the M first rows
// and then room for the most second rows any chunk has (rows past a chunk's own are
// zeros, and their dots unused), so one call meets them all. The products and the order they
// are added in are run_int8_panels': the same bits.
void run_int8_dot_rows(const Context& c, const PanelPlan& plan, const QuantizedRows& x, const Int8Books& books) {
  const VQProblem& p = c.p;
  const size_t rows_x = p.M + x.max_seconds();  // per chunk
  std::vector<uint8_t> rows_q(x.wide ? 0 : plan.chunks * rows_x * x.ldq, 128);  // 128: the byte of a zero
  for (size_t q = 0; q < plan.chunks && !x.wide; ++q) {
    const auto first = x.q_rows.begin() + q * p.M * x.ldq;
    std::copy(first, first + p.M * x.ldq, rows_q.begin() + q * rows_x * x.ldq);
    const auto second = x.second_q.begin() + x.first_second[q] * x.ldq;
    std::copy(second, second + x.seconds(q) * x.ldq, rows_q.begin() + (q * rows_x + p.M) * x.ldq);
  }
  const Blocks blocks = Blocks::split(plan.columns, task_count(double(p.M + 16) * p.K * p.N / 32));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    float* const column_scale = thread_scratch(plan.cols);
    int32_t* const sums = thread_scratch<int32_t>(plan.chunks * plan.cols * (1 + rows_x));
    int32_t* const dots = sums + plan.chunks * plan.cols;  // (chunk, row of X, output)
    for (size_t b = blocks.begin(task); b < blocks.end(task); ++b) {
      const size_t n0 = b * plan.cols, count = std::min(plan.cols, p.N - n0), g = c.group_of_row(n0);
      int8_column_scales(c, books, n0, count, column_scale);
      if (x.wide)  // chunk q's rows at (q * M + m) * ldq already; no second rows
        c.k.decode_dot_s16(p.codes, static_cast<uint64_t>(n0) * p.S, p.S, count, p.K, plan.depth, p.bits,
                           &books.q[g * c.ncw], p.group_size, n0 - c.group_begin(g), x.wide_rows.data(), x.ldq,
                           rows_x, dots, sums);
      else
        c.k.decode_dot_s8(p.codes, static_cast<uint64_t>(n0) * p.S, p.S, count, p.K, plan.depth, p.bits,
                          &books.q[g * c.ncw], p.group_size, n0 - c.group_begin(g), rows_q.data(), x.ldq, rows_x,
                          dots, sums);
      for (size_t q = 0; q < plan.chunks; ++q) {
        int32_t* const bias128 = sums + q * count;
        const int32_t* const chunk_dots = dots + q * rows_x * count;
        for (size_t i = 0; i < count; ++i) bias128[i] = x.wide ? 0 : bias128[i] * 128;  // 16-bit X: no 128
        int8_epilogue(p.M, chunk_dots, count, &x.scale[q * p.M], column_scale, bias128, p.y + n0, p.N, q > 0);
        for (size_t i = 0, first = x.first_second[q]; i < x.seconds(q); ++i)  // added after the first rows'
          int8_epilogue(1, chunk_dots + (p.M + i) * count, count, &x.second_scale[first + i], column_scale, bias128,
                        p.y + x.second_row[first + i] * p.N + n0, p.N, true);
      }
      add_bias_columns(c, p.M, n0, count, p.y);
    }
  });
}

// Float bytes of p's codebooks, and the most of them run_int8_panels lets every column block read.
size_t codebook_bytes(const VQProblem& p) {
  return p.T * p.subspace_groups() * p.row_groups() * p.codewords() * p.d * sizeof(float);
}
constexpr size_t kBlockMajorMaxBookBytes = size_t{2} << 20;

void run_int8_panels(const Context& c, const PanelPlan& plan, const QuantizedRows& x, const Int8Books& books) {
  const VQProblem& p = c.p;
  if (books.route == Int8Route::kStreamBytes && p.M <= kInt8DecodeDotMaxRows) return run_int8_dot_rows(c, plan, x, books);
  const size_t panel_floats = x.ldq * plan.cols / 4;  // int8 panel, in float storage (see above)
  const size_t second_floats = x.max_seconds() * plan.cols;
  const bool direct = books.route != Int8Route::kFloatPanels;
  // Panel (q, b): depth chunk q of column block b, decoded and multiplied; the chunks of a block
  // run in order (q > 0 accumulates).
  auto panel = [&](size_t q, size_t b) {
    const size_t k0 = q * plan.depth, len = std::min(plan.depth, p.K - k0), len4 = ceil_div(len, 4) * 4;
    const size_t gemm_k = std::min(x.ldq, ceil_div(len, kInt8DepthStep) * kInt8DepthStep);  // >= len4
    const size_t seconds = x.seconds(q), first = x.first_second[q];
    const uint8_t* const first_q = x.wide ? nullptr : &x.q_rows[q * p.M * x.ldq];
    const uint8_t* const second_q = seconds > 0 ? &x.second_q[first * x.ldq] : nullptr;
    float* const scratch = thread_scratch(plan.scratch_floats() + plan.cols + panel_floats + second_floats);
    float* const column_scale = scratch + plan.scratch_floats();
    int8_t* const panel_q = reinterpret_cast<int8_t*>(column_scale + plan.cols);
    float* const second_y = column_scale + plan.cols + panel_floats;  // seconds x count
    int32_t* const bias128 = thread_scratch<int32_t>(plan.cols);
    const size_t n0 = b * plan.cols, count = std::min(plan.cols, p.N - n0);
    if (direct) {
      decode_int8_panel(c, books, k0, len, n0, count, scratch, panel_q, column_scale, bias128);
    } else {
      const float* panel = plan.decode(c, k0, len, n0, count, scratch);
      c.k.quantize_panel_s8(panel, len, count, panel_q, column_scale, bias128);
    }
    std::memset(panel_q + len4 * count, 0, (gemm_k - len4) * count);  // X's bytes there are zeros (128)
    if (x.wide)
      c.k.int16_gemm(&x.wide_rows[q * p.M * x.ldq], x.ldq, p.M, gemm_k, panel_q, count, &x.scale[q * p.M],
                     column_scale, p.y + n0, p.N, q > 0);
    else
      c.k.int8_gemm(first_q, x.ldq, p.M, gemm_k, panel_q, count, &x.scale[q * p.M], column_scale, bias128, p.y + n0,
                    p.N, q > 0);
    if (seconds > 0)
      c.k.int8_gemm(second_q, x.ldq, seconds, gemm_k, panel_q, count, &x.second_scale[first], column_scale, bias128,
                    second_y, count, false);
    for (size_t i = 0; i < seconds; ++i) {  // the second rows' products, added after the first's
      float* y = p.y + x.second_row[first + i] * p.N + n0;
      for (size_t j = 0; j < count; ++j) y[j] += second_y[i * count + j];
    }
    if (q + 1 == plan.chunks) add_bias_columns(c, p.M, n0, count, p.y);
  };
  // Tasks own column blocks and run each block's chunks in turn: a stream's codes are read
  // nearly in order and the block's outputs stay in cache. Chunk by chunk over every block was
  // 1.2-1.5x slower on 4096x4096 from 8 to 512 rows (km5, binary, rq 2x4, pq8-d4 along the
  // outputs on AVX2), as fast on layers whose codes fit in L2. Not where every block reads
  // megabytes of codebooks (one per subspace along the depth): pq8-d4 on 4096x4096 (4 MB of
  // them) took 1.56x as long at 64 rows block by block, 1280x1000 (1.3 MB) 0.87-0.92x.
  if (!(p.axis == 0 && p.per_subspace && codebook_bytes(p) > kBlockMajorMaxBookBytes)) {
    const Blocks blocks = Blocks::split(plan.columns, task_count(double(p.M + 16) * p.K * p.N / 32));
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      for (size_t b = blocks.begin(task); b < blocks.end(task); ++b)
        for (size_t q = 0; q < plan.chunks; ++q) panel(q, b);
    });
    return;
  }
  const Blocks blocks = Blocks::split(plan.columns, task_count(double(p.M + 16) * p.K * p.N / 32 / plan.chunks));
  for (size_t q = 0; q < plan.chunks; ++q)
    run_tasks(c.runner, blocks.count, [&](size_t task) {
      for (size_t b = blocks.begin(task); b < blocks.end(task); ++b) panel(q, b);
    });
}

// The coarse codebooks' second digits (see vector_book_max_step) as a vector route of their
// own: their subspaces' codes copied into blocks of just those subspaces (a few KB per call),
// X's columns there scaled by the digits' scales, the product added to Y. Rows it finds not
// finite join float_rows (recomputed whole on the float panels).
void run_vector_overflow(const Context& c, const Int8Books& books, std::vector<size_t>* float_rows) {
  const VQProblem& p = c.p;
  const std::vector<uint32_t>& subspaces = books.overflow_subspaces;
  const size_t F = subspaces.size();
  const bool bytes = p.format_version == 3;  // else fast-scan groups (format 2), T stages
  const size_t block_rows = bytes ? kByteScanBlockRows : kFastScanBlockRows;
  const size_t group = bytes ? kByteScanBlockRows : kFastScanGroupBytes, planes = ceil_div(p.N, block_rows) * p.T;
  std::vector<uint8_t> codes(planes * F * group);
  for (size_t plane = 0; plane < planes; ++plane)  // plane: (block, stage)
    for (size_t v = 0; v < F; ++v)
      std::memcpy(&codes[(plane * F + v) * group], p.codes + (plane * p.S + subspaces[v]) * group, group);
  const std::unique_ptr<float[]> x(new float[p.M * 4 * F]);
  for (size_t m = 0; m < p.M; ++m)
    for (size_t v = 0; v < F; ++v) {
      const float scale = books.overflow->scale[p.per_subspace ? v : 0];
      for (size_t j = 0; j < 4; ++j) x[(m * F + v) * 4 + j] = p.x[m * p.K + subspaces[v] * 4 + j] * scale;
    }
  std::vector<float> y(p.M * p.N);
  VQProblem view = p;
  view.K = 4 * F, view.S = F, view.codes = codes.data(), view.x = x.get(), view.y = y.data();
  view.bias = nullptr, view.prepared = nullptr;
  const Context vc(view, c.k, c.runner);
  const PanelPlan plan(vc, kPanelMaxDepth, false, kInt8DepthStep);
  QuantizedRows xq = quantize_rows(vc, plan);
  run_int8_panels(vc, plan, xq, *books.overflow);
  for (size_t i = 0; i < p.M * p.N; ++i) p.y[i] += y[i];  // rows in float_rows are recomputed anyway
  float_rows->insert(float_rows->end(), xq.float_rows.begin(), xq.float_rows.end());
  std::sort(float_rows->begin(), float_rows->end());
  float_rows->erase(std::unique(float_rows->begin(), float_rows->end()), float_rows->end());
}

void run_panel_gemm_path(const Context& c) {
  if (int8_tier(c)) {
    const VQProblem& p = c.p;
    Int8Books local;
    const Int8Books& books = books_for(c, local);
    const PanelPlan plan(c, kPanelMaxDepth, books.route != Int8Route::kVectorBytes, kInt8DepthStep);
    QuantizedRows x;
    if (books.route == Int8Route::kVectorBytes) {  // X with its subspaces' codebook scales folded in
      // (Uninitialized, and one scale per run of 4 inputs: this loop was 7% of rq 2x4 on
      // 1536x384 at 8 rows with a zeroed vector and the subspace index per element.)
      const std::unique_ptr<float[]> scaled(new float[p.M * p.K]);
      const float* const scales = books.scale.data();
      for (size_t m = 0; m < p.M; ++m) {
        const float* __restrict row = p.x + m * p.K;  // restrict: GCC kept it scalar (2% of MiniLM pq4)
        float* __restrict out = scaled.get() + m * p.K;
        for (size_t k = 0; k < p.K; k += 4) {  // K % 4 == 0 on this route
          const float scale = scales[p.per_subspace ? k / 4 : 0];
          for (size_t j = 0; j < 4; ++j) out[k + j] = row[k + j] * scale;
        }
      }
      VQProblem folded = p;
      folded.x = scaled.get();
      x = quantize_rows(Context(folded, c.k, c.runner), plan);
    } else {
      x = quantize_rows(c, plan);
    }
    run_int8_panels(c, plan, x, books);
    if (books.overflow) run_vector_overflow(c, books, &x.float_rows);
    if (!x.float_rows.empty()) run_on_rows(c, x.float_rows, run_float_panels);  // not finite (or a tiny limit)
    return;
  }
  run_float_panels(c);
}

// --- dispatch ---------------------------------------------------------------------------

bool env_flag(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

// The tables this build has and this CPU runs, best last. __builtin_cpu_supports also
// checks that the OS saves the wide registers (XGETBV), so AVX state is usable.
struct TableList {
  const KernelTable* tables[7];
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
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma")) {
      tables[count++] = &avx512_kernel_table();
      if (__builtin_cpu_supports("avx512vbmi")) tables[count++] = &avx512vbmi_kernel_table();
      if (__builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni")) {
        tables[count++] = &avx512vnni_kernel_table();
#if defined(ONNXVQ_HAVE_AMX)
        if (amx_int8_usable()) tables[count++] = &amx_kernel_table();
#endif
      }
    }
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

const char* int8_route_name(const VQProblem& p) {
  switch (p.prepared != nullptr ? p.prepared->books.route : int8_route(p)) {
    case Int8Route::kVectorBytes: return "vector_bytes";
    case Int8Route::kFastScanBytes: return "fastscan_bytes";
    case Int8Route::kStreamBytes: return "stream_bytes";
    case Int8Route::kStreamColumnBytes: return "stream_column_bytes";
    case Int8Route::kFloatPanels: break;
  }
  return "float_panels";
}

std::shared_ptr<const PreparedCodebooks> prepare_codebooks(const VQProblem& p, const KernelTable& kernels) {
  static const TaskRunner serial;
  auto prepared = std::make_shared<PreparedCodebooks>();
  VQProblem layout = p;
  layout.prepared = nullptr;
  prepared->books = int8_books(Context(layout, kernels, serial));
  return prepared;
}

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

bool int8_panels_enabled(const KernelTable& kernels) {
  static const bool exact = env_flag("ONNXVQ_EXACT_GEMM");
  return kernels.int8_panels && !exact;
}

bool exact_lut_requested() {
  static const bool exact = env_flag("ONNXVQ_EXACT_LUT");
  return exact;
}

double fastscan_uint8_error(const KernelTable& k, const float* lut, size_t entries) {
  constexpr double kInfD = std::numeric_limits<double>::infinity();
  constexpr size_t kBatch = 64;  // tables per lut_order_stats call
  float ranges[kBatch], high3[kBatch], low3[kBatch];
  float range = 0.0f;
  double spread = 0.0;  // sum_e r_e^2, e ascending
  size_t varying = 0;
  for (size_t e0 = 0; e0 < entries; e0 += kBatch) {
    const size_t count = std::min(kBatch, entries - e0);
    if (!k.lut_order_stats(lut + e0 * kFastScanCodewords, count, ranges, high3, low3)) return kInfD;
    for (size_t e = 0; e < count; ++e) {
      range = std::max(range, ranges[e]);
      varying += ranges[e] > 0.0f;
      const double r3 = static_cast<double>(high3[e]) - static_cast<double>(low3[e]);
      spread += r3 * r3;
    }
  }
  if (!(range - range == 0.0f)) return kInfD;  // a range overflowed to inf
  if (range == 0.0f) return 0.0;                // constant tables: uint8 is exact
  if (!(spread > 0.0)) return kInfD;
  const double step = static_cast<double>(range) / 255.0;
  return step * std::sqrt(static_cast<double>(varying) / spread);
}

double bytescan_uint8_error(const KernelTable& k, const uint8_t* q, size_t entries) {
  // Integer sums: exact, so every table makes the same choice.
  uint64_t varying = 0;
  double variance = 0.0;
  constexpr size_t kBatch = 64;
  uint32_t sums[kBatch], squares[kBatch];
  for (size_t e0 = 0; e0 < entries; e0 += kBatch) {
    const size_t count = std::min(kBatch, entries - e0);
    k.byte_table_moments(q + e0 * kByteScanCodewords, count, sums, squares);
    for (size_t e = 0; e < count; ++e) {
      varying += squares[e] != 0;  // the lowest value quantizes to 0: any other level means a range
      const double mean = sums[e] / double(kByteScanCodewords);
      variance += std::max(0.0, squares[e] / double(kByteScanCodewords) - mean * mean);
    }
  }
  if (varying == 0) return 0.0;
  if (!(variance > 0.0)) return std::numeric_limits<double>::infinity();
  return std::sqrt(static_cast<double>(varying) / 12.0 / variance);
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
  const bool exact = p.exact_lut || exact_lut_requested();
  if (fastscan_covers(p)) return exact ? VQPath::kFastScanExact : VQPath::kFastScan;
  if (bytescan_covers(p)) return exact ? VQPath::kByteScanExact : VQPath::kByteScan;
  const size_t ncw = p.codewords();
  // One LUT (or bucket set) per row group pays off when the group has at least as many
  // rows as there are codewords; otherwise building it costs more than it saves.
  const bool tables_pay_off = p.row_groups() == 1 || p.group_size >= ncw;
  if (p.axis == 0) {
    // Scalar codebooks shared across the row: adding inputs that share a code and
    // multiplying once per codeword needs 2^bits floats, where a LUT needs K * 2^bits.
    if (bit_lut_covers(p)) return VQPath::kBitLut;
    if (decode_dot_covers(p)) return VQPath::kDecodeDot;
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

// The kernel chooser's one table: from how many rows M the tile GEMM beats each small path,
// by path, code width, subvector length, ISA and (where it matters) the number of outputs N.
// Measured by bench/thresholds.py (1 thread, hot, both paths side by side; the AVX2 rows with
// ORT's Gemm on decoded tiles, before the panel GEMM, and not re-measured since) on the
// layers 4096x4096, 384x1536, 1536x384 and 1280x1000 at M = 1, 2, 4, ..., 64: the smallest M
// from which the tile path was faster at every larger M on every layer.
// Ratios tile / small at M = 1 .. 64 on 4096x4096 (AVX2, 2026-12-02):
//   fastscan d=4 (pq4-d4)  89 .. 4.3      never up to 64: uint8 tables in registers win
//   fastscan d=1 (km4)     22 .. 0.16     64 (384x1536: 1.00 at 32)
//   lut (pq8-d4)           3.1 .. 0.15    8 (0.95 at 4 on 4096x4096, 1.18 on 384x1536)
//   row_buckets (km5, km3 per 16 rows)  0.92 .. 0.04   1
//   bit_lut (binary)       12.9 .. 0.69   64 (384x1536: 1.04 at 32)
//   column_buckets (pq8-d4 axis out)  6.3 .. 0.14  4
//   fastscan_exact (ONNXVQ_EXACT_LUT=1)  km4 4.8 .. 0.19: 8; pq4-d4 15 .. 0.71: 32
// `isa` nullptr: any table without a row of its own (AVX-512 hosts inherit the AVX2 rows
// except where they have their own); "avx512" covers every table named avx512*.
struct TileGemmThreshold {
  VQPath small;
  unsigned min_bits, max_bits;  // code widths the row covers
  size_t min_d, max_d;          // subvector lengths the row covers
  const char* isa;
  size_t min_rows;
  size_t max_outputs = static_cast<size_t>(-1);  // N the row covers (shape-specific rows)
  size_t min_stages = 1;                         // T the row covers: min_stages and more
  bool byte_route = false;  // measured on the int8 byte route: only where p's codebooks take it (int8_route)
};
constexpr size_t kAnyD = static_cast<size_t>(-1);
constexpr TileGemmThreshold kTileGemmThresholds[] = {
    // uint8 fast-scan: rows the guard rejects (transformer activations: most MiniLM rows) go
    // to the tile GEMM inside the fast-scan path once there are as many as the float-table
    // rows below say (run_fastscan_path); before that, MiniLM batch 1 (36 rows) with km4 took
    // 436 ms on float tables vs 64 ms on the tile path.
    {VQPath::kFastScan, 4, 4, 1, 1, nullptr, 64},
    // AVX-512 rows: bench/thresholds.py on avx512vbmi (2026-12-02), ratios tile / small at
    // M = 8, 16, 32, 64 on 4096x4096, 384x1536, 1536x384, 1280x1000 (the panel GEMM from 32
    // rows, fast-scan km4 panels at every M):
    //   km4 fastscan   1.28/1.38/1.10/0.62, 1.09/0.92/0.76/0.74, 0.58/0.49/0.38/0.36, 1.04/0.84/0.70/0.64
    //   binary bit_lut 1.42/0.79/0.28/0.28, 1.32/0.76/0.35/0.24, 0.63/0.36/0.18/0.13, 1.21/0.58/0.28/0.23
    //   pq8-d4 axis out, column_buckets at M = 4, 8: 1.55/0.65, 0.26/0.16, 0.62/0.30, 0.66/0.35
    //   km5 decode_dot 2.67/1.47/0.69/0.66, 1.17/1.10/0.87/0.75, 1.84/1.30/0.86/0.85, 2.14/1.59/1.14/1.06
    //   (km3 per 16 rows alike: 0.74, 0.87, 0.84, 0.83 at 32): 32, though 1280x1000 wins later.
    // The same on an Intel Xeon avx512vbmi host (2026-12-02, after the panel GEMM's 32-wide L1
    // panels and packed X), at M = 4, 8, 16, 32, 64, 128, 512, same layer order:
    //   km4 fastscan   1.59/1.02/0.92/0.86/0.72/0.80/0.85, 1.34/1.00/0.82/0.72/0.64/0.54/0.65,
    //                  0.47/0.20/0.18/..., 1.38/1.03/0.80/0.64/0.58/0.55/0.66
    //   binary         2.13/1.15/0.78/0.47/..., 2.70/1.55/0.90/0.60/..., 1.14/0.64/0.45/...,
    //                  1.88/1.06/0.67/0.42/...: the rows above hold
    //   km5 decode_dot (4x4 blocks reduced at once) 2.17/1.68/1.34/1.16/1.01/0.79/0.58,
    //                  2.39/1.99/1.82/1.22/0.98/0.68/0.69, 2.54/1.87/1.42/1.06/0.86/0.79/0.56,
    //                  3.61/2.17/1.52/1.25/1.50/0.82/0.63 (km3 per 16 rows alike): 64
    //   rq 2x4 fastscan  4096x4096 1.89 at 32 .. 1.30 at 512; 384x1536 0.86 at 32, 0.51 at 128;
    //                  1280x1000 0.76 at 32, 0.54 at 128: from 32 on N <= 2048 (pq4-d4 there
    //                  1.28 / 1.22 at 32 and 1.10 / 1.07 at 512: never)
    //   pq8-d4 axis out column_buckets 0.86/0.56, 0.41/0.25, 0.55/0.30, 0.62/0.38 at M = 4, 8
    // Where the hosts disagree (km4 on 4096x4096 at 16: 1.38 AMD, 0.92 Intel; column_buckets
    // at 4: 1.55 AMD, 0.86 Intel) the rows keep the later threshold for the widest layers.
    {VQPath::kFastScan, 4, 4, 1, 1, "avx512", 4, 512},
    {VQPath::kFastScan, 4, 4, 1, 1, "avx512", 16, 2048},
    {VQPath::kFastScan, 4, 4, 1, 1, "avx512", 32},
    // Fast-scan with d >= 2 keeps winning on wide layers (pq4-d4 on 4096x4096: 2.4 at M =
    // 64), not on narrow ones, where each row's tables cost more than its scan saves
    // (1536x384, N = 384: pq4-d4 0.91 at M = 8, 0.44 at 64; rq 2x4 0.83 at 8; pq4-d8 0.89
    // at 32): the same rows measured with the format-2 panel decoder.
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512", 8, 512},
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512", 32, 2048, 2},
    {VQPath::kFastScan, 4, 4, 5, kAnyD, "avx512", 32, 512},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx512", 16},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx512", 8, 512},  // 1536x384: 1.34 at 4, 0.63 at 8
    {VQPath::kColumnBuckets, 1, 8, 1, kAnyD, "avx512", 4, 2048},
    {VQPath::kColumnBuckets, 1, 8, 1, kAnyD, "avx512", 8},
    {VQPath::kDecodeDot, 2, 8, 1, 1, "avx512", 64},
    // AVX2 rows, with its int8 tier (bench/thresholds.py, AMD EPYC Zen 3 without AVX-512,
    // 2026-12-07), tile / small at M = 2, 4, 8, 16, 32, 64 on 4096x4096, 384x1536, 1536x384,
    // 1280x1000:
    //   km4 fastscan    11.3/4.09/3.06/1.66/1.27/0.91, 7.81/3.36/2.70/1.42/1.06/0.74, 5.48/2.58/
    //                   1.73/0.94/0.71/0.51, 8.07/3.85/2.52/1.40/1.00/0.71: 16 up to N = 512, 64
    //   binary bit_lut  5.26/2.50/1.43/0.72, 6.03/3.00/1.76/0.91, 2.77/1.34/0.78/0.41, 4.37/2.09/
    //                   1.22/0.64: 8 up to N = 512, then 16
    //   pq8-d4 bytescan 1.76/0.80/0.48, 1.10/0.53/0.32, 0.44/0.21/0.12, 0.89/0.40/0.24: 2 up to
    //                   N = 1024, then 4
    //   pq8-d4 axis out column_buckets 2.63/1.35/0.76, 0.81/0.40/0.22, 1.53/0.71/0.39, 1.48/0.73/
    //                   0.46: 4 up to N = 2048, then 8
    //   km5 / km3 per 16 rows decode_dot 1.14 / 1.03 at 16, 0.77 at 32 on 4096x4096: the shared
    //                   32 holds; pq4-d4, pq4-d8, rq 2x4 (float panels of vector codewords):
    //                   never (1.12-3.93 at 64)
    {VQPath::kFastScan, 4, 4, 1, 1, "avx2", 16, 512},
    //   km4 on the byte route (decode_fastscan_d1_s8 on AVX2), M = 4, 8, 16, 32, 64: 1.54/1.58/
    //                   0.92/0.92/0.77, 1.40/1.29/0.78/0.75/0.62, 0.84/0.84/0.52/0.49/0.40, 1.20/
    //                   1.20/0.61/0.65/0.52: 4 up to N = 512, then 16
    //   Then (2026-12-08, c4d49d8's fast-scan), M = 2, 4, 8, 16, 32: 2.59/1.55/1.14/0.91/0.80,
    //                   1.95/1.35/0.97/0.79/0.69, 1.24/0.85/0.59/0.47/0.37, 1.91/1.47/0.88/0.68/
    //                   0.62: 8 up to N = 1536 too
    {VQPath::kFastScan, 4, 4, 1, 1, "avx2", 4, 512, 1, true},
    {VQPath::kFastScan, 4, 4, 1, 1, "avx2", 8, 1536, 1, true},
    {VQPath::kFastScan, 4, 4, 1, 1, "avx2", 16, static_cast<size_t>(-1), 1, true},
    //   format-1 codes straight to int8 (decode_codes_s8 / decode_dot_s8 on AVX2), M = 4, 8,
    //   16, 32, 64:
    //   km5 decode_dot  1.15/1.03/0.82/0.66/0.59, 0.83/0.67/0.37/0.39/0.30, 0.75/0.74/0.45/0.52/
    //                   0.41, 0.85/0.72/0.52/0.61/0.43
    //   km3 per 16 rows 1.17/1.04/0.69/0.71/0.47, 0.70/0.64/0.40/0.38/0.36, 0.91/0.83/0.44/0.45/
    //                   0.35, 1.17/0.84/0.56/0.60/0.43: 8 up to N = 2048, then 16
    //   binary bit_lut  2.29/1.47/1.03/0.48/0.25, 2.69/1.43/0.75/0.54/0.35, 1.17/0.63/0.37/0.23/
    //                   0.18, 1.93/0.99/0.56/0.43/0.26: 8 up to N = 512, 16 up to 2048, then 32
    //   Then (2026-12-07) the 32-code unpack's constants built once, no scalar tails (a padded
    //   copy for the last row of a call only), decode_dot_s8 reading each row's chunks in order
    //   and the int8 panels column block by column block, M = 1, 2, 4, 8, 16:
    //   km5 decode_dot  0.37/0.42/0.49/0.67/0.46, 0.37/0.40/0.54/0.49/0.36, 0.43/0.44/0.50/0.50/
    //                   0.59, 0.39/0.43/0.51/0.52/0.45
    //   km3 per 16 rows 0.72/0.76/0.77/1.04/0.62, 0.76/0.78/0.82/0.65/0.47, 0.80/0.84/0.93/0.84/
    //                   0.51, 0.81/0.80/1.09/0.65/0.55: 1 (the two cells over 1 within this
    //                   host's noise)
    //   binary bit_lut  0.98/0.63/0.32/0.34/0.20, 1.35/0.84/0.57/0.38/0.40, 0.72/0.70/0.31/0.19/
    //                   0.15, 1.36/0.59/0.31/0.36/0.17: 1 up to N = 512, then 2
    {VQPath::kDecodeDot, 2, 8, 1, 1, "avx2", 1, static_cast<size_t>(-1), 1, true},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx2", 1, 512, 1, true},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx2", 2, static_cast<size_t>(-1), 1, true},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx2", 8, 512},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx2", 16},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx2", 2, 1024},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx2", 4},
    //   Then (2026-12-07) d = 4 codewords decoded to int8 words on AVX2 (vpermd from 16 words,
    //   vpgatherdd from 256), not float panels: bench/ab.py 0.33-0.36x the time at 8 rows,
    //   0.62-0.67x at 64 on the four layers (pq8-d4); tile / small at M = 1, 2, 4:
    //   pq8-d4 bytescan 0.98/0.49/0.21, 0.59/0.31/0.13, 0.26/0.12/0.08, 0.54/0.19/0.14: 1
    //   at M = 32, 64, 128, 512 (fast-scan LUTs the small path):
    //   rq 2x4 fastscan 1.56/1.26/1.20/0.97, 0.91/0.93/0.85/0.66, 0.63/0.48/0.43/0.44, 0.89/0.70/
    //                   0.72/0.57: 32 up to N = 1536, then 512
    //   pq4-d4 fastscan 2.14/2.32/1.39/2.18, 1.62/1.45/1.45/1.32, 0.92/0.82/0.85/0.85, 1.52/1.41/
    //                   1.40/1.33: 32 up to N = 384, else never
    //   Then (2026-12-08) bytescan_u8 and quantize_byte_luts on AVX2 (gathers; they were
    //   scalar): tile / small at M = 1, 2, 4, 8, pq8-d4: 1.73/0.87/0.50/0.29, 1.52/0.77/0.43/
    //   0.27, 1.01/0.52/0.29/0.18, 1.35/0.70/0.38/0.23 (bench/thresholds.py --rows 1,2,4,8): 2
    {VQPath::kByteScan, 8, 8, 4, 4, "avx2", 2, static_cast<size_t>(-1), 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx2", 32, 1536, 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx2", 512, static_cast<size_t>(-1), 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx2", 32, 384, 1, true},
    {VQPath::kColumnBuckets, 1, 8, 1, kAnyD, "avx2", 4, 2048},
    {VQPath::kColumnBuckets, 1, 8, 1, kAnyD, "avx2", 8},
    {VQPath::kFastScan, 4, 4, 2, kAnyD, nullptr, kNever},
    {VQPath::kFastScanExact, 4, 4, 1, 1, nullptr, 8},       // km4: 0.75 at 8, 1.39 at 4
    {VQPath::kFastScanExact, 4, 4, 2, kAnyD, nullptr, 32},  // pq4-d4: 0.97 at 32, 1.47 at 16
    // Byte-scan (format 3, pq8-d4), ms byte-scan / tile (panel GEMM) at M = 1, 4, 8, 16, 24,
    // 1 thread, avx512vbmi (Xeon, 2026-12-02): 4096x4096 0.68/10.4, 2.1/10.3, 5.2/12.6,
    // 10.2/17.6, 15.7/22.6 (about equal at 32); 1280x1000 0.11/0.72, 0.42/0.68, 0.78/1.01,
    // 1.71/1.17; 384x1536 0.03/0.28, 0.13/0.41, 0.25/0.34, 0.49/0.41; 1536x384 0.11/0.33,
    // 0.48/0.41 (each row's 256-entry tables cost K * 256 multiply-adds: they pay off on wide
    // layers). Without VBMI the lookups are scalar: avx512 table 4096x4096 6.8/12.1 at 1,
    // 13.8/12.0 at 4; avx2 1280x1000 1.5/0.8 at 2.
    // bench/thresholds.py, tile / byte-scan at M = 4, 8, 16, 32, 64: 4096x4096 2.55/1.48/1.00/
    // 0.71 from 8; 384x1536 1.74/1.02/0.64; 1536x384 0.57 at 8; 1280x1000 1.23/0.74 at 8, 16.
    // The int8 tier (avx512vbmi-vnni, AMD EPYC, 2026-12-03), tile / small at M = 4, 8, 16,
    // 32, 64, 128 on 4096x4096, 384x1536, 1536x384, 1280x1000 (bench/thresholds.py):
    //   km5 decode_dot  3.52/2.44/1.95/1.38/0.69/0.49, 2.39/1.75/1.12/0.75/0.47, 2.50/1.93/1.28/
    //                   0.82/0.58, 2.85/2.08/1.34/0.85/0.58 (km3 per 16 rows alike; 1.00 at 32 on
    //                   4096x4096): 32 up to N = 2048
    //   pq8-d4 bytescan 5.18/2.84/1.49/0.93/0.57, 3.81/2.10/1.07/0.56, 1.40/0.72/0.35,
    //                   3.11/1.45/0.79/0.49: 8 / 16 / 32 by N
    //   rq 2x4 fastscan 10.65/4.78/2.46/1.78/1.12/0.83, 5.12/3.23/1.54/0.90/0.53, 2.45/1.26/0.60,
    //                   4.42/2.70/1.24/0.69: 16 / 32 / 128 by N
    // The other formats' rows above held (km4, binary, pq8-d4 axis out; pq4-d4 on 4096x4096
    // stays on fast-scan: 1.27 at 128).
    //   km4 fastscan (codes straight to int8) at M = 1, 2, 4, 8, 16: 2.26/1.23/0.63/0.59/0.47,
    //                   1.12/0.69/0.54/0.44, 0.78/0.50/0.36/0.17, 1.17/0.77/0.48/0.38: 2 up to N =
    //                   2048, then 4
    {VQPath::kFastScan, 4, 4, 1, 1, "avx512vbmi-vnni", 2, 2048},
    {VQPath::kFastScan, 4, 4, 1, 1, "avx512vbmi-vnni", 4},
    // Format-1 scalar codes straight to int8 too (decode_codes_s8), M = 1, 2, 4, 8, 16, 32 (quiet
    // host, 2026-12-03):
    //   km5 decode_dot  1.39/1.26/1.84/1.00/0.94/0.57, 1.08/1.03/1.06/0.76/0.59, 1.42/1.01/1.26/
    //                   0.76/0.61, 1.52/1.18/1.22/0.87/0.65
    //   km3 per 16 rows 2.90/2.10/1.84/2.01/1.19/0.76, 1.21/1.11/1.14/0.86, 1.67/1.30/1.31/0.88,
    //                   1.96/1.36/1.26/0.98: 8 up to N = 2048, then 32
    //   binary bit_lut  3.53/2.00/1.15/0.63/0.35, 5.70/3.14/1.44/0.73/0.40, 2.69/0.96/0.58/0.29,
    //                   3.57/2.13/0.93/0.50: 8, 4 up to N = 512
    // Then 64 codes per step (vbmi::CodeBytes) and, up to kInt8DecodeDotMaxRows rows, the codes
    // met by X as they are decoded (decode_dot_s8), M = 1, 2, 4, 8 (2026-12-03, k-means-like
    // codebooks: bench/kernels.py random_books):
    //   km5 decode_dot  0.81/0.65/0.68/0.67, 0.39/0.27/0.46/0.47, 0.48/0.34/0.77/0.53, 0.70/0.55/0.69/0.63
    //   km3 per 16 rows 0.52/0.48/0.71/0.74, 0.45/0.34/0.53/0.46, 0.57/0.46/0.61/0.56, 0.62/0.42/0.62/0.53
    //   binary bit_lut  0.90/0.49/0.35/0.26, 1.69/1.13/0.67/0.46, 0.65/0.34/0.23/0.16, 1.03/0.45/0.32/0.23:
    //                   4, 2 up to N = 1024, 1 up to N = 512
    // Then 3 instructions per 64 codes (vpermb, vpmultishiftqb, and) and binary codes as a mask
    // selecting one of two broadcasts (2026-12-04): km5 and km3 per 16 rows 0.70-0.91x the
    // time before at M = 1, 8 (bench/ab.py); binary tile / bit_lut at M = 1, 2, 4: 1.14/0.63/
    // 0.38, 0.84/0.53/0.32, 0.44/0.27/0.19, 0.69/0.42/0.29: 2, 1 up to N = 2048
    // These rows hold on the byte route only; codebooks it turns away (an outlier codeword)
    // decode float panels and quantize them, as the first int8 measurement above (km5: 32 up
    // to N = 2048, then the avx512 row; binary: the avx512 rows).
    {VQPath::kDecodeDot, 2, 8, 1, 1, "avx512vbmi-vnni", 1, static_cast<size_t>(-1), 1, true},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx512vbmi-vnni", 2, static_cast<size_t>(-1), 1, true},
    {VQPath::kBitLut, 1, 1, 1, 1, "avx512vbmi-vnni", 1, 2048, 1, true},
    {VQPath::kDecodeDot, 2, 8, 1, 1, "avx512vbmi-vnni", 32, 2048},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi-vnni", 8, 512},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi-vnni", 16, 1024},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi-vnni", 32},
    //   pq4-d4 fastscan 15.27/7.76/4.08/2.48/1.86/1.27, 5.83/3.62/2.05/1.21/0.78/0.62, 3.35/1.63/
    //                   0.94/0.54, 6.14/4.03/1.82/1.18/0.74/0.69: 16 / 64 up to N = 2048
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512vbmi-vnni", 16, 512},
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512vbmi-vnni", 64, 2048},
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512vbmi-vnni", 16, 512, 2},  // 1536x384: 0.60 at 16
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512vbmi-vnni", 32, 2048, 2},
    {VQPath::kFastScan, 4, 4, 2, 4, "avx512vbmi-vnni", 128, static_cast<size_t>(-1), 2},
    // d = 4 vector codebooks as int8 words (kVectorBytes, 128-column panels; AMD EPYC,
    // 2026-12-04), tile / small at M = 1, 2, 4, 8, 16, 32 on 4096x4096, 384x1536, 1536x384,
    // 1280x1000:
    //   pq4-d4 fastscan 6.05/3.50/2.11/1.66/1.29/1.17, 2.39/1.71/1.05/0.86/0.65, 1.55/0.84/0.57,
    //                   2.59/1.61/1.03/0.84/0.63: 2 up to N = 512, 8 up to 2048 (then the rows above)
    //   pq8-d4 bytescan (byte planes) 4.02/2.09/1.00/0.71/0.44, 2.63/1.35/0.73/0.46, 1.04/0.51/0.28,
    //                   1.97/1.03/0.64/0.39: 2 up to N = 512, 4 up to 2048, then 8
    //   rq 2x4 fastscan (one combined 8-bit codebook) 7.90/4.68/2.60/1.46/0.97/0.75, 3.74/2.36/1.36/
    //                   0.91/0.58, 2.04/1.03/0.64/0.38, 4.16/2.14/1.22/0.75: 4 / 8 / 16 by N
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni", 2, 512, 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni", 8, 2048, 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni", 4, 512, 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni", 8, 2048, 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni", 16, static_cast<size_t>(-1), 2, true},
    // AMX-INT8 tiles for the int8 GEMM from 16 rows (Xeon with AMX, 2026-12-04; bench/ab.py:
    // 0.41-0.97x the VNNI time at 16, 64 and 512 rows on the four layers), tile / small at M =
    // 8, 16, 32, 64, 128 (bench/thresholds.py):
    //   pq4-d4 fastscan 1.13/0.57/0.45/0.40/0.37, 0.70/0.38/0.26/0.20, 0.33/0.20/0.15, 0.53/0.32/
    //                   0.23/0.19: 16 on wider layers (VNNI: never); rq 2x4 1.04/0.59/0.33/0.26:
    //                   as VNNI; pq8-d4 and km4 win from 8 (as VNNI). An ISA's rows replace the
    //                   shorter names' (most specific first), so the VNNI vector rows repeat.
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 2, 512, 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 8, 2048, 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 16, static_cast<size_t>(-1), 1, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 4, 512, 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 8, 2048, 2, true},
    {VQPath::kFastScan, 4, 4, 4, 4, "avx512vbmi-vnni-amx", 16, static_cast<size_t>(-1), 2, true},
    // pq8-d4 at M = 1, 2, 4 on 1536x384, 384x1536, 1280x1000 on the Xeon (2026-12-04): 0.67/0.29/
    // 0.16, 2.28/1.34/0.69, 1.37/0.69/0.37: 1 up to N = 512 (1.04 at 1 on the EPYC above)
    {VQPath::kByteScan, 8, 8, 4, 4, "avx512vbmi-vnni", 1, 512, 1, true},
    {VQPath::kByteScan, 8, 8, 4, 4, "avx512vbmi-vnni", 4, 2048, 1, true},
    {VQPath::kByteScan, 8, 8, 4, 4, "avx512vbmi-vnni", 8, static_cast<size_t>(-1), 1, true},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi", 8, 512},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi", 16, 2048},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, "avx512vbmi", 64},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, nullptr, 2, 2048},
    {VQPath::kByteScan, 8, 8, 2, kAnyD, nullptr, 4},
    {VQPath::kByteScanExact, 8, 8, 2, kAnyD, nullptr, 4},
    {VQPath::kLut, 1, 8, 1, kAnyD, nullptr, 8},
    {VQPath::kRowBuckets, 1, 8, 1, kAnyD, nullptr, 1},
    {VQPath::kDecodeDot, 2, 8, 1, 1, nullptr, 32},  // AVX-512's first measurement (above); AVX2 inherits it
    {VQPath::kBitLut, 1, 1, 1, 1, nullptr, 64},
    {VQPath::kColumnBuckets, 1, 8, 1, kAnyD, nullptr, 4},   // pq8-d4 axis out: 0.95 at 4
    // Codebooks per few rows (groups smaller than the codebook): the direct gather-dot is
    // slow at any M; the replaced decode path measured 890 vs 159 ms at M = 2.
    {VQPath::kDirect, 1, 8, 1, kAnyD, nullptr, 1},
};

size_t measured_min_rows(const VQProblem& p, VQPath small, const KernelTable& kernels) {
  const TileGemmThreshold* best = nullptr;
  int byte_route = -1;  // int8_route(p) != kFloatPanels, once it is asked (it reads every codebook)
  auto takes_byte_route = [&] {
    if (byte_route < 0)
      byte_route = int8_panels_enabled(kernels) &&
                   measured_byte_route(p.prepared != nullptr ? p.prepared->books.route : route_on(kernels, int8_route(p)));
    return byte_route == 1;
  };
  for (const TileGemmThreshold& row : kTileGemmThresholds) {
    if (row.small != small || p.bits < row.min_bits || p.bits > row.max_bits) continue;
    if (p.d < row.min_d || p.d > row.max_d || p.N > row.max_outputs || p.T < row.min_stages) continue;
    if (row.isa != nullptr && std::strncmp(row.isa, kernels.name, std::strlen(row.isa)) != 0) continue;
    if (row.byte_route && !takes_byte_route()) continue;
    // The most specific row wins: an ISA's own over the shared ones (the longest name:
    // "avx512vbmi-vnni" over "avx512"), then one for the int8 byte route where it applies,
    // then the one limited to the narrowest layers, then one for residual stages; the first
    // of equals.
    auto rank = [](const TileGemmThreshold& r) {  // larger is more specific
      return std::make_tuple(r.isa != nullptr ? std::strlen(r.isa) : 0, r.byte_route, ~r.max_outputs, r.min_stages);
    };
    if (best == nullptr || rank(row) > rank(*best)) best = &row;
  }
  return best ? best->min_rows : kNever;
}
// The table's row for `small`, or ONNXVQ_TILE_GEMM_MIN_ROWS when set.
size_t tile_threshold(const VQProblem& p, VQPath small, const KernelTable& kernels) {
  static const size_t forced = env_size("ONNXVQ_TILE_GEMM_MIN_ROWS");
  return forced ? forced : measured_min_rows(p, small, kernels);
}

}  // namespace

size_t tile_gemm_min_rows(const VQProblem& p, const KernelTable& kernels) {
  return tile_threshold(p, choose_small_path(p), kernels);
}

VQPath choose_path(const VQProblem& p, const KernelTable& kernels) {
  if (p.M > 0 && p.M >= tile_gemm_min_rows(p, kernels)) return VQPath::kTileGemm;
  return choose_small_path(p);
}

const char* path_name(VQPath path) {
  switch (path) {
    case VQPath::kLut: return "lut";
    case VQPath::kRowBuckets: return "row_buckets";
    case VQPath::kBitLut: return "bit_lut";
    case VQPath::kColumnBuckets: return "column_buckets";
    case VQPath::kDirect: return "direct";
    case VQPath::kDecodeDot: return "decode_dot";
    case VQPath::kFastScan: return "fastscan";
    case VQPath::kFastScanExact: return "fastscan_exact";
    case VQPath::kByteScan: return "bytescan";
    case VQPath::kByteScanExact: return "bytescan_exact";
    case VQPath::kTileGemm: return "tile_gemm";
  }
  return "unknown";
}

void vq_matmul(const VQProblem& problem, const TaskRunner& runner, const KernelTable& kernels,
               const DenseGemm& gemm) {
  if (problem.M == 0 || problem.N == 0) return;
  const Context context(problem, kernels, runner);
  switch (choose_path(problem, kernels)) {
    case VQPath::kTileGemm: return run_tile_gemm_path(context, gemm);
    case VQPath::kLut: return run_lut_path(context);
    case VQPath::kRowBuckets: return run_row_buckets_path(context);
    case VQPath::kDecodeDot: return run_decode_dot_path(context);
    case VQPath::kBitLut: return run_bit_lut_path(context);
    case VQPath::kColumnBuckets: return run_column_buckets_path(context);
    case VQPath::kDirect:
      return problem.axis == 0 ? run_direct_axis0(context) : run_direct_axis1(context);
    case VQPath::kFastScan: return run_fastscan_path(context, /*exact=*/false, gemm);
    case VQPath::kFastScanExact: return run_fastscan_path(context, /*exact=*/true, gemm);
    case VQPath::kByteScan: return run_fastscan_path(context, /*exact=*/false, gemm);
    case VQPath::kByteScanExact: return run_fastscan_path(context, /*exact=*/true, gemm);
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

extern "C" int onnxvq_int8_panels(void) {
  return onnxvq::kernels::int8_panels_enabled(onnxvq::kernels::active_kernel_table()) ? 1 : 0;
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
  const bool v3_ok = format_version == 3 && axis == 0 && bits == 8 && subvector_len >= 2;
  const bool valid = (format_version == 1 || v2_ok || v3_ok) && in_features >= 1 && out_features >= 1 && bits >= 1 && bits <= 8 &&
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
