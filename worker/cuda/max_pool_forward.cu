// 2x2 max-pool of stride 2 (floor), NHWC, remembering the first maximal element.
#include "worker/cuda/cnn_kernels.h"
#include "worker/cuda/kernel_grid.h"

namespace gnc::cuda {
namespace {

__global__ void MaxPool2ForwardKernel(const float* x, int64_t h, int64_t w, int64_t c, int64_t ph,
                                      int64_t pw, int64_t total, float* y, int32_t* arg) {
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t ch = e % c, px = (e / c) % pw, py = (e / (c * pw)) % ph, i = e / (c * pw * ph);
    const float* img = x + i * h * w * c;
    int64_t best = ((2 * py) * w + 2 * px) * c + ch;
    for (int d = 1; d < 4; ++d) {
      const int64_t at = ((2 * py + d / 2) * w + 2 * px + d % 2) * c + ch;
      if (img[at] > img[best]) best = at;
    }
    y[e] = img[best];
    arg[e] = static_cast<int32_t>(best);
  }
}

}  // namespace

cudaError_t LaunchMaxPool2Forward(const float* x, int64_t n, int64_t h, int64_t w, int64_t c,
                                  float* y, int32_t* arg, cudaStream_t stream) {
  if (x == nullptr || y == nullptr || arg == nullptr || n < 0 || h < 2 || w < 2 || c < 1 ||
      h * w * c > INT32_MAX) {
    return cudaErrorInvalidValue;
  }
  const int64_t ph = h / 2, pw = w / 2, total = n * ph * pw * c;
  if (total == 0) return cudaSuccess;
  MaxPool2ForwardKernel<<<GridBlocks(total), kThreadsPerBlock, 0, stream>>>(x, h, w, c, ph, pw,
                                                                            total, y, arg);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
