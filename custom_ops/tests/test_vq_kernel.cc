// The kernels against a naive C++ oracle (decode W_hat in double, then matmul), over random
// layouts, plus bit-unpacking and thread-independence checks. Buffers are allocated at
// their exact sizes so a sanitizer build catches any out-of-bounds access.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kernels/vq_kernel.h"

namespace {

using onnxvq::kernels::KernelTable;
using onnxvq::kernels::TaskRunner;
using onnxvq::kernels::VQProblem;

int g_failures = 0;

#define EXPECT(condition, ...)                                   \
  do {                                                           \
    if (!(condition)) {                                          \
      ++g_failures;                                              \
      std::fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #condition); \
      std::fprintf(stderr, __VA_ARGS__);                         \
      std::fprintf(stderr, "\n");                                \
    }                                                            \
  } while (0)

unsigned naive_code(const std::vector<uint8_t>& stream, uint64_t index, unsigned bits) {
  unsigned code = 0;
  for (unsigned b = 0; b < bits; ++b) {
    const uint64_t bit = index * bits + b;
    code |= ((stream[bit / 8] >> (bit % 8)) & 1u) << b;
  }
  return code;
}

void test_unpack_codes(const KernelTable& kernels, std::mt19937& rng) {
  for (unsigned bits = 1; bits <= 8; ++bits) {
    for (size_t num_codes : {1u, 2u, 7u, 8u, 9u, 63u, 100u}) {
      std::vector<uint8_t> stream((num_codes * bits + 7) / 8);
      for (auto& byte : stream) byte = static_cast<uint8_t>(rng());
      for (size_t first = 0; first < num_codes; ++first) {
        const size_t count = num_codes - first;
        std::vector<uint8_t> out(count);
        kernels.unpack_codes(stream.data(), first, count, bits, out.data());
        for (size_t i = 0; i < count; ++i)
          EXPECT(out[i] == naive_code(stream, first + i, bits), "bits=%u first=%zu i=%zu", bits,
                 first, i);
      }
    }
  }
}

struct Case {
  VQProblem p;
  std::vector<float> x, codebooks, bias, y;
  std::vector<uint8_t> codes;
};

Case random_case(std::mt19937& rng, size_t M) {
  auto pick = [&](std::initializer_list<size_t> values) {
    return *(values.begin() + rng() % values.size());
  };
  Case c;
  VQProblem& p = c.p;
  p.M = M;
  p.K = pick({1, 2, 3, 7, 17, 33, 100});
  p.N = pick({1, 2, 3, 7, 17, 33, 100});
  p.bits = 1 + rng() % 8;
  p.d = pick({1, 2, 3, 4, 5, 8});
  p.T = pick({1, 1, 2, 3});
  p.axis = static_cast<int>(rng() % 2);
  p.S = (p.length() + p.d - 1) / p.d;
  const size_t R = p.rows();
  p.group_size = pick({1, 2, 5, 1000});
  p.group_size = std::min(p.group_size, R);
  p.per_subspace = rng() % 2;

  std::normal_distribution<float> normal;
  c.x.resize(p.M * p.K);
  for (auto& v : c.x) v = normal(rng);
  c.codes.resize((p.T * R * p.S * p.bits + 7) / 8);
  for (auto& byte : c.codes) byte = static_cast<uint8_t>(rng());
  c.codebooks.resize(p.T * p.subspace_groups() * p.row_groups() * p.codewords() * p.d);
  for (auto& v : c.codebooks) v = normal(rng);
  if (rng() % 2) {
    c.bias.resize(p.N);
    for (auto& v : c.bias) v = normal(rng);
  }
  c.y.assign(p.M * p.N, std::nanf(""));  // every element must be written
  p.x = c.x.data();
  p.codes = c.codes.data();
  p.codebooks = c.codebooks.data();
  p.bias = c.bias.empty() ? nullptr : c.bias.data();
  p.y = c.y.data();
  return c;
}

// Y in double from the decoded weight.
std::vector<double> naive_matmul(const Case& c) {
  const VQProblem& p = c.p;
  const size_t R = p.rows(), L = p.length(), ncw = p.codewords();
  std::vector<double> w(p.K * p.N, 0.0);  // (K, N)
  for (size_t t = 0; t < p.T; ++t)
    for (size_t r = 0; r < R; ++r)
      for (size_t s = 0; s < p.S; ++s) {
        const unsigned code = naive_code(c.codes, (t * R + r) * p.S + s, p.bits);
        const size_t gs = p.per_subspace ? s : 0, g = r / p.group_size;
        const float* cw = &c.codebooks[(((t * p.subspace_groups() + gs) * p.row_groups() + g) * ncw + code) * p.d];
        for (size_t j = 0; j < p.d && s * p.d + j < L; ++j) {
          const size_t l = s * p.d + j;
          const size_t k = p.axis == 0 ? l : r, n = p.axis == 0 ? r : l;
          w[k * p.N + n] += cw[j];
        }
      }
  std::vector<double> y(p.M * p.N, 0.0);
  for (size_t m = 0; m < p.M; ++m)
    for (size_t n = 0; n < p.N; ++n) {
      double sum = p.bias ? p.bias[n] : 0.0;
      for (size_t k = 0; k < p.K; ++k) sum += double(c.x[m * p.K + k]) * w[k * p.N + n];
      y[m * p.N + n] = sum;
    }
  return y;
}

// A runner that runs tasks on several threads, in a scrambled order.
void threaded_run(void*, TaskRunner::TaskFn fn, size_t num_tasks, void* data) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i; (i = next.fetch_add(1)) < num_tasks;) fn(data, num_tasks - 1 - i);
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < 3; ++t) threads.emplace_back(worker);
  for (auto& thread : threads) thread.join();
}

