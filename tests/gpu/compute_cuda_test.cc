// The CUDA MLP against a naive CPU reference written here (loops in double):
// forward loss, every gradient element, evaluation loss and accuracy, bad input.
// Every case but the availability check skips without a CUDA device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/mlp.h"

namespace gnc {
namespace {

// Reference: loss (mean or, with `grad` null, summed), gradient, hits and the number
// of rows whose top two logits are too close for float to order them reliably.
struct Reference {
  double loss = 0;
  std::vector<double> grad;
  int64_t correct = 0;
  int64_t ambiguous = 0;
};

Reference Naive(const std::vector<int64_t>& widths, const std::vector<float>& params,
                const std::vector<float>& inputs, const std::vector<int32_t>& labels) {
  const size_t layers = widths.size() - 1;
  const int64_t batch = static_cast<int64_t>(labels.size());
  std::vector<size_t> offset(layers);
  size_t at = 0;
  for (size_t l = 0; l < layers; ++l) {
    offset[l] = at;
    at += widths[l + 1] * widths[l] + widths[l + 1];
  }
  Reference r;
  r.grad.assign(at, 0.0);
  for (int64_t i = 0; i < batch; ++i) {
    // Forward, keeping every layer's output.
    std::vector<std::vector<double>> a(layers + 1);
    a[0].assign(inputs.begin() + i * widths[0], inputs.begin() + (i + 1) * widths[0]);
    for (size_t l = 0; l < layers; ++l) {
      const int64_t in = widths[l], out = widths[l + 1];
      a[l + 1].assign(out, 0.0);
      for (int64_t o = 0; o < out; ++o) {
        double z = params[offset[l] + out * in + o];
        for (int64_t j = 0; j < in; ++j) z += params[offset[l] + o * in + j] * a[l][j];
        a[l + 1][o] = l + 1 < layers ? std::max(z, 0.0) : z;
      }
    }
    const std::vector<double>& z = a[layers];
    const int64_t classes = widths.back();
    const int64_t arg = std::max_element(z.begin(), z.end()) - z.begin();
    std::vector<double> sorted = z;
    std::sort(sorted.rbegin(), sorted.rend());
    if (classes > 1 && sorted[0] - sorted[1] < 1e-4) ++r.ambiguous;
    r.correct += arg == labels[i] ? 1 : 0;
    double sum = 0;
    for (double v : z) sum += std::exp(v - sorted[0]);
    r.loss += std::log(sum) + sorted[0] - z[labels[i]];
    // Backward of the mean loss.
    std::vector<double> delta(classes);
    for (int64_t c = 0; c < classes; ++c) {
      delta[c] = (std::exp(z[c] - sorted[0]) / sum - (c == labels[i] ? 1.0 : 0.0)) / batch;
    }
    for (size_t l = layers; l-- > 0;) {
      const int64_t in = widths[l], out = widths[l + 1];
      std::vector<double> prev(in, 0.0);
      for (int64_t o = 0; o < out; ++o) {
        for (int64_t j = 0; j < in; ++j) {
          r.grad[offset[l] + o * in + j] += delta[o] * a[l][j];
          prev[j] += delta[o] * params[offset[l] + o * in + j];
        }
        r.grad[offset[l] + out * in + o] += delta[o];
      }
      for (int64_t j = 0; j < in; ++j) {
        if (l > 0 && a[l][j] <= 0) prev[j] = 0;
      }
      delta = std::move(prev);
    }
  }
  return r;
}

struct Problem {
  MlpShape shape;
  std::vector<float> params, inputs;
  std::vector<int32_t> labels;
};

Problem MakeProblem(std::vector<int64_t> widths, int64_t batch, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Problem p;
  p.shape.widths = widths;
  for (size_t l = 0; l + 1 < widths.size(); ++l) {
    const float scale = std::sqrt(2.0f / widths[l]);
    for (int64_t i = 0; i < widths[l + 1] * widths[l]; ++i) p.params.push_back(scale * normal(rng));
    for (int64_t i = 0; i < widths[l + 1]; ++i) p.params.push_back(0.1f * normal(rng));
  }
  for (int64_t i = 0; i < batch * widths[0]; ++i) p.inputs.push_back(normal(rng));
  std::uniform_int_distribution<int32_t> label(0, static_cast<int32_t>(widths.back() - 1));
  for (int64_t i = 0; i < batch; ++i) p.labels.push_back(label(rng));
  return p;
}

class CudaComputeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Model>> b = NewCudaMlp(MlpShape{{2, 2}});
    if (!b.ok()) {
      GTEST_SKIP() << "no CUDA device, CUDA MLP not tested: " << b.status().message();
    }
  }

