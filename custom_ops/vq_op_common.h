// What the ONNX Runtime adapters of VQMatMul (vq_matmul_op.cc) and VQGather (vq_gather_op.cc)
// share: the layout attributes' reading and validation, the codes / codebooks checks, error
// plumbing at the C boundary, and the bridge to ORT's thread pool. One copy, so both ops
// accept and reject exactly the same layouts with the same messages.
#pragma once

#ifndef ORT_API_MANUAL_INIT
#define ORT_API_MANUAL_INIT
#endif
#include "onnxruntime_cxx_api.h"

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "generated/vq_schema.h"
#include "kernels/float16.h"
#include "kernels/vq_kernel.h"

namespace onnxvq::op_common {

namespace schema = onnxvq::schema;
namespace kernels = onnxvq::kernels;

// KernelContext_ParallelFor appeared in ORT API 17; RegisterCustomOps refuses runtimes
// older than the headers (ORT_API_VERSION), so it is always there at run time.
inline constexpr uint32_t kParallelForApiVersion = 17;
static_assert(ORT_API_VERSION >= kParallelForApiVersion, "headers too old for ParallelFor");

// A problem with the model or its inputs; reported as ORT_INVALID_ARGUMENT.
class InvalidArgument : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

inline std::string format_shape(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

inline const char* dtype_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    default: return "an unsupported type";
  }
}

// a * b into *out, false on overflow, for sizes that come from the model (a crafted model
// must not wrap a size around and slip past the checks).
inline bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

// ONNX name of an attribute, from its field in schema::Attributes (fields are declared in
// kAttributes order, one int64_t each).
#define VQ_ATTRIBUTE_NAME(field) \
  (::onnxvq::schema::kAttributes[offsetof(::onnxvq::schema::Attributes, field) / sizeof(int64_t)].name)

static_assert(std::is_trivially_copyable_v<schema::Attributes> &&
                  sizeof(schema::Attributes) == schema::kNumAttributes * sizeof(int64_t),
              "schema::Attributes must be exactly kNumAttributes int64_t fields");

// The node's attributes, validated, and the sizes derived from them.
struct Layout {
  schema::Attributes attrs{};
  uint64_t rows = 0;             // R
  uint64_t length = 0;           // L
  uint64_t subspace_groups = 0;  // Gs
  uint64_t row_groups = 0;       // Gr
  uint64_t codewords = 0;        // 2^bits
  uint64_t packed_bytes = 0;     // v1: ceil(T*R*S*bits / 8); v2: ceil(R/32)*T*S*16
  std::vector<int64_t> codebooks_shape;  // [T, Gs, Gr, 2^bits, d]
};

// Error messages of one node: "<op> node '<name>': <message>".
class Node {
 public:
  Node(const OrtApi& api, const OrtKernelInfo* info, const char* op_type)
      : op_type_(op_type), name_(read_node_name(api, info)) {}

  const char* op_type() const { return op_type_; }
  const std::string& name() const { return name_; }
  std::string where() const { return concat(op_type_, " node '", name_, "': "); }
  [[noreturn]] void fail(const std::string& message) const { throw InvalidArgument(where() + message); }

 private:
  static std::string read_node_name(const OrtApi& api, const OrtKernelInfo* info) {
    size_t size = 0;
    OrtStatus* status = api.KernelInfo_GetNodeName(info, nullptr, &size);
    if (status == nullptr && size > 1) {
      std::string name(size, '\0');
      status = api.KernelInfo_GetNodeName(info, name.data(), &size);
      if (status == nullptr) {
        name.resize(std::strlen(name.c_str()));
        return name;
      }
    }
    if (status) api.ReleaseStatus(status);
    return "(unnamed)";
  }

  const char* op_type_;
  std::string name_;
};

