#include "worker/cuda/dense_stack_cuda.h"

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/cuda/cuda_status.h"
#include "common/status_macros.h"
#include "worker/cuda/mlp_kernels.h"
#include "worker/mlp.h"

namespace gnc::cuda {

absl::StatusOr<const float*> DenseStackCuda::Forward(cublasHandle_t handle, cudaStream_t stream,
                                                     std::span<const int64_t> widths,
                                                     const float* params, const float* x,
                                                     int64_t rows) {
  const size_t layers = widths.size() - 1;
  while (act_.size() < layers + 1) act_.push_back(std::make_unique<DeviceBuffer>());
  int64_t at = 0;
  for (size_t l = 0; l < layers; ++l) {
    const int64_t in = widths[l], out = widths[l + 1];
    GNC_RETURN_IF_ERROR(act_[l + 1]->Reserve(rows * out * sizeof(float)));
    const float* w = params + at;
    const float* a_in = l == 0 ? x : act_[l]->as<float>();
    float* a_out = act_[l + 1]->as<float>();
    // a_out = a_in W^T: [rows, out], then + bias and ReLU but on the logits.
    GNC_RETURN_IF_ERROR(
        Gemm(handle, false, true, rows, out, in, a_in, in, w, in, 0.0f, a_out, out));
    GNC_CUDA_RETURN_IF_ERROR(
        LaunchBiasActivation(a_out, w + out * in, rows, out, l + 1 < layers, stream));
    at += out * in + out;
  }
  return static_cast<const float*>(act_[layers]->as<float>());
}

absl::Status DenseStackCuda::Backward(cublasHandle_t handle, cudaStream_t stream,
                                      std::span<const int64_t> widths, const float* params,
                                      const float* x, int64_t rows, const float* delta, float* grad,
                                      float* dx) {
  const size_t layers = widths.size() - 1;
  const std::vector<int64_t> offsets = DenseLayerOffsets(widths);
  const float* d = delta;  // d(loss)/d(layer l's output before its ReLU)
  int next = 0;
  for (size_t l = layers; l-- > 0;) {
    const int64_t in = widths[l], out = widths[l + 1];
    const float* a_in = l == 0 ? x : act_[l]->as<float>();
    const float* w = params + offsets[l];
    float* dw = grad + offsets[l];
    // dW = d^T a_in: [out, in]; db = column sums of d.
    GNC_RETURN_IF_ERROR(Gemm(handle, true, false, out, in, rows, d, out, a_in, in, 0.0f, dw, in));
    GNC_CUDA_RETURN_IF_ERROR(LaunchColumnSums(d, rows, out, dw + out * in, stream));
    float* d_in = dx;
    if (l > 0) {
      GNC_RETURN_IF_ERROR(scratch_[next].Reserve(rows * in * sizeof(float)));
      d_in = scratch_[next].as<float>();
    }
    if (d_in == nullptr) break;
    // d_in = d W: [rows, in], masked by the ReLU of a_in for hidden layers.
    GNC_RETURN_IF_ERROR(Gemm(handle, false, false, rows, in, out, d, out, w, in, 0.0f, d_in, in));
    if (l == 0) break;
    GNC_CUDA_RETURN_IF_ERROR(LaunchReluBackward(d_in, a_in, rows * in, stream));
    d = d_in;
    next ^= 1;
  }
  return absl::OkStatus();
}

}  // namespace gnc::cuda
