// The CNN of worker/cnn.h on CUDA: im2col kernels turn each convolution into a
// cuBLAS GEMM (full float32), with the bias + ReLU, pooling and softmax kernels, and
// DenseStackCuda for the fully connected head. A gradient call takes the whole batch
// at once (activations for 1024 images of the default shape take about 60 MB);
// Evaluate runs in chunks of 1024.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/cuda/cuda_status.h"
#include "common/status_macros.h"
#include "worker/cnn.h"
#include "worker/cuda/cnn_kernels.h"
#include "worker/cuda/dense_stack_cuda.h"
#include "worker/cuda/device_buffer.h"
#include "worker/cuda/mlp_kernels.h"
#include "worker/cuda/model_cuda_base.h"

namespace gnc {
namespace {

constexpr int64_t kEvalChunk = 1024;
constexpr int64_t kK = CnnShape::kKernel;

class CudaCnn final : public Model, private cuda::CudaModelBase {
 public:
  static absl::StatusOr<std::unique_ptr<Model>> Create(const CnnShape& shape, int device) {
    std::unique_ptr<CudaCnn> m(new CudaCnn(shape));
    GNC_RETURN_IF_ERROR(m->Open(device));
    return std::unique_ptr<Model>(std::move(m));
  }

  std::string Name() const override { return CnnName(shape_); }
  std::string Device() const override { return name_; }
  int64_t InputSize() const override { return shape_.height * shape_.width; }
  int64_t NumClasses() const override { return shape_.classes; }
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
    absl::StatusOr<const float*> logits = Forward(inputs_.as<float>(), batch);
    if (!logits.ok()) return logits.status();
    GNC_RETURN_IF_ERROR(
        Loss(*logits, labels_.as<int32_t>(), batch, NumClasses(), batch, delta_.as<float>()));
    GNC_RETURN_IF_ERROR(Backward(batch));
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
        [&](const float* x, int64_t m) { return Forward(x, m); }, loss_sum, correct);
  }

 private:
  explicit CudaCnn(CnnShape shape)
      : shape_(std::move(shape)), blocks_(shape_.ConvBlocks()), head_(shape_.Head()) {
    for (size_t b = 0; b < blocks_.size(); ++b) {
      col_.push_back(std::make_unique<cuda::DeviceBuffer>());
      conv_.push_back(std::make_unique<cuda::DeviceBuffer>());
      pool_.push_back(std::make_unique<cuda::DeviceBuffer>());
      arg_.push_back(std::make_unique<cuda::DeviceBuffer>());
    }
    int64_t at = 0;
    for (const CnnShape::Block& g : blocks_) {
      offsets_.push_back(at);
      at += g.weights() + g.out_c;
    }
  }

