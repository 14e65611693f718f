// ONNX Runtime adapter for VQMatMul: the one file that knows ONNX Runtime.
//
// It reads and validates the node's attributes at kernel creation and every tensor at
// compute time, then calls the framework-free kernel (kernels/vq_kernel.h). The library
// links no onnxruntime: the API arrives through RegisterCustomOps (ORT_API_MANUAL_INIT).
// Names and numbers come from generated/vq_schema.h (python -m onnxvq.ops.schema).
#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "generated/vq_schema.h"
#include "kernels/float16.h"
#include "kernels/vq_kernel.h"

namespace onnxvq {
namespace {

namespace schema = onnxvq::schema;
namespace kernels = onnxvq::kernels;

// KernelContext_ParallelFor appeared in ORT API 17; RegisterCustomOps refuses runtimes
// older than the headers (ORT_API_VERSION), so it is always there at run time.
constexpr uint32_t kParallelForApiVersion = 17;
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

std::string format_shape(const std::vector<int64_t>& shape) {
  std::ostringstream out;
  out << '[';
  for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
  out << ']';
  return out.str();
}

const char* dtype_name(ONNXTensorElementDataType type) {
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

// a * b, or nullopt-style failure through the return flag, for sizes that come from the
// model (a crafted model must not wrap a size around and slip past the checks).
bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) {
  if (b != 0 && a > std::numeric_limits<uint64_t>::max() / b) return false;
  *out = a * b;
  return true;
}

// ONNX name of an attribute, from its field in schema::Attributes (fields are declared in
// kAttributes order, one int64_t each).
#define VQ_ATTRIBUTE_NAME(field) \
  (schema::kAttributes[offsetof(schema::Attributes, field) / sizeof(int64_t)].name)

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

// --- the kernel ---------------------------------------------------------------------------

class VQMatMulKernel {
 public:
  VQMatMulKernel(const OrtApi& api, const OrtKernelInfo* info)
      : node_name_(read_node_name(api, info)), layout_(read_layout(api, info)) {}

  void Compute(OrtKernelContext* raw_context) const;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept;

  // Error-message prefix naming the node.
  std::string where() const { return concat(schema::kOpType, " node '", node_name_, "': "); }

 private:
  static std::string read_node_name(const OrtApi& api, const OrtKernelInfo* info);
  Layout read_layout(const OrtApi& api, const OrtKernelInfo* info) const;
  void check_sizes(Layout& layout) const;

  [[noreturn]] void fail(const std::string& message) const { throw InvalidArgument(where() + message); }

  size_t check_x(const Ort::ConstValue& x, std::vector<int64_t>* x_shape) const;
  void check_codes(const Ort::ConstValue& codes) const;
  ONNXTensorElementDataType check_codebooks(const Ort::ConstValue& codebooks) const;
  void check_bias(const Ort::ConstValue& bias) const;

