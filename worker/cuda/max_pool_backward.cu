// The 2x2 max-pool's gradient: each input element takes its window's gradient when it
// was the window's choice, else 0 (a gather, so every element is written once).
#include "worker/cuda/cnn_kernels.h"
#include "worker/cuda/kernel_grid.h"

namespace gnc::cuda {
namespace {

__global__ void MaxPool2BackwardKernel(const float* dy, const int32_t* arg, int64_t h, int64_t w,
                                       int64_t c, int64_t ph, int64_t pw, int64_t total,
                                       float* dx) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t in_image = e % (h * w * c), i = e / (h * w * c);
    const int64_t ch = in_image % c, xx = (in_image / c) % w, yy = in_image / (c * w);
    float g = 0.0f;
    if (yy / 2 < ph && xx / 2 < pw) {
      const int64_t j = ((i * ph + yy / 2) * pw + xx / 2) * c + ch;
      if (arg[j] == in_image) g = dy[j];
    }
    dx[e] = g;
  }
}

}  // namespace

cudaError_t LaunchMaxPool2Backward(const float* dy, const int32_t* arg, int64_t n, int64_t h,
                                   int64_t w, int64_t c, float* dx, cudaStream_t stream) {
  if (dy == nullptr || arg == nullptr || dx == nullptr || n < 0 || h < 2 || w < 2 || c < 1) {
    return cudaErrorInvalidValue;
  }
  const int64_t total = n * h * w * c;
  if (total == 0) return cudaSuccess;
  MaxPool2BackwardKernel<<<GridBlocks(total), kThreadsPerBlock, 0, stream>>>(
      dy, arg, h, w, c, h / 2, w / 2, total, dx);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
