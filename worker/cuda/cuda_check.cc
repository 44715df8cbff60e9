#include "worker/cuda/cuda_check.h"

#include "absl/strings/str_cat.h"

namespace gnc::cuda {

absl::Status CublasError(cublasStatus_t status, const char* call, const char* file, int line) {
  return absl::InternalError(absl::StrCat(file, ":", line, ": ", call, ": ",
                                          cublasGetStatusName(status), " (",
                                          cublasGetStatusString(status), ")"));
}

}  // namespace gnc::cuda