  // Forward: the logits of m images x (device); keeps each block's patches, outputs
  // and pool choices for Backward.
  absl::StatusOr<const float*> Forward(const float* x, int64_t m) {
    const float* params = params_.as<float>();
    const float* in = x;
    for (size_t b = 0; b < blocks_.size(); ++b) {
      const CnnShape::Block& g = blocks_[b];
      const int64_t rows = m * g.conv_h() * g.conv_w(), cols = kK * kK * g.in_c;
      const int64_t pooled = m * g.pool_h() * g.pool_w() * g.out_c;
      GNC_RETURN_IF_ERROR(col_[b]->Reserve(rows * cols * sizeof(float)));
      GNC_RETURN_IF_ERROR(conv_[b]->Reserve(rows * g.out_c * sizeof(float)));
      GNC_RETURN_IF_ERROR(pool_[b]->Reserve(pooled * sizeof(float)));
      GNC_RETURN_IF_ERROR(arg_[b]->Reserve(pooled * sizeof(int32_t)));
      const float* w = params + offsets_[b];
      float* col = col_[b]->as<float>();
      float* conv = conv_[b]->as<float>();
      GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchIm2Col(in, m, g.in_h, g.in_w, g.in_c, kK, col, stream_));
      // conv = col W^T: [rows, out_c], then + bias and ReLU.
      GNC_RETURN_IF_ERROR(cuda::Gemm(handle_, false, true, rows, g.out_c, cols, col, cols, w, cols,
                                     0.0f, conv, g.out_c));
      GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchBiasActivation(conv, w + g.weights(), rows, g.out_c,
                                                          /*relu=*/true, stream_));
      GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchMaxPool2Forward(conv, m, g.conv_h(), g.conv_w(), g.out_c,
                                                           pool_[b]->as<float>(),
                                                           arg_[b]->as<int32_t>(), stream_));
      in = pool_[b]->as<float>();
    }
    return head_stack_.Forward(handle_, stream_, head_.widths, params + shape_.NumConvParameters(),
                               in, m);
  }

  // Backward: after Forward of the batch, with delta_ = d(mean loss)/d(logits).
  absl::Status Backward(int64_t m) {
    const float* params = params_.as<float>();
    float* grad = grad_.as<float>();
    const int64_t conv_params = shape_.NumConvParameters();
    GNC_RETURN_IF_ERROR(d_pool_.Reserve(m * head_.widths.front() * sizeof(float)));
    GNC_RETURN_IF_ERROR(head_stack_.Backward(handle_, stream_, head_.widths, params + conv_params,
                                             pool_.back()->as<float>(), m, delta_.as<float>(),
                                             grad + conv_params, d_pool_.as<float>()));
    for (size_t b = blocks_.size(); b-- > 0;) {
      const CnnShape::Block& g = blocks_[b];
      const int64_t rows = m * g.conv_h() * g.conv_w(), cols = kK * kK * g.in_c;
      const float* w = params + offsets_[b];
      float* dw = grad + offsets_[b];
      GNC_RETURN_IF_ERROR(d_conv_.Reserve(rows * g.out_c * sizeof(float)));
      float* d_conv = d_conv_.as<float>();
      GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchMaxPool2Backward(d_pool_.as<float>(),
                                                            arg_[b]->as<int32_t>(), m, g.conv_h(),
                                                            g.conv_w(), g.out_c, d_conv, stream_));
      GNC_CUDA_RETURN_IF_ERROR(
          cuda::LaunchReluBackward(d_conv, conv_[b]->as<float>(), rows * g.out_c, stream_));
      // dW = d_conv^T col: [out_c, cols]; db = column sums of d_conv.
      GNC_RETURN_IF_ERROR(cuda::Gemm(handle_, true, false, g.out_c, cols, rows, d_conv, g.out_c,
                                     col_[b]->as<float>(), cols, 0.0f, dw, cols));
      GNC_CUDA_RETURN_IF_ERROR(
          cuda::LaunchColumnSums(d_conv, rows, g.out_c, dw + g.weights(), stream_));
      if (b == 0) break;
      // d_col = d_conv W: [rows, cols], folded back onto the previous pooled map.
      GNC_RETURN_IF_ERROR(d_col_.Reserve(rows * cols * sizeof(float)));
      GNC_RETURN_IF_ERROR(cuda::Gemm(handle_, false, false, rows, cols, g.out_c, d_conv, g.out_c, w,
                                     cols, 0.0f, d_col_.as<float>(), cols));
      GNC_RETURN_IF_ERROR(d_pool_.Reserve(m * g.in_h * g.in_w * g.in_c * sizeof(float)));
      GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchCol2Im(d_col_.as<float>(), m, g.in_h, g.in_w, g.in_c, kK,
                                                  d_pool_.as<float>(), stream_));
    }
    return absl::OkStatus();
  }

  const CnnShape shape_;
  const std::vector<CnnShape::Block> blocks_;
  const MlpShape head_;
  std::vector<int64_t> offsets_;  // of each block's weights in the flat vector
  cuda::DenseStackCuda head_stack_;
  std::vector<std::unique_ptr<cuda::DeviceBuffer>> col_, conv_, pool_, arg_;
  cuda::DeviceBuffer d_pool_, d_conv_, d_col_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> NewCudaCnn(const CnnShape& shape) {
  if (absl::Status s = cuda::RequireCudaDevice(); !s.ok()) return s;
  GNC_RETURN_IF_ERROR(CheckCnnShape(shape));
  absl::StatusOr<std::unique_ptr<Model>> model = CudaCnn::Create(shape, 0);
  if (!model.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device 0 is unusable: ", model.status().message()));
  }
  return model;
}

}  // namespace gnc
