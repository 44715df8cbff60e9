#include "worker/dense_cpu.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "worker/mlp.h"

namespace gnc::cpu {

void DenseForward(const float* x, int64_t rows, int64_t in, const float* w, const float* b,
                  int64_t out, bool relu, float* y) {
  for (int64_t i = 0; i < rows; ++i) std::copy(b, b + out, y + i * out);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(rows),
              static_cast<int>(out), static_cast<int>(in), 1.0f, x, static_cast<int>(in), w,
              static_cast<int>(in), 1.0f, y, static_cast<int>(out));
  if (relu) {
    for (int64_t j = 0; j < rows * out; ++j) y[j] = y[j] > 0.0f ? y[j] : 0.0f;
  }
}

void DenseBackward(const float* dy, const float* x, int64_t rows, int64_t in, const float* w,
                   int64_t out, bool accumulate, float* dw, float* db, float* dx) {
  cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out), static_cast<int>(in),
              static_cast<int>(rows), 1.0f, dy, static_cast<int>(out), x, static_cast<int>(in),
              accumulate ? 1.0f : 0.0f, dw, static_cast<int>(in));
  if (!accumulate) std::fill(db, db + out, 0.0f);
  for (int64_t i = 0; i < rows; ++i) {
    const float* d = dy + i * out;
    for (int64_t o = 0; o < out; ++o) db[o] += d[o];
  }
  if (dx == nullptr) return;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(rows),
              static_cast<int>(in), static_cast<int>(out), 1.0f, dy, static_cast<int>(out), w,
              static_cast<int>(in), 0.0f, dx, static_cast<int>(in));
}

void ReluBackward(float* d, const float* act, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    if (act[j] <= 0.0f) d[j] = 0.0f;
  }
}

double SoftmaxCrossEntropy(const float* logits, const int32_t* labels, int64_t rows,
                           int64_t classes, float scale, float* delta, int64_t* correct) {
  double loss = 0;
  int64_t right = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const float* z = logits + i * classes;
    const int64_t arg = std::max_element(z, z + classes) - z;
    const float m = z[arg];
    double sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += std::exp(z[c] - m);
    const int32_t y = labels[i];
    loss += std::log(sum) + m - z[y];
    right += arg == y ? 1 : 0;
    if (delta == nullptr) continue;
    float* d = delta + i * classes;
    const float inv_sum = static_cast<float>(1.0 / sum) * scale;
    for (int64_t c = 0; c < classes; ++c) d[c] = std::exp(z[c] - m) * inv_sum;
    d[y] -= scale;
  }
  if (correct != nullptr) *correct = right;
  return loss;
}

const float* DenseStack::Forward(std::span<const int64_t> widths, const float* params,
                                 const float* x, int64_t rows) {
  const size_t layers = widths.size() - 1;
  acts_.resize(layers + 1);
  int64_t at = 0;
  for (size_t l = 0; l < layers; ++l) {
    const int64_t in = widths[l], out = widths[l + 1];
    acts_[l + 1].resize(static_cast<size_t>(rows * out));
    DenseForward(l == 0 ? x : acts_[l].data(), rows, in, params + at, params + at + out * in, out,
                 l + 1 < layers, acts_[l + 1].data());
    at += out * in + out;
  }
  return acts_[layers].data();
}

void DenseStack::Backward(std::span<const int64_t> widths, const float* params, const float* x,
                          int64_t rows, const float* delta, bool accumulate, float* grad,
                          float* dx) {
  const size_t layers = widths.size() - 1;
  const std::vector<int64_t> offsets = DenseLayerOffsets(widths);
  const float* d = delta;  // d(loss)/d(layer l's pre-activation output)
  int next = 0;            // the scratch buffer layer l writes d(loss)/d(input) into
  for (size_t l = layers; l-- > 0;) {
    const int64_t in = widths[l], out = widths[l + 1];
    float* dw = grad + offsets[l];
    float* d_in = dx;
    if (l > 0) {
      scratch_[next].resize(static_cast<size_t>(rows * in));
      d_in = scratch_[next].data();
    }
    DenseBackward(d, l == 0 ? x : acts_[l].data(), rows, in, params + offsets[l], out, accumulate,
                  dw, dw + out * in, d_in);
    if (l == 0) break;
    ReluBackward(d_in, acts_[l].data(), rows * in);
    d = d_in;
    next ^= 1;
  }
}

}  // namespace gnc::cpu
