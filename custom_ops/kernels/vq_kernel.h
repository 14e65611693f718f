// Framework-free VQMatMul kernels: Y[M, N] = X[M, K] @ W_hat[K, N] (+ bias[N]).
//
// W_hat is never rebuilt. It is described (see onnxvq/ops/schema.py) by a matrix of vectors
// M with R rows of length L = S * d (zero padded), each row split into S subvectors:
//   axis 0: M = W_hat^T, R = N, L = K  (subvectors along the input axis)
//   axis 1: M = W_hat,   R = K, L = N  (subvectors along the output axis)
//   M[r, s*d + j] = sum_t codebooks[t, per_subspace ? s : 0, r / group_size, code(t, r, s), j]
//
// Layering:
//   * vq_matmul() (vq_kernel.cc) picks a path, tiles the problem and hands independent
//     tasks to a TaskRunner. It is ISA-independent.
//   * The inner loops are the micro-kernels of a KernelTable. vq_kernel_scalar.cc
//     defines the portable table, the C++ oracle every SIMD table is tested against.
//     A SIMD translation unit (vq_kernel_avx2.cc, ...) compiled with its own flags starts
//     from a copy of the scalar table, overrides what it accelerates, and is selected at
//     run time in select_kernel_table() (vq_kernel.cc).
//
// Nothing here knows ONNX Runtime. The caller validates every size first; the kernels
// trust the problem they are given.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(_WIN32)
#define ONNXVQ_EXPORT __declspec(dllexport)
#else
#define ONNXVQ_EXPORT __attribute__((visibility("default")))
#endif

namespace onnxvq::kernels {

/// Interleaved bucket arrays used by KernelTable::bucket_dot (see there).
inline constexpr size_t kBucketSets = 4;

/// One VQMatMul evaluation. Sizes are element counts; every buffer is dense row-major.
struct VQProblem {
  size_t M = 0;  ///< rows of X and Y: every leading dimension of X flattened (may be 0)
  size_t K = 0;  ///< in_features
  size_t N = 0;  ///< out_features

  unsigned bits = 0;          ///< bits per code, 1..8; each codebook holds 2^bits codewords
  size_t d = 0;               ///< subvector length
  size_t S = 0;               ///< subvectors per row of M, ceil(L / d)
  size_t T = 0;               ///< residual stages, summed
  int axis = 0;               ///< 0: rows of M are columns of W_hat; 1: rows of M are rows of W_hat
  size_t group_size = 0;      ///< rows of M that share one codebook group, 1..R
  bool per_subspace = false;  ///< one codebook per subspace (Gs = S) or shared (Gs = 1)

  const float* x = nullptr;          ///< size M*K, layout (M, K)
  const uint8_t* codes = nullptr;    ///< size ceil(T*R*S*bits / 8) bytes: the codes of layout
                                     ///< (T, R, S), bit-packed LSB-first (code i = stream bits
                                     ///< [i*bits, (i+1)*bits), stream bit b = bit b%8 of byte b/8)
  const float* codebooks = nullptr;  ///< size T*Gs*Gr*2^bits*d, layout (T, Gs, Gr, 2^bits, d)
  const float* bias = nullptr;       ///< size N, or nullptr for no bias
  float* y = nullptr;                ///< size M*N, layout (M, N); fully overwritten

  size_t rows() const { return axis == 0 ? N : K; }     ///< R
  size_t length() const { return axis == 0 ? K : N; }   ///< L
  size_t codewords() const { return size_t{1} << bits; }  ///< 2^bits
  size_t subspace_groups() const { return per_subspace ? S : 1; }  ///< Gs
  size_t row_groups() const { return (rows() + group_size - 1) / group_size; }  ///< Gr
};

/// Runs num_tasks independent tasks fn(task_data, i), i < num_tasks, in any order and
/// possibly concurrently, and returns when all are done (it may throw). A null `run` means
/// serial. The kernel's results never depend on how, or whether, tasks run in parallel.
struct TaskRunner {
  using TaskFn = void (*)(void* task_data, size_t task_index);
  void (*run)(void* runner_context, TaskFn fn, size_t num_tasks, void* task_data) = nullptr;
  void* runner_context = nullptr;
};

/// The micro-kernels an instruction set can replace. Each one must give the same result
/// as the scalar version on every input, tails included (same summation order where the
/// comment says so; SIMD tables should be bit-identical to scalar or documented otherwise).
struct KernelTable {
  const char* name;  ///< "scalar", "avx2", ...

