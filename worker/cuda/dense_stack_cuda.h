// DenseStackCuda: fully connected ReLU layers (widths {in, hidden..., classes}, ReLU
// on all but the last, parameters in MlpShape's layout) on device buffers with cuBLAS
// GEMMs in full float32 and the kernels of mlp_kernels.h; the CUDA counterpart of
// cpu::DenseStack, shared by the CUDA MLP and the CNN's head. All pointers are device
// pointers; work is queued on the given stream.
//
// Thread-compatible.
#ifndef GNC_WORKER_CUDA_DENSE_STACK_CUDA_H_
#define GNC_WORKER_CUDA_DENSE_STACK_CUDA_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/cuda/device_buffer.h"

namespace gnc::cuda {

class DenseStackCuda {
 public:
  // Forward: the logits [rows, classes] of x [rows, in], valid until the next call.
  absl::StatusOr<const float*> Forward(cublasHandle_t handle, cudaStream_t stream,
                                       std::span<const int64_t> widths, const float* params,
                                       const float* x, int64_t rows);
  // Backward: after Forward of the same x; delta [rows, classes] = d(loss)/d(logits)
  // (left unchanged). Writes the parameter gradient into grad, and d(loss)/d(x) into
  // dx (not masked) when dx is not null.
  absl::Status Backward(cublasHandle_t handle, cudaStream_t stream, std::span<const int64_t> widths,
                        const float* params, const float* x, int64_t rows, const float* delta,
                        float* grad, float* dx);

 private:
  std::vector<std::unique_ptr<DeviceBuffer>> act_;  // act_[l + 1]: layer l's output
  DeviceBuffer scratch_[2];
};

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_DENSE_STACK_CUDA_H_
