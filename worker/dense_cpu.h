// CPU building blocks shared by the built-in models: fully connected layers on
// row-major float32 matrices with CBLAS (OpenBLAS) GEMMs, ReLU, and softmax
// cross-entropy. Plain functions on caller-owned buffers; no allocation.
#ifndef GNC_WORKER_DENSE_CPU_H_
#define GNC_WORKER_DENSE_CPU_H_

#include <cstdint>
#include <span>
#include <vector>

namespace gnc::cpu {

// DenseForward: y[rows, out] = x[rows, in] W^T + b, W [out, in]; then max(y, 0) when
// `relu`.
void DenseForward(const float* x, int64_t rows, int64_t in, const float* w, const float* b,
                  int64_t out, bool relu, float* y);

// DenseBackward: given dy = d(loss)/d(y) [rows, out] of DenseForward (before any
// ReLU), dW = dy^T x [out, in] and db = column sums of dy, written or, with
// `accumulate`, added into dw/db; and dx = dy W [rows, in] when dx is not null.
void DenseBackward(const float* dy, const float* x, int64_t rows, int64_t in, const float* w,
                   int64_t out, bool accumulate, float* dw, float* db, float* dx);

// ReluBackward: d[j] = 0 where act[j] <= 0 (act is the ReLU's output).
void ReluBackward(float* d, const float* act, int64_t n);

// SoftmaxCrossEntropy: per row i of logits [rows, classes], the loss
// log(sum_c exp(z_c)) - z[labels[i]] (float exponentials, double sum, as the CUDA
// kernel), summed and returned; `correct` gets the number of rows whose first maximal
// logit is the label; when delta is not null, delta[i] = (softmax(z_i) -
// onehot(labels[i])) * scale, the gradient of the loss summed over rows times scale.
double SoftmaxCrossEntropy(const float* logits, const int32_t* labels, int64_t rows,
                           int64_t classes, float scale, float* delta, int64_t* correct);

// EvaluateInChunks: Model::Evaluate over `chunk` examples at a time: `logits(x, m)`
// returns the logits of the m examples at x (valid until its next call); sums the
// cross-entropy and counts the hits.
template <typename LogitsFn>
void EvaluateInChunks(const float* inputs, const int32_t* labels, int64_t total, int64_t input_size,
                      int64_t classes, int64_t chunk, LogitsFn logits, double* loss_sum,
                      int64_t* correct) {
  double loss = 0;
  int64_t right = 0;
  for (int64_t begin = 0; begin < total; begin += chunk) {
    const int64_t m = total - begin < chunk ? total - begin : chunk;
    int64_t hits = 0;
    loss += SoftmaxCrossEntropy(logits(inputs + begin * input_size, m), labels + begin, m, classes,
                                1.0f, nullptr, &hits);
    right += hits;
  }
  *loss_sum = loss;
  *correct = right;
}

// DenseStack: fully connected layers of widths {in, hidden..., classes} with ReLU on
// all but the last, parameters in MlpShape's layout (W_0, b_0, W_1, b_1, ...). Keeps
// the activations of the last Forward for Backward; scratch is reused between calls.
class DenseStack {
 public:
  // Forward: the logits [rows, classes] of x [rows, in], valid until the next call.
  const float* Forward(std::span<const int64_t> widths, const float* params, const float* x,
                       int64_t rows);
  // Backward: after Forward(widths, params, x, rows); delta [rows, classes] holds
  // d(loss)/d(logits) (left unchanged). Writes (or with `accumulate` adds) the
  // parameter gradient into grad, and d(loss)/d(x) into dx when dx is not null
  // (dx is not masked: x is the caller's).
  void Backward(std::span<const int64_t> widths, const float* params, const float* x, int64_t rows,
                const float* delta, bool accumulate, float* grad, float* dx);

 private:
  std::vector<std::vector<float>> acts_;  // acts_[l + 1]: layer l's output
  std::vector<float> scratch_[2];
};

}  // namespace gnc::cpu

#endif  // GNC_WORKER_DENSE_CPU_H_
