// MlpShape, the MLP's layout and initial parameters, and the CUDA fallback for builds
// without CUDA.
#include "worker/compute_backend.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/layout.h"
#include "worker/trainer.h"

namespace gnc {

absl::StatusOr<ModelLayout> MlpLayout(const MlpShape& shape) {
  if (shape.widths.size() < 2) {
    return absl::InvalidArgumentError("MLP needs at least an input and an output width");
  }
  std::vector<TensorSpec> tensors;
  for (size_t l = 0; l + 1 < shape.widths.size(); ++l) {
    tensors.push_back(
        {absl::StrCat("layer", l, ".weight"), {shape.widths[l + 1], shape.widths[l]}});
    tensors.push_back({absl::StrCat("layer", l, ".bias"), {shape.widths[l + 1]}});
  }
  return ModelLayout::Create(std::move(tensors));
}

std::vector<float> HeInitialParameters(const MlpShape& shape, uint64_t seed) {
  // mt19937_64 is fully specified by the standard; the normal draws use Box-Muller
  // here because std::normal_distribution differs between standard libraries, and
  // every rank must produce the same w0.
  std::mt19937_64 rng(seed);
  const double kTwoPi = 6.283185307179586;
  auto uniform = [&rng] {  // in (0, 1]
    return (static_cast<double>(rng() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  };
  std::vector<float> params(static_cast<size_t>(shape.NumParameters()), 0.0f);
  size_t at = 0;
  for (size_t l = 0; l + 1 < shape.widths.size(); ++l) {
    const int64_t in = shape.widths[l], out = shape.widths[l + 1];
    const double stddev = std::sqrt(2.0 / static_cast<double>(in));
    for (int64_t i = 0; i < out * in; i += 2) {
      const double r = std::sqrt(-2.0 * std::log(uniform()));
      const double theta = kTwoPi * uniform();
      params[at + i] = static_cast<float>(stddev * r * std::cos(theta));
      if (i + 1 < out * in) params[at + i + 1] = static_cast<float>(stddev * r * std::sin(theta));
    }
    at += out * in + out;  // biases stay 0
  }
  return params;
}

#if !defined(GNC_WITH_CUDA)
absl::StatusOr<std::unique_ptr<ComputeBackend>> NewCudaComputeBackend() {
  return absl::FailedPreconditionError("built without CUDA (GNC_WITH_CUDA=OFF)");
}
#endif

}  // namespace gnc
