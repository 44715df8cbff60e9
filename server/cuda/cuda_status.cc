#include "server/cuda/cuda_status.h"

#include "absl/strings/str_cat.h"

namespace gnc::cuda {

absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line) {
  if (error == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", call, ": ",
                                          cudaGetErrorName(error), " (", cudaGetErrorString(error),
                                          ")"));
}

}  // namespace gnc::cuda
