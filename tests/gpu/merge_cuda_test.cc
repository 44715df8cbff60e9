// The CUDA merge backend against the CPU reference (server/merge_cpu.cc, compiled
// into this binary): every mode, with and without Nesterov, weight decay and the cap,
// unequal sample counts, sizes off the block size; the isotropic noise element-wise
// (same generator) and statistically. Every case skips without a CUDA device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "gtest/gtest.h"
#include "server/device.h"
#include "server/merge_backend.h"

namespace gnc {
namespace {

// Step: one merge's inputs and state, owned; Merge() runs it on a backend.
struct Step {
  MergeParams params;
  std::vector<std::vector<float>> grads;
  std::vector<double> num_samples;
  std::vector<int32_t> ranks;
  std::vector<float> w, v;
};

struct Result {
  absl::Status status;
  std::vector<float> w, v;
  std::vector<std::vector<float>> deltas;
  MergeStats stats;
};

constexpr float kUntouched = 7.25f;  // deltas' initial value: mode none must keep it

Result Merge(MergeBackend& backend, const Step& step) {
  Result r;
  r.w = step.w;
  r.v = step.v;
  const size_t num = step.grads.size();
  r.deltas.assign(num, std::vector<float>(step.w.size(), kUntouched));
  MergeInputs in;
  for (const auto& g : step.grads) in.grads.emplace_back(g);
  in.num_samples = step.num_samples;
  in.ranks = step.ranks;
  // The backends write the points x_k = w + delta_k; the deltas are read back from them.
  std::vector<std::vector<float>> x(num, std::vector<float>(step.w.size(), kUntouched));
  std::vector<PointOut> points(num);
  for (size_t k = 0; k < num; ++k) points[k].f32 = x[k];
  const bool perturbed = step.params.mode != SmoothingMode::kNone;
  r.status = backend.Merge(step.params, in, r.w, r.v,
                           perturbed ? std::span<const PointOut>(points)
                                     : std::span<const PointOut>(),
                           &r.stats);
  if (perturbed && r.status.ok()) {
    for (size_t k = 0; k < num; ++k) {
      for (size_t j = 0; j < step.w.size(); ++j) r.deltas[k][j] = x[k][j] - r.w[j];
    }
  }
  return r;
}

// MakeStep: gradients sharing a mean direction plus per-worker noise, unequal n_k.
Step MakeStep(size_t d, int num, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Step s;
  std::vector<float> common(d);
  for (float& x : common) x = 0.5f * normal(rng);
  for (int k = 0; k < num; ++k) {
    std::vector<float> g(d);
    for (size_t j = 0; j < d; ++j) g[j] = common[j] + (0.2f + 0.1f * k) * normal(rng);
    s.grads.push_back(std::move(g));
    s.num_samples.push_back(32 + 7 * k);
    s.ranks.push_back(3 * k + 1);
  }
  s.w.resize(d);
  s.v.resize(d);
  for (float& x : s.w) x = normal(rng);
  for (float& x : s.v) x = 0.1f * normal(rng);
  s.params.lr = 0.05;
  s.params.momentum = 0.9;
  s.params.gnc_scale = 1.5;
  s.params.seed = 42;
  s.params.noise_step = 3;
  s.params.global_offset = 12345;  // odd: element 0 is the sin half of a pair
  return s;
}

float MaxAbs(const std::vector<float>& x) {
  float m = 0;
  for (float e : x) m = std::max(m, std::abs(e));
  return m;
}

// ExpectClose: element-wise, relative to the vector's scale.
void ExpectClose(const std::vector<float>& got, const std::vector<float>& want, double rel,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  const double tol = rel * std::max(1.0f, MaxAbs(want));
  size_t bad = 0, first = 0;
  for (size_t j = 0; j < want.size(); ++j) {
    if (!(std::abs(static_cast<double>(got[j]) - want[j]) <= tol)) {
      if (bad++ == 0) first = j;
    }
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " elements off by more than " << tol << "; first at "
                     << first << ": got " << got[first] << ", want " << want[first];
}

void ExpectRelNear(double got, double want, double rel, const std::string& what) {
  EXPECT_NEAR(got, want, rel * std::max(1e-30, std::abs(want))) << what;
}

void ExpectSameResult(const Result& gpu, const Result& cpu, SmoothingMode mode) {
  ASSERT_TRUE(cpu.status.ok()) << cpu.status;
  ASSERT_TRUE(gpu.status.ok()) << gpu.status;
  ExpectClose(gpu.w, cpu.w, 1e-6, "w");
  ExpectClose(gpu.v, cpu.v, 1e-6, "v");
  for (size_t k = 0; k < cpu.deltas.size(); ++k) {
    if (mode == SmoothingMode::kNone) {
      EXPECT_EQ(MaxAbs(gpu.deltas[k]), kUntouched) << "mode none wrote delta " << k;
      EXPECT_EQ(*std::min_element(gpu.deltas[k].begin(), gpu.deltas[k].end()), kUntouched);
    } else {
      ExpectClose(gpu.deltas[k], cpu.deltas[k], 1e-5, absl::StrCat("delta ", k));
    }
  }
  ExpectRelNear(gpu.stats.mean_grad_sqnorm, cpu.stats.mean_grad_sqnorm, 1e-5, "A");
  ExpectRelNear(gpu.stats.grad_sqnorm_mean, cpu.stats.grad_sqnorm_mean, 1e-5, "C");
  ExpectRelNear(gpu.stats.noise_sqnorm_mean, cpu.stats.noise_sqnorm_mean, 1e-5, "noise");
  ExpectRelNear(gpu.stats.perturbation_sqnorm, cpu.stats.perturbation_sqnorm, 1e-5, "pert");
  ASSERT_EQ(gpu.stats.noise_sqnorm.size(), cpu.stats.noise_sqnorm.size());
  for (size_t k = 0; k < cpu.stats.noise_sqnorm.size(); ++k) {
    ExpectRelNear(gpu.stats.noise_sqnorm[k], cpu.stats.noise_sqnorm[k], 1e-5,
                  absl::StrCat("noise of ", k));
  }
}

// CudaMergeFixture: the CUDA backend, or a skip naming why there is none.
class CudaMergeFixture {
 protected:
  // Returns false (and the test skips) without a usable device.
  bool OpenDevice() {
    absl::StatusOr<std::unique_ptr<MergeBackend>> b = NewCudaMergeBackend();
    if (!b.ok()) {
      skip_reason_ = std::string(b.status().message());
      return false;
    }
    cuda_ = std::move(*b);
    return true;
  }
  std::unique_ptr<MergeBackend> cuda_;
  std::unique_ptr<MergeBackend> cpu_ = NewCpuMergeBackend();
  std::string skip_reason_;
};

class CudaMergeTest : public ::testing::Test, protected CudaMergeFixture {
 protected:
  void SetUp() override {
    if (!OpenDevice()) GTEST_SKIP() << "no CUDA device, CUDA merge not tested: " << skip_reason_;
  }
};

// Availability runs everywhere: with a device the backend opens, without one the
// error is FAILED_PRECONDITION and names the failing query.
TEST(CudaMergeAvailabilityTest, OpensWithDeviceElseFailedPrecondition) {
  int count = 0;
  const bool has_device = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
  absl::StatusOr<std::unique_ptr<MergeBackend>> b = NewCudaMergeBackend();
  if (has_device) {
    ASSERT_TRUE(b.ok()) << b.status();
    EXPECT_EQ((*b)->Name().rfind("cuda:", 0), 0u) << (*b)->Name();
  } else {
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kFailedPrecondition) << b.status();
    EXPECT_NE(b.status().message().find("cudaGetDeviceCount"), std::string::npos) << b.status();
  }
}

enum class Variant { kPlain, kNesterovDecay, kCap, kAll };

using CaseParam = std::tuple<SmoothingMode, Variant, std::pair<size_t, int>>;

class CudaMergeCaseTest : public ::testing::TestWithParam<CaseParam>, protected CudaMergeFixture {
 protected:
  void SetUp() override {
    if (!OpenDevice()) GTEST_SKIP() << "no CUDA device, CUDA merge not tested: " << skip_reason_;
  }
};

TEST_P(CudaMergeCaseTest, MatchesCpuReference) {
  const auto [mode, variant, shape] = GetParam();
  const auto [d, num] = shape;
  Step step = MakeStep(d, num, static_cast<uint32_t>(d * 31 + num));
  step.params.mode = mode;
  if (variant == Variant::kNesterovDecay || variant == Variant::kAll) {
    step.params.nesterov = true;
    step.params.weight_decay = 5e-4;
  }
  if (variant == Variant::kCap || variant == Variant::kAll) {
    // A cap below the typical norm, so that most (not always all) deltas are capped.
    const Result free = Merge(*cpu_, step);
    ASSERT_TRUE(free.status.ok());
    step.params.max_perturbation_norm = 0.8 * std::sqrt(free.stats.perturbation_sqnorm);
  }
  const Result cpu = Merge(*cpu_, step);
  const Result gpu = Merge(*cuda_, step);
  ExpectSameResult(gpu, cpu, mode);
}

std::string CaseName(const ::testing::TestParamInfo<CaseParam>& info) {
  const auto [mode, variant, shape] = info.param;
  static const char* kVariants[] = {"Plain", "NesterovDecay", "Cap", "All"};
  const char* mode_name = mode == SmoothingMode::kNone  ? "none"
                          : mode == SmoothingMode::kGnc ? "gnc"
                                                        : "isotropic";
  return absl::StrCat(mode_name, "_", kVariants[static_cast<int>(variant)], "_d", shape.first, "_k",
                      shape.second);
}

// Sizes around the kernels' units (4-float vectors, 64-float rows, 1024-float tiles)
// and contributor counts on each side of the register-cached variants (4, 8, 16).
INSTANTIATE_TEST_SUITE_P(
    AllModes, CudaMergeCaseTest,
    ::testing::Combine(
        ::testing::Values(SmoothingMode::kNone, SmoothingMode::kGnc, SmoothingMode::kIsotropic),
        ::testing::Values(Variant::kPlain, Variant::kNesterovDecay, Variant::kCap, Variant::kAll),
        ::testing::Values(std::pair<size_t, int>{1, 1}, std::pair<size_t, int>{5, 3},
                          std::pair<size_t, int>{2048, 4}, std::pair<size_t, int>{4097, 6},
                          std::pair<size_t, int>{100003, 16}, std::pair<size_t, int>{65537, 19})),
    CaseName);

TEST_F(CudaMergeTest, LargeShardSpansManyTiles) {
  Step step = MakeStep((1 << 22) + 3, 5, 7);
  step.params.mode = SmoothingMode::kGnc;
  ExpectSameResult(Merge(*cuda_, step), Merge(*cpu_, step), SmoothingMode::kGnc);
}

TEST_F(CudaMergeTest, ChangingSizeAndContributorsReusesBuffersCorrectly) {
  // Shrinking d leaves old values where the new padding is; growing K reallocates.
  const std::vector<std::pair<size_t, int>> shapes = {{1000, 4}, {990, 2}, {1000, 6}, {33, 20}};
  for (const auto& [d, num] : shapes) {
    SCOPED_TRACE(absl::StrCat("d=", d, " k=", num));
    Step step = MakeStep(d, num, static_cast<uint32_t>(d + num));
    step.params.mode = SmoothingMode::kGnc;
    ExpectSameResult(Merge(*cuda_, step), Merge(*cpu_, step), SmoothingMode::kGnc);
  }
}

// Resident state: a call that names the previous call's out_version uses the w and v
// still on the device (the host copies passed here are poisoned to prove it); one that
// names anything else (0, a stale version) reads w and v from the host. A noise pass
// changes no state, so the device still holds the one it was given. Gradients come
// from slots pinned through the backend's pinner.
TEST_F(CudaMergeTest, KeepsWAndVOnTheDeviceOnlyUnderTheirVersion) {
  Step step = MakeStep(100003, 4, 21);
  step.params.mode = SmoothingMode::kGnc;
  const std::shared_ptr<HostPinner> pinner = cuda_->Pinner();
  ASSERT_NE(pinner, nullptr);
  for (const auto& g : step.grads) pinner->Pin(g.data(), g.size() * sizeof(float));
  Step cpu_step = step;
  Step gpu_step = step;
  for (uint64_t t = 1; t <= 3; ++t) {
    SCOPED_TRACE(absl::StrCat("step ", t));
    gpu_step.params.state_version = t - 1;  // 0 first: nothing is resident yet
    gpu_step.params.out_version = t;
    if (t > 1) {
      std::fill(gpu_step.w.begin(), gpu_step.w.end(), std::nanf(""));
      std::fill(gpu_step.v.begin(), gpu_step.v.end(), std::nanf(""));
    }
    const Result gpu = Merge(*cuda_, gpu_step);
    const Result cpu = Merge(*cpu_, cpu_step);
    ExpectSameResult(gpu, cpu, SmoothingMode::kGnc);
    gpu_step.w = gpu.w;
    gpu_step.v = gpu.v;
    cpu_step.w = cpu.w;
    cpu_step.v = cpu.v;
  }
  // A rewound state under another version is read from the host.
  Step rewound = step;
  rewound.params.state_version = 7;
  rewound.params.out_version = 8;
  const Result rewound_gpu = Merge(*cuda_, rewound);
  const Result rewound_cpu = Merge(*cpu_, rewound);
  ExpectSameResult(rewound_gpu, rewound_cpu, SmoothingMode::kGnc);
  // A noise pass on that state (version 8): its points come from the device's w.
  Step noise = step;
  noise.w = rewound_cpu.w;
  noise.v = rewound_cpu.v;
  noise.params.apply_update = false;
  noise.params.state_version = 8;
  noise.params.out_version = 9;
  ExpectSameResult(Merge(*cuda_, noise), Merge(*cpu_, noise), SmoothingMode::kGnc);
  // The step after it names version 8 again, with poisoned host copies: the device
  // still holds it.
  Step after = noise;
  after.params.apply_update = true;
  after.params.state_version = 8;
  after.params.out_version = 10;
  const Result after_cpu = Merge(*cpu_, after);
  std::fill(after.w.begin(), after.w.end(), std::nanf(""));
  std::fill(after.v.begin(), after.v.end(), std::nanf(""));
  ExpectSameResult(Merge(*cuda_, after), after_cpu, SmoothingMode::kGnc);
  for (const auto& g : step.grads) pinner->Unpin(g.data());
}

// Points in bfloat16 are formed on the device: each one is, bit for bit, the host's
// round-to-nearest-even of the same call's float32 point (the device repeats itself
// bit for bit), and near the CPU reference's. Pinned outputs (w, v, points) give the
// same bits as staged ones.
TEST_F(CudaMergeTest, FormsBfloat16PointsAndDownloadsIntoPinnedBuffers) {
  for (SmoothingMode mode : {SmoothingMode::kGnc, SmoothingMode::kIsotropic}) {
    SCOPED_TRACE(mode == SmoothingMode::kGnc ? "gnc" : "isotropic");
    Step step = MakeStep(70001, 5, 33);
    step.params.mode = mode;
    MergeInputs in;
    for (const auto& g : step.grads) in.grads.emplace_back(g);
    in.num_samples = step.num_samples;
    in.ranks = step.ranks;
    const size_t d = step.w.size();
    const size_t num = step.grads.size();
    struct Out {
      std::vector<float> w, v;
      std::vector<std::vector<float>> f32;
      std::vector<std::vector<uint16_t>> bf16;
    };
    // Run: contributor k's point in bfloat16 where bf16[k]; pinned: every output
    // buffer pinned through the backend's pinner.
    auto run = [&](MergeBackend& backend, const std::vector<bool>& bf16, bool pinned) {
      Out o;
      o.w = step.w;
      o.v = step.v;
      o.f32.assign(num, {});
      o.bf16.assign(num, {});
      std::vector<PointOut> points(num);
      for (size_t k = 0; k < num; ++k) {
        if (bf16[k]) {
          o.bf16[k].assign(d, 0xffff);
          points[k].bf16 = o.bf16[k];
        } else {
          o.f32[k].assign(d, kUntouched);
          points[k].f32 = o.f32[k];
        }
      }
      std::shared_ptr<HostPinner> pinner = pinned ? backend.Pinner() : nullptr;
      std::vector<const void*> held;
      auto pin = [&](const void* data, size_t bytes) {
        pinner->Pin(data, bytes);
        held.push_back(data);
      };
      if (pinner != nullptr) {
        pin(o.w.data(), d * sizeof(float));
        pin(o.v.data(), d * sizeof(float));
        for (size_t k = 0; k < num; ++k) {
          if (bf16[k]) {
            pin(o.bf16[k].data(), d * sizeof(uint16_t));
          } else {
            pin(o.f32[k].data(), d * sizeof(float));
          }
        }
      }
      MergeStats stats;
      const absl::Status s = backend.Merge(step.params, in, o.w, o.v, points, &stats);
      for (const void* data : held) pinner->Unpin(data);
      EXPECT_TRUE(s.ok()) << s;
      return o;
    };
    const std::vector<bool> all_f32(num, false);
    std::vector<bool> mixed(num, false);
    for (size_t k = 0; k < num; k += 2) mixed[k] = true;
    const Out f32 = run(*cuda_, all_f32, false);
    const Out bf = run(*cuda_, mixed, false);
    const Out bf_pinned = run(*cuda_, mixed, true);
    const Out cpu = run(*cpu_, mixed, false);
    EXPECT_EQ(bf.w, f32.w);
    EXPECT_EQ(bf_pinned.w, bf.w);
    EXPECT_EQ(bf_pinned.v, bf.v);
    for (size_t k = 0; k < num; ++k) {
      SCOPED_TRACE(absl::StrCat("contributor ", k));
      EXPECT_EQ(bf_pinned.f32[k], bf.f32[k]);
      EXPECT_EQ(bf_pinned.bf16[k], bf.bf16[k]);
      if (!mixed[k]) {
        EXPECT_EQ(bf.f32[k], f32.f32[k]);
        ExpectClose(bf.f32[k], cpu.f32[k], 1e-5, "float32 point");
        continue;
      }
      size_t off = 0;
      std::vector<float> got(d), want(d);
      for (size_t j = 0; j < d; ++j) {
        off += bf.bf16[k][j] != FloatToBf16(f32.f32[k][j]) ? 1 : 0;
        got[j] = Bf16ToFloat(bf.bf16[k][j]);
        want[j] = Bf16ToFloat(cpu.bf16[k][j]);
      }
      EXPECT_EQ(off, 0u) << "bfloat16 elements not the rounding of the float32 point";
      ExpectClose(got, want, 1.0 / 128, "bfloat16 point");
    }
  }
}

TEST_F(CudaMergeTest, RepeatsBitForBit) {
  Step step = MakeStep(300007, 7, 11);
  step.params.mode = SmoothingMode::kIsotropic;
  const Result a = Merge(*cuda_, step);
  const Result b = Merge(*cuda_, step);
  ASSERT_TRUE(a.status.ok() && b.status.ok());
  EXPECT_EQ(a.stats.mean_grad_sqnorm, b.stats.mean_grad_sqnorm);
  EXPECT_EQ(a.stats.grad_sqnorm_mean, b.stats.grad_sqnorm_mean);
  EXPECT_EQ(a.stats.noise_sqnorm_mean, b.stats.noise_sqnorm_mean);
  EXPECT_EQ(a.stats.perturbation_sqnorm, b.stats.perturbation_sqnorm);
  EXPECT_EQ(a.w, b.w);
  EXPECT_EQ(a.deltas, b.deltas);
}

TEST_F(CudaMergeTest, IsotropicNoiseIsStandardNormalAtTheMatchedScale) {
  const size_t d = 1 << 20;
  Step step = MakeStep(d, 4, 5);
  step.params.mode = SmoothingMode::kIsotropic;
  const Result r = Merge(*cuda_, step);
  ASSERT_TRUE(r.status.ok()) << r.status;
  const double coef2 = std::pow(step.params.gnc_scale * step.params.lr, 2);
  const double sigma = std::sqrt(coef2 * r.stats.noise_sqnorm_mean / d);
  ASSERT_GT(sigma, 0);
  // E||delta_k||^2 = d sigma^2 = the gnc perturbation's mean squared norm.
  ExpectRelNear(r.stats.perturbation_sqnorm, coef2 * r.stats.noise_sqnorm_mean, 0.01,
                "isotropic perturbation vs gnc");
  for (size_t k = 0; k < r.deltas.size(); ++k) {
    double sum = 0, sq = 0, cross = 0, fourth = 0;
    const std::vector<float>& next = r.deltas[(k + 1) % r.deltas.size()];
    for (size_t j = 0; j < d; ++j) {
      const double z = r.deltas[k][j] / sigma;
      sum += z;
      sq += z * z;
      fourth += z * z * z * z;
      cross += z * next[j] / sigma;
    }
    const double n = static_cast<double>(d);
    // Standard errors: mean 1/sqrt(n), variance sqrt(2/n), kurtosis ~sqrt(96/n).
    EXPECT_NEAR(sum / n, 0.0, 5.0 / std::sqrt(n)) << "worker " << k;
    EXPECT_NEAR(sq / n, 1.0, 5.0 * std::sqrt(2.0 / n)) << "worker " << k;
    EXPECT_NEAR(fourth / n, 3.0, 5.0 * std::sqrt(96.0 / n)) << "worker " << k;
    EXPECT_NEAR(cross / n, 0.0, 5.0 / std::sqrt(n)) << "workers " << k << " and next";
  }
  // A later step draws new noise.
  Step later = step;
  later.params.noise_step += 1;
  const Result r2 = Merge(*cuda_, later);
  ASSERT_TRUE(r2.status.ok());
  EXPECT_NE(r.deltas[0], r2.deltas[0]);
}

TEST_F(CudaMergeTest, RefusesInconsistentInputs) {
  Step step = MakeStep(100, 2, 3);
  step.num_samples.pop_back();
  EXPECT_EQ(Merge(*cuda_, step).status.code(), absl::StatusCode::kInvalidArgument);
  Step short_grad = MakeStep(100, 2, 3);
  short_grad.grads[1].resize(99);
  EXPECT_EQ(Merge(*cuda_, short_grad).status.code(), absl::StatusCode::kInvalidArgument);
  Step none = MakeStep(100, 1, 3);
  none.grads.clear();
  none.num_samples.clear();
  none.ranks.clear();
  EXPECT_EQ(Merge(*cuda_, none).status.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gnc
