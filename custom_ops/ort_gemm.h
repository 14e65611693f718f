// ONNX Runtime's own Gemm as the tile path's dense GEMM (kernels::DenseGemm): the op decodes
// a tile of W_hat and lets the runtime's MLAS kernels, thread pool and ISA dispatch multiply
// it, so many-row products run at the dense model's speed without a GEMM library of ours.
// Part of the op layer: it knows ONNX Runtime, the kernels do not.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

#include "kernels/vq_kernel.h"
#include "onnxruntime_cxx_api.h"

namespace onnxvq::op_common {

class OrtGemm {
 public:
  /// Creates Gemm (opset 13, float) with transB = 1 and = 0 for this kernel.
  explicit OrtGemm(const OrtKernelInfo* info)
      : nk_(create(info, 1)), kn_(create(info, 0)) {}

  /// What one Compute call hands the kernels: these ops, run inside its context.
  struct Call {
    const OrtGemm* gemm;
    const OrtKernelContext* context;
    kernels::DenseGemm dense() const { return {&OrtGemm::run, const_cast<Call*>(this)}; }
  };
  Call in(const OrtKernelContext* context) const { return {this, context}; }

 private:
  static Ort::Op create(const OrtKernelInfo* info, int64_t trans_b) {
    const char* type_names[] = {"T"};
    const ONNXTensorElementDataType types[] = {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT};
    // A created op gets no schema defaults: every attribute is spelled out.
    const int64_t trans_a = 0;
    const float one = 1.0f;
    Ort::OpAttr attrs[] = {Ort::OpAttr("transA", &trans_a, 1, OrtOpAttrType::ORT_OP_ATTR_INT),
                           Ort::OpAttr("transB", &trans_b, 1, OrtOpAttrType::ORT_OP_ATTR_INT),
                           Ort::OpAttr("alpha", &one, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT),
                           Ort::OpAttr("beta", &one, 1, OrtOpAttrType::ORT_OP_ATTR_FLOAT)};
    return Ort::Op::Create(info, "Gemm", "", 13, type_names, types, 1, attrs, 4, 2, 1);
  }

  static void run(void* call_data, size_t M, size_t K, size_t N, const float* x, const float* w,
                  bool w_nk, float* y) {
    const Call& call = *static_cast<const Call*>(call_data);
    const Ort::MemoryInfo& cpu = call.gemm->cpu_;
    const std::array<int64_t, 2> x_shape{int64_t(M), int64_t(K)}, y_shape{int64_t(M), int64_t(N)};
    const std::array<int64_t, 2> w_shape = w_nk ? std::array<int64_t, 2>{int64_t(N), int64_t(K)}
                                                : std::array<int64_t, 2>{int64_t(K), int64_t(N)};
    // ORT only reads the inputs; the API takes non-const pointers.
    Ort::Value inputs[] = {
        Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(x), M * K, x_shape.data(), 2),
        Ort::Value::CreateTensor<float>(cpu, const_cast<float*>(w), N * K, w_shape.data(), 2)};
    Ort::Value outputs[] = {Ort::Value::CreateTensor<float>(cpu, y, M * N, y_shape.data(), 2)};
    // A created op is run like a kernel: concurrent Invokes (sessions shared across
    // threads) are as safe as concurrent Computes.
    Ort::Op& op = const_cast<Ort::Op&>(w_nk ? call.gemm->nk_ : call.gemm->kn_);
    op.Invoke(call.context, inputs, 2, outputs, 1);
  }

  Ort::Op nk_, kn_;
  // Describes the tensors wrapped around our buffers; made once, not per call (hundreds per MatMul).
  Ort::MemoryInfo cpu_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
};

}  // namespace onnxvq::op_common
