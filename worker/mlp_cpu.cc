// The MLP on the CPU: worker/dense_cpu.h's fully connected layers with CBLAS
// (OpenBLAS) GEMMs. Scratch buffers are kept between calls, so a steady-state step
// allocates nothing.
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
#include "worker/dense_cpu.h"
#include "worker/mlp.h"

namespace gnc {
namespace {

// Evaluate runs the forward pass over this many examples at a time.
constexpr int64_t kEvalChunk = 1024;

class CpuMlp final : public Model {
 public:
  explicit CpuMlp(MlpShape shape) : shape_(std::move(shape)) {}

  std::string Name() const override {
    return absl::StrCat("mlp ", absl::StrJoin(shape_.widths, "-"));
  }
  std::string Device() const override { return "cpu"; }
  int64_t InputSize() const override { return shape_.widths.front(); }
  int64_t NumClasses() const override { return shape_.widths.back(); }
  int64_t NumParameters() const override { return shape_.NumParameters(); }
  std::vector<float> InitialParameters(uint64_t seed) const override {
    return HeInitialParameters(shape_, seed);
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
    const int64_t batch = static_cast<int64_t>(labels.size());
    const float* logits = stack_.Forward(shape_.widths, params.data(), inputs.data(), batch);
    delta_.resize(static_cast<size_t>(batch * NumClasses()));
    const double loss =
        cpu::SoftmaxCrossEntropy(logits, labels.data(), batch, NumClasses(),
                                 1.0f / static_cast<float>(batch), delta_.data(), nullptr);
    stack_.Backward(shape_.widths, params.data(), inputs.data(), batch, delta_.data(),
                    /*accumulate=*/false, grad.data(), nullptr);
    return loss / static_cast<double>(batch);
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
        NumClasses(), kEvalChunk,
        [&](const float* x, int64_t m) {
          return stack_.Forward(shape_.widths, params.data(), x, m);
        },
        loss_sum, correct);
    return absl::OkStatus();
  }

 private:
  const MlpShape shape_;
  cpu::DenseStack stack_;
  std::vector<float> delta_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> NewCpuMlp(const MlpShape& shape) {
  if (absl::Status s = CheckMlpShape(shape); !s.ok()) return s;
  return std::unique_ptr<Model>(new CpuMlp(shape));
}

}  // namespace gnc
