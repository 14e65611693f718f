// ONNX Runtime adapter for VQGather (embedding lookup on a compressed table; see the
// VQGather section of onnxvq/ops/schema.py). Registered by RegisterCustomOps in
// vq_matmul_op.cc; the layout attributes, codes and codebooks are read and checked by the
// same code as VQMatMul's (vq_op_common.h). Every index is checked before any row is read.
#include "vq_op_common.h"

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

namespace onnxvq {
namespace {

namespace schema = onnxvq::schema;
namespace kernels = onnxvq::kernels;
using op_common::concat;
using op_common::dtype_name;
using op_common::format_shape;
using op_common::guarded;
using op_common::Layout;
using op_common::Node;

class VQGatherKernel {
 public:
  VQGatherKernel(const OrtApi& api, const OrtKernelInfo* info)
      : node_(api, info, schema::kGatherOpType),
        layout_(op_common::read_layout(api, info, node_, schema::kGatherSupportedFormatVersions)),
        codebook_floats_(op_common::constant_input(info, schema::kGatherInput_codebooks)) {}

  void Compute(OrtKernelContext* raw_context) const;

  OrtStatusPtr ComputeV2(OrtKernelContext* context) noexcept {
    return guarded(schema::kGatherOpType, "VQGather compute: ", [&] { Compute(context); });
  }

 private:
  [[noreturn]] void fail(const std::string& message) const { node_.fail(message); }

  Node node_;
  Layout layout_;
  op_common::CodebookFloats codebook_floats_;
};

void VQGatherKernel::Compute(OrtKernelContext* raw_context) const {
  Ort::KernelContext context(raw_context);
  const schema::Attributes& a = layout_.attrs;
  const int64_t V = a.N, D = a.K;

  const Ort::ConstValue indices = context.GetInput(schema::kGatherInput_indices);
  const auto info = indices.GetTensorTypeAndShapeInfo();
  const ONNXTensorElementDataType index_type = info.GetElementType();
  if (index_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 &&
      index_type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
    fail(concat("indices must be int32 or int64, got ", dtype_name(index_type)));
  const std::vector<int64_t> index_shape = info.GetShape();
  uint64_t count = 1, y_elems = 0;
  for (int64_t dim : index_shape)
    if (dim < 0 || !op_common::checked_mul(count, static_cast<uint64_t>(dim), &count))
      fail(concat("indices shape ", format_shape(index_shape), " is invalid or too large"));
  if (!op_common::checked_mul(count, static_cast<uint64_t>(D), &y_elems) ||
      y_elems > std::numeric_limits<size_t>::max() / sizeof(float))
    fail(concat("output for indices shape ", format_shape(index_shape), " and D = ", D,
                " is too large"));

  const Ort::ConstValue codes = context.GetInput(schema::kGatherInput_codes);
  op_common::check_codes(node_, layout_, codes);
  const Ort::ConstValue codebooks = context.GetInput(schema::kGatherInput_codebooks);
  const ONNXTensorElementDataType codebook_type =
      op_common::check_codebooks(node_, layout_, codebooks);

  kernels::VQGatherProblem problem;
  problem.count = static_cast<size_t>(count);
  if (index_type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64)
    problem.indices64 = indices.GetTensorData<int64_t>();
  else
    problem.indices32 = indices.GetTensorData<int32_t>();
  problem.layout = op_common::problem_layout(layout_);
  int64_t bad = 0;
  const size_t at = kernels::vq_gather_first_invalid(problem, &bad);
  if (at != problem.count)
    fail(concat("indices value ", bad, " (flat position ", at, ") is out of range [", -V, ", ",
                V - 1, "] for a table of V = out_features = ", V, " rows"));

  std::vector<int64_t> y_shape = index_shape;
  y_shape.push_back(D);
  Ort::UnownedValue y = context.GetOutput(0, y_shape);
  if (problem.count == 0) return;  // empty indices give an empty Y

  std::vector<float> widened;
  problem.layout.codes = codes.GetTensorData<uint8_t>();
  problem.layout.codebooks = codebook_floats_.get(codebooks, codebook_type, &widened);
  problem.y = y.GetTensorMutableData<float>();
  kernels::vq_gather(problem, op_common::ort_task_runner(raw_context));
}

// Output shape: indices' shape + [D] (best effort, like VQMatMul's: nothing is set when the
// rank or a dimension is unknown and unnamed; the kernel's checks decide at run time).
OrtStatusPtr infer_gather_shape(const OrtCustomOp*, OrtShapeInferContext* context) noexcept {
  const OrtApi& api = Ort::GetApi();
  auto ok = [&](OrtStatus* status) {
    if (status == nullptr) return true;
    api.ReleaseStatus(status);
    return false;
  };
  try {
    OrtTensorTypeAndShapeInfo* info = nullptr;  // owned by the context
    size_t rank = 0;
    if (!ok(api.ShapeInferContext_GetInputTypeShape(context, schema::kGatherInput_indices, &info)) ||
        !ok(api.GetDimensionsCount(info, &rank)))
      return nullptr;
    std::vector<int64_t> dims(rank + 1);
    std::vector<const char*> names(rank + 1, nullptr);
    int64_t d = 0;
    if ((rank && (!ok(api.GetDimensions(info, dims.data(), rank)) ||
                  !ok(api.GetSymbolicDimensions(info, names.data(), rank)))) ||
        !op_common::read_int_attribute(context, VQ_ATTRIBUTE_NAME(K), &d) || d < 1)
      return nullptr;
    for (size_t i = 0; i < rank; ++i)
      if (dims[i] < 0 && (names[i] == nullptr || names[i][0] == '\0')) return nullptr;
    dims[rank] = d;
    names[rank] = "";

    OrtTensorTypeAndShapeInfo* y_info = nullptr;
    if (!ok(api.CreateTensorTypeAndShapeInfo(&y_info))) return nullptr;
    const bool set = ok(api.SetTensorElementType(y_info, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)) &&
                     ok(api.SetDimensions(y_info, dims.data(), rank + 1)) &&
                     ok(api.SetSymbolicDimensions(y_info, names.data(), rank + 1)) &&
                     ok(api.ShapeInferContext_SetOutputTypeShape(context, 0, y_info));
    api.ReleaseTensorTypeAndShapeInfo(y_info);
    (void)set;
    return nullptr;
  } catch (...) {
    return nullptr;
  }
}

struct VQGatherOp : Ort::CustomOpBase<VQGatherOp, VQGatherKernel, /*WithStatus=*/true> {
  VQGatherOp() { OrtCustomOp::InferOutputShapeFn = infer_gather_shape; }

  const char* GetName() const { return schema::kGatherOpType; }

  size_t GetInputTypeCount() const { return schema::kGatherNumInputs; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    // indices (int32 / int64) and codebooks (float32 / float16) are checked at run time.
    return index == static_cast<size_t>(schema::kGatherInput_codes) ? ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8
                                                                     : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t) const {
    return INPUT_OUTPUT_REQUIRED;
  }

  size_t GetOutputTypeCount() const { return schema::kGatherNumOutputs; }
  ONNXTensorElementDataType GetOutputType(size_t) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT; }

  OrtStatusPtr CreateKernelV2(const OrtApi& api, const OrtKernelInfo* info, void** kernel) const {
    *kernel = nullptr;
    return guarded(schema::kGatherOpType, "VQGather kernel creation: ",
                   [&] { *kernel = new VQGatherKernel(api, info); });
  }
};

}  // namespace

namespace op_common {
const OrtCustomOp* vq_gather_custom_op() {
  static VQGatherOp op;
  return &op;
}
}  // namespace op_common

}  // namespace onnxvq
