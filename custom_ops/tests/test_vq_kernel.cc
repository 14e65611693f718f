// The kernels against a naive C++ oracle (decode W_hat in double, then matmul), over random
// layouts, plus bit-unpacking and thread-independence checks. Buffers are allocated at
// their exact sizes so a sanitizer build catches any out-of-bounds access.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/vq_kernel.h"

namespace {

using onnxvq::kernels::KernelTable;
using onnxvq::kernels::TaskRunner;
using onnxvq::kernels::VQProblem;

int g_failures = 0;

// Random oracle cases per kernel table: 3000, or ONNXVQ_TEST_CASES (quick runs under qemu
// and sanitizers, e.g. ONNXVQ_TEST_CASES=300). Other randomized loops scale with it.
int oracle_cases() {
  static const int cases = [] {
    const char* value = std::getenv("ONNXVQ_TEST_CASES");
    const int n = value && *value ? std::atoi(value) : 0;
    return n > 0 ? n : 3000;
  }();
  return cases;
}
int scaled(int full) { return std::max(1, static_cast<int>(int64_t{full} * oracle_cases() / 3000)); }

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

// Code (t, r, s) of a case's stream in either format.
unsigned case_code(const VQProblem& p, const std::vector<uint8_t>& codes, size_t t, size_t r,
                   size_t s) {
  if (p.format_version == 2) {
    const uint8_t byte = codes[((r / 32) * p.T * p.S + t * p.S + s) * 16 + r % 16];
    return (r % 32) < 16 ? byte & 15u : byte >> 4;
  }
  if (p.format_version == 3) return codes[((r / 64) * p.T * p.S + t * p.S + s) * 64 + r % 64];
  return naive_code(codes, (t * p.rows() + r) * p.S + s, p.bits);
}

struct Case {
  VQProblem p;
  std::vector<float> x, codebooks, bias, y;
  std::vector<uint8_t> codes;
};

Case& fill_case(Case& c, std::mt19937& rng);

Case random_case(std::mt19937& rng, size_t M) {
  auto pick = [&](std::initializer_list<size_t> values) {
    return *(values.begin() + rng() % values.size());
  };
  Case c;
  VQProblem& p = c.p;
  p.M = M;
  p.K = pick({1, 2, 3, 7, 17, 33, 64, 100});
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
  // Format 2 where it is valid, half of the time; row groups of 32 rows reach its fast path.
  if (p.axis == 0 && p.bits == 4 && rng() % 2) {
    p.format_version = 2;
    if (rng() % 2 && R >= 64) p.group_size = 32;
  } else if (p.axis == 0 && p.bits == 8 && p.d >= 2 && rng() % 2) {  // format 3 alike
    p.format_version = 3;
    if (rng() % 2 && R >= 128) p.group_size = 64;
  }
  fill_case(c, rng);
  return c;  // moved: the vectors keep their buffers, so p's pointers stay valid
}

Case& fill_case(Case& c, std::mt19937& rng) {
  VQProblem& p = c.p;
  const size_t R = p.rows();
  std::normal_distribution<float> normal;
  c.x.resize(p.M * p.K);
  for (auto& v : c.x) v = normal(rng);
  c.codes.resize(p.format_version == 2   ? p.fastscan_blocks() * p.T * p.S * 16
                 : p.format_version == 3 ? (R + 63) / 64 * p.T * p.S * 64
                                         : (p.T * R * p.S * p.bits + 7) / 8);
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

// W_hat (K x N) in double.
std::vector<double> naive_weight(const Case& c) {
  const VQProblem& p = c.p;
  const size_t R = p.rows(), L = p.length(), ncw = p.codewords();
  std::vector<double> w(p.K * p.N, 0.0);  // (K, N)
  for (size_t t = 0; t < p.T; ++t)
    for (size_t r = 0; r < R; ++r)
      for (size_t s = 0; s < p.S; ++s) {
        const unsigned code = case_code(p, c.codes, t, r, s);
        const size_t gs = p.per_subspace ? s : 0, g = r / p.group_size;
        const float* cw = &c.codebooks[(((t * p.subspace_groups() + gs) * p.row_groups() + g) * ncw + code) * p.d];
        for (size_t j = 0; j < p.d && s * p.d + j < L; ++j) {
          const size_t l = s * p.d + j;
          const size_t k = p.axis == 0 ? l : r, n = p.axis == 0 ? r : l;
          w[k * p.N + n] += cw[j];
        }
      }
  return w;
}

// Y in double from the decoded weight.
std::vector<double> naive_matmul(const Case& c) {
  const VQProblem& p = c.p;
  const std::vector<double> w = naive_weight(c);
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

// Largest quantization step (max table range / 255) over the case's input rows and row
// groups: the uint8 fast-scan path is exact up to half a step per entry.
double max_lut_step(const Case& c) {
  const VQProblem& p = c.p;
  double step = 0.0;
  for (size_t m = 0; m < p.M; ++m)
    for (size_t g = 0; g < p.row_groups(); ++g) {
      double range = 0.0;
      for (size_t t = 0; t < p.T; ++t)
        for (size_t s = 0; s < p.S; ++s) {
          const size_t gs = p.per_subspace ? s : 0;
          const size_t ncw = p.codewords();
          const float* book = &c.codebooks[((t * p.subspace_groups() + gs) * p.row_groups() + g) * ncw * p.d];
          double lo = 1e300, hi = -1e300;
          for (size_t code = 0; code < ncw; ++code) {
            double v = 0.0;
            for (size_t j = 0; j < p.d && s * p.d + j < p.K; ++j)
              v += double(c.x[m * p.K + s * p.d + j]) * book[code * p.d + j];
            lo = std::min(lo, v), hi = std::max(hi, v);
          }
          range = std::max(range, hi - lo);
        }
      step = std::max(step, range / 255.0);
    }
  return step;
}

// The int8 tier's worst case per output: X rounded to half a step of its row's largest
// |value| / 127, W_hat to half a step of its column's (each chunk's maximum is at most the
// whole row's or column's), so |xw - x'w'| <= sum_k sx/2 |w| + sw/2 |x| + sx sw / 4.
// Zero where the problem does not take the tier.
bool int8_path(const VQProblem& p, const KernelTable& kernels) {
  return onnxvq::kernels::int8_panels_enabled(kernels) &&
         onnxvq::kernels::choose_path(p, kernels) == onnxvq::kernels::VQPath::kTileGemm;
}
// (A row on two int8 levels is rounded 254x finer: within the same bound.)
// Layouts whose d = 4 codebooks may take the int8 tier's vector route (int8 words, each
// codebook's scale folded into X): its own error bound applies there.
bool vector_route_layout(const VQProblem& p) {
  return p.axis == 0 && (p.format_version == 2 || p.format_version == 3) && p.d == 4 &&
         (p.T == 1 || (p.T == 2 && p.format_version == 2)) && p.row_groups() == 1 && p.K % 4 == 0;
}

// The int8 vector route's bound against the oracle. Per codebook, the step of its first digit:
// the largest |value| / 127, or for a codebook that fails the route's check (step above
// sqrt(12) * 2% * median |value| / 0.6745) that limit, levels clamped at 127, and the residual
// r = w - step * level in a second digit of step largest |r| / 127. Per term, with X' = X times
// a digit's step rounded by half its row step s and a level q by half a level:
// |x| e_w + s |q| / 2 + s / 4 for each digit, e_w = half the first step, or with a second digit
// min(|r|, its step / 2): bounds that fail if the second pass is skipped or if a coarse
// codebook keeps one digit.
std::vector<double> vector_int8_bounds(const Case& c, const std::vector<double>& w) {
  const VQProblem& p = c.p;
  const size_t ncw = p.codewords(), values = ncw * p.d, Gs = p.subspace_groups();
  std::vector<double> first(Gs), second(Gs, 0.0);  // per codebook; second 0: one digit
  auto clamped_level = [](double v, double step) { return step > 0.0 ? std::clamp(std::nearbyint(v / step), -127.0, 127.0) : 0.0; };
  for (size_t g = 0; g < Gs; ++g) {
    std::vector<float> book;  // two stages: the sums of a codeword of each (float, as the route)
    const float* b0 = c.codebooks.data() + g * values;
    for (size_t c1 = 0; c1 < (p.T == 2 ? ncw : 1); ++c1)
      for (size_t i = 0; i < values; ++i)
        book.push_back(p.T == 2 ? b0[i] + c.codebooks[(Gs + g) * values + c1 * 4 + i % 4] : b0[i]);
    std::vector<float> magnitude(book.size());
    double largest = 0.0;
    for (size_t i = 0; i < book.size(); ++i) largest = std::max(largest, double(magnitude[i] = std::abs(book[i])));
    std::nth_element(magnitude.begin(), magnitude.begin() + magnitude.size() / 2, magnitude.end());
    const double limit = float(std::sqrt(12.0) * 0.02 * (magnitude[magnitude.size() / 2] / 0.6745));
    first[g] = largest / 127.0;
    if (first[g] <= limit * (1 + 1e-6)) continue;
    first[g] = limit;
    for (const float v : book) second[g] = std::max(second[g], std::abs(v - limit * clamped_level(v, limit)) / 127.0);
  }
  std::vector<double> bound(p.M * p.N, 0.0);
  for (size_t m = 0; m < p.M; ++m) {
    const float* x = c.x.data() + m * p.K;
    double sx = 0.0, so = 0.0;  // each pass's X step (8-bit X: the larger)
    for (size_t k = 0; k < p.K; ++k) {
      const size_t g = p.per_subspace ? k / 4 : 0;
      sx = std::max(sx, std::abs(double(x[k]) * first[g]) / 127.0);
      so = std::max(so, std::abs(double(x[k]) * second[g]) / 127.0);
    }
    for (size_t n = 0; n < p.N; ++n) {
      double sum = 0.0;
      for (size_t k = 0; k < p.K; ++k) {
        const size_t g = p.per_subspace ? k / 4 : 0;
        const double weight = w[k * p.N + n], step = first[g], ax = std::abs(double(x[k]));
        sum += (step > 0.0 ? 0.5 * sx * std::min(std::abs(weight) / step, 127.5) : 0.0) + 0.25 * sx;
        if (second[g] == 0.0) {
          sum += ax * 0.5 * step;
          continue;
        }
        const double r = std::abs(weight - step * clamped_level(weight, step));
        sum += ax * std::min(r, 0.5 * second[g]) + 0.5 * so * (r / second[g] + 0.5) + 0.25 * so;
      }
      bound[m * p.N + n] = sum * 1.01;
    }
  }
  return bound;
}

std::vector<double> int8_bounds(const Case& c, bool applies) {
  const VQProblem& p = c.p;
  const std::vector<float>& xr = c.x;
  std::vector<double> bound(p.M * p.N, 0.0);
  if (!applies) return bound;
  const std::vector<double> w = naive_weight(c);
  std::vector<double> sw(p.N, 0.0);
  for (size_t k = 0; k < p.K; ++k)
    for (size_t n = 0; n < p.N; ++n) sw[n] = std::max(sw[n], std::abs(w[k * p.N + n]) / 127.0);
  if (p.d == 1 && p.T == 1 && !p.per_subspace && p.axis == 0)  // km4's codebooks quantize whole
    for (size_t n = 0; n < p.N; ++n)
      for (size_t i = 0; i < p.codewords(); ++i)
        sw[n] = std::max(sw[n], std::abs(double(c.codebooks[(n / p.group_size) * p.codewords() + i])) / 127.0);
  for (size_t m = 0; m < p.M; ++m) {
    double sx = 0.0;
    for (size_t k = 0; k < p.K; ++k) sx = std::max(sx, std::abs(double(xr[m * p.K + k])) / 127.0);
    for (size_t n = 0; n < p.N; ++n) {
      double sum = 0.0;
      for (size_t k = 0; k < p.K; ++k)
        sum += 0.5 * sx * std::abs(w[k * p.N + n]) + 0.5 * sw[n] * std::abs(double(xr[m * p.K + k])) + 0.25 * sx * sw[n];
      bound[m * p.N + n] = sum * 1.01;
    }
  }
  if (vector_route_layout(p)) {
    const std::vector<double> vector_bound = vector_int8_bounds(c, w);
    for (size_t e = 0; e < bound.size(); ++e) bound[e] = std::max(bound[e], vector_bound[e]);
  }
  return bound;
}

bool quantized_path(const VQProblem& p, const KernelTable& kernels) {
  const onnxvq::kernels::VQPath path = onnxvq::kernels::choose_path(p, kernels);
  return path == onnxvq::kernels::VQPath::kFastScan || path == onnxvq::kernels::VQPath::kByteScan;
}

void test_against_oracle(const KernelTable& kernels, std::mt19937& rng) {
  int cases = 0;
  for (int i = 0; i < oracle_cases(); ++i) {
    Case c = random_case(rng, std::vector<size_t>{0, 1, 2, 5, 33}[rng() % 5]);
    c.p.exact_lut = rng() % 2;
    onnxvq::kernels::vq_matmul(c.p, {}, kernels);
    const std::vector<double> expected = naive_matmul(c);
    double scale = 1.0;
    for (double v : expected) scale = std::max(scale, std::abs(v));
    // uint8 tables: half a step per entry, plus float rounding of the tables themselves.
    const double quantization =
        quantized_path(c.p, kernels) ? (0.5 * c.p.T * c.p.S + 1.0) * max_lut_step(c) * 1.01 : 0.0;
    const std::vector<double> int8 = int8_bounds(c, int8_path(c.p, kernels));
    for (size_t e = 0; e < expected.size(); ++e) {
      const double error = std::abs(double(c.y[e]) - expected[e]);
      if (!(error <= 1e-5 * scale + quantization + int8[e])) {
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

// --- every SIMD table against the scalar one ------------------------------------------------

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }
// Bit for bit, empty vectors included (memcmp must not see their null data()).
bool same_floats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Integer fast-scan: equal to the bit, including 16-bit flush boundaries (E around 2*256
// and 4*256), odd entry counts and saturated tables.
void test_fastscan_micro_kernels(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  std::normal_distribution<float> normal;
  int checked = 0;
  for (size_t entries : {1u, 2u, 3u, 4u, 5u, 31u, 255u, 256u, 257u, 511u, 512u, 513u, 1023u, 1024u, 1025u, 2049u}) {
    for (size_t rows : {1u, 2u, 7u}) {
      const size_t stride = (entries * 16 + 63) / 64 * 64;
      std::vector<uint8_t> codes(entries * 16), q(rows * stride, 0);
      std::vector<float> luts(rows * entries * 16);
      for (auto& b : codes) b = static_cast<uint8_t>(rng());
      const bool saturated = rng() % 2;  // all-255 tables: the largest 16-bit partial sums
      for (size_t m = 0; m < rows; ++m)
        for (size_t i = 0; i < entries * 16; ++i) q[m * stride + i] = saturated ? 255 : uint8_t(rng());
      for (auto& v : luts) v = normal(rng);
      std::vector<uint32_t> a(rows * 32), b(rows * 32);
      scalar.fastscan_u8(codes.data(), entries, q.data(), stride, rows, a.data());
      simd.fastscan_u8(codes.data(), entries, q.data(), stride, rows, b.data());
      EXPECT(a == b, "%s fastscan_u8 entries=%zu rows=%zu", simd.name, entries, rows);
      std::vector<float> fa(rows * 32), fb(rows * 32);
      scalar.fastscan_f32(codes.data(), entries, luts.data(), entries * 16, rows, fa.data());
      simd.fastscan_f32(codes.data(), entries, luts.data(), entries * 16, rows, fb.data());
      EXPECT(std::equal(fa.begin(), fa.end(), fb.begin(), same_bits), "%s fastscan_f32 entries=%zu",
             simd.name, entries);
      // Quantization of the same float tables.
      std::vector<uint8_t> qa(stride, 0), qb(stride, 0);
      float sa = 0, sb = 0, oa = 0, ob = 0;
      const bool ra = scalar.quantize_luts(luts.data(), entries, qa.data(), &sa, &oa);
      const bool rb = simd.quantize_luts(luts.data(), entries, qb.data(), &sb, &ob);
      EXPECT(ra && rb && qa == qb && same_bits(sa, sb) && oa == ob,
             "%s quantize_luts entries=%zu", simd.name, entries);
      // The guard's order statistics, on tables with repeated values and signed zeros (the
      // insertions' ties) and the same bits expected.
      std::vector<float> ties(luts.begin(), luts.begin() + entries * 16);
      for (auto& v : ties)
        if (rng() % 3 == 0) v = (rng() % 2 ? 1.0f : -1.0f) * float(rng() % 3);
      std::vector<float> range_a(entries), high_a(entries), low_a(entries), range_b(entries), high_b(entries),
          low_b(entries);
      EXPECT(scalar.lut_order_stats(ties.data(), entries, range_a.data(), high_a.data(), low_a.data()) &&
                 simd.lut_order_stats(ties.data(), entries, range_b.data(), high_b.data(), low_b.data()) &&
                 same_floats(range_a, range_b) && same_floats(high_a, high_b) && same_floats(low_a, low_b),
             "%s lut_order_stats entries=%zu", simd.name, entries);
      ties[rng() % ties.size()] = rng() % 2 ? std::nanf("") : -INFINITY;
      EXPECT(!scalar.lut_order_stats(ties.data(), entries, range_a.data(), high_a.data(), low_a.data()) &&
                 !simd.lut_order_stats(ties.data(), entries, range_b.data(), high_b.data(), low_b.data()),
             "%s lut_order_stats must refuse values that are not finite", simd.name);
      luts[rng() % luts.size() % (entries * 16)] = std::nanf("");
      EXPECT(!scalar.quantize_luts(luts.data(), entries, qa.data(), &sa, &oa) &&
                 !simd.quantize_luts(luts.data(), entries, qb.data(), &sb, &ob),
             "%s quantize_luts must refuse NaN", simd.name);
      ++checked;
    }
  }
  // Gathers over rows of float tables (8-bit PQ): same order per output, same bits.
  for (size_t rows : {1u, 7u, 8u, 9u, 17u}) {
    const size_t count = 1 + rng() % 40, ncw = 256, stride = count * ncw + 3;
    std::vector<uint8_t> codes(count);
    for (auto& b : codes) b = static_cast<uint8_t>(rng());
    std::vector<float> luts(rows * stride);
    for (auto& v : luts) v = normal(rng);
    std::vector<float> a(rows * 2, 0.f), b(rows * 2, 0.f);
    scalar.lut_gather_rows(codes.data(), count, ncw, luts.data(), stride, rows, a.data(), 2);
    simd.lut_gather_rows(codes.data(), count, ncw, luts.data(), stride, rows, b.data(), 2);
    EXPECT(std::equal(a.begin(), a.end(), b.begin(), same_bits), "%s lut_gather_rows rows=%zu",
           simd.name, rows);
  }
  for (size_t count : {1u, 2u, 7u, 64u, 1025u}) {
    for (size_t ncw : {2u, 16u, 256u}) {
      std::vector<uint8_t> codes(count * 8);
      for (auto& b : codes) b = static_cast<uint8_t>(rng() % ncw);
      std::vector<float> lut(count * ncw);
      for (auto& v : lut) v = normal(rng);
      float a[8] = {0, 0, 0, 0, 0, 0, 0, 0}, b[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      scalar.lut_gather8(codes.data(), count, ncw, lut.data(), a);
      simd.lut_gather8(codes.data(), count, ncw, lut.data(), b);
      EXPECT(std::equal(a, a + 8, b, same_bits), "%s lut_gather8 count=%zu ncw=%zu", simd.name,
             count, ncw);
    }
  }
  std::printf("%s: fast-scan micro-kernels equal to scalar on %d shapes\n", simd.name, checked);
}

// Byte-scan (format 3): entries around the 16-bit flush (256), 1-5 rows (the 4- and 2-row
// blocks and their tails), saturated tables (the largest 16-bit partial sums), and the
// 256-value quantizer, bit for bit.
void test_bytescan_micro_kernels(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  constexpr size_t kRows = onnxvq::kernels::kByteScanBlockRows, kWords = onnxvq::kernels::kByteScanCodewords;
  std::normal_distribution<float> normal;
  int checked = 0;
  for (size_t entries : {1u, 2u, 3u, 255u, 256u, 257u, 511u, 513u, 1025u}) {  // 1025: past the stack minima
    for (size_t rows : {1u, 2u, 3u, 4u, 5u}) {
      const size_t stride = entries * kWords + 64 * (rng() % 2);
      // The slack past the last table (kByteScanTableSlack) holds 255s: a kernel that sums them fails.
      std::vector<uint8_t> codes(entries * kRows), q(rows * stride + onnxvq::kernels::kByteScanTableSlack, 255);
      for (auto& b : codes) b = static_cast<uint8_t>(rng());
      const bool saturated = rng() % 2;
      for (size_t i = 0; i < rows * stride; ++i) q[i] = saturated ? 255 : uint8_t(rng());
      std::vector<uint32_t> a(rows * kRows), b(rows * kRows);
      scalar.bytescan_u8(codes.data(), entries, q.data(), stride, rows, a.data());
      simd.bytescan_u8(codes.data(), entries, q.data(), stride, rows, b.data());
      EXPECT(a == b, "%s bytescan_u8 entries=%zu rows=%zu", simd.name, entries, rows);
      std::vector<float> luts(rows * stride);
      for (auto& v : luts) v = normal(rng);
      std::vector<float> fa(rows * kRows), fb(rows * kRows);
      scalar.bytescan_f32(codes.data(), entries, luts.data(), stride, rows, fa.data());
      simd.bytescan_f32(codes.data(), entries, luts.data(), stride, rows, fb.data());
      EXPECT(std::equal(fa.begin(), fa.end(), fb.begin(), same_bits), "%s bytescan_f32 entries=%zu rows=%zu",
             simd.name, entries, rows);
      std::vector<uint8_t> qa(entries * kWords), qb(entries * kWords);
      float sa = 0, sb = 0, oa = 0, ob = 0;
      if (rows == 1) luts[rng() % luts.size()] = 0.0f;  // ties and exact zeros
      const bool ra = scalar.quantize_byte_luts(luts.data(), entries, qa.data(), &sa, &oa);
      const bool rb = simd.quantize_byte_luts(luts.data(), entries, qb.data(), &sb, &ob);
      EXPECT(ra && rb && qa == qb && same_bits(sa, sb) && same_bits(oa, ob), "%s quantize_byte_luts entries=%zu",
             simd.name, entries);
      // The guard's moments of the same tables (saturated ones are the largest sums).
      std::vector<uint32_t> sum_a(entries), sq_a(entries), sum_b(entries), sq_b(entries);
      scalar.byte_table_moments(q.data(), entries, sum_a.data(), sq_a.data());
      simd.byte_table_moments(q.data(), entries, sum_b.data(), sq_b.data());
      uint64_t plain_sum = 0, plain_squares = 0;
      for (size_t c = 0; c < kWords; ++c) plain_sum += q[c], plain_squares += uint64_t{q[c]} * q[c];
      EXPECT(sum_a == sum_b && sq_a == sq_b && sum_a[0] == plain_sum && sq_a[0] == plain_squares,
             "%s byte_table_moments entries=%zu saturated=%d", simd.name, entries, int(saturated));
      luts[rng() % (entries * kWords)] = rows % 2 ? std::nanf("") : -INFINITY;
      EXPECT(!scalar.quantize_byte_luts(luts.data(), entries, qa.data(), &sa, &oa) &&
                 !simd.quantize_byte_luts(luts.data(), entries, qb.data(), &sb, &ob),
             "%s quantize_byte_luts must refuse non-finite values", simd.name);
      ++checked;
    }
  }
  std::printf("%s: byte-scan micro-kernels equal to scalar on %d shapes\n", simd.name, checked);
}

// build_lut on every length and codeword count: within rounding of the scalar sums (d = 4
// and 8 sum pairwise) and of a double reference; AVX-512's d = 4 tables AVX2's bits.
void test_build_lut(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  const KernelTable* avx2 = nullptr;
  const KernelTable* tables[8];
  const size_t count = onnxvq::kernels::supported_kernel_tables(tables, 8);
  for (size_t i = 0; i < count; ++i)
    if (std::strcmp(tables[i]->name, "avx2") == 0) avx2 = tables[i];
  const bool avx512 = std::strncmp(simd.name, "avx512", 6) == 0;
  std::normal_distribution<float> normal;
  int cases = 0;
  for (size_t d : {1u, 2u, 3u, 4u, 5u, 8u, 9u})
    for (size_t ncw : {1u, 2u, 8u, 15u, 16u, 17u, 31u, 32u, 48u, 256u}) {
      const size_t len = rng() % 3 == 0 ? 1 + rng() % d : d;  // a row's last subspace may be partial
      std::vector<float> x(d), book(ncw * d), want(ncw), got(ncw), pairwise(ncw);
      for (auto& v : x) v = normal(rng);
      for (auto& v : book) v = normal(rng);
      scalar.build_lut(x.data(), len, book.data(), d, ncw, want.data());
      simd.build_lut(x.data(), len, book.data(), d, ncw, got.data());
      for (size_t c = 0; c < ncw; ++c) {
        double exact = 0.0, size = 0.0;
        for (size_t j = 0; j < len; ++j)
          exact += double(x[j]) * book[c * d + j], size += std::abs(double(x[j]) * book[c * d + j]);
        const double tol = double(len + 1) * 6e-8 * size + 1e-30;  // (len + 1) roundings of 2^-24
        EXPECT(std::abs(got[c] - exact) <= tol && std::abs(want[c] - exact) <= tol,
               "%s build_lut d=%zu len=%zu codewords=%zu: c=%zu got %g scalar %g exact %g", simd.name, d, len, ncw,
               c, got[c], want[c], exact);
        if (len != 4 && len != 8) EXPECT(same_bits(got[c], want[c]), "%s build_lut d=%zu len=%zu: not scalar's bits",
                                         simd.name, d, len);
      }
      if (avx512 && avx2 != nullptr) {
        avx2->build_lut(x.data(), len, book.data(), d, ncw, pairwise.data());
        EXPECT(same_floats(pairwise, got), "%s build_lut d=%zu len=%zu codewords=%zu: not avx2's bits", simd.name,
               d, len, ncw);
      }
      ++cases;
    }
  std::printf("%s: %d build_lut cases within rounding of scalar%s\n", simd.name, cases,
              avx512 && avx2 ? ", avx2's bits" : "");
}

// Whole problems on awkward shapes, SIMD table vs scalar table. Integer work is equal to the
// bit; float tables may differ by rounding (build_lut sums in another order): 1e-5 of the
// output scale, plus for uint8 tables 4 quantization steps (a table value that lands on a
// rounding boundary may round the other way).
void test_shapes_against_scalar(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  int cases = 0;
  for (int format : {1, 2, 3})
    for (size_t N : {1u, 31u, 32u, 33u, 64u, 65u})
      for (size_t K : {1u, 7u, 15u, 16u, 17u, 129u, 2052u})
        for (size_t d : {1u, 3u, 4u, 5u, 8u}) {
          if (format == 3 && d == 1) continue;  // format 3 needs d >= 2
          Case c;
          VQProblem& p = c.p;
          p.M = std::vector<size_t>{1, 2, 7, 64}[rng() % 4];
          if (K > 1000 && p.M > 7) p.M = 7;
          p.K = K, p.N = N, p.d = d, p.axis = format >= 2 ? 0 : int(rng() % 2);
          p.bits = format == 2 ? 4 : format == 3 ? 8 : std::vector<unsigned>{1, 4, 8}[rng() % 3];
          p.T = 1 + rng() % 2;
          p.S = (p.length() + d - 1) / d;
          p.group_size = p.rows();
          p.per_subspace = true;
          p.format_version = format;
          p.exact_lut = format >= 2 && rng() % 3 == 0;
          fill_case(c, rng);
          onnxvq::kernels::vq_matmul(p, {}, scalar);
          const std::vector<float> expected = c.y;
          std::fill(c.y.begin(), c.y.end(), std::nanf(""));
          onnxvq::kernels::vq_matmul(p, {}, simd);
          double scale = 1.0;
          for (float v : expected) scale = std::max(scale, double(std::abs(v)));
          // Both on uint8 tables: the same sums up to table rounding (4 steps). One on them
          // and one exact (the tables' thresholds differ): the uint8 tier's bound.
          const bool q_scalar = quantized_path(p, scalar), q_simd = quantized_path(p, simd);
          const double steps = q_scalar && q_simd ? 4.0 : q_scalar || q_simd ? (0.5 * p.T * p.S + 1.0) * 1.01 : 0.0;
          const double tol = 1e-5 * scale + (steps > 0 ? steps * max_lut_step(c) : 0.0);  // formats 2 and 3
          const std::vector<double> int8 = int8_bounds(c, int8_path(p, scalar) || int8_path(p, simd));
          for (size_t e = 0; e < expected.size(); ++e)
            if (!(std::abs(double(c.y[e]) - expected[e]) <= tol + int8[e])) {
              EXPECT(false, "%s vs scalar: format=%d path=%s M=%zu K=%zu N=%zu d=%zu bits=%u T=%zu "
                     "y[%zu]=%g scalar %g", simd.name, format,
                     onnxvq::kernels::path_name(onnxvq::kernels::choose_path(p)), p.M, K, N, d,
                     p.bits, p.T, e, c.y[e], expected[e]);
              break;
            }
          ++cases;
        }
  std::printf("%s: %d awkward shapes within tolerance of scalar\n", simd.name, cases);
}


// --- tile GEMM ----------------------------------------------------------------------------

// A host GEMM the way the op lends ONNX Runtime's: plain double sums (another order than the
// built-in one), honouring w_nk, so the tests see the driver's tile layout and the host branch.
void reference_gemm(void*, size_t M, size_t K, size_t N, const float* x, const float* w, bool w_nk,
                    float* y) {
  for (size_t m = 0; m < M; ++m)
    for (size_t n = 0; n < N; ++n) {
      double sum = 0.0;
      for (size_t k = 0; k < K; ++k) sum += double(x[m * K + k]) * (w_nk ? w[n * K + k] : w[k * N + n]);
      y[m * N + n] = static_cast<float>(sum);
    }
}

// Layouts with awkward tile shapes (K around the 128-input depth chunk, N around output
// tiles, d longer than a chunk) at M = threshold, threshold + 1: the tile path, with the
// built-in GEMM and with a host GEMM, against the naive oracle; below the threshold the
// small path agrees within the fp32 tier (plus the uint8 tables' step where they are used).
void test_tile_gemm(const KernelTable& kernels, std::mt19937& rng) {
  int tiled = 0;
  for (int i = 0; i < scaled(400); ++i) {
    auto pick = [&](std::initializer_list<size_t> values) {
      return *(values.begin() + rng() % values.size());
    };
    Case c;
    VQProblem& p = c.p;
    p.K = pick({1, 5, 31, 127, 128, 129, 300});
    p.N = pick({1, 7, 63, 64, 65, 130});
    p.bits = static_cast<unsigned>(pick({1, 1, 2, 3, 4, 4, 5, 7, 8}));
    p.d = pick({1, 1, 2, 3, 4, 8, 130});  // 130: one subvector longer than a depth chunk
    p.T = pick({1, 1, 2});
    p.axis = static_cast<int>(rng() % 3 == 0);
    if (p.bits == 1 && rng() % 2) p.d = 1, p.T = 1, p.axis = 0;  // binary (bit_lut) layouts
    p.S = (p.length() + p.d - 1) / p.d;
    p.group_size = std::min(pick({1, 2, 64, 1000}), p.rows());
    p.per_subspace = p.d > 1 ? rng() % 2 : rng() % 4 == 0;
    if (p.axis == 0 && p.bits == 4 && rng() % 2) p.format_version = 2;
    if (p.axis == 0 && p.bits == 8 && p.d >= 2 && rng() % 2) p.format_version = 3;
    p.exact_lut = rng() % 2;
    p.M = 1;
    const size_t threshold = onnxvq::kernels::tile_gemm_min_rows(p, kernels);
    if (threshold > 64) continue;
    // Mostly at the threshold; 1 in 4 past 128 rows (several rows of dense_gemm blocks).
    p.M = rng() % 4 == 0 ? 129 + rng() % 8 : threshold + rng() % 2;
    fill_case(c, rng);
    // Rows measured on the int8 byte route hold only for codebooks that take it: random ones
    // may not (a codeword far from the rest), and keep the later threshold.
    if (onnxvq::kernels::tile_gemm_min_rows(p, kernels) > p.M) continue;
    const std::vector<double> expected = naive_matmul(c);
    double scale = 1.0;
    for (double v : expected) scale = std::max(scale, std::abs(v));
    const std::string path = onnxvq::kernels::path_name(onnxvq::kernels::choose_path(p, kernels));
    EXPECT(path == "tile_gemm", "M=%zu threshold=%zu path=%s", p.M, threshold, path.c_str());
    const std::vector<double> int8 = int8_bounds(c, int8_path(p, kernels));
    for (bool host : {false, true}) {
      const onnxvq::kernels::DenseGemm gemm{host ? reference_gemm : nullptr, nullptr};
      std::fill(c.y.begin(), c.y.end(), std::nanf(""));
      onnxvq::kernels::vq_matmul(p, {}, kernels, gemm);
      for (size_t e = 0; e < expected.size(); ++e)
        if (!(std::abs(double(c.y[e]) - expected[e]) <= 1e-5 * scale + int8[e])) {
          EXPECT(false, "%s tile_gemm (host=%d) vs oracle: axis=%d K=%zu N=%zu bits=%u d=%zu T=%zu "
                 "gs=%zu fmt=%d M=%zu y[%zu]=%g expected %g", kernels.name, host, p.axis, p.K, p.N,
                 p.bits, p.d, p.T, p.group_size, p.format_version, p.M, e, c.y[e], expected[e]);
          break;
        }
    }
    if (threshold > 1) {  // one row less: the small path, the same outputs within tolerance
      VQProblem q = p;
      q.M = threshold - 1;
      std::vector<float> y(q.M * p.N);
      q.y = y.data();
      onnxvq::kernels::vq_matmul(q, {}, kernels);
      const double lut_step = p.format_version >= 2 && !p.exact_lut ? max_lut_step(c) : 0.0;
      for (size_t e = 0; e < y.size(); ++e)
        if (!(std::abs(double(y[e]) - expected[e]) <= 1e-5 * scale + (0.5 * p.T * p.S + 1.0) * lut_step * 1.01)) {
          EXPECT(false, "%s: M=%zu (small path) vs oracle: axis=%d K=%zu N=%zu bits=%u d=%zu fmt=%d "
                 "y[%zu]=%g expected %g", kernels.name, q.M, p.axis, p.K, p.N, p.bits, p.d,
                 p.format_version, e, y[e], expected[e]);
          break;
        }
    }
    ++tiled;
  }
  EXPECT(tiled >= scaled(400) / 4, "%s: only %d tile-GEMM cases", kernels.name, tiled);
  std::printf("%s: %d tile-GEMM cases (built-in and host GEMM) passed\n", kernels.name, tiled);
}

// The tile path's micro-kernels alone against scalar, bit for bit: dense_gemm on tail shapes
// and decode_codes for every width from every start (streams sized exactly, so a sanitizer
// build sees any read past the last byte that holds a requested code).
void test_tile_micro_kernels(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  const KernelTable& scalar = scalar_kernel_table();
  std::normal_distribution<float> normal;
  int cases = 0;
  for (int i = 0; i < scaled(300); ++i, ++cases) {
    // Row strides past K, an accumulating call, and K split in two: one chain over all of K.
    const size_t M = 1 + rng() % 20, K = 1 + rng() % 40, N = 1 + rng() % 140, ldy = N + rng() % 3;
    const size_t ldx = K + rng() % 3, split = rng() % (K + 1);
    const bool accumulate = rng() % 3 == 0;
    std::vector<float> x(M * ldx), w(K * N), want(M * ldy, 7.0f);
    for (auto& v : x) v = normal(rng);
    for (auto& v : w) v = normal(rng);
    for (auto& v : want) v = normal(rng);
    std::vector<float> got = want, two = want;
    scalar.dense_gemm(x.data(), ldx, M, K, w.data(), N, want.data(), ldy, accumulate);
    simd.dense_gemm(x.data(), ldx, M, K, w.data(), N, got.data(), ldy, accumulate);
    EXPECT(same_floats(want, got),
           "%s dense_gemm M=%zu K=%zu N=%zu ldx=%zu ldy=%zu acc=%d differs from scalar", simd.name,
           M, K, N, ldx, ldy, int(accumulate));
    simd.dense_gemm(x.data(), ldx, M, split, w.data(), N, two.data(), ldy, accumulate);
    simd.dense_gemm(x.data() + split, ldx, M, K - split, w.data() + split * N, N, two.data(), ldy,
                    accumulate || split > 0);
    EXPECT(same_floats(want, two),
           "%s dense_gemm split at %zu of K=%zu differs from one call", simd.name, split, K);
  }
  for (int i = 0; i < scaled(300); ++i, ++cases) {  // decode-dot rows, signed zeros too
    const size_t rows = rng() % 13, K = rng() % 70, ldx = K + rng() % 3, stride = 4 + rng() % 3;
    const size_t outputs = 1 + rng() % 4, ldw = K + rng() % 3;
    std::vector<float> x(std::max<size_t>(1, rows * ldx)), w(std::max<size_t>(1, outputs * ldw));
    for (auto& v : x) v = rng() % 9 == 0 ? -0.0f : normal(rng);
    for (auto& v : w) v = rng() % 9 == 0 ? 0.0f : normal(rng);
    std::vector<float> want(std::max<size_t>(1, rows * stride), 7.0f), got = want;
    scalar.dot_rows(x.data(), ldx, rows, w.data(), ldw, outputs, K, want.data(), stride);
    simd.dot_rows(x.data(), ldx, rows, w.data(), ldw, outputs, K, got.data(), stride);
    EXPECT(same_floats(want, got),
           "%s dot_rows rows=%zu outputs=%zu K=%zu differs from scalar", simd.name, rows, outputs, K);
    for (size_t m = 0; m < rows; ++m)
      for (size_t j = 0; j < outputs; ++j) {
        double exact = 0.0, magnitude = 0.0;
        for (size_t k = 0; k < K; ++k) {
          exact += double(x[m * ldx + k]) * w[j * ldw + k];
          magnitude += std::abs(double(x[m * ldx + k]) * w[j * ldw + k]);
        }
        EXPECT(std::abs(want[m * stride + j] - exact) <= 1e-6 * magnitude + 1e-30,
               "scalar dot_rows row %zu output %zu K=%zu", m, j, K);
      }
  }
  for (int i = 0; i < scaled(200); ++i, ++cases) {
    const size_t depth = rng() % 40, cols = 1 + rng() % 32, ld = cols + rng() % 40;
    std::vector<uint8_t> groups(depth * kFastScanGroupBytes);
    for (auto& b : groups) b = static_cast<uint8_t>(rng());
    std::vector<float> book(16), want(depth * ld, 7.0f), got(depth * ld, 7.0f);
    for (auto& v : book) v = normal(rng);
    scalar.decode_fastscan_d1(groups.data(), depth, cols, book.data(), want.data(), ld);
    simd.decode_fastscan_d1(groups.data(), depth, cols, book.data(), got.data(), ld);
    EXPECT(same_floats(want, got),
           "%s decode_fastscan_d1 depth=%zu cols=%zu ld=%zu differs from scalar", simd.name, depth,
           cols, ld);
  }
  for (int i = 0; i < scaled(200); ++i, ++cases) {
    const size_t len = rng() % 9, cols = 1 + rng() % 32, ld = cols + rng() % 40;
    const bool accumulate = rng() % 2;
    uint8_t group[kFastScanGroupBytes];
    for (auto& b : group) b = static_cast<uint8_t>(rng());
    std::vector<float> table(std::max<size_t>(1, len * 16)), want(std::max<size_t>(1, len * ld));
    for (auto& v : table) v = normal(rng);
    for (auto& v : want) v = normal(rng);
    std::vector<float> got = want;
    scalar.decode_fastscan_group(group, table.data(), len, cols, want.data(), ld, accumulate);
    simd.decode_fastscan_group(group, table.data(), len, cols, got.data(), ld, accumulate);
    EXPECT(same_floats(want, got),
           "%s decode_fastscan_group len=%zu cols=%zu ld=%zu acc=%d differs from scalar", simd.name,
           len, cols, ld, int(accumulate));
  }
  for (int i = 0; i < scaled(200); ++i, ++cases) {
    const size_t rows = rng() % 30, cols = rng() % 30, ld_src = cols + rng() % 3,
                 ld_dst = rows + rng() % 3;
    std::vector<float> src(std::max<size_t>(1, rows * ld_src)), want(std::max<size_t>(1, cols * ld_dst), 7.0f);
    for (auto& v : src) v = normal(rng);
    std::vector<float> got = want;
    scalar.transpose(src.data(), rows, cols, ld_src, want.data(), ld_dst);
    simd.transpose(src.data(), rows, cols, ld_src, got.data(), ld_dst);
    EXPECT(same_floats(want, got),
           "%s transpose %zu x %zu differs from scalar", simd.name, rows, cols);
    for (size_t r = 0; r < rows; ++r)
      for (size_t q = 0; q < cols; ++q)
        EXPECT(want[q * ld_dst + r] == src[r * ld_src + q], "scalar transpose wrong at %zu,%zu", r, q);
  }
  for (unsigned bits = 1; bits <= 8; ++bits)
    for (int i = 0; i < scaled(100); ++i, ++cases) {
      const uint64_t first = rng() % 40;
      const size_t count = rng() % 90, rows = 1 + rng() % 3, stride = count + rng() % 5;
      const uint64_t codes = first + (rows - 1) * stride + count;  // one past the last code read
      std::vector<uint8_t> stream(std::max<uint64_t>(1, (codes * bits + 7) / 8));
      for (auto& b : stream) b = static_cast<uint8_t>(rng());
      std::vector<float> book(size_t{1} << bits);
      for (auto& v : book) v = normal(rng);
      std::vector<float> want(rows * count), got(rows * count);
      scalar.decode_codes(stream.data(), first, stride, rows, count, bits, book.data(), want.data());
      simd.decode_codes(stream.data(), first, stride, rows, count, bits, book.data(), got.data());
      EXPECT(same_floats(want, got),
             "%s decode_codes bits=%u first=%llu rows=%zu count=%zu differs from scalar", simd.name,
             bits, static_cast<unsigned long long>(first), rows, count);
    }
  for (int i = 0; i < scaled(200); ++i, ++cases) {  // scalar-codebook tables, signed zeros too
    const size_t count = rng() % 70, ncw = size_t{1} << (1 + rng() % 8);
    std::vector<float> x(count), book(ncw), want(count * ncw), got(count * ncw);
    for (auto& v : x) v = rng() % 7 == 0 ? -0.0f : normal(rng);
    for (auto& v : book) v = rng() % 7 == 0 ? 0.0f : normal(rng);
    scalar.build_lut_d1(x.data(), count, book.data(), ncw, want.data());
    simd.build_lut_d1(x.data(), count, book.data(), ncw, got.data());
    EXPECT(same_floats(want, got),
           "%s build_lut_d1 count=%zu codewords=%zu differs from scalar", simd.name, count, ncw);
  }
  std::printf("%s: %d tile-GEMM micro-kernel cases equal to scalar\n", simd.name, cases);
}

// --- the uint8 fast-scan guard ------------------------------------------------------------

// A format-2 problem (4-bit, axis 0) whose inputs have `outliers` channels `factor` times the
// rest (LayerNorm outputs); every other row of x is ordinary when `mixed`.
Case guard_case(std::mt19937& rng, size_t M, size_t K, size_t N, size_t d, bool per_subspace,
                size_t outliers, float factor, bool mixed) {
  Case c;
  VQProblem& p = c.p;
  p.M = M, p.K = K, p.N = N, p.d = d, p.bits = 4, p.T = 1, p.axis = 0, p.format_version = 2;
  p.S = (K + d - 1) / d;
  p.group_size = N;
  p.per_subspace = per_subspace;
  fill_case(c, rng);
  for (size_t m = 0; m < M; ++m) {
    if (mixed && m % 2) continue;
    for (size_t i = 0; i < outliers; ++i) c.x[m * K + (i * 7919 + 3) % K] *= factor;
  }
  return c;
}

double rel_error(const std::vector<float>& y, const std::vector<double>& ref) {
  double err = 0.0, scale = 1.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::abs(double(y[i]) - ref[i]));
    scale = std::max(scale, std::abs(ref[i]));
  }
  return err / scale;
}

// The uint8 path without the guard: every row quantized (as before the guard).
std::vector<float> unguarded_uint8(const Case& c) {
  const KernelTable& k = onnxvq::kernels::scalar_kernel_table();
  const VQProblem& p = c.p;
  const size_t E = p.S, stride = (E * 16 + 63) / 64 * 64;
  std::vector<float> lut(E * 16), y(p.M * p.N);
  std::vector<uint8_t> q(stride, 0);
  std::vector<uint32_t> sums(32);
  for (size_t m = 0; m < p.M; ++m) {
    for (size_t s = 0; s < E; ++s)
      k.build_lut(p.x + m * p.K + s * p.d, std::min(p.d, p.K - s * p.d),
                  p.codebooks + (p.per_subspace ? s : 0) * 16 * p.d, p.d, 16, &lut[s * 16]);
    float scale = 0, offset = 0;
    k.quantize_luts(lut.data(), E, q.data(), &scale, &offset);
    for (size_t b = 0; b < p.fastscan_blocks(); ++b) {
      k.fastscan_u8(p.codes + b * E * 16, E, q.data(), stride, 1, sums.data());
      for (size_t i = 0; i < 32 && b * 32 + i < p.N; ++i)
        y[m * p.N + b * 32 + i] = (scale * float(sums[i]) + offset) + (p.bias ? p.bias[b * 32 + i] : 0.0f);
    }
  }
  return y;
}

constexpr double kUint8TierRtol = 3e-2;  // tests/test_pass.py's uint8 tables tier

void test_fastscan_guard(std::mt19937& rng) {
  using namespace onnxvq::kernels;
  const KernelTable& scalar = scalar_kernel_table();
  uint64_t fast = 0, exact = 0;
  // Outlier rows: without the guard they break the tier; with it they stay exact.
  int broken = 0, caught = 0, cases = 0;
  for (size_t K : {384u, 1536u})
    for (size_t d : {1u, 2u, 4u})
      for (float factor : {50.0f, 100.0f}) {
        Case c = guard_case(rng, 3, K, 65, d, d > 1, 3, factor, false);
        const std::vector<double> ref = naive_matmul(c);
        const double before = rel_error(unguarded_uint8(c), ref);
        broken += before > kUint8TierRtol;
        onnxvq_fastscan_row_counts(nullptr, nullptr, 1);
        vq_matmul(c.p, {}, scalar);
        onnxvq_fastscan_row_counts(&fast, &exact, 1);
        const double after = rel_error(c.y, ref);
        // The guard's promise is the tier: a row whose own estimate stays under the bound
        // may keep uint8 tables (random outliers do not always push every row over it).
        EXPECT(after <= kUint8TierRtol, "guard: K=%zu d=%zu factor=%g error %g (unguarded %g)",
               K, d, factor, after, before);
        EXPECT(fast + exact == 3, "guard: %llu + %llu rows counted of 3", static_cast<unsigned long long>(fast),
               static_cast<unsigned long long>(exact));
        caught += exact >= 1;
        ++cases;
      }
  // Most of these cases break the tier without the guard (random outliers: not always all), and
  // in most the guard sends a row to float tables (not every draw pushes a row over its bound:
  // ONNXVQ_TEST_CASES=5000 drew one where none went).
  EXPECT(2 * broken >= cases, "outlier cases that break the tier without the guard: %d of %d", broken, cases);
  EXPECT(2 * caught >= cases, "outlier cases where a row took float tables: %d of %d", caught, cases);
  // Ordinary rows keep the uint8 tables.
  for (size_t d : {1u, 2u, 4u, 8u}) {
    Case c = guard_case(rng, 4, 1024, 64, d, d > 1, 0, 1.0f, false);
    onnxvq_fastscan_row_counts(nullptr, nullptr, 1);
    vq_matmul(c.p, {}, scalar);
    onnxvq_fastscan_row_counts(&fast, &exact, 1);
    EXPECT(fast == 4 && exact == 0, "guard: ordinary rows d=%zu took float tables (%llu of 4)", d,
           static_cast<unsigned long long>(exact));
    EXPECT(rel_error(c.y, naive_matmul(c)) <= kUint8TierRtol, "guard: ordinary rows d=%zu", d);
  }
  // Rejected rows go to the tile GEMM: a few of them (every fifth row, at least the float
  // tables' tile threshold: 8 at d = 1, 32 at d >= 2) gathered next to uint8 rows; most of
  // them (every other row) switch the whole input. Both exact, the same bits with threads.
  for (size_t d : {1u, 4u})
    for (size_t every : {5u, 2u}) {
      const size_t M = d == 1 ? 60 : 200;  // d = 1 takes the tile path outright from 64 rows
      Case c = guard_case(rng, M, 515, 65, d, d > 1, 0, 1.0f, false);
      for (size_t m = 0; m < M; m += every)
        for (size_t i = 0; i < 3; ++i) c.x[m * 515 + (i * 7919 + 3) % 515] *= 100.0f;
      onnxvq_fastscan_row_counts(nullptr, nullptr, 1);
      vq_matmul(c.p, {}, scalar);
      onnxvq_fastscan_row_counts(&fast, &exact, 1);
      const size_t outliers = (M + every - 1) / every;
      const bool switched = every == 2;
      EXPECT(switched ? fast == 0 && exact == M
                      : fast + exact == M && exact >= outliers * 9 / 10 && exact >= (d == 1 ? 8u : 32u),
             "guard to tile: d=%zu every %zu: uint8 %llu exact %llu of %zu rows", d, every,
             static_cast<unsigned long long>(fast), static_cast<unsigned long long>(exact), M);
      const std::vector<double> ref = naive_matmul(c);
      EXPECT(rel_error(c.y, ref) <= kUint8TierRtol, "guard to tile: d=%zu error %g", d, rel_error(c.y, ref));
      const std::vector<float> serial = c.y;
      TaskRunner runner;
      runner.run = threaded_run;
      vq_matmul(c.p, runner, scalar);
      EXPECT(std::memcmp(serial.data(), c.y.data(), serial.size() * sizeof(float)) == 0,
             "guard to tile: d=%zu every %zu: threads change bits", d, every);
    }
  // The estimate: 0 for constant tables, +inf for non-finite ones.
  std::vector<float> flat(3 * 16, 2.5f);
  EXPECT(fastscan_uint8_error(scalar, flat.data(), 3) == 0.0, "constant tables");
  flat[17] = std::nanf("");
  EXPECT(std::isinf(fastscan_uint8_error(scalar, flat.data(), 3)), "NaN tables");
  std::printf("fast-scan guard: %d outlier cases (all beyond the tier unguarded) exact, ordinary rows uint8\n", cases);
}

// SIMD vs scalar on tail shapes with outlier and ordinary rows mixed (so both kinds of rows
// share blocks): bit-identical where the tables are (d not 4 or 8), and the same choices.
void test_guard_simd_matches_scalar(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  const KernelTable& scalar = scalar_kernel_table();
  int cases = 0, guarded = 0;
  for (size_t N : {1u, 31u, 33u, 65u})
    for (size_t K : {17u, 129u, 515u, 1027u})
      for (size_t d : {1u, 3u, 5u}) {
        // Two or more rows, so outlier (even) and ordinary (odd) rows share each problem; the
        // draws in their own statements (argument order differs between compilers).
        const size_t M = std::vector<size_t>{2, 3, 7}[rng() % 3];
        const float factor = rng() % 2 ? 60.0f : 100.0f;
        Case c = guard_case(rng, M, K, N, d, d > 1, 2, factor, true);
        // Both on fast-scan (per-ISA thresholds may send one table to the tile GEMM).
        if (choose_path(c.p, scalar) != VQPath::kFastScan || choose_path(c.p, simd) != VQPath::kFastScan) continue;
        uint64_t fa = 0, ea = 0, fb = 0, eb = 0;
        onnxvq_fastscan_row_counts(nullptr, nullptr, 1);
        vq_matmul(c.p, {}, scalar);
        onnxvq_fastscan_row_counts(&fa, &ea, 1);
        const std::vector<float> expected = c.y;
        std::fill(c.y.begin(), c.y.end(), std::nanf(""));
        TaskRunner runner;
        runner.run = threaded_run;
        vq_matmul(c.p, runner, simd);
        onnxvq_fastscan_row_counts(&fb, &eb, 1);
        guarded += ea > 0 && fa > 0;  // both kinds of rows in one problem
        EXPECT(fa == fb && ea == eb, "%s guard choices: scalar %llu/%llu vs %llu/%llu",
               simd.name, (unsigned long long)fa, (unsigned long long)ea, (unsigned long long)fb,
               (unsigned long long)eb);
        EXPECT(std::equal(expected.begin(), expected.end(), c.y.begin(), same_bits),
               "%s guard rows differ from scalar: M=%zu K=%zu N=%zu d=%zu", simd.name, c.p.M, K, N, d);
        ++cases;
      }
  EXPECT(guarded >= cases / 4, "%s: only %d of %d cases mixed uint8 and float rows", simd.name, guarded, cases);
  std::printf("%s: %d outlier/ordinary tail shapes equal to scalar (guard; %d mix both row kinds)\n",
              simd.name, cases, guarded);
}

}  // namespace

// custom_ops/tests/test_vq_gather.cc: the VQGather kernels (failure count).
int run_gather_tests(const KernelTable* const* tables, size_t count);

// --- the panel GEMM's int8 tier -------------------------------------------------------------

// The int8 micro-kernels against scalar, bit for bit, on awkward shapes: rows and columns
// that are zero, too small to scale (127 / a overflows) or not finite; depths not a multiple
// of 4; row strides past the depth; accumulating calls.
void test_int8_micro_kernels(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  const KernelTable& scalar = scalar_kernel_table();
  std::normal_distribution<float> normal;
  auto special = [&](std::vector<float>& v, size_t count, size_t stride, size_t start) {
    const int kind = rng() % 8;  // 0-3: ordinary; zero, tiny, inf, NaN
    for (size_t i = 0; i < count && kind >= 4; ++i) v[start + i * stride] = kind == 4 ? 0.0f : kind == 5 ? 1e-39f * normal(rng) : v[start + i * stride];
    if (kind >= 6 && count > 0) v[start + (rng() % count) * stride] = kind == 6 ? INFINITY : NAN;
  };
  int cases = 0;
  for (int i = 0; i < scaled(300); ++i, ++cases) {
    // Every 4th case is AMX-sized (M from 30, K a multiple of 64, N from 32): whole 32 x 32
    // blocks of tiles in place next to edge blocks from padded copies.
    const bool tiles = rng() % 4 == 0;
    const size_t M = tiles ? 30 + rng() % 50 : 1 + rng() % 20;
    const size_t K = tiles ? 64 * (1 + rng() % 3) : 1 + rng() % 140, N = tiles ? 32 + rng() % 100 : 1 + rng() % 140;
    const size_t ldx = K + rng() % 3, K4 = (K + 3) / 4 * 4, ldq = K4 + 4 * (rng() % 2), ldy = N + rng() % 3;
    std::vector<float> x(M * ldx), w(K * N);
    for (auto& v : x) v = normal(rng) * (rng() % 16 == 0 ? 40.0f : 1.0f);
    for (auto& v : w) v = normal(rng);
    for (size_t m = 0; m < M; ++m) special(x, K, 1, m * ldx);
    for (size_t n = 0; n < N; ++n) special(w, K, N, n);
    std::vector<uint8_t> q1(M * ldq, 7), q2 = q1;
    std::vector<float> s1(M), s2(M);
    std::vector<uint32_t> e1(M), e2(M);
    scalar.quantize_rows_u8(x.data(), ldx, M, K, q1.data(), ldq, s1.data(), e1.data());
    simd.quantize_rows_u8(x.data(), ldx, M, K, q2.data(), ldq, s2.data(), e2.data());
    EXPECT(q1 == q2 && e1 == e2 && std::memcmp(s1.data(), s2.data(), M * sizeof(float)) == 0,
           "%s quantize_rows_u8 differs: M=%zu K=%zu ldq=%zu", simd.name, M, K, ldq);
    std::vector<int8_t> wq1(K4 * N, 5), wq2 = wq1;
    std::vector<float> ws1(N), ws2(N);
    std::vector<int32_t> b1(N), b2(N);
    scalar.quantize_panel_s8(w.data(), K, N, wq1.data(), ws1.data(), b1.data());
    simd.quantize_panel_s8(w.data(), K, N, wq2.data(), ws2.data(), b2.data());
    EXPECT(wq1 == wq2 && b1 == b2 && std::memcmp(ws1.data(), ws2.data(), N * sizeof(float)) == 0,
           "%s quantize_panel_s8 differs: K=%zu N=%zu", simd.name, K, N);
    // Any bytes: the GEMM is exact integer arithmetic whatever the quantizers gave.
    for (auto& v : q1) v = static_cast<uint8_t>(rng());
    for (auto& v : wq1) v = static_cast<int8_t>(rng());
    for (auto& v : s1) v = std::abs(normal(rng));
    for (auto& v : ws1) v = std::abs(normal(rng));
    const bool accumulate = rng() % 3 == 0;
    std::vector<float> want(M * ldy);
    for (auto& v : want) v = normal(rng);
    std::vector<float> got = want;
    scalar.int8_gemm(q1.data(), ldq, M, K4, wq1.data(), N, s1.data(), ws1.data(), b1.data(), want.data(), ldy, accumulate);
    simd.int8_gemm(q1.data(), ldq, M, K4, wq1.data(), N, s1.data(), ws1.data(), b1.data(), got.data(), ldy, accumulate);
    EXPECT(same_floats(want, got), "%s int8_gemm differs: M=%zu K4=%zu N=%zu acc=%d", simd.name, M, K4, N, accumulate);
    // 16-bit X: the quantizer on the same rows, then the GEMM on any levels within +-kWideLevels.
    std::vector<int16_t> h1(M * ldq, 7), h2 = h1;
    std::vector<uint64_t> he1(M), he2(M);
    scalar.quantize_rows_s16(x.data(), ldx, M, K, h1.data(), ldq, s1.data(), he1.data());
    simd.quantize_rows_s16(x.data(), ldx, M, K, h2.data(), ldq, s2.data(), he2.data());
    EXPECT(h1 == h2 && he1 == he2 && std::memcmp(s1.data(), s2.data(), M * sizeof(float)) == 0,
           "%s quantize_rows_s16 differs: M=%zu K=%zu ldq=%zu", simd.name, M, K, ldq);
    for (size_t m = 0; m < M; ++m) {  // scalar against its formula
      float a = 0.0f;
      for (size_t k = 0; k < K; ++k) a = std::max(a, std::abs(x[m * ldx + k]));  // NaN: stays below
      const float inv = static_cast<float>(kWideLevels) / a;
      const bool levels = std::isfinite(inv) && s1[m] > 0.0f;  // else every level 0
      uint64_t energy = 0;
      for (size_t k = 0; k < ldq; ++k) {
        const int want = levels && k < K ? static_cast<int>(std::nearbyint(x[m * ldx + k] * inv)) : 0;
        EXPECT(h1[m * ldq + k] == want, "scalar quantize_rows_s16: row %zu level %zu is %d, not %d", m, k,
               int{h1[m * ldq + k]}, want);
        energy += static_cast<uint64_t>(int64_t{want} * want);
      }
      EXPECT(energy == he1[m], "scalar quantize_rows_s16: row %zu energy", m);
    }
    for (auto& v : h1) v = static_cast<int16_t>(static_cast<int>(rng() % (2 * kWideLevels + 1)) - kWideLevels);
    std::vector<float> want16(M * ldy);
    for (auto& v : want16) v = normal(rng);
    std::vector<float> got16 = want16;
    scalar.int16_gemm(h1.data(), ldq, M, K4, wq1.data(), N, s1.data(), ws1.data(), want16.data(), ldy, accumulate);
    simd.int16_gemm(h1.data(), ldq, M, K4, wq1.data(), N, s1.data(), ws1.data(), got16.data(), ldy, accumulate);
    EXPECT(same_floats(want16, got16), "%s int16_gemm differs: M=%zu K4=%zu N=%zu acc=%d", simd.name, M, K4, N,
           accumulate);
    // Fast-scan groups straight to int8 (exactly `depth` groups: a sanitizer sees any read past
    // them), into a panel wider than the block with canaries around the written bytes.
    const size_t depth = 1 + rng() % 40, cols = 1 + rng() % 32, ld = cols + rng() % 40, D4 = (depth + 3) / 4 * 4;
    std::vector<uint8_t> groups(depth * kFastScanGroupBytes);
    for (auto& v : groups) v = static_cast<uint8_t>(rng());
    int8_t book[kFastScanCodewords];
    for (auto& v : book) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<int8_t> p1(D4 * ld, 99), p2 = p1;
    std::vector<int32_t> c1(cols + 1, -7), c2 = c1;
    scalar.decode_fastscan_d1_s8(groups.data(), depth, cols, book, p1.data(), ld, c1.data());
    simd.decode_fastscan_d1_s8(groups.data(), depth, cols, book, p2.data(), ld, c2.data());
    EXPECT(p1 == p2 && c1 == c2 && c1[cols] == -7, "%s decode_fastscan_d1_s8 differs: depth=%zu cols=%zu ld=%zu",
           simd.name, depth, cols, ld);
    // A format-1 stream straight to int8 rows, every width, from any start, the stream sized to
    // end exactly at the last code asked for.
    const unsigned bits = 1 + rng() % 8;
    const size_t rows = 1 + rng() % 5, count = 1 + rng() % 200, stride = count + rng() % 9, first = rng() % 13;
    const size_t ld_rows = count + rng() % 9;
    std::vector<uint8_t> stream(((first + (rows - 1) * stride + count) * bits + 7) / 8);
    for (auto& v : stream) v = static_cast<uint8_t>(rng());
    // Codebooks for groups of 1 .. rows + 1 rows, the first row anywhere in its group; exactly
    // the codebooks the rows use (a sanitizer sees a read past them).
    const size_t per_book = 1 + rng() % (rows + 1), phase = rng() % per_book;
    std::vector<int8_t> book_q(((phase + rows - 1) / per_book + 1) << bits);
    for (auto& v : book_q) v = static_cast<int8_t>(static_cast<int>(rng() % 255) - 127);
    std::vector<int8_t> r1(rows * ld_rows, 55), r2 = r1;
    std::vector<int32_t> s1r(rows + 1, -3), s2r = s1r;
    scalar.decode_codes_s8(stream.data(), first, stride, rows, count, bits, book_q.data(), per_book, phase, r1.data(),
                           ld_rows, s1r.data());
    simd.decode_codes_s8(stream.data(), first, stride, rows, count, bits, book_q.data(), per_book, phase, r2.data(),
                         ld_rows, s2r.data());
    EXPECT(r1 == r2 && s1r == s2r && s1r[rows] == -3,
           "%s decode_codes_s8 differs: bits=%u rows=%zu count=%zu first=%zu books of %zu from %zu", simd.name, bits,
           rows, count, first, per_book, phase);
    // The scalar kernel against plain lookups (every table above is tested against it).
    for (size_t r = 0; r < rows; ++r) {
      const int8_t* book = &book_q[((phase + r) / per_book) << bits];
      int32_t sum = 0;
      for (size_t i = 0; i < count; ++i) {
        const int8_t want = book[naive_code(stream, first + r * stride + i, bits)];
        EXPECT(r1[r * ld_rows + i] == want, "scalar decode_codes_s8: row %zu code %zu", r, i);
        sum += want;
      }
      EXPECT(s1r[r] == sum, "scalar decode_codes_s8: row %zu sum", r);
    }
    // The same rows met by 1 .. 9 rows of X (blocks of 4 and a rest) in depth chunks of 1 ..
    // count + 2 codes, X exactly the chunk's length past its last row's start: the decoded rows
    // above are the reference.
    const size_t xm = 1 + rng() % 9, chunk_depth = rng() % 3 == 0 ? count : 1 + rng() % (count + 2);
    const size_t chunks = (count + chunk_depth - 1) / chunk_depth, last_len = count - (chunks - 1) * chunk_depth;
    const size_t ld_x = std::min(chunk_depth, count) + rng() % 5;
    std::vector<uint8_t> xq((chunks * xm - 1) * ld_x + last_len);
    for (auto& v : xq) v = static_cast<uint8_t>(rng());
    std::vector<int32_t> d1(chunks * xm * rows + 1, -9), d2 = d1, t1(chunks * rows + 1, -5), t2 = t1;
    scalar.decode_dot_s8(stream.data(), first, stride, rows, count, chunk_depth, bits, book_q.data(), per_book, phase,
                         xq.data(), ld_x, xm, d1.data(), t1.data());
    simd.decode_dot_s8(stream.data(), first, stride, rows, count, chunk_depth, bits, book_q.data(), per_book, phase,
                       xq.data(), ld_x, xm, d2.data(), t2.data());
    EXPECT(d1 == d2 && t1 == t2 && d1[chunks * xm * rows] == -9 && t1[chunks * rows] == -5,
           "%s decode_dot_s8 differs: bits=%u rows=%zu count=%zu depth=%zu M=%zu", simd.name, bits, rows, count,
           chunk_depth, xm);
    std::vector<int16_t> xw(xq.size());  // the same against 16-bit rows
    for (auto& v : xw) v = static_cast<int16_t>(static_cast<int>(rng() % (2 * kWideLevels + 1)) - kWideLevels);
    std::vector<int32_t> w1(d1.size(), -9), w2 = w1, u1(t1.size(), -5), u2 = u1;
    scalar.decode_dot_s16(stream.data(), first, stride, rows, count, chunk_depth, bits, book_q.data(), per_book, phase,
                          xw.data(), ld_x, xm, w1.data(), u1.data());
    simd.decode_dot_s16(stream.data(), first, stride, rows, count, chunk_depth, bits, book_q.data(), per_book, phase,
                        xw.data(), ld_x, xm, w2.data(), u2.data());
    EXPECT(w1 == w2 && u1 == u2 && u1 == t1 && w1[chunks * xm * rows] == -9,
           "%s decode_dot_s16 differs: bits=%u rows=%zu count=%zu depth=%zu M=%zu", simd.name, bits, rows, count,
           chunk_depth, xm);
    for (size_t q = 0; q < chunks; ++q)
      for (size_t r = 0; r < rows; ++r) {
        const size_t k0 = q * chunk_depth, len = std::min(chunk_depth, count - k0);
        for (size_t m = 0; m < xm; ++m) {
          int32_t dot = 0;
          for (size_t i = 0; i < len; ++i) dot += int32_t{xw[(q * xm + m) * ld_x + i]} * r1[r * ld_rows + k0 + i];
          EXPECT(w1[(q * xm + m) * rows + r] == dot, "scalar decode_dot_s16: chunk %zu, row %zu of X, row %zu", q, m,
                 r);
        }
      }
    for (size_t q = 0; q < chunks; ++q)
      for (size_t r = 0; r < rows; ++r) {
        const size_t k0 = q * chunk_depth, len = std::min(chunk_depth, count - k0);
        int32_t sum = 0;
        for (size_t i = 0; i < len; ++i) sum += r1[r * ld_rows + k0 + i];
        EXPECT(t1[q * rows + r] == sum, "scalar decode_dot_s8: chunk %zu, row %zu sum", q, r);
        for (size_t m = 0; m < xm; ++m) {
          int32_t dot = 0;
          for (size_t i = 0; i < len; ++i) dot += int32_t{xq[(q * xm + m) * ld_x + i]} * r1[r * ld_rows + k0 + i];
          EXPECT(d1[(q * xm + m) * rows + r] == dot, "scalar decode_dot_s8: chunk %zu, row %zu of X, row %zu", q, m,
                 r);
        }
      }
  }
  std::printf("%s: %d int8 micro-kernel cases bit-identical to scalar\n", simd.name, cases);
}

// A table's int8 tier against the scalar kernels driving the same tier (a copy of the scalar
// table with the SIMD table's name, panel width and int8 flags: the same paths, routes and panels),
// bit for bit; a row with an outlier activation (rejected by the guard) gets a second int8
// row and stays within the tier at a fraction of the plain rows' error; a row that is not
// finite gets the float tier's bits; a row's result does not depend on M.
double row_rel_error(const float* y, const float* ref, size_t n) {
  double err = 0.0, norm = 0.0;
  for (size_t i = 0; i < n; ++i) {
    err += (double(y[i]) - ref[i]) * (double(y[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return norm > 0.0 ? std::sqrt(err / norm) : std::sqrt(err);
}

// The scalar kernels driving simd's int8 tier: the same routes, X width and panel width.
onnxvq::kernels::KernelTable scalar_int8_twin(const onnxvq::kernels::KernelTable& simd) {
  onnxvq::kernels::KernelTable twin = onnxvq::kernels::scalar_kernel_table();
  twin.name = simd.name;
  twin.dense_gemm_cols = simd.dense_gemm_cols;
  twin.int8_panels = true;
  twin.int8_fastscan_d1_decoder = simd.int8_fastscan_d1_decoder;
  twin.int8_stream_decoders = simd.int8_stream_decoders;
  twin.int8_word_decoders = simd.int8_word_decoders;
  twin.wide_x = simd.wide_x;
  return twin;
}

void test_int8_tier(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  if (!int8_panels_enabled(simd)) return;
  const KernelTable scalar_int8 = scalar_int8_twin(simd);
  KernelTable float_tier = simd;
  float_tier.int8_panels = false;
  int cases = 0;
  size_t second_rows = 0, float_rows = 0;
  double worst_second = 0.0, second_error_sum = 0.0;
  size_t second_rows_measured = 0, few_row_cases = 0;
  // At least 100 cases, and on until the outlier rows below are enough to average (K = 100
  // is one draw in eight, so a small ONNXVQ_TEST_CASES alone may not reach them).
  for (int i = 0; i < std::max(scaled(200), 100) || (second_rows_measured < 16 && i < 3000); ++i) {
    Case c = random_case(rng, std::vector<size_t>{40, 129, 300}[rng() % 3]);
    VQProblem& p = c.p;
    if (choose_path(p, simd) != VQPath::kTileGemm) continue;
    // Outlier rows (K = 100, one depth chunk): values below 180 in magnitude and one 1e4 fail
    // the guard (a step of 78.7 for the rest: est^2 = 100 / (12 * 127^2 + ...) > 0.02^2,
    // about 2.3% of the row); their second row resolves the rest 254x finer. Rows with a NaN
    // take the float panels.
    enum Kind : char { kPlain, kSecond, kFloat };
    std::vector<char> kind(p.M, kPlain);
    const bool outlier_case = p.K == 100;
    const size_t nonfinite = outlier_case ? rng() % 2 : 0, outliers = outlier_case ? 1 + rng() % 3 : 0;
    for (size_t r = 0; r < nonfinite + outliers; ++r) {
      const size_t m = (r * 7 + 3) % p.M, a = rng() % p.K;
      kind[m] = r < nonfinite ? kFloat : kSecond;
      for (size_t k = 0; k < p.K; ++k) {
        const float v = c.x[m * p.K + k];
        c.x[m * p.K + k] = std::abs(v) < 3.0f ? 60.0f * v : 0.0f;
      }
      c.x[m * p.K + a] = r < nonfinite ? std::numeric_limits<float>::quiet_NaN() : 1e4f;
    }
    vq_matmul(p, {}, simd);
    const std::vector<float> got = c.y;
    vq_matmul(p, {}, scalar_int8);
    EXPECT(same_floats(got, c.y), "%s int8 tier vs scalar kernels: K=%zu N=%zu bits=%u d=%zu T=%zu fmt=%d M=%zu",
           simd.name, p.K, p.N, p.bits, p.d, p.T, p.format_version, p.M);
    vq_matmul(p, {}, float_tier);
    const std::vector<float> exact = c.y;
    const std::vector<double> expected = naive_matmul(c);
    const std::vector<double> bound = int8_bounds(c, true);
    size_t same_rows = 0;
    for (size_t m = 0; m < p.M; ++m) {
      const bool same = std::memcmp(&got[m * p.N], &exact[m * p.N], p.N * sizeof(float)) == 0;
      same_rows += same;
      if (kind[m] == kFloat) EXPECT(same, "%s: row %zu (not finite) is not on the float tier", simd.name, m);
      float_rows += kind[m] == kFloat;
      if (kind[m] != kSecond) continue;
      ++second_rows;
      EXPECT(!same || p.N < 4, "%s: outlier row %zu took the float tier", simd.name, m);
      // Over 16 or more outputs (one output alone may be small against its weights' error).
      if (p.N >= 16) {
        const double error = row_rel_error(&got[m * p.N], &exact[m * p.N], p.N);
        worst_second = std::max(worst_second, error);
        second_error_sum += error;
        ++second_rows_measured;
      }
      for (size_t n = 0; n < p.N; ++n) {
        const double e = m * p.N + n, tol = bound[e] + 1e-5 * std::max(1.0, std::abs(expected[e]));
        if (!(std::abs(got[e] - expected[e]) <= tol)) {
          EXPECT(false, "%s: outlier row %zu y[%zu]=%g expected %g (bound %g)", simd.name, m, n, got[e], expected[e], tol);
          break;
        }
      }
    }
    if (!outlier_case && p.K >= 16 && p.N >= 4) EXPECT(same_rows < p.M, "%s: no row took the int8 tier", simd.name);
    // The first 40 rows alone: the same bits.
    VQProblem head = p;
    head.M = 40;
    std::vector<float> y(head.M * p.N);
    head.y = y.data();
    if (choose_path(head, simd) == VQPath::kTileGemm) {
      vq_matmul(head, {}, simd);
      EXPECT(std::memcmp(y.data(), got.data(), y.size() * sizeof(float)) == 0, "%s: rows depend on M", simd.name);
    }
    // And the first 1 .. 5 rows (decode_dot_s8 up to kInt8DecodeDotMaxRows of them, where the
    // chooser takes the tile path that early): the same bits, the scalar kernels' too.
    head.M = 1 + rng() % 5;
    if (choose_path(head, simd) == VQPath::kTileGemm) {
      ++few_row_cases;
      vq_matmul(head, {}, simd);
      EXPECT(std::memcmp(y.data(), got.data(), head.M * p.N * sizeof(float)) == 0, "%s: %zu rows differ from %zu",
             simd.name, head.M, p.M);
      vq_matmul(head, {}, scalar_int8);
      EXPECT(std::memcmp(y.data(), got.data(), head.M * p.N * sizeof(float)) == 0,
             "%s: %zu rows on the scalar kernels differ", simd.name, head.M);
    }
    ++cases;
  }
  // Plain int8 leaves these rows about 2.3% off (the guard's estimate: 1.4-7.1% of the float
  // tier, 2.6% on average, with ONNXVQ_INT8_GUARD=100); with second rows what remains is mostly
  // the weights' int8 rounding, which the outlier input multiplies: 0.3-1.9%, 0.7% on average.
  // A single row's share of it depends on its one outlier weight, so the average is checked.
  const double mean_second = second_error_sum / std::max<size_t>(second_rows_measured, 1);
  EXPECT(second_rows_measured >= 10 && mean_second <= 0.012,
         "%s: outlier rows (two int8 levels, or 16-bit X) are %.4f off the float tier on average (%zu rows)", simd.name,
         mean_second, second_rows_measured);
  EXPECT(second_rows >= 3 && float_rows >= 3, "%s: %zu outlier and %zu non-finite rows checked", simd.name, second_rows,
         float_rows);
  EXPECT(few_row_cases >= 10, "%s: %zu few-row int8 cases", simd.name, few_row_cases);
  std::printf("%s: %d int8-tier cases (scalar kernels' bits, guard, %zu outlier rows on %s (%.4f of "
              "the float tier on average, worst %.4f), %zu non-finite rows float, M-independence, %zu "
              "few-row cases)\n",
              simd.name, cases, second_rows, simd.wide_x ? "16-bit X" : "two int8 levels", mean_second, worst_second,
              float_rows, few_row_cases);
}

// The d = 4 word decoders against scalar, and scalar against plain lookups: every panel width
// up to a block, partial blocks, shared and per-subspace codebooks, codes and codebooks at
// their exact sizes (a sanitizer sees any read past them), canaries around the panel.
void test_vector_word_kernels(const KernelTable& simd, std::mt19937& rng) {
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  using onnxvq::kernels::kByteScanBlockRows;
  using onnxvq::kernels::kFastScanGroupBytes;
  const int cases = scaled(300);
  for (int i = 0; i < cases; ++i) {
    const int kind = static_cast<int>(rng() % 3);  // 0: fast-scan words, 1: byte-scan planes, 2: two stages
    const bool bytes = kind == 1, two = kind == 2;
    // Up to a block of 32 for fast-scan words; several blocks (and the planes' groups of 256
    // columns) for the byte-plane decoders.
    const size_t ncw = kind == 0 ? 16 : 256, max_cols = kind == 0 ? 32 : 300;
    const size_t subspaces = 1 + rng() % 40, cols = 1 + rng() % max_cols, ld = cols + rng() % 40;
    const bool per_subspace = rng() % 2;
    // Byte-scan codes: subspace j's at j * 64, the last one's exactly cols bytes long.
    // Two stages: stage 1's groups stage_stride on, the next block's (outputs 32-63) block_stride
    // on, read only when cols > 32 (the buffer ends with the first block otherwise).
    // Byte-scan: block b's entries block_stride apart, the last block's last entry cut at cols.
    const size_t stage_stride = two ? (subspaces + rng() % 3) * kFastScanGroupBytes : 0;
    const size_t block_stride = two ? 2 * stage_stride + (rng() % 3) * kFastScanGroupBytes
                                    : (subspaces + rng() % 3) * kByteScanBlockRows;
    const size_t last = (cols - 1) / (two ? 32 : 64);  // the last block with columns
    const size_t fastscan_bytes = (two ? last * block_stride : 0) + stage_stride + subspaces * kFastScanGroupBytes;
    const size_t bytescan_bytes = last * block_stride + (subspaces - 1) * kByteScanBlockRows + (cols - 64 * last);
    std::vector<uint8_t> codes(bytes ? bytescan_bytes : fastscan_bytes);
    for (auto& v : codes) v = static_cast<uint8_t>(rng());
    std::vector<int32_t> words((per_subspace ? subspaces : 1) * ncw);
    for (auto& v : words) v = static_cast<int32_t>(rng());
    const size_t stride = per_subspace ? ncw : 0;
    std::vector<uint8_t> planes(words.size() * 4);  // byte-scan codebooks as byte planes
    for (size_t g = 0; g * ncw < words.size(); ++g)
      for (size_t code = 0; code < ncw; ++code)
        for (size_t b = 0; b < 4; ++b) planes[(g * 4 + b) * ncw + code] = static_cast<uint8_t>(words[g * ncw + code] >> (8 * b));
    std::vector<int8_t> p1(subspaces * 4 * ld, 99), p2 = p1;
    std::vector<int32_t> s1(cols + 1, -7), s2 = s1;
    auto run = [&](const KernelTable& k, std::vector<int8_t>& out, std::vector<int32_t>& sums) {
      if (bytes)
        k.decode_bytescan_words_s8(codes.data(), block_stride, subspaces, cols, planes.data(), 4 * stride, words.data(),
                                   stride, out.data(), ld, sums.data());
      else if (two)
        k.decode_fastscan2_words_s8(codes.data(), stage_stride, block_stride, subspaces, cols, planes.data(), 4 * stride,
                                    words.data(), stride, out.data(), ld, sums.data());
      else
        k.decode_fastscan_words_s8(codes.data(), subspaces, cols, words.data(), stride, out.data(), ld, sums.data());
    };
    run(scalar, p1, s1);
    run(simd, p2, s2);
    EXPECT(p1 == p2 && s1 == s2 && s1[cols] == -7, "%s decode_%s_words_s8 differs: subspaces=%zu cols=%zu ld=%zu",
           simd.name, bytes ? "bytescan" : two ? "fastscan2" : "fastscan", subspaces, cols, ld);
    for (size_t c = 0; c < cols; ++c) {
      int32_t sum = 0;
      for (size_t j = 0; j < subspaces; ++j) {
        const size_t at = (c / 32) * block_stride + j * kFastScanGroupBytes + c % 16;  // fast-scan group byte
        const uint8_t byte = bytes ? codes[(c / 64) * block_stride + j * kByteScanBlockRows + c % 64] : codes[at];
        unsigned code = bytes ? byte : c % 32 < 16 ? byte & 15u : byte >> 4;
        if (two) {
          const uint8_t second = codes[stage_stride + at];
          code |= (c % 32 < 16 ? second & 15u : second >> 4) << 4;
        }
        int8_t want[4];
        std::memcpy(want, &words[j * stride + code], 4);
        EXPECT(std::memcmp(&p1[(j * ld + c) * 4], want, 4) == 0, "scalar word decode: subspace %zu column %zu", j, c);
        sum += want[0] + want[1] + want[2] + want[3];
      }
      EXPECT(s1[c] == sum, "scalar word decode: column %zu sum", c);
    }
    for (size_t j = 0; j < subspaces; ++j)  // nothing written past the columns
      for (size_t b = cols * 4; b < ld * 4; ++b) EXPECT(p1[j * ld * 4 + b] == 99, "scalar word decode wrote past cols");
  }
  std::printf("%s: %d d=4 word-decode cases bit-identical to scalar\n", simd.name, cases);
}

// The int8 tier's vector route end to end: pq 4-bit (format 2) and 8-bit (format 3) with d = 4
// on the tile path, against the scalar kernels driving the same tier (bit for bit), against the
// double oracle within the route's bound, prepared codebooks against per-call ones (bit for
// bit); then the same with an outlier codeword in one codebook, which takes a second digit
// (its bound fails if the second pass is skipped, or if the codebook keeps one coarse step).
void test_vector_route(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  // Tables without SIMD word decoders send these codebooks to the float panels, which
  // test_int8_tier covers.
  if (!int8_panels_enabled(simd) || !simd.int8_word_decoders) return;
  const KernelTable scalar_int8 = scalar_int8_twin(simd);
  auto pick = [&](std::initializer_list<size_t> values) { return *(values.begin() + rng() % values.size()); };
  int cases = 0, outliers = 0;
  // Drawn until enough take the tile path (about half do: pq 4-bit on wide layers and few rows
  // stay on fast-scan), so a short run (ONNXVQ_TEST_CASES=300) still checks 21.
  const int wanted = scaled(100) + 20;
  for (int i = 0; cases < wanted && i < 20 * wanted; ++i) {
    Case c;
    VQProblem& p = c.p;
    const int kind = static_cast<int>(rng() % 3);  // pq 4-bit, pq 8-bit, rq 2x4
    const bool bytes = kind == 1;
    p.format_version = bytes ? 3 : 2;
    p.bits = bytes ? 8 : 4;
    p.d = 4, p.T = kind == 2 ? 2 : 1, p.axis = 0;
    p.K = pick({4, 8, 64, 100, 388, 772});  // one depth chunk, two, three
    p.N = pick({1, 17, 31, 32, 33, 64, 65, 100, 130, 200, 300, 520});  // panels of 256 columns: one to three
    p.S = p.K / 4;
    p.group_size = p.N;
    p.per_subspace = rng() % 2;
    p.M = 16 + rng() % 30;
    fill_case(c, rng);
    if (choose_path(p, simd) != VQPath::kTileGemm) continue;
    for (const bool outlier : {false, true}) {
      // One codeword far from the rest: its codebook fails the check and takes two digits.
      if (outlier) c.codebooks[rng() % c.codebooks.size()] = (rng() % 2 ? 400.0f : -60.0f);
      const char* what = outlier ? "an outlier codeword" : "normal codebooks";
      EXPECT(std::strcmp(int8_route_name(p), "vector_bytes") == 0, "%s: %s took %s (fmt=%d K=%zu N=%zu per_s=%d)",
             simd.name, what, int8_route_name(p), p.format_version, p.K, p.N, p.per_subspace);
      vq_matmul(p, {}, simd);
      const std::vector<float> got = c.y;
      vq_matmul(p, {}, scalar_int8);
      EXPECT(same_floats(got, c.y), "%s vector route, %s, vs scalar kernels: fmt=%d T=%zu K=%zu N=%zu per_s=%d M=%zu",
             simd.name, what, p.format_version, p.T, p.K, p.N, p.per_subspace, p.M);
      const std::shared_ptr<const PreparedCodebooks> prepared = prepare_codebooks(p, simd);
      VQProblem q = p;
      q.prepared = prepared.get();
      std::fill(c.y.begin(), c.y.end(), std::nanf(""));
      vq_matmul(q, {}, simd);
      EXPECT(same_floats(got, c.y), "%s vector route, %s: prepared codebooks change the bits", simd.name, what);
      const std::vector<double> expected = naive_matmul(c), bound = vector_int8_bounds(c, naive_weight(c));
      for (size_t e = 0; e < got.size(); ++e)
        if (!(std::abs(got[e] - expected[e]) <= bound[e] + 1e-5 * std::max(1.0, std::abs(expected[e])))) {
          EXPECT(false, "%s vector route, %s: fmt=%d T=%zu K=%zu N=%zu per_s=%d y[%zu]=%g expected %g (bound %g)",
                 simd.name, what, p.format_version, p.T, p.K, p.N, p.per_subspace, e, got[e], expected[e], bound[e]);
          break;
        }
      outliers += outlier;
    }
    ++cases;
  }
  EXPECT(cases >= wanted, "%s: %d vector-route cases on the tile path (of %d wanted)", simd.name, cases, wanted);
  std::printf("%s: %d vector-route cases, %d with an outlier codeword (scalar kernels' bits, prepared codebooks' "
              "bits, oracle bound)\n", simd.name, cases, outliers);
}

// A format-1 stream whose scalar codebook has an outlier codeword (MiniLM's FFN outputs) takes
// kStreamColumnBytes: per-column int8 tables from the largest codeword each column uses, the
// float route's bits (quantize_panel_s8 of the decoded panel), with and without prepared
// codebooks, on the scalar kernels too. Outliers in a few columns only, so most columns' scales
// come from codewords below the largest (a table from the codebook's largest would differ).
void test_stream_column_route(const KernelTable& simd, std::mt19937& rng) {
  using namespace onnxvq::kernels;
  if (!int8_panels_enabled(simd) || !simd.int8_stream_decoders) return;
  const KernelTable scalar_int8 = scalar_int8_twin(simd);
  KernelTable float_route = simd;
  float_route.int8_stream_decoders = false;  // the float panels, quantized per column
  auto pick = [&](std::initializer_list<size_t> values) { return *(values.begin() + rng() % values.size()); };
  int cases = 0, with_outlier = 0;
  for (int i = 0; i < std::max(scaled(60), 30) || (cases < 20 && i < 2000); ++i) {  // on until 20 reach the tile path
    Case c;
    VQProblem& p = c.p;
    p.M = pick({1, 3, 8, 40, 70, 130});
    p.K = pick({17, 100, 385, 900});
    p.N = pick({1, 5, 33, 70, 130});
    p.bits = 2 + rng() % 7;
    p.d = 1, p.T = 1, p.axis = 0, p.format_version = 1, p.per_subspace = false;
    p.S = p.K;
    p.group_size = std::min(p.N, pick({1000, 16, 5}));
    fill_case(c, rng);
    // Codes: the outlier codeword (code 0 of every group) in about one column in eight.
    const size_t ncw = p.codewords();
    std::fill(c.codes.begin(), c.codes.end(), 0);
    for (size_t r = 0; r < p.N; ++r) {
      const bool uses_outlier = rng() % 8 == 0;
      for (size_t k = 0; k < p.K; ++k) {
        const unsigned code = uses_outlier && rng() % 50 == 0 ? 0u : 1u + static_cast<unsigned>(rng() % (ncw - 1));
        for (unsigned b = 0; b < p.bits; ++b) {
          const uint64_t bit = (r * p.S + k) * p.bits + b;
          c.codes[bit / 8] |= static_cast<uint8_t>(((code >> b) & 1u) << (bit % 8));
        }
        with_outlier += code == 0;
      }
    }
    for (size_t g = 0; g < p.row_groups(); ++g) c.codebooks[g * ncw] = 60.0f;
    if (std::strcmp(int8_route_name(p), "stream_column_bytes") != 0) {
      EXPECT(false, "%s: an outlier codeword in a stream took %s (bits=%u)", simd.name, int8_route_name(p), p.bits);
      continue;
    }
    if (choose_path(p, simd) != VQPath::kTileGemm) continue;
    vq_matmul(p, {}, simd);
    const std::vector<float> got = c.y;
    vq_matmul(p, {}, float_route);
    EXPECT(same_floats(got, c.y), "%s column tables vs float panels: K=%zu N=%zu bits=%u groups of %zu M=%zu",
           simd.name, p.K, p.N, p.bits, p.group_size, p.M);
    vq_matmul(p, {}, scalar_int8);
    EXPECT(same_floats(got, c.y), "%s column tables vs scalar kernels: K=%zu N=%zu bits=%u M=%zu", simd.name, p.K,
           p.N, p.bits, p.M);
    const std::shared_ptr<const PreparedCodebooks> prepared = prepare_codebooks(p, simd);
    VQProblem q = p;
    q.prepared = prepared.get();
    std::fill(c.y.begin(), c.y.end(), std::nanf(""));
    vq_matmul(q, {}, simd);
    EXPECT(same_floats(got, c.y), "%s column tables: prepared codebooks change the bits", simd.name);
    c.codebooks[rng() % c.codebooks.size()] = std::numeric_limits<float>::infinity();
    EXPECT(std::strcmp(int8_route_name(p), "float_panels") == 0, "%s: a codebook that is not finite took %s",
           simd.name, int8_route_name(p));
    ++cases;
  }
  EXPECT(cases >= 20 && with_outlier > 0, "%s: %d column-table cases", simd.name, cases);
  std::printf("%s: %d column-table cases (float panels' bits, scalar kernels', prepared codebooks')\n", simd.name,
              cases);
}

// Rows of the chooser's table measured on the int8 byte route apply only to codebooks that
// take it: a 5-bit codebook of evenly spread codewords goes to the tile path from one row,
// the same with one codeword far from the rest (MiniLM's FFN output) keeps the small path.
void test_byte_route_rows(const KernelTable& simd) {
  using namespace onnxvq::kernels;
  if (!int8_panels_enabled(simd) || std::strncmp(simd.name, "avx512vbmi-vnni", 15) != 0) return;
  VQProblem p;
  p.K = 384, p.N = 64, p.bits = 5, p.d = 1, p.T = 1, p.axis = 0, p.group_size = 64, p.format_version = 1;
  p.S = p.K, p.M = 1;
  std::vector<float> books(32);
  for (size_t i = 0; i < books.size(); ++i) books[i] = 0.01f * (static_cast<float>(i) - 15.5f);
  p.codebooks = books.data();
  EXPECT(choose_path(p, simd) == VQPath::kTileGemm, "%s: even codebook at M=1 took %s", simd.name,
         path_name(choose_path(p, simd)));
  books[31] = 20.0f;
  EXPECT(choose_path(p, simd) == VQPath::kDecodeDot, "%s: outlier codebook at M=1 took %s", simd.name,
         path_name(choose_path(p, simd)));
}

int main() {
  std::mt19937 rng(12345);
  const KernelTable& scalar = onnxvq::kernels::scalar_kernel_table();
  test_unpack_codes(scalar, rng);
  test_against_oracle(scalar, rng);
  test_threads_do_not_change_bits(scalar, rng);
  test_tile_gemm(scalar, rng);
  test_fastscan_guard(rng);
  // Every other table this build has and this CPU runs must agree with the scalar one
  // (under qemu on AArch64 that includes NEON; AVX-512 only on CPUs that have it).
  const KernelTable* tables[8];
  const size_t count = onnxvq::kernels::supported_kernel_tables(tables, 8);
  for (size_t i = 0; i < count; ++i) {
    if (tables[i] == &scalar) continue;
    test_unpack_codes(*tables[i], rng);
    test_against_oracle(*tables[i], rng);
    test_threads_do_not_change_bits(*tables[i], rng);
    test_fastscan_micro_kernels(*tables[i], rng);
    test_bytescan_micro_kernels(*tables[i], rng);
    test_build_lut(*tables[i], rng);
    test_shapes_against_scalar(*tables[i], rng);
    test_tile_gemm(*tables[i], rng);
    test_tile_micro_kernels(*tables[i], rng);
    test_guard_simd_matches_scalar(*tables[i], rng);
    test_int8_micro_kernels(*tables[i], rng);
    test_int8_tier(*tables[i], rng);
    test_vector_word_kernels(*tables[i], rng);
    test_vector_route(*tables[i], rng);
    test_stream_column_route(*tables[i], rng);
    test_byte_route_rows(*tables[i]);
  }
  g_failures += run_gather_tests(tables, count);
  std::printf("random oracle cases per table: %d (ONNXVQ_TEST_CASES)\n", oracle_cases());
  for (size_t i = 0; i < count; ++i) std::printf("tested kernel table: %s\n", tables[i]->name);
  std::printf("active kernel table: %s\n", onnxvq::kernels::active_kernel_table().name);
  if (g_failures) std::fprintf(stderr, "%d failure(s)\n", g_failures);
  return g_failures ? 1 : 0;
}
