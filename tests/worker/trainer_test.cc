// The training loop against an in-process fake of the servers (plain SGD on one
// worker) and a recording backend.
#include "worker/trainer.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "worker/mlp.h"
#include "worker/model.h"

namespace gnc {
namespace {

// FakeServers: one worker's view of a job whose servers do w -= lr * g per step.
// A status planned for a step is returned by that step's push; ABORTED moves to the
// next step without applying the gradient (the step completed without this worker).
class FakeServers final : public GncClient {
 public:
  explicit FakeServers(int64_t total_steps, double lr = 0.5) : lr_(lr) {
    job_.total_steps = total_steps;
    job_.mode = "none";
  }
  const JobInfo& job() const override { return job_; }
  absl::Status OfferParameters(std::span<const float> params) override {
    ++offers;
    if (w.empty()) w.assign(params.begin(), params.end());
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> ReceiveEvalPoint(std::span<float> x) override {
    std::copy(w.begin(), w.end(), x.begin());
    return step;
  }
  absl::Status PushGradient(std::span<const float> g, int64_t num_samples) override {
    samples.push_back(num_samples);
    if (auto it = planned.find(step); it != planned.end()) {
      if (absl::IsAborted(it->second)) ++step;
      return it->second;
    }
    for (size_t j = 0; j < w.size(); ++j) w[j] -= static_cast<float>(lr_) * g[j];
    ++step;
    return absl::OkStatus();
  }
  absl::StatusOr<int64_t> Pull(std::span<float> out) override {
    ++pulls;
    std::copy(w.begin(), w.end(), out.begin());
    return step;
  }
  absl::Status Leave() override {
    ++leaves;
    return absl::OkStatus();
  }

  std::vector<float> w;
  int64_t step = 0;
  std::map<int64_t, absl::Status> planned;
  std::vector<int64_t> samples;
  int offers = 0, pulls = 0, leaves = 0;

 private:
  JobInfo job_;
  const double lr_;
};

// RecordingBackend: remembers feature 0 of every training example it is given
// (the tests store the example's index there) and returns a zero gradient.
class RecordingBackend final : public Model {
 public:
  std::string Name() const override { return "recording"; }
  std::string Device() const override { return "none"; }
  int64_t InputSize() const override { return 3; }
  int64_t NumClasses() const override { return 2; }
  int64_t NumParameters() const override { return 8; }
  std::vector<float> InitialParameters(uint64_t) const override {
    return std::vector<float>(8, 0.0f);
  }
  absl::StatusOr<double> LossAndGradient(std::span<const float>, std::span<const float> inputs,
                                         std::span<const int32_t> labels,
                                         std::span<float> grad) override {
    std::vector<int64_t> batch;
    for (size_t i = 0; i < labels.size(); ++i) {
      batch.push_back(static_cast<int64_t>(inputs[i * InputSize()]));
    }
    batches.push_back(batch);
    std::fill(grad.begin(), grad.end(), 0.0f);
    return 1.0;
  }
  absl::Status Evaluate(std::span<const float>, std::span<const float>,
                        std::span<const int32_t> labels, double* loss_sum,
                        int64_t* correct) override {
    *loss_sum = static_cast<double>(labels.size());
    *correct = 0;
    return absl::OkStatus();
  }
  std::vector<std::vector<int64_t>> batches;
};

// Clusters: `count` examples of `classes` well-separated Gaussian blobs in `dim`
// dimensions.
Dataset Clusters(int64_t count, int64_t dim, int classes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  Dataset d;
  d.count = count;
  d.dim = dim;
  for (int64_t i = 0; i < count; ++i) {
    const int32_t y = static_cast<int32_t>(i % classes);
    for (int64_t k = 0; k < dim; ++k)
      d.images.push_back((k % classes == y ? 1.0f : 0.0f) + noise(rng));
    d.labels.push_back(y);
  }
  return d;
}

// Indexed: examples whose feature 0 is their index in the data set.
Dataset Indexed(int64_t count, int64_t dim) {
  Dataset d;
  d.count = count;
  d.dim = dim;
  for (int64_t i = 0; i < count; ++i) {
    d.images.push_back(static_cast<float>(i));
    for (int64_t k = 1; k < dim; ++k) d.images.push_back(0.0f);
    d.labels.push_back(0);
  }
  return d;
}

TEST(PlanTrainingTest, ContiguousDisjointSlicesAndFloorSteps) {
  TrainerOptions o;
  o.num_workers = 4;
  o.batch_size = 256;
  o.epochs = 5;
  for (int r = 0; r < 4; ++r) {
    o.rank = r;
    absl::StatusOr<TrainPlan> p = PlanTraining(o, 60001);
    ASSERT_TRUE(p.ok()) << p.status();
    EXPECT_EQ(p->slice_size, 15000);
    EXPECT_EQ(p->slice_begin, r * 15000);
    EXPECT_EQ(p->steps_per_epoch, 58);  // floor(15000 / 256)
    EXPECT_EQ(p->total_steps, 290);
  }
  o.steps = 7;
  EXPECT_EQ(PlanTraining(o, 60000)->total_steps, 7);
  o.batch_size = 20000;
  EXPECT_EQ(PlanTraining(o, 60000).status().code(), absl::StatusCode::kInvalidArgument);
  o.batch_size = 64;
  o.rank = 4;
  EXPECT_EQ(PlanTraining(o, 60000).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TrainerTest, LearnsSeparableClustersAndEvaluatesEachEpoch) {
  const MlpShape shape{{12, 16, 3}};
  TrainerOptions o;
  o.batch_size = 20;
  o.epochs = 3;
  o.evaluate = true;
  o.seed = 3;
  const Dataset train = Clusters(600, 12, 3, 1), test = Clusters(300, 12, 3, 2);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->total_steps, 90);
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(shape);
  ASSERT_TRUE(made.ok()) << made.status();
  Model* backend = made->get();
  FakeServers servers(/*total_steps=*/90, /*lr=*/0.2);

  // The untrained w0 is no better than chance.
  const std::vector<float> w0 = HeInitialParameters(shape, o.seed);
  absl::StatusOr<TestResult> before = TestParameters(*backend, w0, test);
  ASSERT_TRUE(before.ok());

  std::vector<std::string> lines;
  Trainer trainer(o, *plan, backend, &train, &test, nullptr,
                  [&](std::string_view l) { lines.emplace_back(l); });
  absl::StatusOr<TrainSummary> s = trainer.Run(servers);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(servers.offers, 1);
  EXPECT_EQ(servers.leaves, 1);
  EXPECT_EQ(servers.pulls, 3);  // after epochs 1 and 2, and at the end
  EXPECT_EQ(s->pushed_steps, 90);
  EXPECT_EQ(s->late_steps, 0);
  EXPECT_EQ(s->final_step, 90);
  EXPECT_TRUE(s->evaluated);
  EXPECT_GT(s->test_accuracy, 0.95);
  EXPECT_GT(s->test_accuracy, before->accuracy + 0.3);
  EXPECT_LT(s->test_loss, before->loss);
  for (int64_t n : servers.samples) EXPECT_EQ(n, 20);

  int epoch_lines = 0;
  bool final_line = false;
  for (const std::string& l : lines) {
    if (absl::StartsWith(l, "epoch ")) {
      ++epoch_lines;
      EXPECT_TRUE(absl::StrContains(l, " train loss ")) << l;
    }
    if (absl::StartsWith(l, "final test accuracy ")) {
      final_line = true;
      EXPECT_TRUE(absl::StrContains(l, "after 90 steps")) << l;
    }
  }
  EXPECT_EQ(epoch_lines, 2);
  EXPECT_TRUE(final_line);
}

TEST(TrainerTest, EveryEpochVisitsTheRankSliceOnceInANewOrder) {
  TrainerOptions o;
  o.rank = 1;
  o.num_workers = 3;
  o.batch_size = 10;
  o.epochs = 3;
  const Dataset all = Indexed(95, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, all.count);
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->slice_begin, 31);
  ASSERT_EQ(plan->steps_per_epoch, 3);  // floor(31 / 10): one example per epoch is left out
  Dataset slice = all;
  slice.count = plan->slice_size;
  slice.images.assign(all.images.begin() + 31 * 3, all.images.begin() + 62 * 3);
  slice.labels.assign(all.labels.begin() + 31, all.labels.begin() + 62);

  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/0);
  Trainer trainer(o, *plan, &backend, &slice, nullptr, nullptr, [](std::string_view) {});
  ASSERT_TRUE(trainer.Run(servers).ok());
  ASSERT_EQ(backend.batches.size(), 9u);
  std::vector<std::vector<int64_t>> epochs(3);
  for (size_t b = 0; b < 9; ++b) {
    for (int64_t i : backend.batches[b]) epochs[b / 3].push_back(i);
  }
  for (const auto& e : epochs) {
    const std::set<int64_t> unique(e.begin(), e.end());
    EXPECT_EQ(unique.size(), 30u);  // no example twice within an epoch
    for (int64_t i : e) {
      EXPECT_GE(i, 31);  // only this rank's examples: [31, 62)
      EXPECT_LT(i, 62);
    }
  }
  EXPECT_NE(epochs[0], epochs[1]);
  EXPECT_NE(epochs[1], epochs[2]);
}

TEST(TrainerTest, ServersWithAnotherLengthAreRefusedNamingBoth) {
  TrainerOptions o;
  o.batch_size = 5;
  o.epochs = 2;
  const Dataset train = Indexed(50, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  ASSERT_TRUE(plan.ok());
  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/123);
  Trainer trainer(o, *plan, &backend, &train, nullptr, nullptr, [](std::string_view) {});
  absl::StatusOr<TrainSummary> s = trainer.Run(servers);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(s.status().message(), "123")) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "20")) << s.status();
  EXPECT_EQ(servers.offers, 0);
  EXPECT_TRUE(backend.batches.empty());
}

