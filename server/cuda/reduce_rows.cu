// Deterministic row sums of per-block partials: one block per row, each thread sums
// a fixed strided subset in double, then a fixed tree in shared memory.
#include "server/cuda/merge_kernels.h"

namespace gnc::cuda {
namespace {

constexpr int kReduceThreads = 256;

__global__ void __launch_bounds__(kReduceThreads)
    ReduceRowsKernel(const double* __restrict__ in, int cols, double* __restrict__ out) {
  __shared__ double sums[kReduceThreads];
  const double* row = in + static_cast<int64_t>(blockIdx.x) * cols;
  double s = 0;
  for (int c = threadIdx.x; c < cols; c += kReduceThreads) s += row[c];
  sums[threadIdx.x] = s;
  __syncthreads();
  for (int half = kReduceThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) sums[threadIdx.x] += sums[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = sums[0];
}

}  // namespace

cudaError_t LaunchReduceRows(const double* in, int rows, int cols, double* out,
                             cudaStream_t stream) {
  if (in == nullptr || out == nullptr || rows < 1 || cols < 1) return cudaErrorInvalidValue;
  ReduceRowsKernel<<<rows, kReduceThreads, 0, stream>>>(in, cols, out);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
