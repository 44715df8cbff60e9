// Entry point of the CUDA merge backend. Until the kernels land it reports that the
// CUDA merge is not available, so --device=auto falls back to the CPU.
#include "server/device.h"

namespace gnc {

absl::StatusOr<std::unique_ptr<MergeBackend>> NewCudaMergeBackend() {
  return absl::FailedPreconditionError("the CUDA merge backend is not implemented yet");
}

}  // namespace gnc