void test_against_oracle(const KernelTable& kernels, std::mt19937& rng) {
  int cases = 0;
  for (int i = 0; i < 3000; ++i) {
    Case c = random_case(rng, std::vector<size_t>{0, 1, 2, 5, 33}[rng() % 5]);
    onnxvq::kernels::vq_matmul(c.p, {}, kernels);
    const std::vector<double> expected = naive_matmul(c);
    double scale = 1.0;
    for (double v : expected) scale = std::max(scale, std::abs(v));
    for (size_t e = 0; e < expected.size(); ++e) {
      const double error = std::abs(double(c.y[e]) - expected[e]);
      if (!(error <= 1e-5 * scale)) {
        EXPECT(false, "path=%s axis=%d K=%zu N=%zu bits=%u d=%zu T=%zu gs=%zu per_s=%d M=%zu: "
               "y[%zu]=%g expected %g", onnxvq::kernels::path_name(onnxvq::kernels::choose_path(c.p)),
               c.p.axis, c.p.K, c.p.N, c.p.bits, c.p.d, c.p.T, c.p.group_size, c.p.per_subspace,
               c.p.M, e, c.y[e], expected[e]);
        break;
      }
    }
    ++cases;
  }
  std::printf("oracle: %d random cases\n", cases);
}

void test_threads_do_not_change_bits(const KernelTable& kernels, std::mt19937& rng) {
  for (int i = 0; i < 40; ++i) {
    Case c = random_case(rng, 300);
    onnxvq::kernels::vq_matmul(c.p, {}, kernels);
    const std::vector<float> serial = c.y;
    std::fill(c.y.begin(), c.y.end(), std::nanf(""));
    TaskRunner runner;
    runner.run = threaded_run;
    onnxvq::kernels::vq_matmul(c.p, runner, kernels);
    EXPECT(std::equal(serial.begin(), serial.end(), c.y.begin(),
                      [](float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }),
           "threaded result differs (path %s)",
           onnxvq::kernels::path_name(onnxvq::kernels::choose_path(c.p)));
  }
}

}  // namespace

int main() {
  std::mt19937 rng(12345);
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  test_unpack_codes(scalar, rng);
  test_against_oracle(scalar, rng);
  test_threads_do_not_change_bits(scalar, rng);
  // Every other table must agree with the scalar one; today the active table may be it.
  const KernelTable& active = onnxvq::kernels::active_kernel_table();
  if (&active != &scalar) {
    test_unpack_codes(active, rng);
    test_against_oracle(active, rng);
  }
  std::printf("active kernel table: %s\n", active.name);
  if (g_failures) std::fprintf(stderr, "%d failure(s)\n", g_failures);
  return g_failures ? 1 : 0;
}
