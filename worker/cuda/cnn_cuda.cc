// The CNN has no CUDA path yet: --device=auto falls back to the CPU.
#include <memory>

#include "absl/status/status.h"
#include "worker/cnn.h"

namespace gnc {

absl::StatusOr<std::unique_ptr<Model>> NewCudaCnn(const CnnShape&) {
  return absl::FailedPreconditionError("the CNN has no CUDA path yet");
}

}  // namespace gnc
