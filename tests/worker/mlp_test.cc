// The CPU MLP against an independent double-precision reference written with plain
// loops: loss, finite-difference gradients, evaluation; plus the initialisation.
#include "worker/mlp.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "worker/trainer.h"

namespace gnc {
namespace {

// RefLogits: logits of every example, in double.
std::vector<std::vector<double>> RefLogits(const MlpShape& shape, const std::vector<double>& p,
                                           const std::vector<double>& x, int64_t batch) {
  std::vector<std::vector<double>> out;
  for (int64_t i = 0; i < batch; ++i) {
    std::vector<double> a(x.begin() + i * shape.widths[0], x.begin() + (i + 1) * shape.widths[0]);
    size_t at = 0;
    for (size_t l = 0; l + 1 < shape.widths.size(); ++l) {
      const int64_t in = shape.widths[l], n_out = shape.widths[l + 1];
      std::vector<double> z(n_out);
      for (int64_t o = 0; o < n_out; ++o) {
        double s = p[at + n_out * in + o];  // bias
        for (int64_t k = 0; k < in; ++k) s += p[at + o * in + k] * a[k];
        z[o] = (l + 2 < shape.widths.size()) ? std::max(s, 0.0) : s;
      }
      at += n_out * in + n_out;
      a = std::move(z);
    }
    out.push_back(std::move(a));
  }
  return out;
}

double RefCrossEntropy(const std::vector<double>& z, int32_t y) {
  const double m = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double v : z) s += std::exp(v - m);
  return std::log(s) + m - z[y];
}

double RefLoss(const MlpShape& shape, const std::vector<double>& p, const std::vector<double>& x,
               const std::vector<int32_t>& y) {
  const auto logits = RefLogits(shape, p, x, static_cast<int64_t>(y.size()));
  double loss = 0;
  for (size_t i = 0; i < y.size(); ++i) loss += RefCrossEntropy(logits[i], y[i]);
  return loss / static_cast<double>(y.size());
}

const MlpShape kTinyShape{{6, 5, 4, 3}};

struct Problem {
  MlpShape shape;
  std::vector<float> params;
  std::vector<float> inputs;
  std::vector<int32_t> labels;
};

Problem TinyProblem(int64_t batch, uint64_t seed) {
  Problem p;
  p.shape = kTinyShape;
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  p.params = HeInitialParameters(p.shape, seed);
  for (float& v : p.params) v += 0.1f * u(rng);  // non-zero biases too
  p.inputs.resize(batch * p.shape.widths[0]);
  for (float& v : p.inputs) v = u(rng);
  for (int64_t i = 0; i < batch; ++i) p.labels.push_back(static_cast<int32_t>(rng() % 3));
  return p;
}

std::vector<double> ToDouble(const std::vector<float>& v) { return {v.begin(), v.end()}; }

TEST(MlpCpuTest, GradientMatchesFiniteDifferencesOfTheReference) {
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(kTinyShape);
  ASSERT_TRUE(made.ok()) << made.status();
  Model* backend = made->get();
  for (uint64_t seed : {1, 2, 3}) {
    Problem pr = TinyProblem(/*batch=*/7, seed);
    std::vector<float> grad(pr.params.size(), -1.0f);
    absl::StatusOr<double> loss = backend->LossAndGradient(pr.params, pr.inputs, pr.labels, grad);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const std::vector<double> p = ToDouble(pr.params), x = ToDouble(pr.inputs);
    EXPECT_NEAR(*loss, RefLoss(pr.shape, p, x, pr.labels), 1e-5);

    const double h = 1e-6;
    for (size_t j = 0; j < p.size(); ++j) {
      std::vector<double> plus = p, minus = p;
      plus[j] += h;
      minus[j] -= h;
      const double fd =
          (RefLoss(pr.shape, plus, x, pr.labels) - RefLoss(pr.shape, minus, x, pr.labels)) /
          (2 * h);
      const double rel = std::abs(grad[j] - fd) / std::max(std::abs(grad[j]) + std::abs(fd), 1e-4);
      EXPECT_LT(rel, 1e-3) << "seed " << seed << " parameter " << j << ": backend " << grad[j]
                           << ", finite difference " << fd;
    }
  }
}

TEST(MlpCpuTest, LossIsStableForHugeLogits) {
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(kTinyShape);
  ASSERT_TRUE(made.ok()) << made.status();
  Model* backend = made->get();
  Problem pr = TinyProblem(/*batch=*/5, 7);
  // Scale the last layer so the logits reach the thousands: exp() would overflow.
  const int64_t last = pr.shape.NumParameters() - (3 * 4 + 3);
  for (size_t j = last; j < pr.params.size(); ++j) pr.params[j] *= 5000.0f;
  std::vector<float> grad(pr.params.size());
  absl::StatusOr<double> loss = backend->LossAndGradient(pr.params, pr.inputs, pr.labels, grad);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(std::isfinite(*loss));
  EXPECT_NEAR(*loss, RefLoss(pr.shape, ToDouble(pr.params), ToDouble(pr.inputs), pr.labels),
              1e-3 * std::max(1.0, *loss));
  for (float g : grad) ASSERT_TRUE(std::isfinite(g));
}

TEST(MlpCpuTest, EvaluateCountsArgmaxAndSumsLoss) {
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(kTinyShape);
  ASSERT_TRUE(made.ok()) << made.status();
  Model* backend = made->get();
  // More examples than one evaluation chunk, to cover the chunking.
  Problem pr = TinyProblem(/*batch=*/2500, 11);
  double loss_sum = 0;
  int64_t correct = 0;
  ASSERT_TRUE(backend->Evaluate(pr.params, pr.inputs, pr.labels, &loss_sum, &correct).ok());
  const auto logits = RefLogits(pr.shape, ToDouble(pr.params), ToDouble(pr.inputs), 2500);
  double ref_loss = 0;
  int64_t ref_correct = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    ref_loss += RefCrossEntropy(logits[i], pr.labels[i]);
    const auto& z = logits[i];
    ref_correct += (std::max_element(z.begin(), z.end()) - z.begin()) == pr.labels[i] ? 1 : 0;
  }
  EXPECT_NEAR(loss_sum, ref_loss, 1e-4 * ref_loss);
  EXPECT_EQ(correct, ref_correct);
  EXPECT_GT(correct, 0);
  EXPECT_LT(correct, 2500);
}