// Derived sizes, each product overflow-checked, also against what size_t and the kernel's
// pointer arithmetic can index.
inline void check_sizes(const Node& node, Layout& layout) {
  const schema::Attributes& a = layout.attrs;
  layout.subspace_groups = a.per_subspace ? static_cast<uint64_t>(a.S) : 1;
  layout.row_groups = layout.rows / a.group_size + (layout.rows % a.group_size != 0);
  layout.codewords = uint64_t{1} << a.bits;

  const uint64_t limit = std::numeric_limits<size_t>::max() / 8;
  const auto too_large = [&] {
    node.fail(concat("the attributes describe codes or codebooks too large to address (",
                     VQ_ATTRIBUTE_NAME(T), '=', a.T, ", rows=", layout.rows, ", ", VQ_ATTRIBUTE_NAME(S),
                     '=', a.S, ", ", VQ_ATTRIBUTE_NAME(bits), '=', a.bits, ", ", VQ_ATTRIBUTE_NAME(d),
                     '=', a.d, ", ", VQ_ATTRIBUTE_NAME(group_size), '=', a.group_size, ")"));
  };
  uint64_t codes = 0, code_bits = 0, codebook_elems = 0;
  const bool codes_ok = checked_mul(a.T, layout.rows, &codes) && checked_mul(codes, a.S, &codes) &&
                        checked_mul(codes, a.bits, &code_bits) && code_bits <= limit;
  const bool books_ok = checked_mul(a.T, layout.subspace_groups, &codebook_elems) &&
                        checked_mul(codebook_elems, layout.row_groups, &codebook_elems) &&
                        checked_mul(codebook_elems, layout.codewords, &codebook_elems) &&
                        checked_mul(codebook_elems, a.d, &codebook_elems) &&
                        codebook_elems <= limit / sizeof(float);
  if (!codes_ok || !books_ok) too_large();
  layout.packed_bytes = code_bits / 8 + (code_bits % 8 != 0);
  // Blocked layouts: ceil(R / block_rows) blocks of `entry_bytes` per (block, entry), v1's
  // bytes plus the last block's padding (format 2: 32 rows, 16 bytes; 3: 64 rows, 64 bytes).
  auto blocked = [&](uint64_t block_rows, uint64_t entry_bytes) {
    const uint64_t blocks = layout.rows / block_rows + (layout.rows % block_rows != 0);
    uint64_t bytes = 0;
    if (!checked_mul(blocks, static_cast<uint64_t>(a.T), &bytes) ||
        !checked_mul(bytes, static_cast<uint64_t>(a.S), &bytes) || !checked_mul(bytes, entry_bytes, &bytes) ||
        bytes > limit)
      too_large();
    layout.packed_bytes = bytes;
  };
  if (a.format_version == schema::kFastScanFormatVersion)
    blocked(schema::kFastScanBlockRows, schema::kFastScanGroupBytes);
  if (a.format_version == schema::kByteScanFormatVersion)
    blocked(schema::kByteScanBlockRows, schema::kByteScanBlockRows);
  layout.codebooks_shape = {a.T, static_cast<int64_t>(layout.subspace_groups),
                            static_cast<int64_t>(layout.row_groups),
                            static_cast<int64_t>(layout.codewords), a.d};
}

