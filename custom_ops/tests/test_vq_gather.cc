// VQGather kernels: the scalar table against naive oracles (a float32 decode in the documented
// summation order: bit for bit; a double decode: within float rounding), every other table
// against scalar bit for bit on awkward shapes (d = 1, 3, 5, 8, 17; D not a multiple of d;
// V = 1, 31, 33; T = 1..3; row groups; float16-valued codebooks; both axes and formats), the
// decode_row micro-kernel alone, thread independence and the index rules. Buffers have their
// exact sizes, so a sanitizer build catches any out-of-bounds access.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/float16.h"
#include "kernels/vq_kernel.h"

namespace {

using onnxvq::kernels::KernelTable;
using onnxvq::kernels::TaskRunner;
using onnxvq::kernels::VQGatherProblem;
using onnxvq::kernels::VQProblem;

int g_failures = 0;

#define GEXPECT(condition, ...)                                                     \
  do {                                                                              \
    if (!(condition)) {                                                             \
      ++g_failures;                                                                 \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #condition);   \
      std::fprintf(stderr, __VA_ARGS__);                                            \
      std::fprintf(stderr, "\n");                                                   \
    }                                                                               \
  } while (0)

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

struct GatherCase {
  VQGatherProblem g;
  std::vector<uint8_t> codes;
  std::vector<float> codebooks, y;
  std::vector<int32_t> idx32;
  std::vector<int64_t> idx64;
};

unsigned code_of(const VQProblem& p, const std::vector<uint8_t>& codes, size_t t, size_t r, size_t s) {
  if (p.format_version == 2) {
    const uint8_t byte = codes[((r / 32) * p.T * p.S + t * p.S + s) * 16 + r % 16];
    return (r % 32) < 16 ? byte & 15u : byte >> 4;
  }
  const uint64_t index = (uint64_t(t) * p.rows() + r) * p.S + s;
  unsigned code = 0;
  for (unsigned b = 0; b < p.bits; ++b) {
    const uint64_t bit = index * p.bits + b;
    code |= ((codes[bit / 8] >> (bit % 8)) & 1u) << b;
  }
  return code;
}

// Element (v, k) of the table T_hat = W_hat^T, as float32 summed t ascending from stage 0
// or in double (`in_double`); *magnitude = sum of |terms| (the float rounding scale).
double table_value(const GatherCase& c, size_t v, size_t k, bool in_double, double* magnitude = nullptr) {
  const VQProblem& p = c.g.layout;
  const size_t r = p.axis == 0 ? v : k, l = p.axis == 0 ? k : v;
  const size_t s = l / p.d, j = l % p.d, gs = p.per_subspace ? s : 0, g = r / p.group_size;
  float f = 0.0f;
  double sum = 0.0;
  for (size_t t = 0; t < p.T; ++t) {
    const size_t code = code_of(p, c.codes, t, r, s);
    const float w = c.codebooks[(((t * p.subspace_groups() + gs) * p.row_groups() + g) * p.codewords() + code) * p.d + j];
    f = t == 0 ? w : f + w;
    sum += w;
    if (magnitude) *magnitude += std::abs(double(w));
  }
  return in_double ? sum : f;
}

size_t row_of(const GatherCase& c, size_t i) {
  const int64_t v = c.g.indices64 ? c.g.indices64[i] : c.g.indices32[i];
  return static_cast<size_t>(v < 0 ? v + static_cast<int64_t>(c.g.table_rows()) : v);
}

void fill(GatherCase& c, std::mt19937& rng, size_t count, bool half_books) {
  VQProblem& p = c.g.layout;
  std::normal_distribution<float> normal;
  c.codes.resize(p.format_version == 2 ? p.fastscan_blocks() * p.T * p.S * 16
                                       : (p.T * p.rows() * p.S * p.bits + 7) / 8);
  for (auto& b : c.codes) b = static_cast<uint8_t>(rng());
  c.codebooks.resize(p.T * p.subspace_groups() * p.row_groups() * p.codewords() * p.d);
  for (auto& v : c.codebooks) {
    v = normal(rng);
    if (half_books) {  // a float16 value, widened exactly as the adapter does
      uint16_t h = static_cast<uint16_t>(rng());
      if (((h >> 10) & 0x1f) == 0x1f) h &= 0xbbff;  // no inf / NaN
      v = onnxvq::kernels::half_to_float(h);
    }
  }
  const int64_t V = static_cast<int64_t>(p.N);
  const bool wide = rng() % 2;
  c.idx32.clear(), c.idx64.clear();
  for (size_t i = 0; i < count; ++i) {
    const int64_t v = static_cast<int64_t>(rng() % (2 * p.N)) - V;  // [-V, V)
    if (wide) c.idx64.push_back(v); else c.idx32.push_back(static_cast<int32_t>(v));
  }
  c.g.count = count;
  c.g.indices64 = wide ? c.idx64.data() : nullptr;
  c.g.indices32 = wide ? nullptr : c.idx32.data();
  c.y.assign(count * p.K, std::nanf(""));  // every element must be written
  p.codes = c.codes.data();
  p.codebooks = c.codebooks.data();
  c.g.y = c.y.data();
}

GatherCase make_case(std::mt19937& rng, size_t V, size_t D, size_t d, size_t count) {
  GatherCase c;
  VQProblem& p = c.g.layout;
  p.K = D, p.N = V, p.d = d;
  p.bits = 1 + rng() % 8;
  p.T = 1 + rng() % 3;
  p.axis = static_cast<int>(rng() % 2);
  p.S = (p.length() + d - 1) / d;
  const size_t choices[] = {1, 2, 5, 32, 1000};
  p.group_size = std::min(choices[rng() % 5], p.rows());
  p.per_subspace = rng() % 2;
  if (p.axis == 0 && rng() % 4 == 0) p.bits = 4, p.format_version = 2;
  fill(c, rng, count, rng() % 4 == 0);
  return c;
}

void run_threaded(void*, TaskRunner::TaskFn fn, size_t num_tasks, void* data) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < num_tasks;) fn(data, num_tasks - 1 - i);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker);
  for (auto& thread : threads) thread.join();
}

