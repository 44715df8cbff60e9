// DeviceBuffer: grow-only device memory, and Gemm: row-major float32 GEMM through
// cuBLAS; shared by the CUDA models.
#ifndef GNC_WORKER_CUDA_DEVICE_BUFFER_H_
#define GNC_WORKER_CUDA_DEVICE_BUFFER_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "common/cuda/cuda_status.h"
#include "worker/cuda/cuda_check.h"

namespace gnc::cuda {

class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  ~DeviceBuffer() {
    if (data_ != nullptr) cudaFree(data_);
  }
  // Reserve: at least `bytes` bytes; contents are lost when it grows.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_) return absl::OkStatus();
    if (data_ != nullptr) cudaFree(data_);
    data_ = nullptr;
    bytes_ = 0;
    GNC_CUDA_RETURN_IF_ERROR(cudaMalloc(&data_, bytes));
    bytes_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(data_);
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Gemm: row-major C[m, n] = op(A) op(B) + beta C. cuBLAS is column-major, where a
// row-major matrix reads as its transpose, so it computes C^T = op(B)^T op(A)^T.
inline absl::Status Gemm(cublasHandle_t handle, bool trans_a, bool trans_b, int64_t m, int64_t n,
                         int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                         float beta, float* c, int64_t ldc) {
  const float one = 1.0f;
  GNC_WORKER_CUBLAS_CHECK(cublasSgemm(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
      static_cast<int>(n), static_cast<int>(m), static_cast<int>(k), &one, b, static_cast<int>(ldb),
      a, static_cast<int>(lda), &beta, c, static_cast<int>(ldc)));
  return absl::OkStatus();
}

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_DEVICE_BUFFER_H_
