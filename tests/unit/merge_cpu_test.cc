// The CPU merge backend against the naive reference and hand-computed numbers; the
// same results for any thread count; bf16 points; the float noise generator against
// a double-precision Box-Muller of the same uniforms.
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "common/bf16.h"
#include "gtest/gtest.h"
#include "server/merge_backend.h"
#include "server/noise_rng.h"
#include "tests/unit/reference_gnc.h"

namespace gnc {
namespace {

using testing::RefConfig;
using testing::RefMode;
using testing::RefShard;

// Outcome: one merge's outputs, owned.
struct Outcome {
  std::vector<float> w, v;
  std::vector<std::vector<float>> x;       // float32 points
  std::vector<std::vector<uint16_t>> xb;   // bf16 points, when asked for
  MergeStats stats;
  absl::Status status;
};

// RunMerge: a merge of `grads` on a backend of `threads` threads, points in float32 (or
// bf16 for the ranks in `bf16_ranks`).
Outcome RunMerge(const MergeParams& p, const std::vector<std::vector<float>>& grads,
                 const std::vector<double>& samples, std::vector<float> w, std::vector<float> v,
                 int threads = 1, std::vector<bool> bf16 = {}) {
  const size_t d = w.size();
  MergeInputs in;
  for (size_t k = 0; k < grads.size(); ++k) {
    in.grads.emplace_back(grads[k]);
    in.num_samples.push_back(samples[k]);
    in.ranks.push_back(static_cast<int32_t>(k));
  }
  bf16.resize(grads.size(), false);
  Outcome o;
  o.w = w;
  o.v = v;
  o.x.assign(grads.size(), std::vector<float>(d));
  o.xb.assign(grads.size(), std::vector<uint16_t>(d));
  std::vector<PointOut> points(grads.size());
  for (size_t k = 0; k < grads.size(); ++k) {
    if (bf16[k]) {
      points[k].bf16 = o.xb[k];
    } else {
      points[k].f32 = o.x[k];
    }
  }
  o.status = NewCpuMergeBackend(threads)->MergeInto(p, in, w, v, o.w, o.v, points, &o.stats);
  return o;
}

template <typename T>
bool Same(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

TEST(MergeCpuTest, HandComputedTwoWorkers) {
  // d = 2, n = {1, 3}: gbar = (1*g0 + 3*g1) / 4.
  MergeParams p;
  p.mode = SmoothingMode::kGnc;
  p.lr = 0.5;
  p.momentum = 0.9;
  p.gnc_scale = 1.0;
  Outcome o = RunMerge(p, {{4.0f, -2.0f}, {0.0f, 2.0f}}, {1.0, 3.0}, {1.0f, 1.0f}, {0, 0});
  ASSERT_TRUE(o.status.ok()) << o.status;
  // gbar = (1, 1); v = gbar; w = 1 - 0.5 * 1 = 0.5.
  EXPECT_FLOAT_EQ(o.v[0], 1.0f);
  EXPECT_FLOAT_EQ(o.v[1], 1.0f);
  EXPECT_FLOAT_EQ(o.w[0], 0.5f);
  EXPECT_FLOAT_EQ(o.w[1], 0.5f);
  // eps0 = (3, -3), eps1 = (-1, 1); delta = -0.5 * eps; x = w + delta.
  EXPECT_FLOAT_EQ(o.x[0][0], 0.5f - 1.5f);
  EXPECT_FLOAT_EQ(o.x[0][1], 0.5f + 1.5f);
  EXPECT_FLOAT_EQ(o.x[1][0], 0.5f + 0.5f);
  EXPECT_FLOAT_EQ(o.x[1][1], 0.5f - 0.5f);
  // A = 2, C = (20 + 4) / 2 = 12, noise = (18 + 2) / 2 = 10, pert = 0.25 * 10.
  EXPECT_DOUBLE_EQ(o.stats.mean_grad_sqnorm, 2.0);
  EXPECT_DOUBLE_EQ(o.stats.grad_sqnorm_mean, 12.0);
  EXPECT_DOUBLE_EQ(o.stats.noise_sqnorm_mean, 10.0);
  EXPECT_NEAR(o.stats.perturbation_sqnorm, 2.5, 1e-6);
  EXPECT_TRUE(o.stats.finite);
  // Sample-weighted deltas cancel: sum n_k delta_k = 0, so the points centre on w.
  EXPECT_FLOAT_EQ(1 * (o.x[0][0] - o.w[0]) + 3 * (o.x[1][0] - o.w[0]), 0.0f);
}

TEST(MergeCpuTest, NoisePassLeavesWAndVAndPerturbsW) {
  // The hand-computed case above as a noise pass (fresh noise timing): no update, and
  // the points are w + delta with the same deltas.
  MergeParams p;
  p.mode = SmoothingMode::kGnc;
  p.lr = 0.5;
  p.momentum = 0.9;
  p.apply_update = false;
  Outcome o = RunMerge(p, {{4.0f, -2.0f}, {0.0f, 2.0f}}, {1.0, 3.0}, {1.0f, 1.0f}, {0.25f, 0});
  ASSERT_TRUE(o.status.ok()) << o.status;
  EXPECT_TRUE(Same(o.w, std::vector<float>{1.0f, 1.0f}));
  EXPECT_TRUE(Same(o.v, std::vector<float>{0.25f, 0.0f}));
  EXPECT_FLOAT_EQ(o.x[0][0], 1.0f - 1.5f);
  EXPECT_FLOAT_EQ(o.x[0][1], 1.0f + 1.5f);
  EXPECT_FLOAT_EQ(o.x[1][0], 1.0f + 0.5f);
  EXPECT_FLOAT_EQ(o.x[1][1], 1.0f - 0.5f);
  EXPECT_DOUBLE_EQ(o.stats.mean_grad_sqnorm, 2.0);
  EXPECT_DOUBLE_EQ(o.stats.noise_sqnorm_mean, 10.0);
  EXPECT_TRUE(o.stats.finite);
}

TEST(MergeCpuTest, NonFiniteUpdateIsReported) {
  MergeParams p;
  p.mode = SmoothingMode::kNone;
  p.lr = 1;
  const float big = std::numeric_limits<float>::max();
  Outcome o = RunMerge(p, {{big, 1}, {big, 1}}, {1, 1}, {-big, 0}, {big, 0});
  ASSERT_TRUE(o.status.ok());
  EXPECT_FALSE(o.stats.finite);
}

TEST(MergeCpuTest, RefusesInconsistentInputs) {
  MergeParams p;
  p.mode = SmoothingMode::kGnc;
  auto backend = NewCpuMergeBackend();
  std::vector<float> g(4), w(4), v(4), x(4);
  MergeInputs in{{g}, {1.0}, {0}};
  MergeStats stats;
  EXPECT_EQ(backend->Merge(p, in, w, v, {}, &stats).code(), absl::StatusCode::kInvalidArgument);
  std::vector<PointOut> wrong(1);
  wrong[0].f32 = std::span<float>(x.data(), 3);
  EXPECT_EQ(backend->Merge(p, in, w, v, wrong, &stats).code(), absl::StatusCode::kInvalidArgument);
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

TEST_P(MergeCpuRandomTest, MatchesNaiveReferenceForAnyThreadCount) {
  const Case c = GetParam();
  std::mt19937 rng(1234);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> grads(c.k, std::vector<float>(c.d));
  std::map<int, std::vector<double>> rgrads;
  std::map<int, double> rsamples;
  std::vector<double> samples;
  for (int k = 0; k < c.k; ++k) {
    for (float& x : grads[k]) x = normal(rng) + 0.3f;
    rgrads[k] = std::vector<double>(grads[k].begin(), grads[k].end());
    rsamples[k] = 1 + 7 * k;
    samples.push_back(rsamples[k]);
  }
  std::vector<float> w(c.d), v(c.d);
  for (size_t i = 0; i < c.d; ++i) {
    w[i] = normal(rng);
    v[i] = 0.1f * normal(rng);
  }
  RefShard ref(std::vector<double>(w.begin(), w.end()));
  ref.v.assign(v.begin(), v.end());
  MergeParams p;
  p.mode = c.mode;
  p.lr = 0.05;
  p.momentum = 0.9;
  p.nesterov = c.nesterov;
  p.weight_decay = c.weight_decay;
  p.gnc_scale = 0.7;
  p.max_perturbation_norm = c.cap;
  const Outcome o = RunMerge(p, grads, samples, w, v);
  ASSERT_TRUE(o.status.ok()) << o.status;

  RefConfig rc;
  rc.mode = c.mode == SmoothingMode::kNone ? RefMode::kNone : RefMode::kGnc;
  rc.rho = 0.7;
  rc.nesterov = c.nesterov;
  rc.weight_decay = c.weight_decay;
  rc.max_norm = c.cap;
  ref.Step(rc, 0.05, rgrads, rsamples);
  for (size_t i = 0; i < c.d; ++i) {
    ASSERT_NEAR(o.w[i], ref.w[i], 1e-5) << i;
    ASSERT_NEAR(o.v[i], ref.v[i], 1e-5) << i;
  }
  if (c.mode == SmoothingMode::kGnc) {
    for (int k = 0; k < c.k; ++k) {
      const std::vector<double> x = ref.EvalPoint(k);
      for (size_t i = 0; i < c.d; ++i) ASSERT_NEAR(o.x[k][i], x[i], 2e-6) << k << " " << i;
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
  EXPECT_NEAR(o.stats.mean_grad_sqnorm, a, 1e-4 * a);
  EXPECT_NEAR(o.stats.grad_sqnorm_mean, cc, 1e-4 * cc);
  EXPECT_NEAR(o.stats.noise_sqnorm_mean, noise, 1e-4 * noise);
  if (c.cap > 0 && c.mode != SmoothingMode::kNone) {
    for (int k = 0; k < c.k; ++k) {
      double n2 = 0;
      for (size_t i = 0; i < c.d; ++i) n2 += std::pow(double{o.x[k][i]} - o.w[i], 2);
      EXPECT_LE(std::sqrt(n2), c.cap * (1 + 1e-3));
    }
  }
  // Any thread count gives the same bits.
  for (int threads : {2, 3, 7}) {
    const Outcome t = RunMerge(p, grads, samples, w, v, threads);
    ASSERT_TRUE(t.status.ok());
    EXPECT_TRUE(Same(t.w, o.w)) << threads;
    EXPECT_TRUE(Same(t.v, o.v)) << threads;
    for (int k = 0; k < c.k; ++k) EXPECT_TRUE(Same(t.x[k], o.x[k])) << threads << " " << k;
    EXPECT_EQ(t.stats.mean_grad_sqnorm, o.stats.mean_grad_sqnorm) << threads;
    EXPECT_EQ(t.stats.noise_sqnorm, o.stats.noise_sqnorm) << threads;
    EXPECT_EQ(t.stats.perturbation_sqnorm, o.stats.perturbation_sqnorm) << threads;
  }
  // A bf16 worker gets its float point rounded to nearest even, element by element.
  if (c.mode != SmoothingMode::kNone) {
    std::vector<bool> bf16(c.k, false);
    bf16[0] = true;
    const Outcome b = RunMerge(p, grads, samples, w, v, 2, bf16);
    ASSERT_TRUE(b.status.ok());
    for (size_t i = 0; i < c.d; ++i) ASSERT_EQ(b.xb[0][i], FloatToBf16(o.x[0][i])) << i;
    if (c.k > 1) EXPECT_TRUE(Same(b.x[1], o.x[1]));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Modes, MergeCpuRandomTest,
    ::testing::Values(Case{SmoothingMode::kGnc, false, 0.0, 0.0, 5000, 3},
                      Case{SmoothingMode::kGnc, true, 5e-4, 0.0, 2048, 4},
                      Case{SmoothingMode::kGnc, false, 1e-3, 0.01, 4099, 5},
                      Case{SmoothingMode::kNone, true, 0.0, 0.0, 777, 2},
                      Case{SmoothingMode::kIsotropic, false, 0.0, 0.0, 9001, 3},
                      Case{SmoothingMode::kIsotropic, false, 0.0, 0.005, 6000, 2},
                      Case{SmoothingMode::kGnc, false, 0.0, 0.0, 1, 1},
                      // Points of 16 MiB and more go out through non-temporal stores.
                      Case{SmoothingMode::kGnc, false, 0.0, 0.0, (1 << 20) + 37, 4}));

TEST(MergeCpuTest, IsotropicMatchesVarianceAndIsUncorrelatedWithNoise) {
  const size_t d = 50000;
  const int num = 4;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> grads(num, std::vector<float>(d));
  for (int k = 0; k < num; ++k) {
    for (size_t i = 0; i < d; ++i) grads[k][i] = (1.0f + k) * normal(rng) + (i % 7) * 0.1f;
  }
  MergeParams p;
  p.mode = SmoothingMode::kIsotropic;
  p.lr = 0.1;
  p.gnc_scale = 2.0;
  p.seed = 99;
  p.noise_step = 5;
  p.global_offset = 1001;  // odd: the first element is half of a pair
  // w = 0 with no momentum and lr * g small enough? No: w moves; compare x - w.
  const Outcome o = RunMerge(p, grads, std::vector<double>(num, 10.0), std::vector<float>(d, 0),
                             std::vector<float>(d, 0), 2);
  ASSERT_TRUE(o.status.ok()) << o.status;
  std::vector<std::vector<double>> delta(num, std::vector<double>(d));
  for (int k = 0; k < num; ++k) {
    for (size_t i = 0; i < d; ++i) delta[k][i] = double{o.x[k][i]} - o.w[i];
  }

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
    for (double x : delta[k]) {
      sum += x;
      sum2 += x * x;
    }
  }
  const double n = static_cast<double>(num * d);
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  // Sample variance of 200k normals: relative standard error sqrt(2/n) ~ 0.3 %.
  EXPECT_NEAR(var / sigma2, 1.0, 0.02);
  EXPECT_NEAR(mean / std::sqrt(sigma2), 0.0, 0.02);
  EXPECT_NEAR(o.stats.perturbation_sqnorm / (sigma2 * d), 1.0, 0.02);
  // Uncorrelated with each worker's own noise eps_k: |r| well below 5 / sqrt(d).
  for (int k = 0; k < num; ++k) {
    double sxy = 0, sxx = 0, syy = 0;
    for (size_t i = 0; i < d; ++i) {
      const double e = grads[k][i] - gbar[i];
      sxy += e * delta[k][i];
      sxx += e * e;
      syy += delta[k][i] * delta[k][i];
    }
    EXPECT_LT(std::abs(sxy / std::sqrt(sxx * syy)), 5.0 / std::sqrt(double(d))) << k;
  }
  // Workers draw different noise; the stream is a pure function of its key and of the
  // element's global index, whatever the block or parity.
  EXPECT_NE(delta[0][0], delta[1][0]);
  const float sigma = static_cast<float>(std::sqrt(sigma2));
  for (size_t i : {size_t{0}, size_t{17}, size_t{2048}, d - 1}) {
    EXPECT_NEAR(delta[2][i], sigma * StandardNormal(NoiseKey(99, 5, 2), 1001 + i),
                1e-5 * sigma + 1e-7)
        << i;
  }
}

TEST(NoiseRngTest, MatchesDoubleBoxMullerOfTheSameUniforms) {
  const uint64_t key = NoiseKey(3, 4, 5);
  double worst = 0;
  for (int64_t pair = 0; pair < 200000; ++pair) {
    const noise_internal::Uniforms u = noise_internal::PairUniforms(key, pair);
    const float u1 = u.u1, u2 = u.u2;
    const NormalPair z = NormalPairOf(key, pair);
    const float z0 = z.z0, z1 = z.z1;
    const double r = std::sqrt(-2.0 * std::log(double{u1}));
    const double t = 2 * M_PI * double{u2};
    worst = std::max({worst, std::abs(z0 - r * std::cos(t)) / (1 + r),
                      std::abs(z1 - r * std::sin(t)) / (1 + r)});
    ASSERT_GT(u1, 0.0f);
    ASSERT_LE(u1, 1.0f);
    ASSERT_GE(u2, 0.0f);
    ASSERT_LT(u2, 1.0f);
  }
  EXPECT_LT(worst, 2e-6);
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
