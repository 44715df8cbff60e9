// Learning-rate schedule and option validation.
#include "server/options.h"

#include <cmath>
#include <numbers>

#include "gtest/gtest.h"

namespace gnc {
namespace {

TEST(LrScheduleTest, WarmupThenCosine) {
  LrSchedule s;
  s.peak = 0.4;
  s.warmup_steps = 4;
  s.decay = LrDecay::kCosine;
  s.total_steps = 14;
  s.min_lr = 0.0;
  EXPECT_DOUBLE_EQ(s.Rate(0), 0.1);
  EXPECT_DOUBLE_EQ(s.Rate(3), 0.4);
  EXPECT_DOUBLE_EQ(s.Rate(4), 0.4);
  EXPECT_NEAR(s.Rate(9), 0.2, 1e-12);  // half-way through the decay
  EXPECT_NEAR(s.Rate(14), 0.0, 1e-12);
  EXPECT_NEAR(s.Rate(100), 0.0, 1e-12);
  EXPECT_NEAR(s.Rate(6), 0.2 * (1 + std::cos(std::numbers::pi * 0.2)), 1e-12);
}

TEST(LrScheduleTest, StepDecay) {
  LrSchedule s;
  s.peak = 1.0;
  s.decay = LrDecay::kStep;
  s.step_every = 10;
  s.step_gamma = 0.5;
  EXPECT_DOUBLE_EQ(s.Rate(0), 1.0);
  EXPECT_DOUBLE_EQ(s.Rate(9), 1.0);
  EXPECT_DOUBLE_EQ(s.Rate(10), 0.5);
  EXPECT_DOUBLE_EQ(s.Rate(25), 0.25);
}

TEST(ShardOptionsTest, ValidateNamesTheBadSetting) {
  ShardOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.min_workers = 3;
  EXPECT_NE(o.Validate().message().find("min_workers"), std::string::npos);
  o = ShardOptions();
  o.lr.decay = LrDecay::kCosine;
  EXPECT_NE(o.Validate().message().find("total_steps"), std::string::npos);
  o = ShardOptions();
  o.shard_index = 1;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = ShardOptions();
  o.momentum = 1.0;
  EXPECT_FALSE(o.Validate().ok());
  SmoothingMode m;
  EXPECT_FALSE(ParseSmoothingMode("gauss", &m).ok());
  EXPECT_TRUE(ParseSmoothingMode("isotropic", &m).ok());
  EXPECT_EQ(m, SmoothingMode::kIsotropic);
}

TEST(ShardOptionsTest, ConfigHashCoversJobSettingsButNotShardIndex) {
  ShardOptions a, b;
  a.num_shards = b.num_shards = 2;
  b.shard_index = 1;
  EXPECT_EQ(a.ConfigHash(), b.ConfigHash());
  b.gnc_scale = 2.0;
  EXPECT_NE(a.ConfigHash(), b.ConfigHash());
  b = a;
  b.lr.peak = 0.2;
  EXPECT_NE(a.ConfigHash(), b.ConfigHash());
  b = a;
  b.noise_timing = NoiseTiming::kFresh;
  EXPECT_NE(a.ConfigHash(), b.ConfigHash());
}

TEST(ShardOptionsTest, FreshNoiseTakesTwoPassesPerStepAndNeedsNoise) {
  NoiseTiming t;
  EXPECT_FALSE(ParseNoiseTiming("later", &t).ok());
  ASSERT_TRUE(ParseNoiseTiming("fresh", &t).ok());
  ShardOptions o;
  o.noise_timing = t;
  o.lr.total_steps = 50;
  EXPECT_EQ(o.PassesPerStep(), 2);
  EXPECT_EQ(o.TotalPasses(), 100);
  EXPECT_TRUE(o.Validate().ok());
  o.mode = SmoothingMode::kNone;
  const absl::Status s = o.Validate();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("gnc_noise=fresh"), std::string::npos) << s;
}

}  // namespace
}  // namespace gnc
