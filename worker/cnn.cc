// The CNN's layout, and the CUDA fallback for builds without CUDA.
#include "worker/cnn.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/layout.h"

namespace gnc {

absl::StatusOr<ModelLayout> CnnLayout(const CnnShape& shape) {
  if (absl::Status s = CheckCnnShape(shape); !s.ok()) return s;
  std::vector<TensorSpec> tensors;
  const std::vector<CnnShape::Block> blocks = shape.ConvBlocks();
  for (size_t b = 0; b < blocks.size(); ++b) {
    tensors.push_back({absl::StrCat("conv", b, ".weight"),
                       {blocks[b].out_c, CnnShape::kKernel, CnnShape::kKernel, blocks[b].in_c}});
    tensors.push_back({absl::StrCat("conv", b, ".bias"), {blocks[b].out_c}});
  }
  const MlpShape head = shape.Head();
  for (size_t l = 0; l + 1 < head.widths.size(); ++l) {
    tensors.push_back({absl::StrCat("fc", l, ".weight"), {head.widths[l + 1], head.widths[l]}});
    tensors.push_back({absl::StrCat("fc", l, ".bias"), {head.widths[l + 1]}});
  }
  return ModelLayout::Create(std::move(tensors));
}

#if !defined(GNC_WITH_CUDA)
absl::StatusOr<std::unique_ptr<Model>> NewCudaCnn(const CnnShape&) {
  return absl::FailedPreconditionError("built without CUDA (GNC_WITH_CUDA=OFF)");
}
#endif

}  // namespace gnc