  /// out[i] = code number first + i of the packed stream, i < count. Reads only the bytes
  /// that hold those codes.
  void (*unpack_codes)(const uint8_t* stream, uint64_t first, size_t count, unsigned bits,
                       uint8_t* out);

  /// lut[c] = sum_{j < len} x[j] * codewords[c*d + j] for c < num_codewords (j ascending).
  /// len <= d: the last subspace of a row may be partial.
  void (*build_lut)(const float* x, size_t len, const float* codewords, size_t d,
                    size_t num_codewords, float* lut);

  /// For each of `rows` lookup tables (table m at luts + m*lut_row_stride, entry i's
  /// codewords at + i*num_codewords): out[m*out_stride] = sum_{i < count} table_m[i][codes[i]],
  /// summed i ascending from 0.0f.
  void (*lut_gather_rows)(const uint8_t* codes, size_t count, size_t num_codewords,
                          const float* luts, size_t lut_row_stride, size_t rows, float* out,
                          size_t out_stride);

  /// buckets[i*num_codewords + codes[i]] += value for i < count (i ascending).
  void (*scatter_add)(const uint8_t* codes, size_t count, float value, float* buckets,
                      size_t num_codewords);

  /// Returns sum_c codebook[c] * bucket[c] (c ascending) where bucket[c] is the sum of the
  /// x[i] with codes[i] == c, accumulated as kBucketSets partial sums (x[i] goes to partial
  /// i % kBucketSets, i ascending), bucket = (p0 + p1) + (p2 + p3).
  /// `buckets` is scratch of kBucketSets * num_codewords floats.
  float (*bucket_dot)(const uint8_t* codes, const float* x, size_t count, const float* codebook,
                      size_t num_codewords, float* buckets);

  /// sum_{j < n} a[j] * b[j], j ascending from 0.0f.
  float (*dot)(const float* a, const float* b, size_t n);

  /// y[j] += a * x[j] for j < n.
  void (*axpy)(float a, const float* x, size_t n, float* y);
};

/// The portable table (always built).
const KernelTable& scalar_kernel_table();

/// The table vq_matmul() uses: the best one this CPU supports, or the scalar table when
/// the environment variable ONNXVQ_FORCE_SCALAR=1 was set when it was first asked for.
const KernelTable& active_kernel_table();

/// The strategies vq_matmul() chooses from; all are gather-accumulate, none decodes W_hat.
enum class VQPath {
  kLut,            ///< axis 0: per input row, LUT[t][s][c] = <x_s, codeword c>, y[n] = sum LUT[code]
  kRowBuckets,     ///< axis 0, d == 1, shared codebook: y[n] = sum_c codebook[c] * (sum of x_s coded c)
  kColumnBuckets,  ///< axis 1: bucket[s][c] = sum of x_k coded c in subspace s, y = sum_c bucket * codeword
  kDirect,         ///< any layout: y gathers codewords and multiplies directly
};

/// The path vq_matmul() takes for this layout (depends only on the attributes, not on M,
/// the data or the thread count).
VQPath choose_path(const VQProblem& problem);
const char* path_name(VQPath path);

/// Computes problem.y. Throws std::bad_alloc (or whatever runner.run throws) on failure.
void vq_matmul(const VQProblem& problem, const TaskRunner& runner = {},
               const KernelTable& kernels = active_kernel_table());

}  // namespace onnxvq::kernels

// C entry points, exported from the shared library for tests and diagnostics.
extern "C" {
/// Name of the active kernel table, e.g. "scalar".
ONNXVQ_EXPORT const char* onnxvq_kernel_name(void);

/// Name of the path ("lut", "row_buckets", "column_buckets", "direct") vq_matmul() takes
/// for these attributes, or "invalid" when they do not describe a valid layout.
ONNXVQ_EXPORT const char* onnxvq_kernel_path(
    int64_t in_features, int64_t out_features, int64_t bits, int64_t subvector_len,
    int64_t stages, int64_t axis, int64_t group_size, int64_t codebook_per_subspace);
}
