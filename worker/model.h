// Model: one built-in trainer model (architecture + softmax cross-entropy) computed
// on one device. The trainer and the sharpness tool see only this interface;
// worker/mlp.h and worker/cnn.h build the concrete models on the CPU (OpenBLAS) or
// CUDA (cuBLAS). Parameters are a flat float32 vector in the model's layout order
// (worker/model_spec.h names the tensors); inputs are row-major [batch, InputSize()]
// float32; labels are class indices.
//
// Thread-compatible: one thread uses a Model (it keeps scratch buffers).
#ifndef GNC_WORKER_MODEL_H_
#define GNC_WORKER_MODEL_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gnc {

class Model {
 public:
  virtual ~Model() = default;

  // Name: the architecture, e.g. "mlp 784-256-128-10".
  virtual std::string Name() const = 0;
  // Device: where it computes, e.g. "cpu" or "cuda:0 (NVIDIA H200)".
  virtual std::string Device() const = 0;
  virtual int64_t InputSize() const = 0;
  virtual int64_t NumClasses() const = 0;
  virtual int64_t NumParameters() const = 0;
  // InitialParameters: w0 drawn from `seed` only: the same on every rank, platform
  // and device.
  virtual std::vector<float> InitialParameters(uint64_t seed) const = 0;

  // LossAndGradient: mean cross-entropy over the batch at `params`, and its gradient
  // into `grad` (same layout as params).
  // REQUIRES: inputs.size() == batch * InputSize(), labels.size() == batch >= 1, each
  // label in [0, NumClasses()), params.size() == grad.size() == NumParameters();
  // INVALID_ARGUMENT otherwise.
  virtual absl::StatusOr<double> LossAndGradient(std::span<const float> params,
                                                 std::span<const float> inputs,
                                                 std::span<const int32_t> labels,
                                                 std::span<float> grad) = 0;

  // Evaluate: summed cross-entropy and the number of correct argmax predictions.
  // Same REQUIRES as LossAndGradient, without grad; an empty batch gives 0 and 0.
  virtual absl::Status Evaluate(std::span<const float> params, std::span<const float> inputs,
                                std::span<const int32_t> labels, double* loss_sum,
                                int64_t* correct) = 0;
};

// CheckBatchArguments: the checks every model makes before computing: params of
// `num_params` elements, inputs of batch x `input_size` for batch = labels.size(),
// labels in [0, classes). INVALID_ARGUMENT naming the mismatch. Header-only so device
// code shares it.
inline absl::Status CheckBatchArguments(int64_t num_params, int64_t input_size, int64_t classes,
                                        std::span<const float> params,
                                        std::span<const float> inputs,
                                        std::span<const int32_t> labels) {
  if (static_cast<int64_t>(params.size()) != num_params) {
    return absl::InvalidArgumentError(
        absl::StrCat("params has ", params.size(), " elements, the model has ", num_params));
  }
  const int64_t batch = static_cast<int64_t>(labels.size());
  if (static_cast<int64_t>(inputs.size()) != batch * input_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs has ", inputs.size(), " elements, expected ", batch, " x ", input_size));
  }
  for (int32_t y : labels) {
    if (y < 0 || y >= classes) {
      return absl::InvalidArgumentError(absl::StrCat("label ", y, " outside [0, ", classes, ")"));
    }
  }
  return absl::OkStatus();
}

// CheckGradientArguments: CheckBatchArguments, a non-empty batch and a grad of
// params' size.
inline absl::Status CheckGradientArguments(int64_t num_params, int64_t input_size, int64_t classes,
                                           std::span<const float> params,
                                           std::span<const float> inputs,
                                           std::span<const int32_t> labels,
                                           std::span<const float> grad) {
  if (absl::Status s = CheckBatchArguments(num_params, input_size, classes, params, inputs, labels);
      !s.ok()) {
    return s;
  }
  if (grad.size() != params.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("grad has ", grad.size(), " elements, params ", params.size()));
  }
  if (labels.empty()) return absl::InvalidArgumentError("empty batch");
  return absl::OkStatus();
}

// WeightBlock: one layer's share of the flat vector for initialisation: `weights`
// elements drawn with fan-in `fan_in`, then `biases` zeros.
struct WeightBlock {
  int64_t weights = 0;
  int64_t fan_in = 1;
  int64_t biases = 0;
};

// HeInitialParameters: each block's weights ~ N(0, 2 / fan_in), biases 0, drawn in
// block order from mt19937_64(seed) with Box-Muller (std::normal_distribution differs
// between standard libraries), so every rank builds the same w0.
std::vector<float> HeInitialParameters(std::span<const WeightBlock> blocks, uint64_t seed);

}  // namespace gnc

#endif  // GNC_WORKER_MODEL_H_
