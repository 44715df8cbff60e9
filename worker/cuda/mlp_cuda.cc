// The MLP of worker/mlp.h on CUDA, with cuBLAS GEMMs in
// full float32 (no TF32, so gradients agree with the CPU backend to float rounding)
// and the small kernels of mlp_kernels.cu. Parameters, inputs and activations live in
// device buffers kept between calls; each call copies its host inputs in and the
// gradient (or the loss figures) out on the backend's stream.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/cuda/cuda_status.h"
#include "common/status_macros.h"
#include "worker/cuda/cuda_check.h"
#include "worker/cuda/device_buffer.h"
#include "worker/cuda/mlp_kernels.h"
#include "worker/mlp.h"

namespace gnc {
namespace {

// Evaluate runs the forward pass over this many examples at a time (as the CPU does).
constexpr int64_t kEvalChunk = 1024;

using cuda::DeviceBuffer;

// cuBLAS takes int dimensions.
constexpr int64_t kMaxWidth = int64_t{1} << 30;

class CudaMlp final : public Model {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(const MlpShape& shape, int device);
  ~CudaMlp() override {
    if (handle_ != nullptr) cublasDestroy(handle_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string Name() const override {
    return absl::StrCat("mlp ", absl::StrJoin(shape_.widths, "-"));
  }
  std::string Device() const override { return name_; }
  int64_t InputSize() const override { return shape_.widths.front(); }
  int64_t NumClasses() const override { return shape_.widths.back(); }
  int64_t NumParameters() const override { return shape_.NumParameters(); }
  std::vector<float> InitialParameters(uint64_t seed) const override {
    return HeInitialParameters(shape_.Blocks(), seed);
  }

  absl::StatusOr<double> LossAndGradient(std::span<const float> params,
                                         std::span<const float> inputs,
                                         std::span<const int32_t> labels,
                                         std::span<float> grad) override {
    return LossAndGradient(shape_, params, inputs, labels, grad);
  }

  absl::Status Evaluate(std::span<const float> params, std::span<const float> inputs,
                        std::span<const int32_t> labels, double* loss_sum,
                        int64_t* correct) override {
    return Evaluate(shape_, params, inputs, labels, loss_sum, correct);
  }

 private:
  explicit CudaMlp(MlpShape shape) : shape_(std::move(shape)) {}

  absl::StatusOr<double> LossAndGradient(const MlpShape& shape, std::span<const float> params,
                                         std::span<const float> inputs,
                                         std::span<const int32_t> labels, std::span<float> grad);
  absl::Status Evaluate(const MlpShape& shape, std::span<const float> params,
                        std::span<const float> inputs, std::span<const int32_t> labels,
                        double* loss_sum, int64_t* correct);

  // Gemm: row-major C[m, n] = op(A) op(B). cuBLAS is column-major, where a row-major
  // matrix reads as its transpose, so it computes C^T = op(B)^T op(A)^T.
  absl::Status Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* a,
                    int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc);
  // Upload: params and one batch (inputs, labels) to the device; sizes the scratch.
  absl::Status Upload(const MlpShape& shape, std::span<const float> params,
                      std::span<const float> inputs, std::span<const int32_t> labels,
                      int64_t max_batch);
  // Forward: act_[l + 1] = layer l's output for `batch` rows of `x` (ReLU but last).
  absl::Status Forward(const MlpShape& shape, const float* x, int64_t batch);
  // Loss: per-row losses and hits of the logits into host row_loss_/row_correct_,
  // and with `delta` the gradient of the mean loss w.r.t. the logits.
  absl::Status Loss(const MlpShape& shape, const int32_t* labels, int64_t batch, float* delta);

  const MlpShape shape_;
  int device_ = 0;
  std::string name_;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t handle_ = nullptr;
  DeviceBuffer params_, grad_, inputs_, labels_, delta_, delta_prev_, row_loss_, row_correct_;
  std::vector<std::unique_ptr<DeviceBuffer>> act_;  // act_[l], l = 1..L
  std::vector<int64_t> offsets_;                    // per layer, into params
  std::vector<double> row_loss_host_;
  std::vector<int32_t> row_correct_host_;
};

absl::StatusOr<std::unique_ptr<Model>> CudaMlp::Create(const MlpShape& shape, int device) {
  GNC_RETURN_IF_ERROR(CheckMlpShape(shape, kMaxWidth));
  std::unique_ptr<CudaMlp> b(new CudaMlp(shape));
  b->device_ = device;
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  GNC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  b->name_ = absl::StrCat("cuda:", device, " (", prop.name, ")");
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking));
  GNC_WORKER_CUBLAS_CHECK(cublasCreate(&b->handle_));
  GNC_WORKER_CUBLAS_CHECK(cublasSetStream(b->handle_, b->stream_));
  // The default math mode keeps SGEMM in float32 (TF32 needs CUBLAS_TF32_TENSOR_OP_MATH).
  GNC_WORKER_CUBLAS_CHECK(cublasSetMathMode(b->handle_, CUBLAS_DEFAULT_MATH));
  return std::unique_ptr<Model>(std::move(b));
}

absl::Status CudaMlp::Gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k,
                           const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                           int64_t ldc) {
  return cuda::Gemm(handle_, trans_a, trans_b, m, n, k, a, lda, b, ldb, 0.0f, c, ldc);
}

