// The isotropic control's perturbation: sigma times the counter-based normal draws of
// server/noise_rng.h, the same function the CPU reference calls, so both backends
// produce the same delta_k element by element. One grid row (blockIdx.y) per
// contributor; each block also sums its squares in double.
#include "server/cuda/merge_kernels.h"
#include "server/noise_rng.h"

namespace gnc::cuda {
namespace {

__global__ void __launch_bounds__(kMergeThreads) IsotropicNoiseKernel(const IsotropicNoiseArgs a) {
  __shared__ double sums[kMergeThreads];
  const int k = blockIdx.y;
  const uint64_t key = a.keys[k];
  float* out = a.deltas + k * a.stride;
  double s = 0;
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * kMergeThreads + threadIdx.x; j < a.d;
       j += static_cast<int64_t>(gridDim.x) * kMergeThreads) {
    const float x = __fmul_rn(a.sigma, StandardNormal(key, a.global_offset + j));
    __stcs(&out[j], x);
    s += static_cast<double>(x) * x;
  }
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = kMergeThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) a.partials[static_cast<int64_t>(k) * gridDim.x + blockIdx.x] = sums[0];
}

}  // namespace

cudaError_t LaunchIsotropicNoise(const IsotropicNoiseArgs& a, cudaStream_t stream) {
  if (a.deltas == nullptr || a.keys == nullptr || a.partials == nullptr || a.num < 1 ||
      a.num > 65535 || a.num_blocks < 1 || a.d < 0 || a.stride < a.d) {
    return cudaErrorInvalidValue;
  }
  IsotropicNoiseKernel<<<dim3(a.num_blocks, a.num), kMergeThreads, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