TEST(TrainerTest, LatePushIsCountedAndTrainingGoesOn) {
  TrainerOptions o;
  o.batch_size = 5;
  o.steps = 6;
  const Dataset train = Indexed(50, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/6);
  servers.planned[2] = absl::AbortedError("step 2 already completed");
  Trainer trainer(o, *plan, &backend, &train, nullptr, nullptr, [](std::string_view) {});
  absl::StatusOr<TrainSummary> s = trainer.Run(servers);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->late_steps, 1);
  EXPECT_EQ(s->pushed_steps, 5);
  EXPECT_EQ(s->final_step, 6);
  EXPECT_EQ(servers.leaves, 1);
}

TEST(TrainerTest, SaveParamsWritesTheServersFinalWAsRawFloat32) {
  TrainerOptions o;
  o.batch_size = 5;
  o.steps = 4;
  o.save_params = ::testing::TempDir() + "/trainer_test_w.f32";
  std::remove(o.save_params.c_str());
  const Dataset train = Indexed(50, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  ASSERT_TRUE(plan.ok());
  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/4);
  servers.w = {1.5f, -2.0f, 0.25f, 3e-8f, -0.0f, 7.0f, 1e10f, -1e-3f};  // kept: zero gradients
  Trainer trainer(o, *plan, &backend, &train, nullptr, nullptr, [](std::string_view) {});
  ASSERT_TRUE(trainer.Run(servers).ok());
  EXPECT_EQ(servers.pulls, 1);  // not evaluating: pulled for the file only
  std::FILE* f = std::fopen(o.save_params.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::vector<unsigned char> bytes(64);
  const size_t got = std::fread(bytes.data(), 1, bytes.size(), f);
  std::fclose(f);
  ASSERT_EQ(got, 32u);
  for (size_t j = 0; j < 8; ++j) {
    uint32_t bits = 0;
    for (int b = 0; b < 4; ++b) bits |= uint32_t{bytes[4 * j + b]} << (8 * b);  // little-endian
    float v;
    std::memcpy(&v, &bits, 4);
    EXPECT_EQ(v, servers.w[j]) << j;
  }
}

TEST(TrainerTest, SaveParamsToAnUnwritablePathIsAnError) {
  TrainerOptions o;
  o.batch_size = 5;
  o.steps = 2;
  o.save_params = "/nonexistent-dir/w.f32";
  const Dataset train = Indexed(50, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/2);
  Trainer trainer(o, *plan, &backend, &train, nullptr, nullptr, [](std::string_view) {});
  absl::StatusOr<TrainSummary> s = trainer.Run(servers);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInternal);
  EXPECT_TRUE(absl::StrContains(s.status().message(), "/nonexistent-dir/w.f32")) << s.status();
}

TEST(TrainerTest, OtherPushErrorStopsWithTheServersMessage) {
  TrainerOptions o;
  o.batch_size = 5;
  o.steps = 6;
  const Dataset train = Indexed(50, 3);
  absl::StatusOr<TrainPlan> plan = PlanTraining(o, train.count);
  RecordingBackend backend;
  FakeServers servers(/*total_steps=*/0);
  servers.planned[3] = absl::InvalidArgumentError("shard 1: non-finite gradient");
  Trainer trainer(o, *plan, &backend, &train, nullptr, nullptr, [](std::string_view) {});
  absl::StatusOr<TrainSummary> s = trainer.Run(servers);
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(s.status().message(), "non-finite gradient")) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "step 3")) << s.status();
  EXPECT_EQ(backend.batches.size(), 4u);
  EXPECT_EQ(servers.leaves, 0);
}

}  // namespace
}  // namespace gnc
