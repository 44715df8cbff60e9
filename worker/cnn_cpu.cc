// The CNN on the CPU: im2col (worker/conv_cpu.h) turns each 5x5 convolution into a
// fully connected layer over patches (worker/dense_cpu.h, CBLAS GEMMs). A batch runs
// in chunks of kChunk examples whose gradients add up, so scratch memory stays small
// whatever the batch.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "worker/cnn.h"
#include "worker/conv_cpu.h"
#include "worker/dense_cpu.h"

namespace gnc {
namespace {

constexpr int64_t kChunk = 256;
constexpr int64_t kK = CnnShape::kKernel;

class CpuCnn final : public Model {
 public:
  explicit CpuCnn(CnnShape shape)
      : shape_(std::move(shape)), blocks_(shape_.ConvBlocks()), head_(shape_.Head()) {
    const size_t nb = blocks_.size();
    col_.resize(nb);
    conv_.resize(nb);
    pool_.resize(nb);
    arg_.resize(nb);
  }

  std::string Name() const override { return CnnName(shape_); }
  std::string Device() const override { return "cpu"; }
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
    if (absl::Status s = CheckGradientArguments(NumParameters(), InputSize(), NumClasses(), params,
                                                inputs, labels, grad);
        !s.ok()) {
      return s;
    }
    const int64_t total = static_cast<int64_t>(labels.size());
    const float scale = 1.0f / static_cast<float>(total);
    double loss = 0;
    for (int64_t begin = 0; begin < total; begin += kChunk) {
      const int64_t m = std::min(kChunk, total - begin);
      const float* logits = Forward(params.data(), inputs.data() + begin * InputSize(), m);
      delta_.resize(static_cast<size_t>(m * NumClasses()));
      loss += cpu::SoftmaxCrossEntropy(logits, labels.data() + begin, m, NumClasses(), scale,
                                       delta_.data(), nullptr);
      Backward(params.data(), m, /*accumulate=*/begin > 0, grad.data());
    }
    return loss / static_cast<double>(total);
  }

  absl::Status Evaluate(std::span<const float> params, std::span<const float> inputs,
                        std::span<const int32_t> labels, double* loss_sum,
                        int64_t* correct) override {
    if (absl::Status s =
            CheckBatchArguments(NumParameters(), InputSize(), NumClasses(), params, inputs, labels);
        !s.ok()) {
      return s;
    }
    cpu::EvaluateInChunks(
        inputs.data(), labels.data(), static_cast<int64_t>(labels.size()), InputSize(),
        NumClasses(), kChunk,
        [&](const float* x, int64_t m) { return Forward(params.data(), x, m); }, loss_sum, correct);
    return absl::OkStatus();
  }

 private:
  // Forward: the logits of m images; keeps every block's patches, outputs and pool
  // choices for Backward.
  const float* Forward(const float* params, const float* x, int64_t m) {
    const float* in = x;
    int64_t at = 0;
    for (size_t b = 0; b < blocks_.size(); ++b) {
      const CnnShape::Block& g = blocks_[b];
      const int64_t rows = m * g.conv_h() * g.conv_w(), cols = kK * kK * g.in_c;
      col_[b].resize(static_cast<size_t>(rows * cols));
      conv_[b].resize(static_cast<size_t>(rows * g.out_c));
      pool_[b].resize(static_cast<size_t>(m * g.pool_h() * g.pool_w() * g.out_c));
      arg_[b].resize(pool_[b].size());
      cpu::Im2Col(in, m, g.in_h, g.in_w, g.in_c, kK, col_[b].data());
      cpu::DenseForward(col_[b].data(), rows, cols, params + at, params + at + g.weights(), g.out_c,
                        /*relu=*/true, conv_[b].data());
      cpu::MaxPool2Forward(conv_[b].data(), m, g.conv_h(), g.conv_w(), g.out_c, pool_[b].data(),
                           arg_[b].data());
      at += g.weights() + g.out_c;
      in = pool_[b].data();
    }
    return head_stack_.Forward(head_.widths, params + at, in, m);
  }

  // Backward: after Forward of the same m images, with delta_ = d(loss)/d(logits).
  void Backward(const float* params, int64_t m, bool accumulate, float* grad) {
    const int64_t conv_params = shape_.NumConvParameters();
    d_pool_.resize(pool_.back().size());
    head_stack_.Backward(head_.widths, params + conv_params, pool_.back().data(), m, delta_.data(),
                         accumulate, grad + conv_params, d_pool_.data());
    std::vector<int64_t> offsets;
    int64_t at = 0;
    for (const CnnShape::Block& g : blocks_) {
      offsets.push_back(at);
      at += g.weights() + g.out_c;
    }
    for (size_t b = blocks_.size(); b-- > 0;) {
      const CnnShape::Block& g = blocks_[b];
      const int64_t rows = m * g.conv_h() * g.conv_w(), cols = kK * kK * g.in_c;
      d_conv_.resize(conv_[b].size());
      cpu::MaxPool2Backward(d_pool_.data(), arg_[b].data(), m, g.conv_h(), g.conv_w(), g.out_c,
                            d_conv_.data());
      cpu::ReluBackward(d_conv_.data(), conv_[b].data(), rows * g.out_c);
      float* dw = grad + offsets[b];
      float* d_col = nullptr;
      if (b > 0) {
        d_col_.resize(col_[b].size());
        d_col = d_col_.data();
      }
      cpu::DenseBackward(d_conv_.data(), col_[b].data(), rows, cols, params + offsets[b], g.out_c,
                         accumulate, dw, dw + g.weights(), d_col);
      if (b == 0) break;
      d_pool_.resize(pool_[b - 1].size());
      cpu::Col2Im(d_col, m, g.in_h, g.in_w, g.in_c, kK, d_pool_.data());
    }
  }

  const CnnShape shape_;
  const std::vector<CnnShape::Block> blocks_;
  const MlpShape head_;
  cpu::DenseStack head_stack_;
  // Per block: patches, convolution output after ReLU, pooled map, pool choices.
  std::vector<std::vector<float>> col_, conv_, pool_;
  std::vector<std::vector<int32_t>> arg_;
  std::vector<float> delta_, d_pool_, d_conv_, d_col_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> NewCpuCnn(const CnnShape& shape) {
  if (absl::Status s = CheckCnnShape(shape); !s.ok()) return s;
  return std::unique_ptr<Model>(new CpuCnn(shape));
}

}  // namespace gnc
