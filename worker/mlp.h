// The built-in MLP: ReLU hidden layers, softmax cross-entropy. Its shape, layout and
// initial parameters, and the Model on each device.
#ifndef GNC_WORKER_MLP_H_
#define GNC_WORKER_MLP_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/layout.h"
#include "worker/model.h"

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
  // Blocks: the layers for HeInitialParameters.
  std::vector<WeightBlock> Blocks() const {
    std::vector<WeightBlock> blocks;
    for (size_t l = 0; l + 1 < widths.size(); ++l) {
      blocks.push_back({widths[l + 1] * widths[l], widths[l], widths[l + 1]});
    }
    return blocks;
  }
};

// DenseLayerOffsets: where layer l's weight starts in the flat vector of fully
// connected layers of these widths (MlpShape's layout).
inline std::vector<int64_t> DenseLayerOffsets(std::span<const int64_t> widths) {
  std::vector<int64_t> offsets;
  int64_t at = 0;
  for (size_t l = 0; l + 1 < widths.size(); ++l) {
    offsets.push_back(at);
    at += widths[l + 1] * widths[l] + widths[l + 1];
  }
  return offsets;
}

// CheckMlpShape: at least two widths, each in [1, max_width]. INVALID_ARGUMENT
// otherwise.
inline absl::Status CheckMlpShape(const MlpShape& shape, int64_t max_width = int64_t{1} << 40) {
  if (shape.widths.size() < 2) {
    return absl::InvalidArgumentError("MLP needs at least an input and an output width");
  }
  for (int64_t w : shape.widths) {
    if (w < 1 || w > max_width) {
      return absl::InvalidArgumentError(
          absl::StrCat("MLP width ", w, " outside [1, ", max_width, "]"));
    }
  }
  return absl::OkStatus();
}

// CheckMlpArguments: CheckMlpShape, then CheckBatchArguments for the MLP.
inline absl::Status CheckMlpArguments(const MlpShape& shape, std::span<const float> params,
                                      std::span<const float> inputs,
                                      std::span<const int32_t> labels,
                                      int64_t max_width = int64_t{1} << 40) {
  if (absl::Status s = CheckMlpShape(shape, max_width); !s.ok()) return s;
  return CheckBatchArguments(shape.NumParameters(), shape.widths.front(), shape.widths.back(),
                             params, inputs, labels);
}

// MlpLayout: the ModelLayout the servers see for `shape`: tensors "layer<l>.weight"
// [out, in] and "layer<l>.bias" [out], in MlpShape's flat order.
absl::StatusOr<ModelLayout> MlpLayout(const MlpShape& shape);

// HeInitialParameters: w0 of the MLP (see worker/model.h).
inline std::vector<float> HeInitialParameters(const MlpShape& shape, uint64_t seed) {
  return HeInitialParameters(shape.Blocks(), seed);
}

// NewCpuMlp: CBLAS (OpenBLAS) GEMMs. INVALID_ARGUMENT for fewer than two widths or a
// width < 1.
absl::StatusOr<std::unique_ptr<Model>> NewCpuMlp(const MlpShape& shape);

// NewCudaMlp: cuBLAS; FAILED_PRECONDITION without a device or without CUDA in the
// build.
absl::StatusOr<std::unique_ptr<Model>> NewCudaMlp(const MlpShape& shape);

}  // namespace gnc

#endif  // GNC_WORKER_MLP_H_