// Reads and validates every layout attribute (schema::kAttributes); `versions` are the
// format versions this op reads.
template <size_t NumVersions>
Layout read_layout(const OrtApi& api, const OrtKernelInfo* info, const Node& node,
                   const int64_t (&versions)[NumVersions]) {
  if (const char* problem = kernels::kernel_selection_error()) node.fail(problem);
  int64_t values[schema::kNumAttributes];
  for (int i = 0; i < schema::kNumAttributes; ++i) {
    const char* name = schema::kAttributes[i].name;
    if (OrtStatus* status = api.KernelInfoGetAttribute_int64(info, name, &values[i])) {
      const std::string detail = api.GetErrorMessage(status);
      api.ReleaseStatus(status);
      node.fail(concat("required int attribute '", name, "' is missing or not an int (", detail, ")"));
    }
  }
  Layout layout;
  std::memcpy(&layout.attrs, values, sizeof values);
  const schema::Attributes& a = layout.attrs;

  // The version first: a future layout may give the other attributes new meanings.
  bool version_known = false;
  std::string supported;
  for (int64_t v : versions) {
    version_known = version_known || v == a.format_version;
    supported += (supported.empty() ? "" : ", ") + std::to_string(v);
  }
  if (!version_known)
    node.fail(concat(VQ_ATTRIBUTE_NAME(format_version), ' ', a.format_version,
                     " is not supported by this library (supports ", supported, "); upgrade onnxvq"));

  for (int i = 0; i < schema::kNumAttributes; ++i)
    if (values[i] < schema::kAttributes[i].minimum)
      node.fail(concat("attribute '", schema::kAttributes[i].name, "' must be >= ",
                       schema::kAttributes[i].minimum, ", got ", values[i]));
  if (a.bits < schema::kMinBits || a.bits > schema::kMaxBits)
    node.fail(concat(VQ_ATTRIBUTE_NAME(bits), " must be in [", schema::kMinBits, ", ",
                     schema::kMaxBits, "], got ", a.bits));
  if (a.axis != schema::kAxisIn && a.axis != schema::kAxisOut)
    node.fail(concat(VQ_ATTRIBUTE_NAME(axis), " must be ", schema::kAxisIn, " or ", schema::kAxisOut,
                     ", got ", a.axis));
  if (a.per_subspace != 0 && a.per_subspace != 1)
    node.fail(concat(VQ_ATTRIBUTE_NAME(per_subspace), " must be 0 or 1, got ", a.per_subspace));
  if (a.format_version == schema::kFastScanFormatVersion &&
      (a.axis != schema::kAxisIn || a.bits != schema::kFastScanBits))
    node.fail(concat(VQ_ATTRIBUTE_NAME(format_version), ' ', schema::kFastScanFormatVersion, " needs ",
                     VQ_ATTRIBUTE_NAME(axis), ' ', schema::kAxisIn, " and ", schema::kFastScanBits,
                     "-bit codes, got axis ", a.axis, " and ", a.bits, " bits"));
  if (a.format_version == schema::kByteScanFormatVersion &&
      (a.axis != schema::kAxisIn || a.bits != schema::kByteScanBits || a.d < schema::kByteScanMinSubvectorLen))
    node.fail(concat(VQ_ATTRIBUTE_NAME(format_version), ' ', schema::kByteScanFormatVersion, " needs ",
                     VQ_ATTRIBUTE_NAME(axis), ' ', schema::kAxisIn, ", ", schema::kByteScanBits, "-bit codes and ",
                     VQ_ATTRIBUTE_NAME(d), " >= ", schema::kByteScanMinSubvectorLen, ", got axis ", a.axis, ", ",
                     a.bits, " bits and ", VQ_ATTRIBUTE_NAME(d), ' ', a.d));

  layout.rows = static_cast<uint64_t>(a.axis == schema::kAxisIn ? a.N : a.K);
  layout.length = static_cast<uint64_t>(a.axis == schema::kAxisIn ? a.K : a.N);
  const uint64_t d = static_cast<uint64_t>(a.d);
  const uint64_t expected_s = layout.length / d + (layout.length % d != 0);
  if (static_cast<uint64_t>(a.S) != expected_s)
    node.fail(concat(VQ_ATTRIBUTE_NAME(S), " must be ceil(", layout.length, " / ", d, ") = ",
                     expected_s, ", got ", a.S));
  if (static_cast<uint64_t>(a.group_size) > layout.rows)
    node.fail(concat(VQ_ATTRIBUTE_NAME(group_size), ' ', a.group_size, " exceeds the ", layout.rows,
                     " rows"));
  check_sizes(node, layout);
  return layout;
}

// Exact sizes are what keeps the kernels in bounds: every code is a bits-wide field, so it
// indexes one of exactly 2^bits codewords, and the stream holds exactly T*R*S codes. With
// the codes length and the codebooks shape equal to what the attributes say, no index a
// kernel forms can leave its buffer, whatever the bytes contain.
inline void check_codes(const Node& node, const Layout& layout, const Ort::ConstValue& codes) {
  const auto info = codes.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    node.fail(concat("codes must be uint8, got ", dtype_name(info.GetElementType())));
  const std::vector<int64_t> shape = info.GetShape();
  const schema::Attributes& a = layout.attrs;
  if (shape.size() != 1 || static_cast<uint64_t>(shape[0]) != layout.packed_bytes)
    node.fail(concat("codes must have shape [", layout.packed_bytes, "] = [",
                     a.format_version == schema::kFastScanFormatVersion   ? "ceil(R/32)*T*S*16"
                     : a.format_version == schema::kByteScanFormatVersion ? "ceil(R/64)*T*S*64"
                                                                          : "ceil(T*R*S*bits/8)",
                     "] with T=", a.T, " R=", layout.rows, " S=", a.S, " bits=", a.bits, ", got ",
                     format_shape(shape)));
}

inline ONNXTensorElementDataType check_codebooks(const Node& node, const Layout& layout,
                                                 const Ort::ConstValue& codebooks) {
  const auto info = codebooks.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType type = info.GetElementType();
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    node.fail(concat("codebooks must be float32 or float16, got ", dtype_name(type)));
  const std::vector<int64_t> shape = info.GetShape();
  if (shape != layout.codebooks_shape)
    node.fail(concat("codebooks must have shape ", format_shape(layout.codebooks_shape),
                     " = [T, Gs, Gr, 2^bits, d], got ", format_shape(shape)));
  return type;
}

