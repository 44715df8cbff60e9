// The CPU CNN against an independent double-precision reference written with direct
// convolution loops (no im2col): loss, finite-difference gradients (also across the
// chunks a large batch is split into), evaluation; the im2col and pooling blocks; the
// layout and the initialisation.
#include "worker/cnn.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "worker/conv_cpu.h"

namespace gnc {
namespace {

// A small CNN whose first conv output (13 rows) is odd, so the floor of the pooling
// is exercised, and whose input is not square.
CnnShape TinyShape() {
  CnnShape s;
  s.height = 17;
  s.width = 16;
  s.channels = {3, 4};
  s.hidden = {5};
  s.classes = 3;
  return s;
}

// Map: an NHWC map of one image, in double.
struct Map {
  int64_t h, w, c;
  std::vector<double> v;
  double& at(int64_t y, int64_t x, int64_t ch) { return v[(y * w + x) * c + ch]; }
  double at(int64_t y, int64_t x, int64_t ch) const { return v[(y * w + x) * c + ch]; }
};

// RefLogits: the logits of one image, straight from the definition in cnn.h.
std::vector<double> RefLogits(const CnnShape& shape, const std::vector<double>& p,
                              const double* image) {
  Map in{shape.height, shape.width, 1,
         std::vector<double>(image, image + shape.height * shape.width)};
  size_t at = 0;
  for (int64_t out_c : shape.channels) {
    const int64_t k = CnnShape::kKernel, oh = in.h - k + 1, ow = in.w - k + 1;
    Map conv{oh, ow, out_c, std::vector<double>(oh * ow * out_c)};
    const size_t bias = at + out_c * k * k * in.c;
    for (int64_t y = 0; y < oh; ++y) {
      for (int64_t x = 0; x < ow; ++x) {
        for (int64_t o = 0; o < out_c; ++o) {
          double s = p[bias + o];
          for (int64_t ky = 0; ky < k; ++ky) {
            for (int64_t kx = 0; kx < k; ++kx) {
              for (int64_t ci = 0; ci < in.c; ++ci) {
                s += p[at + ((o * k + ky) * k + kx) * in.c + ci] * in.at(y + ky, x + kx, ci);
              }
            }
          }
          conv.at(y, x, o) = std::max(s, 0.0);
        }
      }
    }
    at = bias + out_c;
    Map pool{oh / 2, ow / 2, out_c, std::vector<double>((oh / 2) * (ow / 2) * out_c)};
    for (int64_t y = 0; y < pool.h; ++y) {
      for (int64_t x = 0; x < pool.w; ++x) {
        for (int64_t o = 0; o < out_c; ++o) {
          pool.at(y, x, o) =
              std::max({conv.at(2 * y, 2 * x, o), conv.at(2 * y, 2 * x + 1, o),
                        conv.at(2 * y + 1, 2 * x, o), conv.at(2 * y + 1, 2 * x + 1, o)});
        }
      }
    }
    in = std::move(pool);
  }
  std::vector<double> a = in.v;  // (row, column, channel) order
  const MlpShape head = shape.Head();
  for (size_t l = 0; l + 1 < head.widths.size(); ++l) {
    const int64_t n_in = head.widths[l], n_out = head.widths[l + 1];
    std::vector<double> z(n_out);
    for (int64_t o = 0; o < n_out; ++o) {
      double s = p[at + n_out * n_in + o];
      for (int64_t j = 0; j < n_in; ++j) s += p[at + o * n_in + j] * a[j];
      z[o] = l + 2 < head.widths.size() ? std::max(s, 0.0) : s;
    }
    at += n_out * n_in + n_out;
    a = std::move(z);
  }
  return a;
}

double RefCrossEntropy(const std::vector<double>& z, int32_t y) {
  const double m = *std::max_element(z.begin(), z.end());
  double s = 0;
  for (double v : z) s += std::exp(v - m);
  return std::log(s) + m - z[y];
}

double RefLoss(const CnnShape& shape, const std::vector<double>& p, const std::vector<double>& x,
               const std::vector<int32_t>& y) {
  const int64_t dim = shape.height * shape.width;
  double loss = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    loss += RefCrossEntropy(RefLogits(shape, p, x.data() + i * dim), y[i]);
  }
  return loss / static_cast<double>(y.size());
}

struct Problem {
  std::vector<float> params, inputs;
  std::vector<int32_t> labels;
};

Problem MakeProblem(const CnnShape& shape, int64_t batch, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  Problem p;
  p.params = HeInitialParameters(shape.Blocks(), seed);
  for (float& v : p.params) v += 0.05f * u(rng);  // non-zero biases too
  p.inputs.resize(batch * shape.height * shape.width);
  for (float& v : p.inputs) v = 0.5f + 0.5f * u(rng);  // pixels in [0, 1]
  for (int64_t i = 0; i < batch; ++i) {
    p.labels.push_back(static_cast<int32_t>(rng() % shape.classes));
  }
  return p;
}

std::unique_ptr<Model> Cpu(const CnnShape& shape) {
  absl::StatusOr<std::unique_ptr<Model>> m = NewCpuCnn(shape);
  EXPECT_TRUE(m.ok()) << m.status();
  return m.ok() ? std::move(*m) : nullptr;
}

// ExpectGradientMatchesFiniteDifferences: over `indices` of the parameters.
void ExpectGradientMatchesFiniteDifferences(const CnnShape& shape, const Problem& pr,
                                            const std::vector<size_t>& indices) {
  std::unique_ptr<Model> model = Cpu(shape);
  ASSERT_NE(model, nullptr);
  std::vector<float> grad(pr.params.size(), -1.0f);
  absl::StatusOr<double> loss = model->LossAndGradient(pr.params, pr.inputs, pr.labels, grad);
  ASSERT_TRUE(loss.ok()) << loss.status();
  const std::vector<double> p(pr.params.begin(), pr.params.end());
  const std::vector<double> x(pr.inputs.begin(), pr.inputs.end());
  EXPECT_NEAR(*loss, RefLoss(shape, p, x, pr.labels), 1e-5);
  const double h = 1e-6;
  int bad = 0;
  for (size_t j : indices) {
    std::vector<double> plus = p, minus = p;
    plus[j] += h;
    minus[j] -= h;
    const double fd =
        (RefLoss(shape, plus, x, pr.labels) - RefLoss(shape, minus, x, pr.labels)) / (2 * h);
    const double rel = std::abs(grad[j] - fd) / std::max(std::abs(grad[j]) + std::abs(fd), 1e-4);
    if (rel >= 1e-3 && bad++ < 10) {
      ADD_FAILURE() << "parameter " << j << ": model " << grad[j] << ", finite difference " << fd;
    }
  }
  EXPECT_EQ(bad, 0);
}

TEST(CnnCpuTest, EveryGradientElementMatchesFiniteDifferencesOfTheReference) {
  const CnnShape shape = TinyShape();
  ASSERT_EQ(shape.NumParameters(), (3 * 25 + 3) + (4 * 25 * 3 + 4) + (4 * 5 + 5) + (5 * 3 + 3));
  for (uint64_t seed : {1, 2}) {
    SCOPED_TRACE(seed);
    const Problem pr = MakeProblem(shape, /*batch=*/5, seed);
    std::vector<size_t> all(pr.params.size());
    for (size_t j = 0; j < all.size(); ++j) all[j] = j;
    ExpectGradientMatchesFiniteDifferences(shape, pr, all);
  }
}

TEST(CnnCpuTest, BatchSpanningSeveralChunksMatchesFiniteDifferences) {
  const CnnShape shape = TinyShape();
  const Problem pr = MakeProblem(shape, /*batch=*/600, 3);  // chunks of 256, 256, 88
  std::mt19937_64 rng(4);
  std::vector<size_t> some;
  for (int i = 0; i < 24; ++i) some.push_back(rng() % pr.params.size());
  ExpectGradientMatchesFiniteDifferences(shape, pr, some);
}

TEST(CnnCpuTest, DefaultFashionMnistShapeMatchesFiniteDifferencesOnSampledParameters) {
  const CnnShape shape;  // 28x28, 8 and 16 channels, 128 hidden, 10 classes
  const Problem pr = MakeProblem(shape, /*batch=*/3, 5);
  std::mt19937_64 rng(6);
  std::vector<size_t> some;
  // Sample every tensor: conv0, conv1, fc0, fc1 (weights and biases).
  const int64_t conv0 = 8 * 25 + 8, conv1 = 16 * 25 * 8 + 16, fc0 = 128 * 256 + 128;
  for (int64_t begin : {int64_t{0}, conv0, conv0 + conv1, conv0 + conv1 + fc0}) {
    const int64_t end = begin == conv0 + conv1 + fc0 ? shape.NumParameters()
                        : begin == 0                 ? conv0
                        : begin == conv0             ? conv0 + conv1
                                                     : conv0 + conv1 + fc0;
    for (int i = 0; i < 12; ++i) some.push_back(begin + rng() % (end - begin));
    some.push_back(end - 1);  // a bias
  }
  ExpectGradientMatchesFiniteDifferences(shape, pr, some);
}

TEST(CnnCpuTest, EvaluateSumsLossAndCountsHitsOverChunks) {
  const CnnShape shape = TinyShape();
  const Problem pr = MakeProblem(shape, /*batch=*/700, 7);
  std::unique_ptr<Model> model = Cpu(shape);
  double loss_sum = 0;
  int64_t correct = -1;
  ASSERT_TRUE(model->Evaluate(pr.params, pr.inputs, pr.labels, &loss_sum, &correct).ok());
  const std::vector<double> p(pr.params.begin(), pr.params.end());
  double ref_loss = 0;
  int64_t ref_correct = 0;
  const int64_t dim = shape.height * shape.width;
  for (size_t i = 0; i < pr.labels.size(); ++i) {
    std::vector<double> x(pr.inputs.begin() + i * dim, pr.inputs.begin() + (i + 1) * dim);
    const std::vector<double> z = RefLogits(shape, p, x.data());
    ref_loss += RefCrossEntropy(z, pr.labels[i]);
    ref_correct += (std::max_element(z.begin(), z.end()) - z.begin()) == pr.labels[i] ? 1 : 0;
  }
  EXPECT_NEAR(loss_sum, ref_loss, 1e-5 * ref_loss);
  EXPECT_EQ(correct, ref_correct);
  EXPECT_GT(correct, 0);
  EXPECT_LT(correct, 700);
}

TEST(CnnCpuTest, RejectsBadInputAndBadShapes) {
  const CnnShape shape = TinyShape();
  std::unique_ptr<Model> model = Cpu(shape);
  Problem pr = MakeProblem(shape, 3, 8);
  std::vector<float> grad(pr.params.size());
  pr.labels[1] = 3;
  EXPECT_EQ(model->LossAndGradient(pr.params, pr.inputs, pr.labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  pr.labels[1] = 0;
  std::vector<float> short_inputs(pr.inputs.begin(), pr.inputs.end() - 1);
  EXPECT_EQ(model->LossAndGradient(pr.params, short_inputs, pr.labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> short_grad(grad.size() - 1);
  EXPECT_EQ(model->LossAndGradient(pr.params, pr.inputs, pr.labels, short_grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  CnnShape too_small = shape;
  too_small.channels = {3, 4, 5};  // a third block has no room
  EXPECT_EQ(NewCpuCnn(too_small).status().code(), absl::StatusCode::kInvalidArgument);
  CnnShape none = shape;
  none.channels = {};
  EXPECT_EQ(NewCpuCnn(none).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CnnShapeTest, LayoutNamesShapesAndCounts) {
  const CnnShape shape;
  absl::StatusOr<ModelLayout> layout = CnnLayout(shape);
  ASSERT_TRUE(layout.ok()) << layout.status();
  EXPECT_EQ(layout->NumElements(), shape.NumParameters());
  EXPECT_EQ(shape.NumParameters(),
            (8 * 25 + 8) + (16 * 25 * 8 + 16) + (128 * 4 * 4 * 16 + 128) + (10 * 128 + 10));
  ASSERT_EQ(layout->tensors().size(), 8u);
  EXPECT_EQ(layout->tensors()[0].name, "conv0.weight");
  EXPECT_EQ(layout->tensors()[0].shape, (std::vector<int64_t>{8, 5, 5, 1}));
  EXPECT_EQ(layout->tensors()[2].shape, (std::vector<int64_t>{16, 5, 5, 8}));
  EXPECT_EQ(layout->tensors()[4].name, "fc0.weight");
  EXPECT_EQ(layout->tensors()[4].shape, (std::vector<int64_t>{128, 256}));
  EXPECT_EQ(layout->tensors()[7].name, "fc1.bias");
  EXPECT_EQ(CnnName(shape), "cnn 28x28 c5x5x8-p2-c5x5x16-p2-256-128-10");
}

TEST(CnnShapeTest, HeInitialisationPerTensor) {
  const CnnShape shape;
  const std::vector<float> a = HeInitialParameters(shape.Blocks(), 42);
  EXPECT_EQ(a, HeInitialParameters(shape.Blocks(), 42));
  EXPECT_NE(a, HeInitialParameters(shape.Blocks(), 43));
  ASSERT_EQ(static_cast<int64_t>(a.size()), shape.NumParameters());
  // conv1.weight: 3200 draws of N(0, 2 / (25 * 8)); its bias zero.
  const int64_t begin = 8 * 25 + 8, n = 16 * 25 * 8;
  double sq = 0;
  for (int64_t j = begin; j < begin + n; ++j) sq += double{a[j]} * a[j];
  EXPECT_NEAR(std::sqrt(sq / n), std::sqrt(2.0 / 200), 0.05 * std::sqrt(2.0 / 200));
  for (int64_t j = begin + n; j < begin + n + 16; ++j) EXPECT_EQ(a[j], 0.0f);
}

TEST(ConvCpuTest, Col2ImIsTheAdjointOfIm2Col) {
  const int64_t n = 2, h = 9, w = 7, c = 3, k = 5, rows = n * 5 * 3, cols = k * k * c;
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> x(n * h * w * c), col(rows * cols), back(x.size());
  for (float& v : x) v = u(rng);
  std::vector<float> probe(col.size());
  for (float& v : probe) v = u(rng);
  cpu::Im2Col(x.data(), n, h, w, c, k, col.data());
  // Spot check: row (image 1, y 2, x 1), column (ky 3, kx 4, ch 2).
  EXPECT_EQ(col[((1 * 5 + 2) * 3 + 1) * cols + (3 * k + 4) * c + 2],
            x[((1 * h + 2 + 3) * w + 1 + 4) * c + 2]);
  cpu::Col2Im(probe.data(), n, h, w, c, k, back.data());
  double lhs = 0, rhs = 0;
  for (size_t j = 0; j < col.size(); ++j) lhs += double{col[j]} * probe[j];
  for (size_t j = 0; j < x.size(); ++j) rhs += double{x[j]} * back[j];
  EXPECT_NEAR(lhs, rhs, 1e-4 * std::abs(lhs) + 1e-4);
}

TEST(ConvCpuTest, MaxPoolPicksTheFirstMaximumAndRoutesTheGradientThere) {
  // One image 3 x 4 x 1 (the last row is dropped by the floor).
  const std::vector<float> x = {1, 5, 2, 2,  //
                                5, 0, 2, 1,  //
                                9, 9, 9, 9};
  std::vector<float> y(2);
  std::vector<int32_t> arg(2);
  cpu::MaxPool2Forward(x.data(), 1, 3, 4, 1, y.data(), arg.data());
  EXPECT_EQ(y, (std::vector<float>{5, 2}));
  EXPECT_EQ(arg, (std::vector<int32_t>{1, 2}));  // the first 5, the first 2
  std::vector<float> dx(12, -1.0f);
  const std::vector<float> dy = {0.5f, -2.0f};
  cpu::MaxPool2Backward(dy.data(), arg.data(), 1, 3, 4, 1, dx.data());
  EXPECT_EQ(dx, (std::vector<float>{0, 0.5f, -2.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0}));
}

}  // namespace
}  // namespace gnc
