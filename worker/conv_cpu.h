// CPU building blocks of the CNN (worker/cnn.h) on NHWC float32 maps, and the
// reference the CUDA kernels under worker/cuda/ are tested against. Plain functions on
// caller-owned buffers.
#ifndef GNC_WORKER_CONV_CPU_H_
#define GNC_WORKER_CONV_CPU_H_

#include <cstdint>

namespace gnc::cpu {

// Im2Col: for n maps x [n, h, w, c] and a k x k window (stride 1, no padding), col
// [n * oh * ow, k * k * c] with oh = h - k + 1, ow = w - k + 1: row (i, y, x) holds
// x[i, y + ky, x + kx, ch] at column (ky * k + kx) * c + ch.
void Im2Col(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, float* col);

// Col2Im: the adjoint of Im2Col: x[i, y, x, ch] = sum of the col entries Im2Col
// copies it to (x is overwritten).
void Col2Im(const float* col, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, float* x);

// MaxPool2Forward: y [n, h / 2, w / 2, c] (floor) = max over each 2 x 2 window of x
// [n, h, w, c]; arg gets, per element of y, the offset within its image (y * w + x) *
// c + ch of the window's first maximal element, in the order (0,0) (0,1) (1,0) (1,1).
void MaxPool2Forward(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, float* y,
                     int32_t* arg);

// MaxPool2Backward: dx [n, h, w, c] = dy scattered to the positions in arg, 0
// elsewhere (dx is overwritten).
void MaxPool2Backward(const float* dy, const int32_t* arg, int64_t n, int64_t h, int64_t w,
                      int64_t c, float* dx);

}  // namespace gnc::cpu

#endif  // GNC_WORKER_CONV_CPU_H_
