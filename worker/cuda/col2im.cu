// col2im, the adjoint of im2col: each element of the map gathers the patch entries
// that copied it, so no two threads write one element and the sum order is fixed.
#include "worker/cuda/cnn_kernels.h"
#include "worker/cuda/kernel_grid.h"

namespace gnc::cuda {
namespace {

__global__ void Col2ImKernel(const float* col, int64_t h, int64_t w, int64_t c, int64_t k,
                             int64_t oh, int64_t ow, int64_t total, float* x) {
  const int64_t row_len = k * k * c;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ch = e % c, xx = (e / c) % w, yy = (e / (c * w)) % h, i = e / (c * w * h);
    float s = 0.0f;
    for (int64_t ky = 0; ky < k; ++ky) {
      const int64_t y = yy - ky;
      if (y < 0 || y >= oh) continue;
      for (int64_t kx = 0; kx < k; ++kx) {
        const int64_t x0 = xx - kx;
        if (x0 < 0 || x0 >= ow) continue;
        s += col[((i * oh + y) * ow + x0) * row_len + (ky * k + kx) * c + ch];
      }
    }
    x[e] = s;
  }
}

}  // namespace

cudaError_t LaunchCol2Im(const float* col, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
                         float* x, cudaStream_t stream) {
  if (col == nullptr || x == nullptr || n < 0 || c < 1 || k < 1 || h < k || w < k) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = n * h * w * c;
  if (total == 0) return cudaSuccess;
  Col2ImKernel<<<GridBlocks(total), kThreadsPerBlock, 0, stream>>>(col, h, w, c, k, h - k + 1,
                                                                   w - k + 1, total, x);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
