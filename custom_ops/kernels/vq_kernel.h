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
#include <memory>

#if defined(_WIN32)
#define ONNXVQ_EXPORT __declspec(dllexport)
#else
#define ONNXVQ_EXPORT __attribute__((visibility("default")))
#endif

namespace onnxvq::kernels {

/// Interleaved bucket arrays used by KernelTable::bucket_dot (see there).
inline constexpr size_t kBucketSets = 4;

/// format_version 2 ("fast-scan", axis 0, 4-bit codes; onnxvq/ops/schema.py). With
/// E = T*S entries per row of M (entry e = t*S + s) and blocks of 32 rows of M:
///   byte[(b*E + e)*16 + j] = code(t, 32b + j, s) | code(t, 32b + 16 + j, s) << 4
/// One 16-byte group feeds one 16-entry table lookup (pshufb / vqtbl1q) for 32 outputs.
inline constexpr size_t kFastScanBlockRows = 32;
inline constexpr size_t kFastScanGroupBytes = 16;
inline constexpr size_t kFastScanCodewords = 16;
/// Quantized tables are padded to a multiple of this many bytes with zeros, so a SIMD
/// kernel may read entries in pairs (or fours) without a tail case for the tables.
inline constexpr size_t kFastScanTablePad = 64;
/// Readable bytes past the last byte-scan table a scan is given: AVX2's bytescan_u8 gathers
/// 32 bits at table + code and keeps the low byte.
inline constexpr size_t kByteScanTableSlack = 4;
/// How far ahead the AVX-512 scans ask for their codes: into L2 16 KB ahead and into L1 2 KB
/// ahead. The fast-scan kernel alone over 300 cold copies of 4096x4096 (2 MB of codes each)
/// took 1.15x a plain read of them so, 1.3x with one prefetch 4 KB ahead, 2x with none.
inline constexpr size_t kCodePrefetchBytes = 2048;
inline constexpr size_t kCodePrefetchL2Bytes = 16384;

/// format_version 3 ("byte-scan", axis 0, 8-bit codes, d >= 2): blocks of 64 rows of M,
///   byte[(b*E + e)*64 + j] = code(t, 64b + j, s)
/// One 64-byte entry feeds one 256-entry byte-table lookup (two vpermi2b) for 64 outputs.
inline constexpr size_t kByteScanBlockRows = 64;
inline constexpr size_t kByteScanCodewords = 256;

struct PreparedCodebooks;  // see prepare_codebooks()

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
  int format_version = 1;     ///< packed code layout: 1 (LSB-first stream), 2 (fast-scan blocks)
                              ///< or 3 (byte-scan blocks)
  bool exact_lut = false;     ///< format 2: float tables even without ONNXVQ_EXACT_LUT
  size_t group_size = 0;      ///< rows of M that share one codebook group, 1..R
  bool per_subspace = false;  ///< one codebook per subspace (Gs = S) or shared (Gs = 1)

  const float* x = nullptr;          ///< size M*K, layout (M, K)
  const uint8_t* codes = nullptr;    ///< format_version 1: ceil(T*R*S*bits / 8) bytes, the codes
                                     ///< of layout (T, R, S) bit-packed LSB-first (code i = stream
                                     ///< bits [i*bits, (i+1)*bits), stream bit b = bit b%8 of byte
                                     ///< b/8); format_version 2: ceil(R/32)*T*S*16 bytes, see
                                     ///< kFastScanBlockRows; 3: ceil(R/64)*T*S*64, see kByteScanBlockRows
  const float* codebooks = nullptr;  ///< size T*Gs*Gr*2^bits*d, layout (T, Gs, Gr, 2^bits, d)
  const float* bias = nullptr;       ///< size N, or nullptr for no bias
  float* y = nullptr;                ///< size M*N, layout (M, N); fully overwritten
  /// prepare_codebooks() of exactly these layout fields and codebook values, or nullptr (then
  /// whatever it holds is derived again on every call).
  const PreparedCodebooks* prepared = nullptr;

  size_t rows() const { return axis == 0 ? N : K; }     ///< R
  size_t length() const { return axis == 0 ? K : N; }   ///< L
  size_t codewords() const { return size_t{1} << bits; }  ///< 2^bits
  size_t subspace_groups() const { return per_subspace ? S : 1; }  ///< Gs
  size_t row_groups() const { return (rows() + group_size - 1) / group_size; }  ///< Gr
  size_t entries() const { return T * S; }  ///< E, table entries per row of M
  size_t fastscan_blocks() const { return (rows() + kFastScanBlockRows - 1) / kFastScanBlockRows; }
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

  /// Scalar codebooks (d = 1), many subspaces at once: lut[s*num_codewords + c] =
  /// 0.0f + x[s] * codebook[c] for s < count, c < num_codewords: what build_lut gives for
  /// each x[s] alone, bit for bit (the 0.0f + keeps its sign of zero).
  void (*build_lut_d1)(const float* x, size_t count, const float* codebook, size_t num_codewords,
                       float* lut);

