// CUDA runtime and cuBLAS errors as absl::Status with the failing call and where it
// was made. The worker reports them to its caller; nothing here exits.
#ifndef GNC_WORKER_CUDA_CUDA_CHECK_H_
#define GNC_WORKER_CUDA_CUDA_CHECK_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace gnc::cuda {

// CublasError: INTERNAL "<file>:<line>: <call>: <name> (<text>)", like CudaStatus.
absl::Status CublasError(cublasStatus_t status, const char* call, const char* file, int line);

}  // namespace gnc::cuda

#define GNC_WORKER_CUBLAS_CHECK(expr)                                          \
  do {                                                                         \
    const cublasStatus_t gnc_status_ = (expr);                                 \
    if (gnc_status_ != CUBLAS_STATUS_SUCCESS) {                                \
      return ::gnc::cuda::CublasError(gnc_status_, #expr, __FILE__, __LINE__); \
    }                                                                          \
  } while (false)

#endif  // GNC_WORKER_CUDA_CUDA_CHECK_H_
