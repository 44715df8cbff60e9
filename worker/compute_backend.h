// ComputeBackend: the dense math the built-in MLP needs, on CPU (OpenBLAS) or CUDA
// (cuBLAS + small kernels). All matrices are row-major float32. Buffers are host
// vectors at the interface; a device backend keeps its own device copies.
//
// Thread-compatible: one trainer thread uses a backend.
#ifndef GNC_WORKER_COMPUTE_BACKEND_H_
#define GNC_WORKER_COMPUTE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/layout.h"

namespace gnc {

// MlpShape: layer widths, input first, classes last (e.g. {784, 256, 128, 10}).
// Parameters of layer l (l = 0..L-1): weight W_l of shape [widths[l+1], widths[l]]
// (out x in) then bias b_l of [widths[l+1]], concatenated in that order into the
// flat parameter vector: W_0, b_0, W_1, b_1, ...
struct MlpShape {
  std::vector<int64_t> widths;
  int64_t NumParameters() const {
    int64_t n = 0;
    for (size_t l = 0; l + 1 < widths.size(); ++l) n += widths[l + 1] * widths[l] + widths[l + 1];
    return n;
  }
};

// CheckMlpArguments: the argument checks every backend makes before computing: at
// least two widths, each in [1, max_width], params of the MLP's size, inputs of
// batch x widths[0] for batch = labels.size(), labels in [0, widths.back()).
// INVALID_ARGUMENT naming the mismatch. Header-only so device backends share it.
inline absl::Status CheckMlpArguments(const MlpShape& shape, std::span<const float> params,
                                      std::span<const float> inputs,
                                      std::span<const int32_t> labels,
                                      int64_t max_width = int64_t{1} << 40) {
  if (shape.widths.size() < 2) {
    return absl::InvalidArgumentError("MLP needs at least an input and an output width");
  }
  for (int64_t w : shape.widths) {
    if (w < 1 || w > max_width) {
      return absl::InvalidArgumentError(
          absl::StrCat("MLP width ", w, " outside [1, ", max_width, "]"));
    }
  }
  if (static_cast<int64_t>(params.size()) != shape.NumParameters()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "params has ", params.size(), " elements, the MLP has ", shape.NumParameters()));
  }
  const int64_t batch = static_cast<int64_t>(labels.size());
  if (static_cast<int64_t>(inputs.size()) != batch * shape.widths[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "inputs has ", inputs.size(), " elements, expected ", batch, " x ", shape.widths[0]));
  }
  const int64_t classes = shape.widths.back();
  for (int32_t y : labels) {
    if (y < 0 || y >= classes) {
      return absl::InvalidArgumentError(absl::StrCat("label ", y, " outside [0, ", classes, ")"));
    }
  }
  return absl::OkStatus();
}

// MlpLayout: the ModelLayout the servers see for `shape`: tensors "layer<l>.weight"
// [out, in] and "layer<l>.bias" [out], in MlpShape's flat order.
absl::StatusOr<ModelLayout> MlpLayout(const MlpShape& shape);

// HeInitialParameters: W_l ~ N(0, 2 / fan_in), b_l = 0, drawn from `seed` only, so
// every rank (and every platform) builds the same w0 for the same seed.
std::vector<float> HeInitialParameters(const MlpShape& shape, uint64_t seed);

// ComputeBackend: forward and backward of a ReLU MLP with softmax cross-entropy.
class ComputeBackend {
 public:
  virtual ~ComputeBackend() = default;
  virtual std::string Name() const = 0;

  // LossAndGradient: mean cross-entropy over the batch at parameters `params`, and its
  // gradient into `grad` (same layout as params).
  // REQUIRES: inputs.size() == batch * widths[0], labels.size() == batch, each label in
  // [0, widths.back()), params.size() == grad.size() == shape.NumParameters().
  virtual absl::StatusOr<double> LossAndGradient(const MlpShape& shape,
                                                 std::span<const float> params,
                                                 std::span<const float> inputs,
                                                 std::span<const int32_t> labels,
                                                 std::span<float> grad) = 0;

  // Evaluate: summed cross-entropy and the number of correct argmax predictions.
  virtual absl::Status Evaluate(const MlpShape& shape, std::span<const float> params,
                                std::span<const float> inputs, std::span<const int32_t> labels,
                                double* loss_sum, int64_t* correct) = 0;
};

// NewCpuComputeBackend: CBLAS (OpenBLAS) GEMMs.
std::unique_ptr<ComputeBackend> NewCpuComputeBackend();

// NewCudaComputeBackend: cuBLAS; FAILED_PRECONDITION without a device or without CUDA
// in the build.
absl::StatusOr<std::unique_ptr<ComputeBackend>> NewCudaComputeBackend();

}  // namespace gnc

#endif  // GNC_WORKER_COMPUTE_BACKEND_H_