const size_t kV[] = {1, 31, 33};
const size_t kD[] = {1, 3, 7, 16, 17, 40};
const size_t kSub[] = {1, 3, 5, 8, 17};

// Scalar against both oracles, on every (V, D, d) of the grid with random layouts.
void test_scalar_against_oracle(std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  int cases = 0;
  for (int round = 0; round < 3; ++round)
    for (size_t V : kV)
      for (size_t D : kD)
        for (size_t d : kSub) {
          const size_t count = std::vector<size_t>{0, 1, 5, 40}[rng() % 4];
          GatherCase c = make_case(rng, V, D, d, count);
          onnxvq::kernels::vq_gather(c.g, {}, scalar);
          const VQProblem& p = c.g.layout;
          bool ok = true;
          for (size_t i = 0; i < count && ok; ++i)
            for (size_t k = 0; k < D && ok; ++k) {
              const float got = c.y[i * D + k];
              const float want = static_cast<float>(table_value(c, row_of(c, i), k, false));
              double magnitude = 0.0;
              const double exact = table_value(c, row_of(c, i), k, true, &magnitude);
              ok = same_bits(got, want) && std::abs(double(got) - exact) <= 2.5e-7 * magnitude;
              GEXPECT(ok, "scalar gather: axis=%d V=%zu D=%zu d=%zu bits=%u T=%zu gs=%zu per_s=%d fmt=%d "
                      "y[%zu][%zu]=%.9g want %.9g (double %.9g)", p.axis, V, D, d, p.bits, p.T,
                      p.group_size, p.per_subspace, p.format_version, i, k, got, want, exact);
            }
          ++cases;
        }
  std::printf("gather: scalar equal to the float32 oracle on %d cases\n", cases);
}