  /// For each of `rows` lookup tables (table m at luts + m*lut_row_stride, entry i's
  /// codewords at + i*num_codewords): out[m*out_stride] = sum_{i < count} table_m[i][codes[i]],
  /// summed i ascending from 0.0f.
  void (*lut_gather_rows)(const uint8_t* codes, size_t count, size_t num_codewords,
                          const float* luts, size_t lut_row_stride, size_t rows, float* out,
                          size_t out_stride);

  /// Eight outputs at once against one row's tables: codes holds count x 8 codes (output
  /// j's code for entry i at codes[i*8 + j]); out[j] += lut[i*num_codewords + codes[i*8 + j]]
  /// for i ascending. From out = 0 this is lut_gather_rows' order, and calls on consecutive
  /// runs of entries continue it exactly.
  void (*lut_gather8)(const uint8_t* codes, size_t count, size_t num_codewords, const float* lut,
                      float* out);

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

  // --- fast-scan (format_version 2) ------------------------------------------------------

  /// Quantizes `entries` float tables of 16 values (lut + e*16) to uint8 with one scale:
  ///   lo[e] = min_c lut[e][c], range = max_e (max_c lut[e][c] - lo[e]),
  ///   inv = range > 0 ? 255 / range : 0, q[e*16 + c] = clamp(rint((lut[e][c] - lo[e]) * inv), 0, 255)
  ///   *scale = range / 255, *offset = sum_e lo[e] (e ascending from 0.0f),
  /// so lut[e][c] ~ lo[e] + scale * q[e][c]. Rounding is to nearest even. Returns false
  /// (outputs unspecified) when a table value is not finite. Bit-identical across tables.
  bool (*quantize_luts)(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset);

  /// Order statistics of `entries` tables of 16 floats (lut + e*16), for the uint8 guard
  /// (fastscan_uint8_error): range[e] = largest - smallest value (a float subtraction),
  /// high3[e] / low3[e] = the 3rd largest / 3rd smallest value. Returns false when a value is
  /// not finite (outputs unspecified). Exact selections: bit-identical across tables.
  bool (*lut_order_stats)(const float* lut, size_t entries, float* range, float* high3, float* low3);

  /// One block of 32 rows of M: `codes` is the block's E groups of 16 bytes (format v2),
  /// table m of `rows` at qluts + m*qlut_stride holds E entries of 16 uint8 followed by zero
  /// padding up to a multiple of kFastScanTablePad. out[m*32 + i] = sum_e table_m[e][code(i, e)]
  /// (exact integer sums, so every table gives the same bits).
  void (*fastscan_u8)(const uint8_t* codes, size_t entries, const uint8_t* qluts,
                      size_t qlut_stride, size_t rows, uint32_t* out);

  /// The exact float variant: table m at luts + m*lut_stride, entry e's 16 floats at + e*16;
  /// out[m*32 + i] = sum_e table_m[e][code(i, e)], e ascending from 0.0f (bit-identical).
  void (*fastscan_f32)(const uint8_t* codes, size_t entries, const float* luts,
                       size_t lut_stride, size_t rows, float* out);

  // --- byte-scan (format_version 3) --------------------------------------------------------

  /// quantize_luts for tables of 256 values (lut + e*256, q + e*256): the same formula and
  /// rounding, so lut[e][c] ~ lo[e] + scale * q[e][c]. Bit-identical across tables.
  bool (*quantize_byte_luts)(const float* lut, size_t entries, uint8_t* q, float* scale, float* offset);

  /// The integer moments of `entries` tables of 256 uint8 levels (q + e*256), for the guard
  /// (bytescan_uint8_error): sums[e] = sum_c q[e][c], squares[e] = sum_c q[e][c]^2. Exact.
  void (*byte_table_moments)(const uint8_t* q, size_t entries, uint32_t* sums, uint32_t* squares);

  /// One block of 64 rows of M: `codes` is the block's E entries of 64 bytes (format v3),
  /// table m of `rows` at qluts + m*qlut_stride holds E entries of 256 uint8.
  /// out[m*64 + i] = sum_e table_m[e][codes[e*64 + i]] (exact integer sums: every table's bits).
  /// May read kByteScanTableSlack bytes past the last row's tables.
  void (*bytescan_u8)(const uint8_t* codes, size_t entries, const uint8_t* qluts, size_t qlut_stride,
                      size_t rows, uint32_t* out);

  /// The exact float variant: table m at luts + m*lut_stride, entry e's 256 floats at + e*256;
  /// out[m*64 + i] = sum_e table_m[e][codes[e*64 + i]], e ascending from 0.0f (bit-identical).
  void (*bytescan_f32)(const uint8_t* codes, size_t entries, const float* luts, size_t lut_stride,
                       size_t rows, float* out);

  // --- tile GEMM (VQPath::kTileGemm) ---------------------------------------------------------

