// The CPU merge backend against the naive reference and hand-computed numbers.
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "server/merge_backend.h"
#include "server/noise_rng.h"
#include "tests/unit/reference_gnc.h"

namespace gnc {
namespace {

using testing::RefConfig;
using testing::RefMode;
using testing::RefShard;

TEST(MergeCpuTest, HandComputedTwoWorkers) {
  // d = 2, n = {1, 3}: gbar = (1*g0 + 3*g1) / 4.
  std::vector<float> g0 = {4.0f, -2.0f}, g1 = {0.0f, 2.0f};
  std::vector<float> w = {1.0f, 1.0f}, v = {0.0f, 0.0f};
  std::vector<float> d0(2), d1(2);
  MergeInputs in{{g0, g1}, {1.0, 3.0}, {0, 1}};
  MergeParams p;
  p.mode = SmoothingMode::kGnc;
  p.lr = 0.5;
  p.momentum = 0.9;
  p.gnc_scale = 1.0;
  std::vector<std::span<float>> deltas = {d0, d1};
  MergeStats stats;
  ASSERT_TRUE(NewCpuMergeBackend()->Merge(p, in, w, v, deltas, &stats).ok());
  // gbar = (1, 1); v = gbar; w = 1 - 0.5 * 1 = 0.5.
  EXPECT_FLOAT_EQ(v[0], 1.0f);
  EXPECT_FLOAT_EQ(v[1], 1.0f);
  EXPECT_FLOAT_EQ(w[0], 0.5f);
  EXPECT_FLOAT_EQ(w[1], 0.5f);
  // eps0 = (3, -3), eps1 = (-1, 1); delta = -0.5 * eps.
  EXPECT_FLOAT_EQ(d0[0], -1.5f);
  EXPECT_FLOAT_EQ(d0[1], 1.5f);
  EXPECT_FLOAT_EQ(d1[0], 0.5f);
  EXPECT_FLOAT_EQ(d1[1], -0.5f);
  // A = 2, C = (20 + 4) / 2 = 12, noise = (18 + 2) / 2 = 10, pert = 0.25 * 10.
  EXPECT_DOUBLE_EQ(stats.mean_grad_sqnorm, 2.0);
  EXPECT_DOUBLE_EQ(stats.grad_sqnorm_mean, 12.0);
  EXPECT_DOUBLE_EQ(stats.noise_sqnorm_mean, 10.0);
  EXPECT_NEAR(stats.perturbation_sqnorm, 2.5, 1e-6);
  // Sample-weighted deltas cancel: sum n_k delta_k = 0.
  EXPECT_FLOAT_EQ(1 * d0[0] + 3 * d1[0], 0.0f);
}

struct Case {
  SmoothingMode mode;
  bool nesterov;
  double weight_decay;
  double cap;
  size_t d;
  int k;
};

class MergeCpuRandomTest : public ::testing::TestWithParam<Case> {};

TEST_P(MergeCpuRandomTest, MatchesNaiveReference) {
  const Case c = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> grads(c.k, std::vector<float>(c.d));
  std::map<int, std::vector<double>> rgrads;
  std::map<int, double> rsamples;
  MergeInputs in;
  for (int k = 0; k < c.k; ++k) {
    for (float& x : grads[k]) x = normal(rng) + 0.3f;
    rgrads[k] = std::vector<double>(grads[k].begin(), grads[k].end());
    rsamples[k] = 1 + 7 * k;
  }
  for (int k = 0; k < c.k; ++k) {
    in.grads.emplace_back(grads[k]);
    in.num_samples.push_back(rsamples[k]);
    in.ranks.push_back(k);
  }
  std::vector<float> w(c.d), v(c.d);
  for (size_t i = 0; i < c.d; ++i) {
    w[i] = normal(rng);
    v[i] = 0.1f * normal(rng);
  }
  RefShard ref(std::vector<double>(w.begin(), w.end()));
  ref.v.assign(v.begin(), v.end());
  std::vector<std::vector<float>> delta(c.k, std::vector<float>(c.d, 0.0f));
  std::vector<std::span<float>> dspans(delta.begin(), delta.end());
  MergeParams p;
  p.mode = c.mode;
  p.lr = 0.05;
  p.momentum = 0.9;
  p.nesterov = c.nesterov;
  p.weight_decay = c.weight_decay;
  p.gnc_scale = 0.7;
  p.max_perturbation_norm = c.cap;
  MergeStats stats;
  ASSERT_TRUE(NewCpuMergeBackend()->Merge(p, in, w, v, dspans, &stats).ok());

  RefConfig rc;
  rc.mode = c.mode == SmoothingMode::kNone ? RefMode::kNone : RefMode::kGnc;
  rc.rho = 0.7;
  rc.nesterov = c.nesterov;
  rc.weight_decay = c.weight_decay;
  rc.max_norm = c.cap;
  ref.Step(rc, 0.05, rgrads, rsamples);
  for (size_t i = 0; i < c.d; ++i) {
    ASSERT_NEAR(w[i], ref.w[i], 1e-5) << i;
    ASSERT_NEAR(v[i], ref.v[i], 1e-5) << i;
  }
  if (c.mode == SmoothingMode::kGnc) {
    for (int k = 0; k < c.k; ++k) {
      for (size_t i = 0; i < c.d; ++i) ASSERT_NEAR(delta[k][i], ref.delta[k][i], 1e-6) << k;
    }
  }
  // Norms against a direct double computation.
  double total = 0;
  for (auto& [r, n] : rsamples) total += n;
  double a = 0, cc = 0, noise = 0;
  for (size_t i = 0; i < c.d; ++i) {
    double gb = 0;
    for (int k = 0; k < c.k; ++k) gb += rsamples[k] / total * rgrads[k][i];
    a += gb * gb;
    for (int k = 0; k < c.k; ++k) {
      cc += rgrads[k][i] * rgrads[k][i] / c.k;
      noise += (rgrads[k][i] - gb) * (rgrads[k][i] - gb) / c.k;
    }
  }
  EXPECT_NEAR(stats.mean_grad_sqnorm, a, 1e-4 * a);
  EXPECT_NEAR(stats.grad_sqnorm_mean, cc, 1e-4 * cc);
  EXPECT_NEAR(stats.noise_sqnorm_mean, noise, 1e-4 * noise);
  if (c.cap > 0 && c.mode != SmoothingMode::kNone) {
    for (int k = 0; k < c.k; ++k) {
      double n2 = 0;
      for (float x : delta[k]) n2 += double{x} * x;
      EXPECT_LE(std::sqrt(n2), c.cap * (1 + 1e-5));
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MergeCpuRandomTest,
    ::testing::Values(Case{SmoothingMode::kGnc, false, 0.0, 0.0, 5000, 3},
                      Case{SmoothingMode::kGnc, true, 5e-4, 0.0, 2048, 4},
                      Case{SmoothingMode::kGnc, false, 1e-3, 0.01, 4099, 5},
                      Case{SmoothingMode::kNone, true, 0.0, 0.0, 777, 2},
                      Case{SmoothingMode::kGnc, false, 0.0, 0.0, 1, 1}));

TEST(MergeCpuTest, IsotropicMatchesVarianceAndIsUncorrelatedWithNoise) {
  const size_t d = 50000;
  const int num = 4;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> grads(num, std::vector<float>(d));
  MergeInputs in;
  for (int k = 0; k < num; ++k) {
    for (size_t i = 0; i < d; ++i) grads[k][i] = (1.0f + k) * normal(rng) + (i % 7) * 0.1f;
    in.grads.emplace_back(grads[k]);
    in.num_samples.push_back(10);
    in.ranks.push_back(k);
  }
  std::vector<float> w(d, 0.0f), v(d, 0.0f);
  std::vector<std::vector<float>> delta(num, std::vector<float>(d));
  std::vector<std::span<float>> dspans(delta.begin(), delta.end());
  MergeParams p;
  p.mode = SmoothingMode::kIsotropic;
  p.lr = 0.1;
  p.gnc_scale = 2.0;
  p.seed = 99;
  p.noise_step = 5;
  p.global_offset = 1000;
  MergeStats stats;
  ASSERT_TRUE(NewCpuMergeBackend()->Merge(p, in, w, v, dspans, &stats).ok());

  // sigma^2 = rho^2 lr^2 mean_k ||eps_k||^2 / d.
  std::vector<double> gbar(d, 0.0);
  for (int k = 0; k < num; ++k) {
    for (size_t i = 0; i < d; ++i) gbar[i] += grads[k][i] / num;
  }
  double noise = 0;
  for (int k = 0; k < num; ++k) {
    for (size_t i = 0; i < d; ++i) noise += std::pow(grads[k][i] - gbar[i], 2) / num;
  }
  const double sigma2 = 4.0 * 0.01 * noise / d;
  double sum = 0, sum2 = 0;
  for (int k = 0; k < num; ++k) {
    for (float x : delta[k]) {
      sum += x;
      sum2 += double{x} * x;
    }
  }
  const double n = static_cast<double>(num * d);
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  // Sample variance of 200k normals: relative standard error sqrt(2/n) ~ 0.3 %.
  EXPECT_NEAR(var / sigma2, 1.0, 0.02);
  EXPECT_NEAR(mean / std::sqrt(sigma2), 0.0, 0.02);
  // Uncorrelated with each worker's own noise eps_k: |r| well below 5 / sqrt(d).
  for (int k = 0; k < num; ++k) {
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < d; ++i) {
      const double e = grads[k][i] - gbar[i];
      sxy += e * delta[k][i];
      sxx += e * e;
      syy += double{delta[k][i]} * delta[k][i];
    }
    EXPECT_LT(std::abs(sxy / std::sqrt(sxx * syy)), 5.0 / std::sqrt(double(d))) << k;
  }
  // Workers draw different noise; the stream is a pure function of its key.
  EXPECT_NE(delta[0][0], delta[1][0]);
  const double sigma = std::sqrt(sigma2);
  EXPECT_NEAR(delta[2][17], sigma * StandardNormal(NoiseKey(99, 5, 2), 1017), 1e-4 * sigma);
}

TEST(NoiseRngTest, StandardNormalMoments) {
  const uint64_t key = NoiseKey(1, 2, 3);
  double s = 0, s2 = 0, s4 = 0;
  const int n = 400000;
  for (int i = 0; i < n; ++i) {
    const double z = StandardNormal(key, i);
    s += z;
    s2 += z * z;
    s4 += z * z * z * z;
  }
  EXPECT_NEAR(s / n, 0.0, 0.01);
  EXPECT_NEAR(s2 / n, 1.0, 0.01);
  EXPECT_NEAR(s4 / n, 3.0, 0.05);  // Gaussian kurtosis
  EXPECT_NE(NoiseKey(1, 2, 3), NoiseKey(1, 2, 4));
  EXPECT_NE(NoiseKey(1, 2, 3), NoiseKey(1, 3, 3));
}

}  // namespace
}  // namespace gnc