  std::string node_name_;
  Layout layout_;
};

std::string VQMatMulKernel::read_node_name(const OrtApi& api, const OrtKernelInfo* info) {
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

Layout VQMatMulKernel::read_layout(const OrtApi& api, const OrtKernelInfo* info) const {
  int64_t values[schema::kNumAttributes];
  for (int i = 0; i < schema::kNumAttributes; ++i) {
    const char* name = schema::kAttributes[i].name;
    if (OrtStatus* status = api.KernelInfoGetAttribute_int64(info, name, &values[i])) {
      const std::string detail = api.GetErrorMessage(status);
      api.ReleaseStatus(status);
      fail(concat("required int attribute '", name, "' is missing or not an int (", detail, ")"));
    }
  }
  Layout layout;
  std::memcpy(&layout.attrs, values, sizeof values);
  const schema::Attributes& a = layout.attrs;

  // The version first: a future layout may give the other attributes new meanings.
  bool version_known = false;
  std::string supported;
  for (int64_t v : schema::kSupportedFormatVersions) {
    version_known = version_known || v == a.format_version;
    supported += (supported.empty() ? "" : ", ") + std::to_string(v);
  }
  if (!version_known)
    fail(concat(VQ_ATTRIBUTE_NAME(format_version), ' ', a.format_version,
                " is not supported by this library (supports ", supported, "); upgrade onnxvq"));

  for (int i = 0; i < schema::kNumAttributes; ++i)
    if (values[i] < schema::kAttributes[i].minimum)
      fail(concat("attribute '", schema::kAttributes[i].name, "' must be >= ",
                  schema::kAttributes[i].minimum, ", got ", values[i]));
  if (a.bits < schema::kMinBits || a.bits > schema::kMaxBits)
    fail(concat(VQ_ATTRIBUTE_NAME(bits), " must be in [", schema::kMinBits, ", ", schema::kMaxBits,
                "], got ", a.bits));
  if (a.axis != schema::kAxisIn && a.axis != schema::kAxisOut)
    fail(concat(VQ_ATTRIBUTE_NAME(axis), " must be ", schema::kAxisIn, " or ", schema::kAxisOut,
                ", got ", a.axis));
  if (a.per_subspace != 0 && a.per_subspace != 1)
    fail(concat(VQ_ATTRIBUTE_NAME(per_subspace), " must be 0 or 1, got ", a.per_subspace));
  if (a.format_version == schema::kFastScanFormatVersion &&
      (a.axis != schema::kAxisIn || a.bits != schema::kFastScanBits))
    fail(concat(VQ_ATTRIBUTE_NAME(format_version), ' ', schema::kFastScanFormatVersion, " needs ",
                VQ_ATTRIBUTE_NAME(axis), ' ', schema::kAxisIn, " and ", schema::kFastScanBits,
                "-bit codes, got axis ", a.axis, " and ", a.bits, " bits"));

  layout.rows = static_cast<uint64_t>(a.axis == schema::kAxisIn ? a.N : a.K);
  layout.length = static_cast<uint64_t>(a.axis == schema::kAxisIn ? a.K : a.N);
  const uint64_t d = static_cast<uint64_t>(a.d);
  const uint64_t expected_s = layout.length / d + (layout.length % d != 0);
  if (static_cast<uint64_t>(a.S) != expected_s)
    fail(concat(VQ_ATTRIBUTE_NAME(S), " must be ceil(", layout.length, " / ", d, ") = ", expected_s,
                ", got ", a.S));
  if (static_cast<uint64_t>(a.group_size) > layout.rows)
    fail(concat(VQ_ATTRIBUTE_NAME(group_size), ' ', a.group_size, " exceeds the ", layout.rows,
                " rows"));
  check_sizes(layout);
  return layout;
}

// Derived sizes, each product overflow-checked, also against what size_t and the kernel's
// pointer arithmetic can index.
void VQMatMulKernel::check_sizes(Layout& layout) const {
  const schema::Attributes& a = layout.attrs;
  layout.subspace_groups = a.per_subspace ? static_cast<uint64_t>(a.S) : 1;
  layout.row_groups = layout.rows / a.group_size + (layout.rows % a.group_size != 0);
  layout.codewords = uint64_t{1} << a.bits;

  const uint64_t limit = std::numeric_limits<size_t>::max() / 8;
  const auto too_large = [&] {
    fail(concat("the attributes describe codes or codebooks too large to address (",
                VQ_ATTRIBUTE_NAME(T), '=', a.T, ", rows=", layout.rows, ", ", VQ_ATTRIBUTE_NAME(S), '=',
                a.S, ", ", VQ_ATTRIBUTE_NAME(bits), '=', a.bits, ", ", VQ_ATTRIBUTE_NAME(d), '=', a.d,
                ", ", VQ_ATTRIBUTE_NAME(group_size), '=', a.group_size, ")"));
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
  if (a.format_version == schema::kFastScanFormatVersion) {
    // Blocks of 32 rows, 16 bytes per (block, entry): v1's bytes plus the last block's padding.
    const uint64_t blocks = layout.rows / schema::kFastScanBlockRows +
                            (layout.rows % schema::kFastScanBlockRows != 0);
    uint64_t bytes = 0;
    if (!checked_mul(blocks, static_cast<uint64_t>(a.T), &bytes) ||
        !checked_mul(bytes, static_cast<uint64_t>(a.S), &bytes) ||
        !checked_mul(bytes, schema::kFastScanGroupBytes, &bytes) || bytes > limit)
      too_large();
    layout.packed_bytes = bytes;
  }
  layout.codebooks_shape = {a.T, static_cast<int64_t>(layout.subspace_groups),
                            static_cast<int64_t>(layout.row_groups),
                            static_cast<int64_t>(layout.codewords), a.d};
}

// Returns M (rows of X after flattening its leading dimensions).
size_t VQMatMulKernel::check_x(const Ort::ConstValue& x, std::vector<int64_t>* x_shape) const {
  const auto info = x.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    fail(concat("X must be float32, got ", dtype_name(info.GetElementType())));
  *x_shape = info.GetShape();
  if (x_shape->empty()) fail("X must have rank >= 1, got a scalar");
  if (x_shape->back() != layout_.attrs.K)
    fail(concat("X has last dimension ", x_shape->back(), ", expected in_features K = ",
                layout_.attrs.K, " (X shape ", format_shape(*x_shape), ")"));
  uint64_t rows = 1;
  for (size_t i = 0; i + 1 < x_shape->size(); ++i)
    if (!checked_mul(rows, static_cast<uint64_t>((*x_shape)[i]), &rows))
      fail(concat("X shape ", format_shape(*x_shape), " is too large"));
  uint64_t y_elems = 0;
  if (!checked_mul(rows, static_cast<uint64_t>(layout_.attrs.N), &y_elems) ||
      y_elems > std::numeric_limits<size_t>::max() / sizeof(float))
    fail(concat("output for X shape ", format_shape(*x_shape), " is too large"));
  return static_cast<size_t>(rows);
}

// Exact sizes are what keeps the kernel in bounds: every code is a bits-wide field, so it
// indexes one of exactly 2^bits codewords, and the stream holds exactly T*R*S codes. With
// the codes length and the codebooks shape equal to what the attributes say, no index the
// kernel forms can leave its buffer, whatever the bytes contain.
void VQMatMulKernel::check_codes(const Ort::ConstValue& codes) const {
  const auto info = codes.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8)
    fail(concat("codes must be uint8, got ", dtype_name(info.GetElementType())));
  const std::vector<int64_t> shape = info.GetShape();
  const schema::Attributes& a = layout_.attrs;
  if (shape.size() != 1 || static_cast<uint64_t>(shape[0]) != layout_.packed_bytes)
    fail(concat("codes must have shape [", layout_.packed_bytes, "] = [",
                a.format_version == schema::kFastScanFormatVersion ? "ceil(R/32)*T*S*16"
                                                                   : "ceil(T*R*S*bits/8)",
                "] with T=",
                a.T, " R=", layout_.rows, " S=", a.S, " bits=", a.bits, ", got ",
                format_shape(shape)));
}

ONNXTensorElementDataType VQMatMulKernel::check_codebooks(const Ort::ConstValue& codebooks) const {
  const auto info = codebooks.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType type = info.GetElementType();
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16)
    fail(concat("codebooks must be float32 or float16, got ", dtype_name(type)));
  const std::vector<int64_t> shape = info.GetShape();
  if (shape != layout_.codebooks_shape)
    fail(concat("codebooks must have shape ", format_shape(layout_.codebooks_shape),
                " = [T, Gs, Gr, 2^bits, d], got ", format_shape(shape)));
  return type;
}

void VQMatMulKernel::check_bias(const Ort::ConstValue& bias) const {
  const auto info = bias.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    fail(concat("bias must be float32, got ", dtype_name(info.GetElementType())));
  const std::vector<int64_t> shape = info.GetShape();
  if (shape.size() != 1 || shape[0] != layout_.attrs.N)
    fail(concat("bias must have shape [", layout_.attrs.N, "] = [out_features], got ",
                format_shape(shape)));
}

// Hands the kernel's independent tasks to the session's intra-op thread pool, so
// intra_op_num_threads is honored (a pool of one thread runs them inline).
void run_on_ort_pool(void* context, kernels::TaskRunner::TaskFn fn, size_t num_tasks, void* data) {
  Ort::ThrowOnError(Ort::GetApi().KernelContext_ParallelFor(
      static_cast<const OrtKernelContext*>(context), fn, num_tasks, 0, data));
}

void VQMatMulKernel::Compute(OrtKernelContext* raw_context) const {
  Ort::KernelContext context(raw_context);
  const schema::Attributes& a = layout_.attrs;

  std::vector<int64_t> x_shape;
  const Ort::ConstValue x = context.GetInput(schema::kInput_X);
  const size_t rows = check_x(x, &x_shape);
  const Ort::ConstValue codes = context.GetInput(schema::kInput_codes);
  check_codes(codes);
  const Ort::ConstValue codebooks = context.GetInput(schema::kInput_codebooks);
  const ONNXTensorElementDataType codebook_type = check_codebooks(codebooks);
  Ort::ConstValue bias{nullptr};
  if (context.GetInputCount() > static_cast<size_t>(schema::kInput_bias))
    bias = context.GetInput(schema::kInput_bias);  // empty when the optional input is absent
  if (bias) check_bias(bias);

  std::vector<int64_t> y_shape = x_shape;
  y_shape.back() = a.N;
  Ort::UnownedValue y = context.GetOutput(0, y_shape);
  if (rows == 0) return;  // an empty batch gives an empty Y

  // float16 codebooks are widened exactly, per call: they are small next to the codes.
  std::vector<float> widened;
  const float* codebook_data = nullptr;
  if (codebook_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16) {
    const size_t count = codebooks.GetTensorTypeAndShapeInfo().GetElementCount();
    widened.resize(count);
    kernels::half_to_float(static_cast<const uint16_t*>(codebooks.GetTensorRawData()), count,
                           widened.data());
    codebook_data = widened.data();
  } else {
    codebook_data = codebooks.GetTensorData<float>();
  }

  kernels::VQProblem problem;
  problem.M = rows;
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
  problem.x = x.GetTensorData<float>();
  problem.codes = codes.GetTensorData<uint8_t>();
  problem.codebooks = codebook_data;
  problem.bias = bias ? bias.GetTensorData<float>() : nullptr;
  problem.y = y.GetTensorMutableData<float>();

  kernels::TaskRunner runner;
  if (ORT_API_VERSION >= kParallelForApiVersion && Ort::GetApi().KernelContext_ParallelFor) {
    runner.run = run_on_ort_pool;
    runner.runner_context = raw_context;
  }
  kernels::vq_matmul(problem, runner);
}

// --- C boundary helpers -------------------------------------------------------------------

// Runs body and turns any C++ exception into an OrtStatus: nothing may unwind into ORT.
template <typename Body>
OrtStatusPtr guarded(const char* context, Body&& body) noexcept {
  const OrtApi& api = Ort::GetApi();
  try {
    body();
    return nullptr;
  } catch (const InvalidArgument& e) {
    return api.CreateStatus(ORT_INVALID_ARGUMENT, e.what());
  } catch (const Ort::Exception& e) {
    return api.CreateStatus(e.GetOrtErrorCode(), e.what());
  } catch (const std::bad_alloc&) {
    return api.CreateStatus(ORT_FAIL, "VQMatMul: out of memory");
  } catch (const std::exception& e) {
    try {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, concat(context, e.what()).c_str());
    } catch (...) {
      return api.CreateStatus(ORT_RUNTIME_EXCEPTION, e.what());
    }
  } catch (...) {
    return api.CreateStatus(ORT_RUNTIME_EXCEPTION, "VQMatMul: unknown C++ exception");
  }
}

OrtStatusPtr VQMatMulKernel::ComputeV2(OrtKernelContext* context) noexcept {
  return guarded("VQMatMul compute: ", [&] { Compute(context); });
}

// Output shape: X's shape with the last dimension replaced by N. Best effort: when X's
// rank or a leading dimension is unknown (neither a value nor a name) nothing is set,
// since ORT would turn an anonymous unknown dimension into the value -1. ORT ignores
// (and never frees) a status returned from here, so this always returns nullptr and
// leaves bad shapes to the kernel's run-time checks.
OrtStatusPtr infer_output_shape(const OrtCustomOp*, OrtShapeInferContext* context) noexcept {
  const OrtApi& api = Ort::GetApi();
  auto ok = [&](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  auto read_int = [&](const char* name, int64_t* value) {
    const OrtOpAttr* attr = nullptr;
    size_t written = 0;
    return ok(api.ShapeInferContext_GetAttribute(context, name, &attr)) &&
           ok(api.ReadOpAttr(attr, ORT_OP_ATTR_INT, value, sizeof *value, &written));
  };
  try {
    OrtTensorTypeAndShapeInfo* x_info = nullptr;  // owned by the context
    size_t rank = 0;
    if (!ok(api.ShapeInferContext_GetInputTypeShape(context, schema::kInput_X, &x_info)) ||
        !ok(api.GetDimensionsCount(x_info, &rank)) || rank == 0)
      return nullptr;
    std::vector<int64_t> dims(rank);
    std::vector<const char*> names(rank, nullptr);
    int64_t k = 0, n = 0;
    if (!ok(api.GetDimensions(x_info, dims.data(), rank)) ||
        !ok(api.GetSymbolicDimensions(x_info, names.data(), rank)) ||
        !read_int(VQ_ATTRIBUTE_NAME(K), &k) || !read_int(VQ_ATTRIBUTE_NAME(N), &n))
      return nullptr;
    if (dims.back() >= 0 && dims.back() != k) return nullptr;  // compute will report it
    for (size_t i = 0; i + 1 < rank; ++i)
      if (dims[i] < 0 && (names[i] == nullptr || names[i][0] == '\0')) return nullptr;
    dims.back() = n;
    names.back() = "";

    OrtTensorTypeAndShapeInfo* y_info = nullptr;
    if (!ok(api.CreateTensorTypeAndShapeInfo(&y_info))) return nullptr;
    const bool set = ok(api.SetTensorElementType(y_info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)) &&
                     ok(api.SetDimensions(y_info, dims.data(), rank)) &&
                     ok(api.SetSymbolicDimensions(y_info, names.data(), rank)) &&
                     ok(api.ShapeInferContext_SetOutputTypeShape(context, 0, y_info));
    api.ReleaseTensorTypeAndShapeInfo(y_info);
    (void)set;  // a failure leaves the output shape to the model's value_info
    return nullptr;
  } catch (...) {
    return nullptr;
  }
}

// --- the op -----------------------------------------------------------------------------

struct VQMatMulOp : Ort::CustomOpBase<VQMatMulOp, VQMatMulKernel, /*WithStatus=*/true> {
  VQMatMulOp() { OrtCustomOp::InferOutputShapeFn = infer_output_shape; }

  const char* GetName() const { return schema::kOpType; }

  size_t GetInputTypeCount() const { return schema::kNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    switch (index) {
      case schema::kInput_X: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      case schema::kInput_codes: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
      case schema::kInput_bias: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
      default: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;  // codebooks: float32 or float16,
    }                                                           // checked at run time
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index < static_cast<size_t>(schema::kNumRequiredInputs) ? INPUT_OUTPUT_REQUIRED
                                                                   : INPUT_OUTPUT_OPTIONAL;
  }

  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    *kernel = nullptr;
    return guarded("VQMatMul kernel creation: ", [&] { *kernel = new VQMatMulKernel(api, info); });
  }
};

VQMatMulOp& the_op() {
  static VQMatMulOp op;
  return op;
}

// The domain must outlive every session that uses it. It is created once and never
// released: releasing it from a static destructor could run after ORT itself is gone.
OrtCustomOpDomain* the_domain() {
  static std::mutex mutex;
  static std::vector<Ort::CustomOpDomain>* domains = new std::vector<Ort::CustomOpDomain>();
  std::lock_guard<std::mutex> lock(mutex);
  if (domains->empty()) {
    Ort::CustomOpDomain domain(schema::kDomain);
    domain.Add(&the_op());
    domains->push_back(std::move(domain));
  }
  return domains->front();
}

}  // namespace
}  // namespace onnxvq

extern "C" ONNXVQ_EXPORT OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options,
                                                                  const OrtApiBase* api_base) {
  if (api_base == nullptr) return nullptr;  // nothing to report an error through
  const OrtApi* api = api_base->GetApi(ORT_API_VERSION);
  if (api == nullptr) {
    // Older than our headers: ask for the oldest API, which every runtime has.
    const OrtApi* api_v1 = api_base->GetApi(1);
    if (api_v1 == nullptr) return nullptr;
    char message[256];
    std::snprintf(message, sizeof message,
                  "onnxvq needs onnxruntime >= 1.%d (ORT API version %d); this onnxruntime "
                  "is %s. Upgrade onnxruntime.",
                  ORT_API_VERSION, ORT_API_VERSION, api_base->GetVersionString());
    return api_v1->CreateStatus(ORT_FAIL, message);
  }
  Ort::InitApi(api);
  return onnxvq::guarded("onnxvq RegisterCustomOps: ", [&] {
    Ort::ThrowOnError(api->AddCustomOpDomain(options, onnxvq::the_domain()));
  });
}
