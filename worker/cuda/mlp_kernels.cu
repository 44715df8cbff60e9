// The MLP's element-wise and per-row kernels. The softmax follows the CPU backend
// (worker/mlp_cpu.cc) operation for operation: float exponentials, a double sum, the
// first maximal logit as the prediction.
#include <cfloat>

#include "worker/cuda/mlp_kernels.h"

namespace gnc::cuda {
namespace {

constexpr int kThreads = 256;

int Blocks(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

__global__ void BiasActivationKernel(float* z, const float* bias, int64_t n, int64_t cols,
                                     bool relu) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float x = z[i] + bias[i % cols];
    z[i] = relu ? (x > 0.0f ? x : 0.0f) : x;
  }
}

__global__ void ReluBackwardKernel(float* delta, const float* act, int64_t n) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (act[i] <= 0.0f) delta[i] = 0.0f;
  }
}

__global__ void ColumnSumsKernel(const float* m, int64_t rows, int64_t cols, float* out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0.0f;
  for (int64_t i = 0; i < rows; ++i) s += m[i * cols + j];
  out[j] = s;
}

// One warp per row.
__global__ void SoftmaxCrossEntropyKernel(const float* logits, const int32_t* labels, int64_t rows,
                                          int64_t classes, float inv_batch, float* delta,
                                          double* row_loss, int32_t* row_correct) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;  // whole warps leave together
  const float* z = logits + row * classes;
  float best = -FLT_MAX;
  int64_t arg = classes;
  for (int64_t c = lane; c < classes; c += 32) {
    if (z[c] > best || arg == classes) {
      best = z[c];
      arg = c;
    }
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, best, offset);
    const int64_t other_arg = __shfl_xor_sync(0xffffffffu, arg, offset);
    if (other > best || (other == best && other_arg < arg)) {
      best = other;
      arg = other_arg;
    }
  }
  double sum = 0;
  for (int64_t c = lane; c < classes; c += 32) sum += expf(z[c] - best);
  for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
  const int32_t y = labels[row];
  if (lane == 0) {
    row_loss[row] = log(sum) + best - z[y];
    row_correct[row] = arg == y ? 1 : 0;
  }
  if (delta != nullptr) {
    const float scale = static_cast<float>(1.0 / sum) * inv_batch;
    float* d = delta + row * classes;
    for (int64_t c = lane; c < classes; c += 32) {
      const float p = expf(z[c] - best) * scale;
      d[c] = c == y ? p - inv_batch : p;
    }
  }
}

}  // namespace

cudaError_t LaunchBiasActivation(float* z, const float* bias, int64_t rows, int64_t cols, bool relu,
                                 cudaStream_t stream) {
  if (z == nullptr || bias == nullptr || rows < 0 || cols < 1) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  BiasActivationKernel<<<Blocks(rows * cols), kThreads, 0, stream>>>(z, bias, rows * cols, cols,
                                                                     relu);
  return cudaGetLastError();
}

cudaError_t LaunchReluBackward(float* delta, const float* act, int64_t n, cudaStream_t stream) {
  if (delta == nullptr || act == nullptr || n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  ReluBackwardKernel<<<Blocks(n), kThreads, 0, stream>>>(delta, act, n);
  return cudaGetLastError();
}

cudaError_t LaunchColumnSums(const float* m, int64_t rows, int64_t cols, float* out,
                             cudaStream_t stream) {
  if (m == nullptr || out == nullptr || rows < 0 || cols < 1) return cudaErrorInvalidValue;
  const int64_t blocks = (cols + kThreads - 1) / kThreads;
  ColumnSumsKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(m, rows, cols, out);
  return cudaGetLastError();
}

cudaError_t LaunchSoftmaxCrossEntropy(const float* logits, const int32_t* labels, int64_t rows,
                                      int64_t classes, float inv_batch, float* delta,
                                      double* row_loss, int32_t* row_correct, cudaStream_t stream) {
  if (logits == nullptr || labels == nullptr || row_loss == nullptr || row_correct == nullptr ||
      rows < 0 || classes < 1) {
    return cudaErrorInvalidValue;
  }
  if (rows == 0) return cudaSuccess;
  constexpr int64_t kRowsPerBlock = kThreads / 32;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  SoftmaxCrossEntropyKernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      logits, labels, rows, classes, inv_batch, delta, row_loss, row_correct);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