// The codebooks as float32: float16 ones are widened exactly into `storage`, per call (they
// are small next to the codes).
inline const float* codebook_floats(const Ort::ConstValue& codebooks, ONNXTensorElementDataType type,
                                    std::vector<float>* storage) {
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) return codebooks.GetTensorData<float>();
  const size_t count = codebooks.GetTensorTypeAndShapeInfo().GetElementCount();
  storage->resize(count);
  kernels::half_to_float(static_cast<const uint16_t*>(codebooks.GetTensorRawData()), count,
                         storage->data());
  return storage->data();
}

// codebook_floats, widened once when the codebooks are a constant initializer (the first
// call's values are every call's): a table with a codebook per row has as many codewords as
// rows (MiniLM's 30522 x 16 float16 embedding codebooks took 0.84 ms per call, 40x the
// gather, widened every time).
class CodebookFloats {
 public:
  explicit CodebookFloats(bool constant) : constant_(constant) {}
  const float* get(const Ort::ConstValue& codebooks, ONNXTensorElementDataType type, std::vector<float>* per_call) const {
    if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 || !constant_) return codebook_floats(codebooks, type, per_call);
    std::call_once(once_, [&] { codebook_floats(codebooks, type, &widened_); });
    return widened_.data();
  }

 private:
  const bool constant_;
  mutable std::once_flag once_;
  mutable std::vector<float> widened_;
};

// Whether input `index` of the node is a constant initializer.
inline bool constant_input(const OrtKernelInfo* info, size_t index) {
  int is_constant = 0;
  Ort::ConstKernelInfo(info).GetTensorConstantInput(index, &is_constant);
  return is_constant != 0;
}

// Every layout field of the kernel problem (no data pointers, no M).
inline kernels::VQProblem problem_layout(const Layout& layout) {
  const schema::Attributes& a = layout.attrs;
  kernels::VQProblem problem;
  problem.K = static_cast<size_t>(a.K);
  problem.N = static_cast<size_t>(a.N);
  problem.bits = static_cast<unsigned>(a.bits);
  problem.d = static_cast<size_t>(a.d);
  problem.S = static_cast<size_t>(a.S);
  problem.T = static_cast<size_t>(a.T);
  problem.axis = static_cast<int>(a.axis);
  problem.format_version = static_cast<int>(a.format_version);
  problem.group_size = static_cast<size_t>(a.group_size);
  problem.per_subspace = a.per_subspace != 0;
  return problem;
}

// Hands a kernel's independent tasks to the session's intra-op thread pool, so
// intra_op_num_threads is honored (a pool of one thread runs them inline).
inline void run_on_ort_pool(void* context, kernels::TaskRunner::TaskFn fn, size_t num_tasks,
                            void* data) {
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(
      static_cast<const OrtKernelContext*>(context), fn, num_tasks, 0, data));
}

inline kernels::TaskRunner ort_task_runner(OrtKernelContext* raw_context) {
  kernels::TaskRunner runner;
  if (ORT_API_VERSION >= kParallelForApiVersion && Ort::GetApi().KernelContext_ParallelFor) {
    runner.run = run_on_ort_pool;
    runner.runner_context = raw_context;
  }
  return runner;
}

// Runs body and turns any C++ exception into an OrtStatus: nothing may unwind into ORT.
// `op` names the op in the messages that have no node prefix of their own.
template <typename Body>
OrtStatusPtr guarded(const char* op, const char* context, Body&& body) noexcept {
  const OrtApi& api = Ort::GetApi();
  try {
    body();
    return nullptr;
  } catch (const InvalidArgument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    try {
      return api.CreateStatus(ORT_FAIL, concat(op, ": out of memory").c_str());
    } catch (...) {
      return api.CreateStatus(ORT_FAIL, "onnxvq: out of memory");
    }
  } catch (const std::exception& e) {
    try {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, concat(context, e.what()).c_str());
    } catch (...) {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  } catch (...) {
    try {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, concat(op, ": unknown C++ exception").c_str());
    } catch (...) {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, "onnxvq: unknown C++ exception");
    }
  }
}

// Reads an int attribute in shape inference; false when it is absent or not an int.
inline bool read_int_attribute(OrtShapeInferContext* context, const char* name, int64_t* value) {
  const OrtApi& api = Ort::GetApi();
  const OrtOpAttr* attr = nullptr;
  size_t written = 0;
  OrtStatus* status = api.ShapeInferContext_GetAttribute(context, name, &attr);
  if (status == nullptr) status = api.ReadOpAttr(attr, ORT_OP_ATTR_INT, value, sizeof *value, &written);
  if (status == nullptr) return true;
  api.ReleaseStatus(status);
  return false;
}

// The VQGather op (vq_gather_op.cc), registered next to VQMatMul in one domain.
const OrtCustomOp* vq_gather_custom_op();

}  // namespace onnxvq::op_common
