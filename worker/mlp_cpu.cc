// CPU ComputeBackend: the ReLU MLP with CBLAS (OpenBLAS) GEMMs. Scratch buffers are
// kept between calls, so a steady-state step allocates nothing.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "worker/compute_backend.h"

namespace gnc {
namespace {

// Evaluate runs the forward pass over this many examples at a time.
constexpr int64_t kEvalChunk = 1024;

class CpuComputeBackend final : public ComputeBackend {
 public:
  std::string Name() const override { return "cpu"; }

  absl::StatusOr<double> LossAndGradient(const MlpShape& shape, std::span<const float> params,
                                         std::span<const float> inputs,
                                         std::span<const int32_t> labels,
                                         std::span<float> grad) override {
    if (absl::Status s = CheckMlpArguments(shape, params, inputs, labels); !s.ok()) return s;
    if (grad.size() != params.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("grad has ", grad.size(), " elements, params ", params.size()));
    }
    const int64_t batch = static_cast<int64_t>(labels.size());
    if (batch == 0) return absl::InvalidArgumentError("empty batch");
    Forward(shape, params.data(), inputs.data(), batch);

    // Softmax cross-entropy; delta_ = d(mean loss)/d(logits) = (softmax - onehot) / B.
    const int L = static_cast<int>(shape.widths.size()) - 1;
    const int64_t classes = shape.widths.back();
    const float* logits = acts_[L].data();
    delta_.resize(batch * classes);
    double loss = 0;
    const float inv_batch = 1.0f / static_cast<float>(batch);
    for (int64_t i = 0; i < batch; ++i) {
      const float* z = logits + i * classes;
      float* d = delta_.data() + i * classes;
      const float m = *std::max_element(z, z + classes);
      double sum = 0;
      for (int64_t c = 0; c < classes; ++c) {
        d[c] = std::exp(z[c] - m);
        sum += d[c];
      }
      loss += std::log(sum) + m - z[labels[i]];
      const float inv_sum = static_cast<float>(1.0 / sum);
      for (int64_t c = 0; c < classes; ++c) d[c] *= inv_sum * inv_batch;
      d[labels[i]] -= inv_batch;
    }

    // Backward, last layer first.
    std::vector<int64_t> offsets = Offsets(shape);
    for (int l = L - 1; l >= 0; --l) {
      const int64_t in = shape.widths[l], out = shape.widths[l + 1];
      const float* a_in = l == 0 ? inputs.data() : acts_[l].data();
      float* dw = grad.data() + offsets[l];
      float* db = dw + out * in;
      // dW = delta^T a_in: [out, in].
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, static_cast<int>(out),
                  static_cast<int>(in), static_cast<int>(batch), 1.0f, delta_.data(),
                  static_cast<int>(out), a_in, static_cast<int>(in), 0.0f, dw,
                  static_cast<int>(in));
      std::fill(db, db + out, 0.0f);
      for (int64_t i = 0; i < batch; ++i) {
        const float* d = delta_.data() + i * out;
        for (int64_t o = 0; o < out; ++o) db[o] += d[o];
      }
      if (l == 0) break;
      // delta_prev = (delta W) * relu'(a_in): [batch, in].
      const float* w = params.data() + offsets[l];
      delta_prev_.resize(batch * in);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(batch),
                  static_cast<int>(in), static_cast<int>(out), 1.0f, delta_.data(),
                  static_cast<int>(out), w, static_cast<int>(in), 0.0f, delta_prev_.data(),
                  static_cast<int>(in));
      for (int64_t j = 0; j < batch * in; ++j) {
        if (a_in[j] <= 0.0f) delta_prev_[j] = 0.0f;
      }
      delta_.swap(delta_prev_);
    }
    return loss / static_cast<double>(batch);
  }

  absl::Status Evaluate(const MlpShape& shape, std::span<const float> params,
                        std::span<const float> inputs, std::span<const int32_t> labels,
                        double* loss_sum, int64_t* correct) override {
    if (absl::Status s = CheckMlpArguments(shape, params, inputs, labels); !s.ok()) return s;
    const int L = static_cast<int>(shape.widths.size()) - 1;
    const int64_t classes = shape.widths.back();
    const int64_t total = static_cast<int64_t>(labels.size());
    double loss = 0;
    int64_t right = 0;
    for (int64_t begin = 0; begin < total; begin += kEvalChunk) {
      const int64_t batch = std::min(kEvalChunk, total - begin);
      Forward(shape, params.data(), inputs.data() + begin * shape.widths[0], batch);
      const float* logits = acts_[L].data();
      for (int64_t i = 0; i < batch; ++i) {
        const float* z = logits + i * classes;
        const int64_t arg = std::max_element(z, z + classes) - z;
        const float m = z[arg];
        double sum = 0;
        for (int64_t c = 0; c < classes; ++c) sum += std::exp(static_cast<double>(z[c] - m));
        const int32_t y = labels[begin + i];
        loss += std::log(sum) + m - z[y];
        right += arg == y ? 1 : 0;
      }
    }
    *loss_sum = loss;
    *correct = right;
    return absl::OkStatus();
  }

 private:
  static std::vector<int64_t> Offsets(const MlpShape& shape) {
    std::vector<int64_t> offsets;
    int64_t at = 0;
    for (size_t l = 0; l + 1 < shape.widths.size(); ++l) {
      offsets.push_back(at);
      at += shape.widths[l + 1] * shape.widths[l] + shape.widths[l + 1];
    }
    return offsets;
  }

  // Forward: acts_[l + 1] = layer l's output for l = 0..L-1 (ReLU except the last,
  // which holds the logits). acts_[0] is unused: the input is read in place.
  void Forward(const MlpShape& shape, const float* params, const float* x, int64_t batch) {
    const int L = static_cast<int>(shape.widths.size()) - 1;
    acts_.resize(L + 1);
    int64_t at = 0;
    for (int l = 0; l < L; ++l) {
      const int64_t in = shape.widths[l], out = shape.widths[l + 1];
      const float* w = params + at;
      const float* b = w + out * in;
      at += out * in + out;
      const float* a_in = l == 0 ? x : acts_[l].data();
      std::vector<float>& a_out = acts_[l + 1];
      a_out.resize(batch * out);
      for (int64_t i = 0; i < batch; ++i) std::copy(b, b + out, a_out.data() + i * out);
      // a_out = a_in W^T + b: [batch, out].
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<int>(batch),
                  static_cast<int>(out), static_cast<int>(in), 1.0f, a_in, static_cast<int>(in), w,
                  static_cast<int>(in), 1.0f, a_out.data(), static_cast<int>(out));
      if (l + 1 < L) {
        for (float& v : a_out) v = v > 0.0f ? v : 0.0f;
      }
    }
  }

  std::vector<std::vector<float>> acts_;
  std::vector<float> delta_;
  std::vector<float> delta_prev_;
};

}  // namespace

std::unique_ptr<ComputeBackend> NewCpuComputeBackend() {
  return std::make_unique<CpuComputeBackend>();
}

}  // namespace gnc
