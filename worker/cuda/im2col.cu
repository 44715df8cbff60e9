// im2col for the CNN's 5x5 convolutions (stride 1, no padding), NHWC.
#include "worker/cuda/cnn_kernels.h"
#include "worker/cuda/kernel_grid.h"

namespace gnc::cuda {
namespace {

// One thread per element of col: row (i, y, x), column (ky, kx, ch).
__global__ void Im2ColKernel(const float* x, int64_t h, int64_t w, int64_t c, int64_t k, int64_t oh,
                             int64_t ow, int64_t total, float* col) {
  const int64_t row_len = k * k * c;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = e / row_len, j = e % row_len;
    const int64_t i = row / (oh * ow), y = (row / ow) % oh, xx = row % ow;
    const int64_t ky = j / (k * c), kx = (j / c) % k, ch = j % c;
    col[e] = x[((i * h + y + ky) * w + xx + kx) * c + ch];
  }
}

}  // namespace

cudaError_t LaunchIm2Col(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
                         float* col, cudaStream_t stream) {
  if (x == nullptr || col == nullptr || n < 0 || c < 1 || k < 1 || h < k || w < k) {
    return cudaErrorInvalidValue;
  }
  const int64_t oh = h - k + 1, ow = w - k + 1, total = n * oh * ow * k * k * c;
  if (total == 0) return cudaSuccess;
  Im2ColKernel<<<GridBlocks(total), kThreadsPerBlock, 0, stream>>>(x, h, w, c, k, oh, ow, total,
                                                                   col);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