  /// Scalar-codebook decode (d = 1, one stage, one codebook for all the rows): for r < rows,
  /// i < count, out[r*count + i] = book[code number first + r*row_stride + i of the packed
  /// format-1 stream], book holding 2^bits floats. Reads only bytes of the span from the first
  /// requested code's byte to the last one's (the rows' codes and the stream between them).
  /// Copies values, so every table gives the same bits.
  void (*decode_codes)(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows,
                       size_t count, unsigned bits, const float* book, float* out);

  /// One fast-scan block with a scalar codebook (format 2, d = 1, one stage) as panel rows:
  /// groups holds `depth` consecutive 16-byte groups (one per input); for j < depth, i < cols:
  ///   out[j*ld + i] = book[i < 16 ? groups[j*16 + i] & 15 : groups[j*16 + i - 16] >> 4]
  /// cols <= 32 (the block's last outputs may be past N). Copies values: every table's bits.
  void (*decode_fastscan_d1)(const uint8_t* groups, size_t depth, size_t cols, const float* book,
                             float* out, size_t ld);

  /// Decoded rows of W_hat (output j's K floats at w + j*ldw, j < outputs <= 4) against
  /// `rows` input rows (the decode-dot path): for each (m, j), 16 lane chains of fused
  /// multiply-adds, lane l over k = l, l + 16, ... ascending from 0.0f (acc_l = fma(x[m*ldx +
  /// k], w_j[k], acc_l)), then added in a fixed tree,
  ///   out[m*out_stride + j] = ((a0 + a8) + (a4 + a12)) + ((a2 + a10) + (a6 + a14)) + (odd lanes alike)
  /// exactly as reduce16() in vq_kernel_scalar.cc, so every table gives the same bits.
  void (*dot_rows)(const float* x, size_t ldx, size_t rows, const float* w, size_t ldw,
                   size_t outputs, size_t K, float* out, size_t out_stride);

  /// One fast-scan group (the 16 code bytes of one block of 32 outputs for one stage and
  /// subspace) as `len` panel rows, through the subspace's codebook transposed (table[j*16
  /// + c] = codeword c's value j): for j < len, i < cols (<= 32), with code_i the group's
  /// nibble of output i (format 2: low nibbles are outputs 0-15, high ones 16-31),
  ///   out[j*ld + i] = table[j*16 + code_i]   or, when `accumulate`, += (later stages)
  /// Copies values (one float add per further stage): every table gives the same bits.
  void (*decode_fastscan_group)(const uint8_t* group, const float* table, size_t len, size_t cols,
                                float* out, size_t ld, bool accumulate);

  /// dst[j*ld_dst + i] = src[i*ld_src + j] for i < rows, j < cols (a copy: every table's bits).
  void (*transpose)(const float* src, size_t rows, size_t cols, size_t ld_src, float* dst,
                    size_t ld_dst);

  /// The tile path's dense GEMM on a decoded panel of W_hat (K x N, row stride N):
  ///   acc = accumulate ? y[m*ldy + n] : 0.0f;  acc = fma(x[m*ldx + k], w[k*N + n], acc), k ascending
  ///   y[m*ldy + n] = acc                                   for m < M, n < N
  /// one fused multiply-add per term, so every table gives the same bits, and a GEMM split
  /// along K into calls that accumulate gives the bits of one call over all of K.
  void (*dense_gemm)(const float* x, size_t ldx, size_t M, size_t K, const float* w, size_t N,
                     float* y, size_t ldy, bool accumulate);
  /// The panel width dense_gemm runs best on (its register block's columns, a multiple of
  /// 32): the panel GEMM decodes W_hat in panels this wide.
  size_t dense_gemm_cols;

  // --- VQGather (vq_gather.cc) ---------------------------------------------------------------

  /// Decodes one row of M (axis 0: one table row). codes holds the row's T*S codes, stage
  /// major (codes[t*S + s]); book(t, s) = books + t*stage_stride + s*subspace_stride is the
  /// codebook (2^bits codewords of d floats) of stage t, subspace s. For s < S, j < d with
  /// s*d + j < L:
  ///   out[s*d + j] = book(0, s)[codes[s]*d + j] + book(1, s)[codes[S + s]*d + j] + ...
  /// summed t ascending from the stage-0 value (one float add per further stage), so every
  /// table is bit-identical to scalar. Writes exactly out[0 .. L).
  void (*decode_row)(const uint8_t* codes, size_t T, size_t S, size_t d, size_t L,
                     const float* books, size_t stage_stride, size_t subspace_stride, float* out);

  // --- the panel GEMM's int8 tier (kTileGemm on tables with int8_panels) ---------------------
  // Integer sums are exact and the float steps the same operations in the same order, so
  // every table gives the same bits for the same inputs.

