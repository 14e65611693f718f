// VQMatMul driver: path choice, tiling, threading and run-time kernel-table dispatch.
//
// Determinism: every output element is produced by exactly one task, with a summation
// order fixed by the layout alone (never by the tiling or the thread count), so results do
// not depend on intra_op_num_threads or on the batch size.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <vector>

#include "vq_kernel.h"

namespace onnxvq::kernels {
namespace {

// --- tuning constants (shape-only; changing them never changes results) ---------------
constexpr size_t kMinTaskWork = size_t{1} << 15;  // ~inner-loop steps worth one task
constexpr size_t kMaxTasks = 64;                  // more tasks than this only adds overhead
constexpr size_t kLutBudgetBytes = size_t{1} << 20;     // LUTs of one chunk of input rows
constexpr size_t kCodeTileBudgetBytes = size_t{1} << 20;  // unpacked codes kept per task
constexpr size_t kBucketBudgetBytes = size_t{256} << 10;  // bucket sums kept per task

size_t ceil_div(size_t a, size_t b) { return a / b + (a % b != 0); }

// --- task plumbing -------------------------------------------------------------------

// Runs body(i) for i < num_tasks through the runner. Exceptions thrown by a task are
// caught on the worker (they must not cross the runner's C boundary) and the first one is
// rethrown here after all tasks finished.
template <typename Body>
void run_tasks(const TaskRunner& runner, size_t num_tasks, const Body& body) {
  if (num_tasks == 0) return;
  if (num_tasks == 1 || runner.run == nullptr) {
    for (size_t i = 0; i < num_tasks; ++i) body(i);
    return;
  }
  struct Shared {
    const Body* body;
    std::mutex mutex;
    std::exception_ptr error;
  } shared{&body, {}, nullptr};
  TaskRunner::TaskFn trampoline = [](void* data, size_t i) {
    auto* s = static_cast<Shared*>(data);
    try {
      (*s->body)(i);
    } catch (...) {
      std::lock_guard<std::mutex> lock(s->mutex);
      if (!s->error) s->error = std::current_exception();
    }
  };
  runner.run(runner.runner_context, trampoline, num_tasks, &shared);
  if (shared.error) std::rethrow_exception(shared.error);
}

size_t task_count(double total_work) {
  const double tasks = total_work / static_cast<double>(kMinTaskWork);
  if (tasks <= 1.0) return 1;
  return tasks >= static_cast<double>(kMaxTasks) ? kMaxTasks : static_cast<size_t>(tasks);
}

// `total` items cut into `count` contiguous blocks of `size` items (the last may be short).
struct Blocks {
  size_t total, size, count;
  static Blocks split(size_t total, size_t parts) {
    parts = std::max<size_t>(1, std::min(parts, total));
    const size_t size = std::max<size_t>(1, ceil_div(total, parts));
    return {total, size, ceil_div(total, size)};
  }
  size_t begin(size_t i) const { return i * size; }
  size_t end(size_t i) const { return std::min(total, (i + 1) * size); }
};

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
    const uint64_t first = (static_cast<uint64_t>(t) * R + r) * p.S + s0;
    k.unpack_codes(p.codes, first, count, p.bits, out);
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
  const Blocks blocks = Blocks::split(outputs, task_count(double(outputs) * rows * entries));
  run_tasks(c.runner, blocks.count, [&](size_t task) {
    std::vector<uint8_t> codes(entries);
    for (size_t n = n0 + blocks.begin(task); n < n0 + blocks.end(task); ++n) {
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

// --- dispatch ---------------------------------------------------------------------------

bool force_scalar_requested() {
  const char* value = std::getenv("ONNXVQ_FORCE_SCALAR");
  return value != nullptr && value[0] != '\0' && std::strcmp(value, "0") != 0;
}

const KernelTable& select_kernel_table() {
  if (force_scalar_requested()) return scalar_kernel_table();
  // SIMD tables go here, best first, each behind its build flag and a CPU check, e.g.
  //   #if defined(ONNXVQ_HAVE_AVX2)
  //     if (cpu_supports_avx2_fma()) return avx2_kernel_table();
  //   #endif
  return scalar_kernel_table();
}

}  // namespace

const KernelTable& active_kernel_table() {
  static const KernelTable& table = select_kernel_table();
  return table;
}

VQPath choose_path(const VQProblem& p) {
  const size_t ncw = p.codewords();
  // One LUT (or bucket set) per row group pays off when the group has at least as many
  // rows as there are codewords; otherwise building it costs more than it saves.
  const bool tables_pay_off = p.row_groups() == 1 || p.group_size >= ncw;
  if (p.axis == 0) {
    // Scalar codebooks shared across the row: adding inputs that share a code and
    // multiplying once per codeword needs 2^bits floats, where a LUT needs K * 2^bits.
    if (p.d == 1 && p.subspace_groups() == 1 && p.S >= ncw) return VQPath::kRowBuckets;
    return tables_pay_off ? VQPath::kLut : VQPath::kDirect;
  }
  return tables_pay_off ? VQPath::kColumnBuckets : VQPath::kDirect;
}

const char* path_name(VQPath path) {
  switch (path) {
    case VQPath::kLut: return "lut";
    case VQPath::kRowBuckets: return "row_buckets";
    case VQPath::kColumnBuckets: return "column_buckets";
    case VQPath::kDirect: return "direct";
  }
  return "unknown";
}

void vq_matmul(const VQProblem& problem, const TaskRunner& runner, const KernelTable& kernels) {
  if (problem.M == 0 || problem.N == 0) return;
  const Context context(problem, kernels, runner);
  switch (choose_path(problem)) {
    case VQPath::kLut: return run_lut_path(context);
    case VQPath::kRowBuckets: return run_row_buckets_path(context);
    case VQPath::kColumnBuckets: return run_column_buckets_path(context);
    case VQPath::kDirect:
      return problem.axis == 0 ? run_direct_axis0(context) : run_direct_axis1(context);
  }
}

}  // namespace onnxvq::kernels

// --- C entry points ---------------------------------------------------------------------

extern "C" const char* onnxvq_kernel_name(void) {
  return onnxvq::kernels::active_kernel_table().name;
}

extern "C" const char* onnxvq_kernel_path(int64_t in_features, int64_t out_features, int64_t bits,
                                          int64_t subvector_len, int64_t stages, int64_t axis,
                                          int64_t group_size, int64_t codebook_per_subspace) {
  using onnxvq::kernels::VQProblem;
  const bool valid = in_features >= 1 && out_features >= 1 && bits >= 1 && bits <= 8 &&
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
  if (p.group_size > p.rows()) return "invalid";
  p.S = (p.length() + p.d - 1) / p.d;
  return onnxvq::kernels::path_name(onnxvq::kernels::choose_path(p));
}