absl::Status CudaMlp::Upload(const MlpShape& shape, std::span<const float> params,
                                        std::span<const float> inputs,
                                        std::span<const int32_t> labels, int64_t max_batch) {
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  const size_t layers = shape.widths.size() - 1;
  offsets_.clear();
  int64_t at = 0;
  int64_t widest = 0;
  for (size_t l = 0; l < layers; ++l) {
    offsets_.push_back(at);
    at += shape.widths[l + 1] * shape.widths[l] + shape.widths[l + 1];
    widest = std::max(widest, shape.widths[l + 1]);
  }
  widest = std::max(widest, shape.widths[0]);
  GNC_RETURN_IF_ERROR(params_.Reserve(params.size_bytes()));
  GNC_RETURN_IF_ERROR(grad_.Reserve(params.size_bytes()));
  GNC_RETURN_IF_ERROR(inputs_.Reserve(inputs.size_bytes()));
  GNC_RETURN_IF_ERROR(labels_.Reserve(labels.size_bytes()));
  const size_t scratch = static_cast<size_t>(max_batch) * widest * sizeof(float);
  GNC_RETURN_IF_ERROR(delta_.Reserve(scratch));
  GNC_RETURN_IF_ERROR(delta_prev_.Reserve(scratch));
  GNC_RETURN_IF_ERROR(row_loss_.Reserve(max_batch * sizeof(double)));
  GNC_RETURN_IF_ERROR(row_correct_.Reserve(max_batch * sizeof(int32_t)));
  while (act_.size() < layers + 1) act_.push_back(std::make_unique<DeviceBuffer>());
  for (size_t l = 1; l <= layers; ++l) {
    GNC_RETURN_IF_ERROR(act_[l]->Reserve(max_batch * shape.widths[l] * sizeof(float)));
  }
  if (labels.empty()) return absl::OkStatus();
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(params_.as<float>(), params.data(), params.size_bytes(),
                                        cudaMemcpyHostToDevice, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(inputs_.as<float>(), inputs.data(), inputs.size_bytes(),
                                        cudaMemcpyHostToDevice, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(labels_.as<int32_t>(), labels.data(), labels.size_bytes(),
                                        cudaMemcpyHostToDevice, stream_));
  return absl::OkStatus();
}

absl::Status CudaMlp::Forward(const MlpShape& shape, const float* x, int64_t batch) {
  const size_t layers = shape.widths.size() - 1;
  for (size_t l = 0; l < layers; ++l) {
    const int64_t in = shape.widths[l], out = shape.widths[l + 1];
    const float* w = params_.as<float>() + offsets_[l];
    const float* bias = w + out * in;
    const float* a_in = l == 0 ? x : act_[l]->as<float>();
    float* a_out = act_[l + 1]->as<float>();
    // a_out = a_in W^T: [batch, out].
    GNC_RETURN_IF_ERROR(Gemm(false, true, batch, out, in, a_in, in, w, in, a_out, out));
    GNC_CUDA_RETURN_IF_ERROR(
        cuda::LaunchBiasActivation(a_out, bias, batch, out, l + 1 < layers, stream_));
  }
  return absl::OkStatus();
}

absl::Status CudaMlp::Loss(const MlpShape& shape, const int32_t* labels, int64_t batch,
                                      float* delta) {
  const int64_t classes = shape.widths.back();
  const float* logits = act_[shape.widths.size() - 1]->as<float>();
  GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchSoftmaxCrossEntropy(
      logits, labels, batch, classes, 1.0f / static_cast<float>(batch), delta,
      row_loss_.as<double>(), row_correct_.as<int32_t>(), stream_));
  row_loss_host_.resize(batch);
  row_correct_host_.resize(batch);
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(row_loss_host_.data(), row_loss_.as<double>(),
                                        batch * sizeof(double), cudaMemcpyDeviceToHost, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(row_correct_host_.data(), row_correct_.as<int32_t>(),
                                        batch * sizeof(int32_t), cudaMemcpyDeviceToHost, stream_));
  return absl::OkStatus();
}

