// The evaluation points x_k = w + delta_k, formed on the device in each contributor's
// wire encoding, so that they are downloaded once, straight into the point buffers.
#include "server/cuda/merge_kernels.h"

namespace gnc::cuda {
namespace {

// Bf16: round to nearest even, NaN kept quiet: common/bf16.h's FloatToBf16, bit for bit.
__device__ __forceinline__ uint16_t Bf16(float f) {
  const uint32_t bits = __float_as_uint(f);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
}

__global__ void __launch_bounds__(kMergeThreads) FormPointsKernel(const FormPointsArgs a) {
  const int k = blockIdx.y;
  float* row = a.deltas + k * a.stride;
  uint16_t* row16 = a.bf16_points + k * a.stride;
  const bool bf16 = a.bf16[k] != 0;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x; j < a.d;
       j += static_cast<int64_t>(gridDim.x) * kMergeThreads) {
    const float x = a.w[j] + row[j];  // one addition: rounds as the CPU's does
    if (bf16) {
      row16[j] = Bf16(x);
    } else {
      row[j] = x;
    }
  }
}

}  // namespace

cudaError_t LaunchFormPoints(const FormPointsArgs& a, cudaStream_t stream) {
  if (a.deltas == nullptr || a.bf16_points == nullptr || a.w == nullptr || a.bf16 == nullptr ||
      a.num < 1 || a.num > 65535 || a.num_blocks < 1 || a.d < 0 || a.stride < a.d) {
    return cudaErrorInvalidValue;
  }
  FormPointsKernel<<<dim3(a.num_blocks, a.num), kMergeThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