// A SIMD table against scalar, whole problems and decode_row alone: bit for bit.
void test_simd_against_scalar(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  int cases = 0;
  for (int round = 0; round < 3; ++round)
    for (size_t V : kV)
      for (size_t D : kD)
        for (size_t d : kSub) {
          GatherCase c = make_case(rng, V, D, d, 1 + rng() % 37);
          onnxvq::kernels::vq_gather(c.g, {}, scalar);
          const std::vector<float> want = c.y;
          std::fill(c.y.begin(), c.y.end(), std::nanf(""));
          onnxvq::kernels::vq_gather(c.g, {}, simd);
          GEXPECT(std::equal(want.begin(), want.end(), c.y.begin(), same_bits),
                  "%s gather vs scalar: axis=%d V=%zu D=%zu d=%zu bits=%u T=%zu fmt=%d", simd.name,
                  c.g.layout.axis, V, D, d, c.g.layout.bits, c.g.layout.T, c.g.layout.format_version);
          ++cases;
        }
  // decode_row alone: long rows (the d = 1 gather path needs S >= 8), partial last chunks,
  // shared and per-subspace codebooks, 1..3 stages.
  std::normal_distribution<float> normal;
  int rows = 0;
  for (size_t d : {1u, 2u, 3u, 4u, 5u, 8u, 9u, 16u, 17u})
    for (size_t L : {1u, 7u, 8u, 9u, 31u, 64u, 100u})
      for (size_t T : {1u, 2u, 3u})
        for (int per : {0, 1}) {
          const size_t S = (L + d - 1) / d, ncw = size_t{1} << (1 + rng() % 8);
          const size_t sub_stride = per ? ncw * d : 0, stage_stride = (per ? S : 1) * ncw * d;
          std::vector<float> books(T * stage_stride);
          for (auto& v : books) v = normal(rng);
          std::vector<uint8_t> codes(T * S);
          for (auto& b : codes) b = static_cast<uint8_t>(rng() % ncw);
          std::vector<float> a(L, std::nanf("")), b(L, std::nanf(""));
          scalar.decode_row(codes.data(), T, S, d, L, books.data(), stage_stride, sub_stride, a.data());
          simd.decode_row(codes.data(), T, S, d, L, books.data(), stage_stride, sub_stride, b.data());
          GEXPECT(std::equal(a.begin(), a.end(), b.begin(), same_bits),
                  "%s decode_row d=%zu L=%zu T=%zu per=%d", simd.name, d, L, T, per);
          ++rows;
        }
  std::printf("%s: gather equal to scalar on %d cases and %d decode_row shapes\n", simd.name, cases, rows);
}

void test_threads_and_index_rules(const KernelTable& kernels, std::mt19937& rng) {
  for (int i = 0; i < 12; ++i) {
    GatherCase c = make_case(rng, 33, 40, kSub[i % 5], 3000);  // enough work for many tasks
    onnxvq::kernels::vq_gather(c.g, {}, kernels);
    const std::vector<float> serial = c.y;
    std::fill(c.y.begin(), c.y.end(), std::nanf(""));
    TaskRunner runner;
    runner.run = run_threaded;
    onnxvq::kernels::vq_gather(c.g, runner, kernels);
    GEXPECT(std::equal(serial.begin(), serial.end(), c.y.begin(), same_bits),
            "%s: threaded gather differs", kernels.name);
  }
  // Out-of-range indices: found, reported, and nothing written.
  const int64_t bad_values[] = {33, -34, std::numeric_limits<int64_t>::max(),
                                std::numeric_limits<int64_t>::min(), int64_t{1} << 32};
  for (int64_t bad : bad_values) {
    GatherCase c = make_case(rng, 33, 17, 3, 10);
    c.idx64.assign(10, -33);
    c.idx64[7] = bad;
    c.g.indices64 = c.idx64.data(), c.g.indices32 = nullptr;
    int64_t value = 0;
    GEXPECT(onnxvq::kernels::vq_gather_first_invalid(c.g, &value) == 7 && value == bad,
            "first_invalid for %lld", static_cast<long long>(bad));
    bool threw = false;
    try {
      onnxvq::kernels::vq_gather(c.g, {}, kernels);
    } catch (const std::out_of_range&) {
      threw = true;
    }
    GEXPECT(threw && std::all_of(c.y.begin(), c.y.end(), [](float v) { return std::isnan(v); }),
            "%s: index %lld must throw before writing", kernels.name, static_cast<long long>(bad));
  }
  {  // int32 extremes, and the valid ends -V and V-1
    GatherCase c = make_case(rng, 31, 5, 2, 4);
    c.idx32 = {-31, 30, 0, std::numeric_limits<int32_t>::min()};
    c.g.indices32 = c.idx32.data(), c.g.indices64 = nullptr;
    int64_t value = 0;
    GEXPECT(onnxvq::kernels::vq_gather_first_invalid(c.g, &value) == 3 &&
                value == std::numeric_limits<int32_t>::min(), "int32 first_invalid");
    c.g.count = 3;
    onnxvq::kernels::vq_gather(c.g, {}, kernels);
    GEXPECT(!std::isnan(c.y[0]) && !std::isnan(c.y[14]), "valid ends decoded");
  }
}

}  // namespace

// Called by test_vq_kernel.cc's main for the scalar table and every other supported table;
// returns the number of failures.
int run_gather_tests(const KernelTable* const* tables, size_t count) {
  std::mt19937 rng(777);
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  test_scalar_against_oracle(rng);
  for (size_t i = 0; i < count; ++i) {
    test_threads_and_index_rules(*tables[i], rng);
    if (tables[i] != &scalar) test_simd_against_scalar(*tables[i], rng);
  }
  return g_failures;
}