  /// Rows of X to int8 around 128: for r < rows, with a = max_j |x[r*ldx + j]| over j < len,
  ///   a not finite:    scale[r] = NaN, q = 128 (the caller computes such rows in float)
  ///   inv = 127.0f / a not finite (a == 0 or tiny):  scale[r] = 0, q = 128 (zeros)
  ///   else:            scale[r] = a / 127.0f,
  ///                    q[r*ldq + j] = 128 + clamp(rint(x * inv), -127, 127)  (nearest even)
  /// and q = 128 (zero) for len <= j < ldq; energy[r] = sum_j (q - 128)^2.
  void (*quantize_rows_u8)(const float* x, size_t ldx, size_t rows, size_t len, uint8_t* q,
                           size_t ldq, float* scale, uint32_t* energy);

  /// A K x N float panel (row stride N) to int8 by column, in int8_gemm's layout: per column
  /// n, a = max_k |w[k*N + n]| and scale[n], q as quantize_rows_u8 without the 128 (NaN scale
  /// when a column is not finite), stored q(k, n) at wq[(k/4)*4*N + 4*n + k%4] for k < K4 =
  /// K rounded up to 4 (zero past K); bias128[n] = 128 * sum_k q(k, n).
  void (*quantize_panel_s8)(const float* w, size_t K, size_t N, int8_t* wq, float* scale,
                            int32_t* bias128);

  /// quantize_panel_s8's output for a fast-scan block with a scalar codebook (format 2, d = 1,
  /// one stage; decode_fastscan_d1's codes) decoded straight from its 16-byte groups through
  /// an int8 codebook: for k < K4 = depth rounded up to 4, i < cols (<= 32),
  ///   out[(k/4)*4*ld + 4*i + k%4] = k < depth ? book_q[code_i(k)] : 0,  sums[i] = sum_k of them
  /// (ld: the panel's width in columns). Copies bytes: every table's bits.
  void (*decode_fastscan_d1_s8)(const uint8_t* groups, size_t depth, size_t cols, const int8_t* book_q,
                                int8_t* out, size_t ld, int32_t* sums);

  /// decode_codes' int8 twin (scalar codebooks in a format-1 stream, as rows of M): for r < rows,
  /// i < count, out[r*ld + i] = book_r[code number first + r*row_stride + i], out[r*ld + i] = 0
  /// for count <= i < ld, sums[r] = sum_i out[r*ld + i]. Row r's codebook book_r (2^bits values)
  /// is book_q + ((phase + r) / rows_per_book) * 2^bits: one call covers rows of several
  /// codebook groups (binary: one per row). Reads only bytes of the span from the first
  /// requested code's byte to the last one's (as decode_codes). Copies bytes: every table's bits.
  void (*decode_codes_s8)(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows,
                          size_t count, unsigned bits, const int8_t* book_q, size_t rows_per_book,
                          size_t phase, int8_t* out, size_t ld, int32_t* sums);

  /// decode_codes_s8's rows met by few rows of X at once, no panel written, the depth in chunks:
  /// with w_r[i] decode_codes_s8's out[r*ld + i] (r < rows: W's rows, i.e. outputs, of `count`
  /// codes each), chunk q covering i in [q*depth, min(count, (q+1)*depth)), and X's chunk q
  /// being M rows at xq + q*M*ldq (row m at + m*ldq, read only for i - q*depth < the chunk's length):
  ///   dots[(q*M + m)*rows + r] = sum_{i in chunk q} xq[(q*M + m)*ldq + i - q*depth] * w_r[i]  (exact int32)
  ///   sums[q*rows + r] = sum_{i in chunk q} w_r[i]
  /// M >= 1, depth >= 1. A row's codes are read in order, chunk after chunk (reading every row's
  /// chunk q before any chunk q + 1 was 2-3x slower from a stream in L3: 4096x4096 km5 at one
  /// row). Exact integer sums: every table's bits.
  void (*decode_dot_s8)(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                        size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                        const uint8_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums);

  /// Vector codebooks of d = 4 on the int8 tier: one codeword quantized to int8 is one int32
  /// word of int8_gemm's panel layout (its 4 values are a column's 4 depths), so a panel row
  /// of words is one lookup per code. Fast-scan groups (format 2, one stage): for j <
  /// subspaces (the consecutive 16-byte groups at groups + j*16), i < cols (<= 32), with code_i
  /// group j's nibble of output i (low nibbles outputs 0-15, high ones 16-31),
  ///   word_j(i) = words[j*book_stride + code_i]   (book_stride 16: a codebook per subspace; 0)
  ///   out[(j*ld + i)*4 .. + 4) = word_j(i)'s bytes,  sums[i] = sum over j of its 4 signed bytes
  /// (ld: the panel's width in columns). Copies words: every table's bits.
  void (*decode_fastscan_words_s8)(const uint8_t* groups, size_t subspaces, size_t cols, const int32_t* words,
                                   size_t book_stride, int8_t* out, size_t ld, int32_t* sums);

