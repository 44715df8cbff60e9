#include "worker/conv_cpu.h"

#include <algorithm>
#include <cstdint>

namespace gnc::cpu {

void Im2Col(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, float* col) {
  const int64_t oh = h - k + 1, ow = w - k + 1, row = k * k * c;
  for (int64_t i = 0; i < n; ++i) {
    const float* img = x + i * h * w * c;
    for (int64_t y = 0; y < oh; ++y) {
      for (int64_t xx = 0; xx < ow; ++xx) {
        float* out = col + ((i * oh + y) * ow + xx) * row;
        for (int64_t ky = 0; ky < k; ++ky) {
          // One kernel row: k * c contiguous input values.
          const float* in = img + ((y + ky) * w + xx) * c;
          std::copy(in, in + k * c, out + ky * k * c);
        }
      }
    }
  }
}

void Col2Im(const float* col, int64_t n, int64_t h, int64_t w, int64_t c, int64_t k, float* x) {
  const int64_t oh = h - k + 1, ow = w - k + 1, row = k * k * c;
  std::fill(x, x + n * h * w * c, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    float* img = x + i * h * w * c;
    for (int64_t y = 0; y < oh; ++y) {
      for (int64_t xx = 0; xx < ow; ++xx) {
        const float* in = col + ((i * oh + y) * ow + xx) * row;
        for (int64_t ky = 0; ky < k; ++ky) {
          float* out = img + ((y + ky) * w + xx) * c;
          const float* src = in + ky * k * c;
          for (int64_t j = 0; j < k * c; ++j) out[j] += src[j];
        }
      }
    }
  }
}

void MaxPool2Forward(const float* x, int64_t n, int64_t h, int64_t w, int64_t c, float* y,
                     int32_t* arg) {
  const int64_t ph = h / 2, pw = w / 2;
  for (int64_t i = 0; i < n; ++i) {
    const float* img = x + i * h * w * c;
    for (int64_t py = 0; py < ph; ++py) {
      for (int64_t px = 0; px < pw; ++px) {
        for (int64_t ch = 0; ch < c; ++ch) {
          int64_t best = ((2 * py) * w + 2 * px) * c + ch;
          for (int64_t d = 1; d < 4; ++d) {
            const int64_t at = ((2 * py + d / 2) * w + 2 * px + d % 2) * c + ch;
            if (img[at] > img[best]) best = at;
          }
          const int64_t o = ((i * ph + py) * pw + px) * c + ch;
          y[o] = img[best];
          arg[o] = static_cast<int32_t>(best);
        }
      }
    }
  }
}

void MaxPool2Backward(const float* dy, const int32_t* arg, int64_t n, int64_t h, int64_t w,
                      int64_t c, float* dx) {
  const int64_t pooled = (h / 2) * (w / 2) * c;
  std::fill(dx, dx + n * h * w * c, 0.0f);
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < pooled; ++j)
      dx[i * h * w * c + arg[i * pooled + j]] = dy[i * pooled + j];
  }
}

}  // namespace gnc::cpu