absl::StatusOr<double> CudaMlp::LossAndGradient(const MlpShape& shape,
                                                           std::span<const float> params,
                                                           std::span<const float> inputs,
                                                           std::span<const int32_t> labels,
                                                           std::span<float> grad) {
  GNC_RETURN_IF_ERROR(CheckMlpArguments(shape, params, inputs, labels, kMaxWidth));
  if (grad.size() != params.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad has ", grad.size(), " elements, params ", params.size()));
  }
  const int64_t batch = static_cast<int64_t>(labels.size());
  if (batch == 0) return absl::InvalidArgumentError("empty batch");
  GNC_RETURN_IF_ERROR(Upload(shape, params, inputs, labels, batch));
  GNC_RETURN_IF_ERROR(Forward(shape, inputs_.as<float>(), batch));
  GNC_RETURN_IF_ERROR(Loss(shape, labels_.as<int32_t>(), batch, delta_.as<float>()));

  // Backward, last layer first; delta holds d(mean loss)/d(layer output).
  const int layers = static_cast<int>(shape.widths.size()) - 1;
  float* delta = delta_.as<float>();
  float* delta_prev = delta_prev_.as<float>();
  for (int l = layers - 1; l >= 0; --l) {
    const int64_t in = shape.widths[l], out = shape.widths[l + 1];
    const float* a_in = l == 0 ? inputs_.as<float>() : act_[l]->as<float>();
    float* dw = grad_.as<float>() + offsets_[l];
    float* db = dw + out * in;
    // dW = delta^T a_in: [out, in]; db = column sums of delta.
    GNC_RETURN_IF_ERROR(Gemm(true, false, out, in, batch, delta, out, a_in, in, dw, in));
    GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchColumnSums(delta, batch, out, db, stream_));
    if (l == 0) break;
    // delta_prev = (delta W) * relu'(a_in): [batch, in].
    const float* w = params_.as<float>() + offsets_[l];
    GNC_RETURN_IF_ERROR(Gemm(false, false, batch, in, out, delta, out, w, in, delta_prev, in));
    GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchReluBackward(delta_prev, a_in, batch * in, stream_));
    std::swap(delta, delta_prev);
  }
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(grad.data(), grad_.as<float>(), grad.size_bytes(),
                                        cudaMemcpyDeviceToHost, stream_));
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
  double loss = 0;
  for (double x : row_loss_host_) loss += x;
  return loss / static_cast<double>(batch);
}

absl::Status CudaMlp::Evaluate(const MlpShape& shape, std::span<const float> params,
                                          std::span<const float> inputs,
                                          std::span<const int32_t> labels, double* loss_sum,
                                          int64_t* correct) {
  GNC_RETURN_IF_ERROR(CheckMlpArguments(shape, params, inputs, labels, kMaxWidth));
  const int64_t total = static_cast<int64_t>(labels.size());
  GNC_RETURN_IF_ERROR(Upload(shape, params, inputs, labels, std::min(total, kEvalChunk)));
  double loss = 0;
  int64_t right = 0;
  for (int64_t begin = 0; begin < total; begin += kEvalChunk) {
    const int64_t batch = std::min(kEvalChunk, total - begin);
    GNC_RETURN_IF_ERROR(Forward(shape, inputs_.as<float>() + begin * shape.widths[0], batch));
    GNC_RETURN_IF_ERROR(Loss(shape, labels_.as<int32_t>() + begin, batch, nullptr));
    GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream_));
    for (int64_t i = 0; i < batch; ++i) {
      loss += row_loss_host_[i];
      right += row_correct_host_[i];
    }
  }
  *loss_sum = loss;
  *correct = right;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> NewCudaMlp(const MlpShape& shape) {
  if (absl::Status s = cuda::RequireCudaDevice(); !s.ok()) return s;
  GNC_RETURN_IF_ERROR(CheckMlpShape(shape, kMaxWidth));
  absl::StatusOr<std::unique_ptr<Model>> backend = CudaMlp::Create(shape, 0);
  if (!backend.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device 0 is unusable: ", backend.status().message()));
  }
  return backend;
}

}  // namespace gnc