  /// The same for byte-scan codes (format 3, one stage), any number of columns: code_i =
  /// codes[(i/64)*block_stride + j*64 + i%64] (block i/64's entry for subspace j). Its codebook's
  /// 256 words come as 4 byte planes, book = planes + j*book_stride (book_stride 1024 or 0):
  /// byte b of codeword c at book[b*256 + c] (planes fit byte permutes: 256 words do not fit
  /// registers), and as the words themselves at words + j*word_stride (word_stride 256 or 0;
  /// gathers take words): the same codebooks. Reads only those code bytes and the codebooks.
  void (*decode_bytescan_words_s8)(const uint8_t* codes, size_t block_stride, size_t subspaces, size_t cols,
                                   const uint8_t* planes, size_t book_stride, const int32_t* words,
                                   size_t word_stride, int8_t* out, size_t ld, int32_t* sums);

  /// Two 4-bit stages (format 2, T = 2) as one 256-codeword codebook: the byte code of output i
  /// in subspace j is n0 | n1 << 4, n0 its nibble in stage 0's group (G + j*16) and n1 in stage
  /// 1's (G + stage_stride + j*16), G = groups + (i/32)*block_stride (output i's block); then
  /// decode_bytescan_words_s8's planes, sums and output, for i < cols (any number; a block's
  /// groups are read only when it has columns).
  void (*decode_fastscan2_words_s8)(const uint8_t* groups, size_t stage_stride, size_t block_stride, size_t subspaces,
                                    size_t cols, const uint8_t* planes, size_t book_stride, const int32_t* words,
                                    size_t word_stride, int8_t* out, size_t ld, int32_t* sums);

  /// Y (+)= X W on quantized operands: for m < M, n < N, with K4 a multiple of 4,
  ///   acc = sum_{k < K4} xq[m*ldq + k] * wq[(k/4)*4*N + 4*n + k%4]     (exact int32)
  ///   v = xs[m] * (ws[n] * float(acc - bias128[n]));  y[m*ldy + n] = accumulate ? y + v : v
  void (*int8_gemm)(const uint8_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq,
                    size_t N, const float* xs, const float* ws, const int32_t* bias128, float* y,
                    size_t ldy, bool accumulate);
  // 16-bit X (tables with wide_x): AVX2 widens X's bytes to 16 bits for vpmaddwd anyway, so X
  // quantized to 16 bits costs nothing more in the GEMM and needs no second rows (a row with
  // outlier activations keeps 32767 levels where int8 has 127).

  /// quantize_rows_u8 for 16-bit levels, signed (no 128): with a = max_j |x[r*ldx + j]|,
  ///   a not finite: scale[r] = NaN, q = 0;  inv = kWideLevels / a not finite: scale[r] = 0, q = 0
  ///   else scale[r] = a / kWideLevels, q[r*ldq + j] = clamp(rint(x * inv), -kWideLevels, kWideLevels)
  /// and q = 0 for len <= j < ldq; energy[r] = sum_j q^2.
  void (*quantize_rows_s16)(const float* x, size_t ldx, size_t rows, size_t len, int16_t* q, size_t ldq,
                            float* scale, uint64_t* energy);
  /// int8_gemm against 16-bit rows of X, no bias: acc = sum_{k < K4} xq[m*ldq + k] * wq(k, n)
  /// (exact int32: K4 * kWideLevels * 127 < 2^31), v = xs[m] * (ws[n] * float(acc)).
  void (*int16_gemm)(const int16_t* xq, size_t ldq, size_t M, size_t K4, const int8_t* wq, size_t N,
                     const float* xs, const float* ws, float* y, size_t ldy, bool accumulate);
  /// decode_dot_s8 against 16-bit rows of X (the same layout, dots and sums).
  void (*decode_dot_s16)(const uint8_t* stream, uint64_t first, uint64_t row_stride, size_t rows, size_t count,
                         size_t depth, unsigned bits, const int8_t* book_q, size_t rows_per_book, size_t phase,
                         const int16_t* xq, size_t ldq, size_t M, int32_t* dots, int32_t* sums);

  /// Whether the panel GEMM runs int8 by default on this table (a dot-product instruction that
  /// makes it faster than float; the scalar table has the functions as the oracle only).
  bool int8_panels;
  /// Which codes the int8 tier decodes straight to int8 where the codebooks allow it, rather
  /// than quantizing decoded float panels (quantize_panel_s8): only where those decoders are
  /// SIMD. (AVX2 with the scalar word decoders, 4096x4096 at 64 rows: 40-55% of the time in
  /// them; its vpermd / vpgatherdd ones took pq8-d4 to 0.33-0.67x the float panels' time.)
  bool int8_fastscan_d1_decoder;  ///< decode_fastscan_d1_s8: scalar codebooks, format 2
  bool int8_stream_decoders;      ///< decode_codes_s8, decode_dot_s8: scalar codebooks, format 1
  bool int8_word_decoders;        ///< decode_*_words_s8: d = 4 vector codebooks
  /// Whether the int8 tier quantizes X to 16 bits (quantize_rows_s16, int16_gemm, decode_dot_s16)
  /// rather than to int8 with second rows.
  bool wide_x;
};

