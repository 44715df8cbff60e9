// The perturbation cap: rows whose norm exceeds the cap are scaled down in place.
#include "server/cuda/merge_kernels.h"

namespace gnc::cuda {
namespace {

__global__ void __launch_bounds__(kMergeThreads)
    ScaleRowsKernel(float* rows, int64_t stride, int64_t len, const float* scales) {
  const float scale = scales[blockIdx.y];
  if (scale == 1.0f) return;
  float* row = rows + blockIdx.y * stride;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x; j < len;
       j += static_cast<int64_t>(gridDim.x) * kMergeThreads) {
    row[j] *= scale;
  }
}

}  // namespace

cudaError_t LaunchScaleRows(float* rows, int64_t stride, int num, int64_t len, const float* scales,
                            int num_blocks, cudaStream_t stream) {
  if (rows == nullptr || scales == nullptr || num < 1 || num > 65535 || num_blocks < 1 || len < 0 ||
      stride < len) {
    return cudaErrorInvalidValue;
  }
  ScaleRowsKernel<<<dim3(num_blocks, num), kMergeThreads, 0, stream>>>(rows, stride, len, scales);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
