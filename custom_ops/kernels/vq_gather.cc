// VQGather driver: decodes only the gathered rows of a compressed table T_hat[V, D] = W_hat^T.
//
// axis 0 (rows of M are table rows): per index, unpack the row's T*S codes and let the
// kernel table's decode_row sum the codeword chunks (the SIMD part). axis 1 (table row v is
// column v of M): per index, one code per (stage, row k of M), read from subspace v / d at
// position v % d; scalar, since every element needs its own code from a different row.
//
// Determinism: one task writes each output row, in an order fixed by the layout alone.
#include <stdexcept>
#include <string>
#include <vector>

#include "vq_kernel.h"
#include "vq_tasks.h"

namespace onnxvq::kernels {
namespace {

int64_t index_at(const VQGatherProblem& p, size_t i) {
  return p.indices64 ? p.indices64[i] : static_cast<int64_t>(p.indices32[i]);
}

// The row of T_hat an index names, for a valid index.
size_t table_row(const VQGatherProblem& p, size_t i) {
  const int64_t v = index_at(p, i);
  return static_cast<size_t>(v < 0 ? v + static_cast<int64_t>(p.table_rows()) : v);
}

struct Strides {
  size_t codebook;  // floats per codebook: 2^bits * d
  size_t group;     // between row groups
  size_t subspace;  // between subspace groups (0 when shared)
  size_t stage;     // between stages
};

Strides strides_of(const VQProblem& p) {
  Strides s;
  s.codebook = p.codewords() * p.d;
  s.group = s.codebook;
  s.subspace = p.per_subspace ? p.row_groups() * s.codebook : 0;
  s.stage = p.subspace_groups() * p.row_groups() * s.codebook;
  return s;
}

void decode_axis0(const VQProblem& p, const KernelTable& k, const Strides& st, size_t r,
                  uint8_t* codes, float* out) {
  for (size_t t = 0; t < p.T; ++t) detail::unpack_codes_of_row(p, k, t, r, 0, p.S, codes + t * p.S);
  const float* books = p.codebooks + (r / p.group_size) * st.group;
  k.decode_row(codes, p.T, p.S, p.d, p.K, books, st.stage, st.subspace, out);
}

// Column v of M = W_hat [D, V]: out[k] = sum_t book(t, s, k / group_size)[code(t, k, s)*d + j].
void decode_axis1(const VQProblem& p, const KernelTable& k, const Strides& st, size_t v,
                  float* out) {
  const size_t s = v / p.d, j = v % p.d;
  const float* base = p.codebooks + s * st.subspace + j;
  for (size_t row = 0; row < p.K; ++row) {
    const float* books = base + (row / p.group_size) * st.group;
    uint8_t code = 0;
    detail::unpack_codes_of_row(p, k, 0, row, s, 1, &code);
    float sum = books[code * p.d];
    for (size_t t = 1; t < p.T; ++t) {
      detail::unpack_codes_of_row(p, k, t, row, s, 1, &code);
      sum += books[t * st.stage + code * p.d];
    }
    out[row] = sum;
  }
}

}  // namespace

size_t vq_gather_first_invalid(const VQGatherProblem& p, int64_t* value) {
  const int64_t rows = static_cast<int64_t>(p.table_rows());
  for (size_t i = 0; i < p.count; ++i) {
    const int64_t v = index_at(p, i);
    if (v < -rows || v >= rows) {
      if (value) *value = v;
      return i;
    }
  }
  return p.count;
}

void vq_gather(const VQGatherProblem& problem, const TaskRunner& runner, const KernelTable& kernels) {
  int64_t bad = 0;
  const size_t at = vq_gather_first_invalid(problem, &bad);
  if (at != problem.count)
    throw std::out_of_range("index " + std::to_string(bad) + " (position " + std::to_string(at) +
                            ") is out of range for a table of " +
                            std::to_string(problem.table_rows()) + " rows");
  const VQProblem& p = problem.layout;
  const size_t D = problem.row_length();
  if (problem.count == 0 || D == 0) return;
  const Strides st = strides_of(p);
  const double work = static_cast<double>(problem.count) * static_cast<double>(p.T) * D;
  const detail::Blocks blocks = detail::Blocks::split(problem.count, detail::task_count(work));
  detail::run_tasks(runner, blocks.count, [&](size_t task) {
    std::vector<uint8_t> codes(p.axis == 0 ? p.T * p.S : 0);
    for (size_t i = blocks.begin(task); i < blocks.end(task); ++i) {
      float* out = problem.y + i * D;
      if (p.axis == 0)
        decode_axis0(p, kernels, st, table_row(problem, i), codes.data(), out);
      else
        decode_axis1(p, kernels, st, table_row(problem, i), out);
    }
  });
}

}  // namespace onnxvq::kernels
