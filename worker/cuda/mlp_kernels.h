// Host launchers of the MLP's small kernels (mlp_kernels.cu); the GEMMs are cuBLAS.
// Declares no device code, so plain C++ includes it. Matrices are row-major float32.
// Each launcher checks its sizes (cudaErrorInvalidValue), queues the kernel on
// `stream` and returns the launch error.
#ifndef GNC_WORKER_CUDA_MLP_KERNELS_H_
#define GNC_WORKER_CUDA_MLP_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace gnc::cuda {

// LaunchBiasActivation: z[i][j] += bias[j], then max(z, 0) when `relu`.
cudaError_t LaunchBiasActivation(float* z, const float* bias, int64_t rows, int64_t cols, bool relu,
                                 cudaStream_t stream);

// LaunchReluBackward: delta[j] = 0 where act[j] <= 0 (act is the ReLU's output).
cudaError_t LaunchReluBackward(float* delta, const float* act, int64_t n, cudaStream_t stream);

// LaunchColumnSums: out[j] = sum_i m[i][j] (the bias gradient), in row order.
cudaError_t LaunchColumnSums(const float* m, int64_t rows, int64_t cols, float* out,
                             cudaStream_t stream);

// LaunchSoftmaxCrossEntropy: per row i of `logits` [rows, classes]:
// row_loss[i] = log(sum_c exp(z_c)) - z[labels[i]] (double), row_correct[i] = 1 when
// the first maximal logit is the label, else 0; and, when `delta` is not null,
// delta[i] = (softmax(z) - onehot(labels[i])) * inv_batch, the gradient of the mean loss.
// REQUIRES: labels in [0, classes).
cudaError_t LaunchSoftmaxCrossEntropy(const float* logits, const int32_t* labels, int64_t rows,
                                      int64_t classes, float inv_batch, float* delta,
                                      double* row_loss, int32_t* row_correct, cudaStream_t stream);

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_MLP_KERNELS_H_
