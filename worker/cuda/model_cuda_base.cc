#include "worker/cuda/model_cuda_base.h"

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/cuda/cuda_status.h"
#include "common/status_macros.h"
#include "worker/cuda/cuda_check.h"
#include "worker/cuda/mlp_kernels.h"

namespace gnc::cuda {

CudaModelBase::~CudaModelBase() {
  if (handle_ != nullptr) cublasDestroy(handle_);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
}

absl::Status CudaModelBase::Open(int device) {
  device_ = device;
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  GNC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  name_ = absl::StrCat("cuda:", device, " (", prop.name, ")");
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  GNC_WORKER_CUBLAS_CHECK(cublasCreate(&handle_));
  GNC_WORKER_CUBLAS_CHECK(cublasSetStream(handle_, stream_));
  // The default math mode keeps SGEMM in float32 (TF32 needs CUBLAS_TF32_TENSOR_OP_MATH).
  GNC_WORKER_CUBLAS_CHECK(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH));
  return absl::OkStatus();
}

absl::Status CudaModelBase::Upload(std::span<const float> params, std::span<const float> inputs,
                                   std::span<const int32_t> labels) {
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  GNC_RETURN_IF_ERROR(params_.Reserve(params.size_bytes()));
  GNC_RETURN_IF_ERROR(inputs_.Reserve(inputs.size_bytes()));
  GNC_RETURN_IF_ERROR(labels_.Reserve(labels.size_bytes()));
  if (labels.empty()) return absl::OkStatus();
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.as<float>(), params.data(), params.size_bytes(),
                                           cudaMemcpyHostToDevice, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(inputs_.as<float>(), inputs.data(), inputs.size_bytes(),
                                           cudaMemcpyHostToDevice, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(labels_.as<int32_t>(), labels.data(),
                                           labels.size_bytes(), cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status CudaModelBase::Loss(const float* logits, const int32_t* labels, int64_t rows,
                                 int64_t classes, int64_t batch, float* delta) {
  GNC_RETURN_IF_ERROR(row_loss_.Reserve(rows * sizeof(double)));
  GNC_RETURN_IF_ERROR(row_correct_.Reserve(rows * sizeof(int32_t)));
  GNC_CUDA_RETURN_IF_ERROR(LaunchSoftmaxCrossEntropy(
      logits, labels, rows, classes, 1.0f / static_cast<float>(batch), delta,
      row_loss_.as<double>(), row_correct_.as<int32_t>(), stream_));
  row_loss_host_.resize(rows);
  row_correct_host_.resize(rows);
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(row_loss_host_.data(), row_loss_.as<double>(),
                                           rows * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(row_correct_host_.data(), row_correct_.as<int32_t>(),
                                           rows * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                           stream_));
  return absl::OkStatus();
}

absl::Status CudaModelBase::EvaluateUploaded(
    int64_t total, int64_t input_size, int64_t classes, int64_t chunk,
    const std::function<absl::StatusOr<const float*>(const float*, int64_t)>& logits,
    double* loss_sum, int64_t* correct) {
  double loss = 0;
  int64_t right = 0;
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int64_t m = total - begin < chunk ? total - begin : chunk;
    absl::StatusOr<const float*> z = logits(inputs_.as<float>() + begin * input_size, m);
    if (!z.ok()) return z.status();
    GNC_RETURN_IF_ERROR(Loss(*z, labels_.as<int32_t>() + begin, m, classes, m, nullptr));
    GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    double chunk_loss = 0;
    int64_t chunk_correct = 0;
    RowSums(m, &chunk_loss, &chunk_correct);
    loss += chunk_loss;
    right += chunk_correct;
  }
  *loss_sum = loss;
  *correct = right;
  return absl::OkStatus();
}

absl::StatusOr<double> CudaModelBase::FinishGradient(std::span<float> grad, int64_t batch) {
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(grad.data(), grad_.as<float>(), grad.size_bytes(),
                                           cudaMemcpyDeviceToHost, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  double loss = 0;
  int64_t correct = 0;
  RowSums(batch, &loss, &correct);
  return loss / static_cast<double>(batch);
}

void CudaModelBase::RowSums(int64_t rows, double* loss, int64_t* correct) const {
  double l = 0;
  int64_t c = 0;
  for (int64_t i = 0; i < rows; ++i) {
    l += row_loss_host_[i];
    c += row_correct_host_[i];
  }
  *loss = l;
  *correct = c;
}

}  // namespace gnc::cuda
