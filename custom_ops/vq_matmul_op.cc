// ONNX Runtime adapter for VQMatMul, and the library's RegisterCustomOps (VQMatMul and
// VQGather, one domain). With vq_gather_op.cc and vq_op_common.h (what both share), the only
// code that knows ONNX Runtime.
//
// It reads and validates the node's attributes at kernel creation and every tensor at
// compute time, then calls the framework-free kernel (kernels/vq_kernel.h). The library
// links no onnxruntime: the API arrives through RegisterCustomOps (ORT_API_MANUAL_INIT).
// Names and numbers come from generated/vq_schema.h (python -m onnxvq.ops.schema).
#include "vq_op_common.h"
#include "ort_gemm.h"
#include <cstdlib>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

namespace onnxvq {
namespace {

namespace schema = onnxvq::schema;
namespace kernels = onnxvq::kernels;
using op_common::check_codebooks;
using op_common::check_codes;
using op_common::checked_mul;
using op_common::concat;
using op_common::dtype_name;
using op_common::format_shape;
using op_common::guarded;
using op_common::Layout;
using op_common::Node;

// --- the kernel ---------------------------------------------------------------------------

class VQMatMulKernel {
 public:
  VQMatMulKernel(const OrtApi& api, const OrtKernelInfo* info)
      : node_(api, info, schema::kOpType),
        layout_(op_common::read_layout(api, info, node_, schema::kSupportedFormatVersions)),
        gemm_(info),
        constant_codebooks_(op_common::constant_input(info, schema::kInput_codebooks)),
        codebook_floats_(constant_codebooks_) {}

  void Compute(OrtKernelContext* raw_context) const;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept;

 private:
  [[noreturn]] void fail(const std::string& message) const { node_.fail(message); }

  size_t check_x(const Ort::ConstValue& x, std::vector<int64_t>* x_shape) const;
  void check_bias(const Ort::ConstValue& bias) const;

  const kernels::PreparedCodebooks* prepared(const kernels::VQProblem& problem) const;

  Node node_;
  Layout layout_;
  op_common::OrtGemm gemm_;  // ORT's Gemm, for the tile path
  // Constant codebooks (an initializer) are prepared once, on the first call, for every later
  // one: the int8 tier's quantized codebooks read every codeword (pq8-d4: as many values as W).
  const bool constant_codebooks_;
  mutable std::once_flag prepare_once_;
  mutable std::shared_ptr<const kernels::PreparedCodebooks> prepared_;
  op_common::CodebookFloats codebook_floats_;
};

const kernels::PreparedCodebooks* VQMatMulKernel::prepared(const kernels::VQProblem& problem) const {
  if (!constant_codebooks_) return nullptr;
  std::call_once(prepare_once_, [&] { prepared_ = kernels::prepare_codebooks(problem, kernels::active_kernel_table()); });
  return prepared_.get();
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

void VQMatMulKernel::check_bias(const Ort::ConstValue& bias) const {
  const auto info = bias.GetTensorTypeAndShapeInfo();
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    fail(concat("bias must be float32, got ", dtype_name(info.GetElementType())));
  const std::vector<int64_t> shape = info.GetShape();
  if (shape.size() != 1 || shape[0] != layout_.attrs.N)
    fail(concat("bias must have shape [", layout_.attrs.N, "] = [out_features], got ",
                format_shape(shape)));
}

void VQMatMulKernel::Compute(OrtKernelContext* raw_context) const {
  Ort::KernelContext context(raw_context);
  const schema::Attributes& a = layout_.attrs;

  std::vector<int64_t> x_shape;
  const Ort::ConstValue x = context.GetInput(schema::kInput_X);
  const size_t rows = check_x(x, &x_shape);
  const Ort::ConstValue codes = context.GetInput(schema::kInput_codes);
  check_codes(node_, layout_, codes);
  const Ort::ConstValue codebooks = context.GetInput(schema::kInput_codebooks);
  const ONNXTensorElementDataType codebook_type = check_codebooks(node_, layout_, codebooks);
  Ort::ConstValue bias{nullptr};
  if (context.GetInputCount() > static_cast<size_t>(schema::kInput_bias))
    bias = context.GetInput(schema::kInput_bias);  // empty when the optional input is absent
  if (bias) check_bias(bias);

  std::vector<int64_t> y_shape = x_shape;
  y_shape.back() = a.N;
  Ort::UnownedValue y = context.GetOutput(0, y_shape);
  if (rows == 0) return;  // an empty batch gives an empty Y

  std::vector<float> widened;  // float16 codebooks that are not constant, widened for this call
  kernels::VQProblem problem = op_common::problem_layout(layout_);
  problem.M = rows;
  problem.x = x.GetTensorData<float>();
  problem.codes = codes.GetTensorData<uint8_t>();
  problem.codebooks = codebook_floats_.get(codebooks, codebook_type, &widened);
  problem.bias = bias ? bias.GetTensorData<float>() : nullptr;
  problem.y = y.GetTensorMutableData<float>();
  problem.prepared = prepared(problem);
  const op_common::OrtGemm::Call gemm = gemm_.in(raw_context);
  static const bool builtin_only = std::getenv("ONNXVQ_BUILTIN_GEMM") != nullptr;  // benchmarks
  kernels::vq_matmul(problem, op_common::ort_task_runner(raw_context),
                     kernels::active_kernel_table(), builtin_only ? kernels::DenseGemm{} : gemm.dense());
}

// --- C boundary helpers -------------------------------------------------------------------

OrtStatusPtr VQMatMulKernel::ComputeV2(OrtKernelContext* context) noexcept {
  return guarded(schema::kOpType, "VQMatMul compute: ", [&] { Compute(context); });
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
    return op_common::read_int_attribute(context, name, value);
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
    return guarded(schema::kOpType, "VQMatMul kernel creation: ",
                   [&] { *kernel = new VQMatMulKernel(api, info); });
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
    domain.Add(op_common::vq_gather_custom_op());
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
  return onnxvq::op_common::guarded("onnxvq", "onnxvq RegisterCustomOps: ", [&] {
    Ort::ThrowOnError(api->AddCustomOpDomain(options, onnxvq::the_domain()));
  });
}
