// Host launchers of the CNN's kernels (one per .cu file here), the CUDA counterparts
// of worker/conv_cpu.h on NHWC float32 maps, which is their reference. Declares no
// device code, so plain C++ includes it. Each launcher checks its sizes
// (cudaErrorInvalidValue), queues the kernel on `stream` and returns the launch
// error. Pool choices are offsets within one image, as in conv_cpu.h.
#ifndef GNC_WORKER_CUDA_CNN_KERNELS_H_
#define GNC_WORKER_CUDA_CNN_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace gnc::cuda {

// LaunchIm2Col: col [n * oh * ow, k * k * c] of x [n, h, w, c] (cpu::Im2Col).
cudaError_t LaunchIm2Col(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
                         float* col, cudaStream_t stream);

// LaunchCol2Im: x [n, h, w, c] = the adjoint of Im2Col applied to col (cpu::Col2Im),
// one thread per element of x summing its patches in (ky, kx) order.
cudaError_t LaunchCol2Im(const float* col, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k,
                         float* x, cudaStream_t stream);

// LaunchMaxPool2Forward: y [n, h/2, w/2, c] and arg (cpu::MaxPool2Forward).
cudaError_t LaunchMaxPool2Forward(const float* x, int64_t n, int64_t h, int64_t w, int64_t c,
                                  float* y, int32_t* arg, cudaStream_t stream);

// LaunchMaxPool2Backward: dx [n, h, w, c] from dy and arg (cpu::MaxPool2Backward),
// one thread per element of dx.
cudaError_t LaunchMaxPool2Backward(const float* dy, const int32_t* arg, int64_t n, int64_t h,
                                   int64_t w, int64_t c, float* dx, cudaStream_t stream);

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_CNN_KERNELS_H_
