// CUDA runtime errors as absl::Status, with the failing call and where it was made.
// A library never exits on a device error: it reports and lets the caller decide
// (the shard core keeps the job alive; --device=auto falls back to the CPU).
#ifndef GNC_COMMON_CUDA_CUDA_STATUS_H_
#define GNC_COMMON_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"

namespace gnc::cuda {

// CudaStatus: OK for cudaSuccess, else INTERNAL "<file>:<line>: <call>: <name> (<text>)".
// Reading the error also clears the runtime's last (non-sticky) error.
absl::Status CudaStatus(cudaError_t error, const char* call, const char* file, int line);

// RequireCudaDevice: OK when the runtime sees at least one device; otherwise
// FAILED_PRECONDITION saying why (no driver, driver too old, no device), which is what
// --device=auto logs before it falls back to the CPU.
absl::Status RequireCudaDevice();

}  // namespace gnc::cuda

// GNC_CUDA_RETURN_IF_ERROR(expr): evaluates a cudaError_t expression and returns the
// error as a Status from the enclosing function, which must return Status or StatusOr.
#define GNC_CUDA_RETURN_IF_ERROR(expr)                                            \
  do {                                                                            \
    const cudaError_t gnc_cuda_error_ = (expr);                                   \
    if (gnc_cuda_error_ != cudaSuccess) {                                         \
      return ::gnc::cuda::CudaStatus(gnc_cuda_error_, #expr, __FILE__, __LINE__); \
    }                                                                             \
  } while (false)

#endif  // GNC_COMMON_CUDA_CUDA_STATUS_H_
