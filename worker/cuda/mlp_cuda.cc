// The MLP of worker/mlp.h on CUDA: DenseStackCuda (cuBLAS GEMMs in full float32, no
// TF32, so gradients agree with the CPU model to float rounding) and the softmax
// kernel of mlp_kernels.cu. Parameters, inputs and activations live in device
// buffers kept between calls; each call copies its host inputs in and the gradient
// (or the loss figures) out on the model's stream.
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
#include "worker/cuda/dense_stack_cuda.h"
#include "worker/cuda/device_buffer.h"
#include "worker/cuda/model_cuda_base.h"
#include "worker/mlp.h"

namespace gnc {
namespace {

// Evaluate runs the forward pass over this many examples at a time (as the CPU does).
constexpr int64_t kEvalChunk = 1024;
// cuBLAS takes int dimensions.
constexpr int64_t kMaxWidth = int64_t{1} << 30;

class CudaMlp final : public Model, private cuda::CudaModelBase {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(const MlpShape& shape, int device) {
    std::unique_ptr<CudaMlp> m(new CudaMlp(shape));
    GNC_RETURN_IF_ERROR(m->Open(device));
    return std::unique_ptr<Model>(std::move(m));
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
    GNC_RETURN_IF_ERROR(CheckGradientArguments(NumParameters(), InputSize(), NumClasses(), params,
                                               inputs, labels, grad));
    const int64_t batch = static_cast<int64_t>(labels.size());
    GNC_RETURN_IF_ERROR(Upload(params, inputs, labels));
    GNC_RETURN_IF_ERROR(grad_.Reserve(grad.size_bytes()));
    GNC_RETURN_IF_ERROR(delta_.Reserve(batch * NumClasses() * sizeof(float)));
    absl::StatusOr<const float*> logits = stack_.Forward(
        handle_, stream_, shape_.widths, params_.as<float>(), inputs_.as<float>(), batch);
    if (!logits.ok()) return logits.status();
    GNC_RETURN_IF_ERROR(
        Loss(*logits, labels_.as<int32_t>(), batch, NumClasses(), batch, delta_.as<float>()));
    GNC_RETURN_IF_ERROR(stack_.Backward(handle_, stream_, shape_.widths, params_.as<float>(),
                                        inputs_.as<float>(), batch, delta_.as<float>(),
                                        grad_.as<float>(), nullptr));
    return FinishGradient(grad, batch);
  }

  absl::Status Evaluate(std::span<const float> params, std::span<const float> inputs,
                        std::span<const int32_t> labels, double* loss_sum,
                        int64_t* correct) override {
    GNC_RETURN_IF_ERROR(
        CheckBatchArguments(NumParameters(), InputSize(), NumClasses(), params, inputs, labels));
    GNC_RETURN_IF_ERROR(Upload(params, inputs, labels));
    return EvaluateUploaded(
        static_cast<int64_t>(labels.size()), InputSize(), NumClasses(), kEvalChunk,
        [&](const float* x, int64_t m) {
          return stack_.Forward(handle_, stream_, shape_.widths, params_.as<float>(), x, m);
        },
        loss_sum, correct);
  }

 private:
  explicit CudaMlp(MlpShape shape) : shape_(std::move(shape)) {}

  const MlpShape shape_;
  cuda::DenseStackCuda stack_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> NewCudaMlp(const MlpShape& shape) {
  if (absl::Status s = cuda::RequireCudaDevice(); !s.ok()) return s;
  GNC_RETURN_IF_ERROR(CheckMlpShape(shape, kMaxWidth));
  absl::StatusOr<std::unique_ptr<Model>> model = CudaMlp::Create(shape, 0);
  if (!model.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device 0 is unusable: ", model.status().message()));
  }
  return model;
}

}  // namespace gnc