/// The 16-bit levels of X on tables with wide_x (kPanelMaxDepth * 127 * kWideLevels < 2^31).
inline constexpr int kWideLevels = 32767;

/// dot_rows' fixed reduction of its 16 lanes, and its scalar steps k0 <= k < K into them
/// (lanes[k % 16] = fma(x[k], w[k], lanes[k % 16])): SIMD tables finish their tails with
/// these, so every table reduces in the same order.
float reduce16(const float* lanes);
void dot_rows_tail(const float* x, const float* w, size_t k0, size_t K, float* lanes);

/// The portable table (always built).
const KernelTable& scalar_kernel_table();

/// Every table compiled into this build whose instruction set this CPU supports, scalar
/// first (ONNXVQ_FORCE_SCALAR does not affect this list). Tests compare each with scalar.
/// Returns the count and fills up to `capacity` pointers.
size_t supported_kernel_tables(const KernelTable** tables, size_t capacity);

/// The panel GEMM's int8 tier (kernels with int8_panels): X quantized per row and depth
/// chunk, W_hat's decoded panels per column and chunk, exact int32 dot products. Each row
/// estimates the relative RMS error its rounding adds to its outputs from its own quantized
/// values (uniform rounding noise of one step^2 / 12 per input against the row's mean square,
/// est^2 = len / (12 * energy) per chunk, integers only: the same choice on every table). A
/// row over kInt8MaxRelError (or ONNXVQ_INT8_GUARD=x) in a chunk (outlier activations set
/// its step) gets a second int8 row there, its residual x - step * q in its own scale (254x
/// finer), against the same int8 panel; rows that are not finite (or whose two levels still
/// exceed a limit far below 2%) take the float panels. Tables with wide_x (AVX2) quantize X
/// to 16 bits instead, one level (32767 steps: 258x finer than one int8 level, finer than
/// two), the same guard on it. ONNXVQ_EXACT_GEMM=1 (read once) turns
/// the tier off: every panel float, bit-identical at any M. MiniLM (km5, batch 32): cosine
/// 0.9992 (int8 X), 0.9994 (16-bit X) to the float panels' embeddings over 256 held-out sentences.
inline constexpr double kInt8MaxRelError = 0.02;
bool int8_panels_enabled(const KernelTable& kernels);

/// Fast-scan precision: uint8 tables (default) or exact float tables. The environment
/// variable ONNXVQ_EXACT_LUT=1, read once, selects the exact float path.
bool exact_lut_requested();

/// The uint8 fast-scan guard. One scale per row (step = largest table range / 255) leaves
/// tables whose values span a small part of that range with a few levels: activation
/// outlier channels (LayerNorm outputs) or outlier codewords (per-tensor k-means) make the
/// error large. Per input row (and row group) the driver estimates the relative RMS error
/// the uint8 tables add to the row's outputs from its own float tables and takes the exact
/// float tables when it exceeds kFastScanMaxRelError:
///   est^2 = step^2 * E' / sum_e r_e^2
/// (rounding noise step^2/12 per entry, E' = entries with a nonzero range, over an output
/// variance estimated as sum_e r_e^2 / 12, r_e = 3rd largest - 3rd smallest value of
/// table e: a spread that ignores the two most extreme codewords, which trained weights
/// rarely use; plain variances let one outlier codeword hide the loss). On MiniLM rows
/// this tracks the measured error within 2x for 90% of rows (median ratio 1.0).
/// The threshold: ordinary rows already sit at 1.5-3.4% (gaussian, uniform or ReLU inputs
/// with random codebooks; MiniLM LayerNorm rows 2-4%), the error the uint8 tier of the
/// tests (3%) allows, so a 1% limit would send nearly every row to the float tables. The
/// rows that broke MiniLM (outlier codewords, FFN outputs) estimate 10% to 20x. At 4%
/// MiniLM keeps cosine 0.9434 (exact tables 0.9437, unguarded 0.52) with 31% of its rows on
/// uint8 tables.
inline constexpr double kFastScanMaxRelError = 0.04;

/// The estimate above for `entries` tables of 16 floats (lut + e*16), in double from the exact
/// selections of k.lut_order_stats, summed in entry order: the choice is the same on every
/// ISA for the same tables. Returns +inf when a value is not finite (those rows take the
/// float tables) and 0 when every table is constant.
double fastscan_uint8_error(const KernelTable& k, const float* lut, size_t entries);

/// The guard's estimate for byte-scan tables, from the quantized tables themselves (`entries`
/// tables of 256 uint8 levels, q + e*256): the same model as fastscan_uint8_error, in
/// levels, with each table's spread taken from its variance (r_e^2 / 12 -> var_e: among 256
/// codewords one outlier moves a variance little):
///   est^2 = (1 / 12) * E' / sum_e var_e      (E' = tables with more than one level)
/// Integer sums (k.byte_table_moments), so every table makes the same choice. 0 when every
/// table is constant.
double bytescan_uint8_error(const KernelTable& k, const uint8_t* q, size_t entries);