TEST(MlpCpuTest, RejectsBadInput) {
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(kTinyShape);
  ASSERT_TRUE(made.ok()) << made.status();
  Model* backend = made->get();
  Problem pr = TinyProblem(/*batch=*/3, 5);
  std::vector<float> grad(pr.params.size());
  std::vector<int32_t> bad_labels = {0, 3, 1};  // 3 classes: 3 is out of range
  EXPECT_EQ(backend->LossAndGradient(pr.params, pr.inputs, bad_labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> short_grad(pr.params.size() - 1);
  EXPECT_EQ(backend->LossAndGradient(pr.params, pr.inputs, pr.labels, short_grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> short_inputs(pr.inputs.begin(), pr.inputs.end() - 1);
  EXPECT_EQ(backend->LossAndGradient(pr.params, short_inputs, pr.labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MlpShapeTest, CountsAndLayout) {
  MlpShape shape{{784, 256, 128, 10}};
  EXPECT_EQ(shape.NumParameters(), 784 * 256 + 256 + 256 * 128 + 128 + 128 * 10 + 10);
  absl::StatusOr<ModelLayout> layout = MlpLayout(shape);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->NumElements(), shape.NumParameters());
  ASSERT_EQ(layout->tensors().size(), 6u);
  EXPECT_EQ(layout->tensors()[2].name, "layer1.weight");
  EXPECT_EQ(layout->tensors()[2].shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(layout->Offset(1), 784 * 256);
  EXPECT_FALSE(MlpLayout(MlpShape{{784}}).ok());
}

TEST(HeInitTest, DeterministicPerSeedWithHeScaleAndZeroBiases) {
  MlpShape shape{{784, 256, 10}};
  const std::vector<float> a = HeInitialParameters(shape, 42);
  EXPECT_EQ(a, HeInitialParameters(shape, 42));
  EXPECT_NE(a, HeInitialParameters(shape, 43));
  const int64_t w0 = 784 * 256;
  double sum = 0, sq = 0;
  for (int64_t j = 0; j < w0; ++j) {
    sum += a[j];
    sq += double{a[j]} * a[j];
  }
  const double mean = sum / w0, stddev = std::sqrt(sq / w0 - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(stddev, std::sqrt(2.0 / 784), 0.01 * std::sqrt(2.0 / 784));
  for (int64_t j = w0; j < w0 + 256; ++j) EXPECT_EQ(a[j], 0.0f);
  double sq1 = 0;
  for (int64_t j = w0 + 256; j < w0 + 256 + 2560; ++j) sq1 += double{a[j]} * a[j];
  EXPECT_NEAR(std::sqrt(sq1 / 2560), std::sqrt(2.0 / 256), 0.05 * std::sqrt(2.0 / 256));
}

TEST(CudaBackendTest, UnavailableIsFailedPrecondition) {
  absl::StatusOr<std::unique_ptr<Model>> cuda = NewCudaMlp(kTinyShape);
  if (cuda.ok()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace gnc