  // Cuda: the CUDA MLP of `shape`, kept for the rest of the test.
  Model& Cuda(const MlpShape& shape) {
    absl::StatusOr<std::unique_ptr<Model>> b = NewCudaMlp(shape);
    EXPECT_TRUE(b.ok()) << b.status();
    cuda_ = std::move(*b);
    return *cuda_;
  }

  void ExpectMatchesReference(const Problem& p) {
    std::vector<float> grad(p.params.size(), -1.0f);
    absl::StatusOr<double> loss = Cuda(p.shape).LossAndGradient(p.params, p.inputs, p.labels, grad);
    ASSERT_TRUE(loss.ok()) << loss.status();
    const Reference ref = Naive(p.shape.widths, p.params, p.inputs, p.labels);
    const double batch = static_cast<double>(p.labels.size());
    EXPECT_NEAR(*loss, ref.loss / batch, 1e-5 * std::max(1.0, ref.loss / batch));
    double scale = 0;
    for (double g : ref.grad) scale = std::max(scale, std::abs(g));
    size_t bad = 0, first = 0;
    for (size_t j = 0; j < grad.size(); ++j) {
      if (!(std::abs(grad[j] - ref.grad[j]) <= 1e-4 * scale + 1e-7)) {
        if (bad++ == 0) first = j;
      }
    }
    EXPECT_EQ(bad, 0u) << "gradient elements off; first " << first << ": got " << grad[first]
                       << ", want " << ref.grad[first] << " (scale " << scale << ")";
  }

  std::unique_ptr<Model> cuda_;
};

TEST(CudaComputeAvailabilityTest, OpensWithDeviceElseFailedPrecondition) {
  int count = 0;
  const bool has_device = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  absl::StatusOr<std::unique_ptr<Model>> b = NewCudaMlp(MlpShape{{4, 3}});
  if (has_device) {
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->Device().rfind("cuda:", 0), 0u) << (*b)->Device();
  } else {
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
    EXPECT_NE(b.status().message().find("cudaGetDeviceCount"), std::string::npos) << b.status();
  }
}

TEST_F(CudaComputeTest, SmallMlpLossAndGradient) {
  ExpectMatchesReference(MakeProblem({7, 5, 4, 3}, 6, 1));
}

TEST_F(CudaComputeTest, FashionMnistShapeLossAndGradient) {
  ExpectMatchesReference(MakeProblem({784, 256, 128, 10}, 64, 2));
}

TEST_F(CudaComputeTest, SingleLayerAndOddSizes) {
  ExpectMatchesReference(MakeProblem({33, 37}, 1, 3));
  ExpectMatchesReference(MakeProblem({129, 65, 41}, 17, 4));
}

TEST_F(CudaComputeTest, BatchSizeChangesBetweenCalls) {
  for (int64_t batch : {6, 100, 3}) {
    SCOPED_TRACE(batch);
    ExpectMatchesReference(MakeProblem({20, 16, 12, 5}, batch, static_cast<uint32_t>(batch)));
  }
}

TEST_F(CudaComputeTest, EvaluateSumsLossAndCountsHitsOverChunks) {
  const Problem p = MakeProblem({20, 16, 12, 5}, 2500, 5);  // three chunks of <= 1024
  double loss_sum = 0;
  int64_t correct = -1;
  ASSERT_TRUE(Cuda(p.shape).Evaluate(p.params, p.inputs, p.labels, &loss_sum, &correct).ok());
  const Reference ref = Naive(p.shape.widths, p.params, p.inputs, p.labels);
  EXPECT_NEAR(loss_sum, ref.loss, 1e-5 * ref.loss);
  EXPECT_NEAR(static_cast<double>(correct), static_cast<double>(ref.correct),
              static_cast<double>(ref.ambiguous));
  EXPECT_GT(correct, 0);
}

TEST_F(CudaComputeTest, RefusesBadInput) {
  Problem p = MakeProblem({7, 5, 3}, 4, 6);
  Model& cuda = Cuda(p.shape);
  std::vector<float> grad(p.params.size());
  p.labels[2] = 3;  // classes are 0..2
  EXPECT_EQ(cuda.LossAndGradient(p.params, p.inputs, p.labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  p.labels[2] = 0;
  std::vector<float> short_params(p.params.begin(), p.params.end() - 1);
  EXPECT_EQ(cuda.LossAndGradient(short_params, p.inputs, p.labels, grad).status().code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<float> short_inputs(p.inputs.begin(), p.inputs.end() - 1);
  double loss = 0;
  int64_t correct = 0;
  EXPECT_EQ(cuda.Evaluate(p.params, short_inputs, p.labels, &loss, &correct).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gnc
