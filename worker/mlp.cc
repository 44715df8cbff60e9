// The MLP's layout, and the CUDA fallback for builds without CUDA.
#include "worker/mlp.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/layout.h"

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

#if !defined(GNC_WITH_CUDA)
absl::StatusOr<std::unique_ptr<Model>> NewCudaMlp(const MlpShape&) {
  return absl::FailedPreconditionError("built without CUDA (GNC_WITH_CUDA=OFF)");
}
#endif

}  // namespace gnc