/// The threshold vq_matmul() applies: kFastScanMaxRelError, or ONNXVQ_LUT_GUARD=x (read
/// once; a relative error, e.g. 0.03; "inf" disables the guard) for measurements.
double fastscan_max_rel_error();

/// The table vq_matmul() uses: the best one this CPU supports; the scalar table when the
/// environment variable ONNXVQ_FORCE_SCALAR=1 was set when it was first asked for; the table
/// named by ONNXVQ_FORCE_ISA (e.g. "avx2") when that is set and supported.
const KernelTable& active_kernel_table();

/// Why ONNXVQ_FORCE_ISA cannot be honoured (it names no table this build and CPU have), or
/// nullptr. The ops refuse to create a kernel then, rather than run another table silently.
const char* kernel_selection_error();

/// The strategies vq_matmul() chooses from; all are gather-accumulate, none decodes W_hat.
enum class VQPath {
  kLut,            ///< axis 0: per input row, LUT[t][s][c] = <x_s, codeword c>, y[n] = sum LUT[code]
  kRowBuckets,     ///< axis 0, d == 1, shared codebook: y[n] = sum_c codebook[c] * (sum of x_s coded c)
  kBitLut,         ///< axis 0, binary (1 bit, d == 1, shared codebook, T == 1): subset-sum byte tables
  kColumnBuckets,  ///< axis 1: bucket[s][c] = sum of x_k coded c in subspace s, y = sum_c bucket * codeword
  kDirect,         ///< any layout: y gathers codewords and multiplies directly
  kFastScan,       ///< format 2: uint8 tables in registers, byte-shuffle lookups, 32 outputs per
                   ///< block; rows the uint8 guard rejects take the float tables, or the tile
                   ///< GEMM when a chunk has as many as the float tables' tile threshold
  kFastScanExact,  ///< format 2: float tables, same blocked codes (ONNXVQ_EXACT_LUT=1)
  kByteScan,       ///< format 3: kFastScan's scheme on 8-bit codes, 256-entry uint8 tables
                   ///< (byte permutes on VBMI), 64 outputs per block
  kByteScanExact,  ///< format 3: float tables (ONNXVQ_EXACT_LUT=1, rows the guard rejects)
  kDecodeDot,      ///< axis 0, format 1, scalar codebooks (k-means, 2-8 bits, any row groups): decode
                   ///< each output's row of W_hat (decode_codes) and dot it with every input row
  kTileGemm,       ///< M >= a measured threshold (kTileGemmThresholds, vq_kernel.cc): decode
                   ///< W_hat a panel or tile at a time (never all of W_hat) and multiply with a
                   ///< dense GEMM: the table's dense_gemm on K x N panels (every output one FMA
                   ///< chain over k: the same bits at any M and thread count), or, for format-1
                   ///< layouts below 32 rows, the caller's DenseGemm (the ORT op passes ONNX
                   ///< Runtime's own Gemm; ONNXVQ_BUILTIN_GEMM=1 never does). Agrees with the
                   ///< other paths within float rounding (the fp32 tier), not bit for bit.
};

/// A dense float GEMM the caller lends the tile path (the ORT op: ONNX Runtime's Gemm, MLAS):
///   y[m*N + n] = sum_k x[m*K + k] * w(k, n),  w(k, n) = w_nk ? w[n*K + k] : w[k*N + n]
/// for m < M, n < N (y dense M x N). The sum's order is the callee's, and must not depend on
/// the thread count. May throw; the exception reaches vq_matmul()'s caller.
struct DenseGemm {
  void (*run)(void* context, size_t M, size_t K, size_t N, const float* x, const float* w,
              bool w_nk, float* y) = nullptr;
  void* context = nullptr;
};

/// The path vq_matmul() takes for this problem: depends on the attributes, on
/// ONNXVQ_EXACT_LUT, on the kernel table and on whether M reaches tile_gemm_min_rows() (then
/// kTileGemm); never on the data or the thread count. Format-2 layouts that the fast-scan
/// paths do not cover (row groups not a multiple of 32 rows) read their codes through the
/// generic paths.
VQPath choose_path(const VQProblem& problem, const KernelTable& kernels = active_kernel_table());
/// The smallest M for which choose_path() returns kTileGemm (SIZE_MAX: never), from the
/// measured table in vq_kernel.cc; ONNXVQ_TILE_GEMM_MIN_ROWS=n, read once, overrides it for
/// every layout (benchmarks, tests; n = SIZE_MAX-like huge values disable the path).
size_t tile_gemm_min_rows(const VQProblem& problem, const KernelTable& kernels = active_kernel_table());
const char* path_name(VQPath path);

