// CudaModelBase: what the CUDA models share: the device, stream and cuBLAS handle,
// uploads of a call's parameters and batch, the softmax cross-entropy with its
// per-row results brought back to the host, and the sum over rows.
//
// Thread-compatible.
#ifndef GNC_WORKER_CUDA_MODEL_CUDA_BASE_H_
#define GNC_WORKER_CUDA_MODEL_CUDA_BASE_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/cuda/device_buffer.h"

namespace gnc::cuda {

class CudaModelBase {
 public:
  CudaModelBase() = default;
  CudaModelBase(const CudaModelBase&) = delete;
  CudaModelBase& operator=(const CudaModelBase&) = delete;
  ~CudaModelBase();

 protected:
  // Open: selects `device`, creates the stream and handle (float32 GEMMs, no TF32)
  // and names the device ("cuda:0 (NVIDIA H200)").
  absl::Status Open(int device);
  // Upload: params, inputs and labels to params_, inputs_, labels_.
  absl::Status Upload(std::span<const float> params, std::span<const float> inputs,
                      std::span<const int32_t> labels);
  // Loss: softmax cross-entropy of `rows` logits rows against labels (device); with
  // delta not null, delta = d(mean loss over `batch`)/d(logits). Queues the copy of
  // the per-row losses and hits to the host; read them after a synchronize.
  absl::Status Loss(const float* logits, const int32_t* labels, int64_t rows, int64_t classes,
                    int64_t batch, float* delta);
  // EvaluateUploaded: Model::Evaluate of the uploaded batch of `total` examples in
  // chunks of `chunk`: logits(x, m) queues the forward pass of the m examples at x
  // (device) and returns their logits.
  absl::Status EvaluateUploaded(
      int64_t total, int64_t input_size, int64_t classes, int64_t chunk,
      const std::function<absl::StatusOr<const float*>(const float*, int64_t)>& logits,
      double* loss_sum, int64_t* correct);
  // FinishGradient: copies grad_ to `grad`, waits for the stream and returns the
  // mean loss of the last Loss over `batch` rows.
  absl::StatusOr<double> FinishGradient(std::span<float> grad, int64_t batch);
  // RowSums: after a synchronize, the summed loss and hits of the last Loss.
  void RowSums(int64_t rows, double* loss, int64_t* correct) const;

  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer params_, inputs_, labels_, row_loss_, row_correct_;
  DeviceBuffer grad_, delta_;  // a gradient call's gradient and d(loss)/d(logits)
  std::vector<double> row_loss_host_;
  std::vector<int32_t> row_correct_host_;
};

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_MODEL_CUDA_BASE_H_