/// What vq_matmul() derives from the codebooks alone (the int8 tier's quantized codebooks and
/// the route they take, which reads every codebook: for pq8-d4 as many values as W_hat has), for
/// a caller that runs the same codebooks many times: the ORT op builds one per node when the
/// codebooks are a constant initializer. Uses p's layout and codebooks (M, x, y unused);
/// VQProblem::prepared then gives the same bits as deriving them per call.
std::shared_ptr<const PreparedCodebooks> prepare_codebooks(const VQProblem& p,
                                                           const KernelTable& kernels = active_kernel_table());

/// The route p's codebooks take through the int8 tier's panels (tests, diagnostics):
/// "vector_bytes" (d = 4 codewords as int32 words), "fastscan_bytes" / "stream_bytes" (scalar
/// codebooks as bytes), "stream_column_bytes" (a coarse scalar codebook, as bytes through a
/// table per panel column), or "float_panels" (decoded to float, then quantized per column).
const char* int8_route_name(const VQProblem& p);

/// Computes problem.y. Throws std::bad_alloc (or whatever runner.run throws) on failure.
void vq_matmul(const VQProblem& problem, const TaskRunner& runner = {},
               const KernelTable& kernels = active_kernel_table(), const DenseGemm& gemm = {});

/// One VQGather evaluation: rows of the table T_hat[V, D] = W_hat^T, V = layout.N rows of
/// D = layout.K floats, where W_hat is what vq_matmul() decodes from the same layout.
/// axis 0: table row v is row v of M; axis 1: it is column v of M (M = W_hat [D, V]).
struct VQGatherProblem {
  VQProblem layout;  ///< codes, codebooks and every layout field; M, x, bias and y are unused
  size_t count = 0;  ///< number of indices (every dimension of the indices tensor flattened)
  const int32_t* indices32 = nullptr;  ///< exactly one of indices32 / indices64: count values,
  const int64_t* indices64 = nullptr;  ///< each in [-V, V-1] (negative: counted from the end)
  float* y = nullptr;                  ///< size count*D, layout (count, D); fully overwritten

  size_t table_rows() const { return layout.N; }  ///< V
  size_t row_length() const { return layout.K; }  ///< D
};

/// Position of the first index outside [-V, V-1] (its value in *value), or count when every
/// index is valid.
size_t vq_gather_first_invalid(const VQGatherProblem& problem, int64_t* value);

/// Computes problem.y. Checks every index first and throws std::out_of_range (writing
/// nothing) if one is invalid; otherwise throws only std::bad_alloc or what runner.run throws.
/// Each output row is decoded by one task in a fixed order: results never depend on threads.
void vq_gather(const VQGatherProblem& problem, const TaskRunner& runner = {},
               const KernelTable& kernels = active_kernel_table());

}  // namespace onnxvq::kernels

// C entry points, exported from the shared library for tests and diagnostics.
extern "C" {
/// Name of the active kernel table, e.g. "scalar".
ONNXVQ_EXPORT const char* onnxvq_kernel_name(void);

/// Name of the path ("lut", "row_buckets", "column_buckets", "direct") vq_matmul() takes
/// for these attributes (format_version 1), or "invalid" when they do not describe a valid
/// layout.
ONNXVQ_EXPORT const char* onnxvq_kernel_path(
    int64_t in_features, int64_t out_features, int64_t bits, int64_t subvector_len,
    int64_t stages, int64_t axis, int64_t group_size, int64_t codebook_per_subspace);

/// The same for any format_version; adds "fastscan" and "fastscan_exact".
ONNXVQ_EXPORT const char* onnxvq_kernel_path_v(
    int64_t format_version, int64_t in_features, int64_t out_features, int64_t bits,
    int64_t subvector_len, int64_t stages, int64_t axis, int64_t group_size,
    int64_t codebook_per_subspace);

/// The same with the number of input rows M (every leading dimension of X flattened):
/// adds "tile_gemm" when M reaches the layout's tile-GEMM threshold.
ONNXVQ_EXPORT const char* onnxvq_kernel_path_m(
    int64_t rows, int64_t format_version, int64_t in_features, int64_t out_features,
    int64_t bits, int64_t subvector_len, int64_t stages, int64_t axis, int64_t group_size,
    int64_t codebook_per_subspace);

/// Rows (input row x row group) that the uint8 fast-scan path (kFastScan) ran with uint8
/// tables and with exact float tables (the guard, or non-finite tables), counted by every
/// vq_matmul() in this process since it started (or since the last reset, when `reset` is
/// nonzero: the counts are returned, then zeroed). Either pointer may be null.
ONNXVQ_EXPORT void onnxvq_fastscan_row_counts(uint64_t* uint8_rows, uint64_t* exact_rows,
                                              int reset);

/// 1 when the panel GEMM runs its int8 tier in this process (the active table has it and
/// ONNXVQ_EXACT_GEMM is unset), else 0.
ONNXVQ_EXPORT int onnxvq_int8_panels(void);

/// Comma-separated names of the kernel tables this build has and this CPU supports,
/// e.g. "scalar,avx2" (independent of ONNXVQ_FORCE_SCALAR).
ONNXVQ_EXPORT const char* onnxvq_kernel_tables(void);
}
