// ShardCore's failure handling without a network: divergence, bounds on finite bad
// values, a restarted worker's accepted gradient, rewinds, restores from checkpoints,
// stall reports and when a shard is done.
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "common/finite.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "server/shard_core.h"
#include "tests/unit/shard_harness.h"
#include "tests/unit/temp_dir.h"

namespace gnc {
namespace {

using testing::BitIdentical;
using testing::FakeClock;
using testing::Harness;
using testing::kJob;
using testing::Layout;
using testing::ThreeWorkers;

namespace fs = std::filesystem;

using testing::TempDir;

std::unique_ptr<CheckpointStore> OpenStore(const std::string& dir, const ShardOptions& o,
                                           int keep = 2) {
  CheckpointOptions c;
  c.dir = dir;
  c.shard_index = o.shard_index;
  c.num_shards = o.num_shards;
  c.config_hash = o.ConfigHash();
  c.keep = keep;
  auto store = CheckpointStore::Open(c);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? *std::move(store) : nullptr;
}

// Gradient of rank r at step t: fixed numbers, whatever the evaluation point.
std::vector<float> Grad(int r, int64_t t, int64_t n) {
  std::vector<float> g(n);
  for (int64_t i = 0; i < n; ++i) g[i] = 0.01f * static_cast<float>((r + 1) * (i + 1)) - 0.1f * t;
  return g;
}

void Step(Harness& h, int64_t t, int64_t n) {
  for (int r = 0; r < h.core().options().num_workers; ++r) {
    ASSERT_TRUE(h.Push(r, t, 2, Grad(r, t, n)).ok()) << "rank " << r << " step " << t;
  }
}

std::vector<float> W(Harness& h) {
  std::vector<float> w;
  int64_t step = 0;
  EXPECT_TRUE(h.Snapshot(&w, &step).ok());
  return w;
}

TEST(ShardRecoveryTest, DivergedStepIsNotAppliedAndTheShardRefusesTraining) {
  TempDir dir;
  const int64_t n = 6;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.checkpoint_every = 1;
  auto store = OpenStore(dir.path(), o);
  Harness h(o, n, nullptr, store.get());
  h.JoinAll({1, 2, 3, 4, 5, 6});
  Step(h, 0, n);
  const std::vector<float> before = h.State();
  const float big = std::numeric_limits<float>::max();
  std::vector<float> poison(n, big);
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(h.Push(r, 1, 8, poison).ok());

  // The update of step 1 would have been non-finite: nothing of it is applied.
  const ShardStatus st = h.core().GetStatus();
  EXPECT_TRUE(st.job.diverged);
  EXPECT_EQ(st.job.step, 1);
  std::vector<float> w;
  int64_t at = 0;
  ASSERT_TRUE(h.Snapshot(&w, &at).ok());
  EXPECT_EQ(FindNonFinite(w), -1);
  EXPECT_TRUE(BitIdentical(std::vector<float>(before.begin() + 1, before.begin() + 1 + n), w));

  // Everything that would train refuses with FAILED_PRECONDITION naming the step.
  absl::StatusOr<PushOutcome> push = h.Push(0, 1, 8, Grad(0, 1, n));
  EXPECT_EQ(push.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(push.status().message().find("diverged at step 1"), std::string::npos)
      << push.status();
  EXPECT_EQ(h.core().OpenStream(1).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(h.core().NextPoint(2, h.session(2), PointTag()).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(h.core().Rewind(kJob, 1, 5).status().code(), absl::StatusCode::kFailedPrecondition);

  // No checkpoint ever holds a non-finite value; draining writes none of the bad step.
  h.core().Drain();
  ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  for (const CheckpointInfo& c : store->Candidates()) {
    absl::StatusOr<ShardState> s = store->Load(c);
    ASSERT_TRUE(s.ok());
    EXPECT_LE(s->step, 1);
    EXPECT_EQ(FindNonFinite(*s->w), -1) << c.path;
    EXPECT_EQ(FindNonFinite(*s->v), -1) << c.path;
  }
}

TEST(ShardRecoveryTest, ClippingScalesLongGradientsToTheBound) {
  const int64_t n = 6;
  ShardOptions o = ThreeWorkers(SmoothingMode::kNone);
  o.momentum = 0;
  o.weight_decay = 0;
  o.lr.warmup_steps = 0;
  o.lr.peak = 0.5;
  o.max_gradient_norm = 1.0;
  Harness h(o, n);
  h.JoinAll({0, 0, 0, 0, 0, 0});
  const float big = std::numeric_limits<float>::max();
  // norm 5 -> scaled by 1/5; norm 0.5 -> kept; FLT_MAX in one element -> unit vector.
  ASSERT_TRUE(h.Push(0, 0, 1, {3, 4, 0, 0, 0, 0}).ok());
  ASSERT_TRUE(h.Push(1, 0, 2, {0, 0, 0.3f, 0.4f, 0, 0}).ok());
  ASSERT_TRUE(h.Push(2, 0, 1, {0, 0, 0, 0, 0, big}).ok());
  // g_mean = (1 * (0.6, 0.8, 0, 0, 0, 0) + 2 * (0, 0, 0.3, 0.4, 0, 0) + 1 * e_5) / 4.
  const std::vector<double> mean = {0.15, 0.2, 0.15, 0.2, 0, 0.25};
  const std::vector<float> w = W(h);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(w[i], -0.5 * mean[i], 1e-6) << i;
  EXPECT_FALSE(h.core().GetStatus().job.diverged);
}

TEST(ShardRecoveryTest, SampleCountOutsideTheDeclaredBatchIsRefused) {
  Harness h(ThreeWorkers(SmoothingMode::kGnc), 4);  // every rank declared a batch of 8
  h.JoinAll({0, 0, 0, 0});
  const std::vector<float> before = h.State();
  for (int64_t samples : {int64_t{0}, int64_t{9}, int64_t{1} << 62, int64_t{-3}}) {
    absl::StatusOr<PushOutcome> out = h.Push(0, 0, samples, {1, 1, 1, 1});
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << samples;
    EXPECT_NE(out.status().message().find("[1, 8]"), std::string::npos) << out.status();
    EXPECT_TRUE(BitIdentical(h.State(), before)) << samples;
  }
  EXPECT_TRUE(h.Push(0, 0, 8, {1, 1, 1, 1}).ok());
}

TEST(ShardRecoveryTest, RestartedWorkerKeepsItsAcceptedGradientAndGetsTheNextStep) {
  const int64_t n = 5;
  Harness h(ThreeWorkers(SmoothingMode::kGnc), n);
  Harness clean(ThreeWorkers(SmoothingMode::kGnc), n);
  h.JoinAll({1, 1, 1, 1, 1});
  clean.JoinAll({1, 1, 1, 1, 1});
  ASSERT_TRUE(h.Push(0, 0, 2, Grad(0, 0, n)).ok());
  // Rank 0 dies right after its push and comes back while ranks 1 and 2 are slow.
  h.Reconnect(0);
  absl::StatusOr<std::shared_ptr<const Publication>> none =
      h.core().NextPoint(0, h.session(0), PointTag());
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, nullptr);  // its gradient is in: no point is due before the step ends
  for (int r = 1; r < 3; ++r) ASSERT_TRUE(h.Push(r, 0, 2, Grad(r, 0, n)).ok());
  absl::StatusOr<std::shared_ptr<const Publication>> next =
      h.core().NextPoint(0, h.session(0), PointTag());
  ASSERT_TRUE(next.ok() && *next != nullptr) << next.status();
  EXPECT_EQ((*next)->tag().step, 1);
  Step(clean, 0, n);
  EXPECT_TRUE(BitIdentical(h.State(), clean.State()));
}

TEST(ShardRecoveryTest, RewindGoesBackExactlyAndIsIdempotentByGeneration) {
  TempDir dir;
  const int64_t n = 7;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.checkpoint_every = 2;
  auto store = OpenStore(dir.path(), o);
  Harness h(o, n, nullptr, store.get());
  h.JoinAll({0.5f, -0.25f, 1, 0, 2, -1, 0.125f});
  std::vector<std::vector<float>> w_at;  // w_at[t]: w at step t
  for (int64_t t = 0; t < 5; ++t) {
    w_at.push_back(W(h));
    Step(h, t, n);
    ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  }
  w_at.push_back(W(h));
  EXPECT_EQ(h.core().GetStatus().job.rewind_steps, (std::vector<int64_t>{5, 4, 2}));

  // Idle requests: an older generation, a wrong job, a step the shard does not hold.
  EXPECT_EQ(h.core().Rewind(kJob, 2, 0)->job.generation, 0);
  EXPECT_EQ(h.Step(), 5);
  EXPECT_EQ(h.core().Rewind(kJob + 1, 2, 1).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(h.core().Rewind(kJob, 3, 1).status().code(), absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<JobStateInfo> r = h.core().Rewind(kJob, 2, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step, 2);
  EXPECT_EQ(r->job.generation, 1);
  EXPECT_TRUE(BitIdentical(W(h), w_at[2]));
  EXPECT_EQ(r->rewind_steps, (std::vector<int64_t>{2}));  // step 4's file is gone
  // Every worker's next point is the unperturbed w of step 2.
  for (int rank = 0; rank < 3; ++rank) EXPECT_TRUE(BitIdentical(h.EvalPoint(rank, 2), w_at[2]));

  // A gradient of the old generation is ABORTED; a repeated rewind changes nothing.
  GradientChunk old;
  old.rank = 0;
  old.session = h.session(0);
  old.generation = 0;
  old.step = 2;
  old.num_samples = 2;
  const std::vector<float> g = Grad(0, 2, n);
  const Payload payload = testing::FloatPayload(g);
  old.payload = &payload;
  old.last = true;
  EXPECT_EQ(h.core().PushGradient(old).status().code(), absl::StatusCode::kAborted);
  Step(h, 2, n);
  EXPECT_EQ(h.core().Rewind(kJob, 2, 1)->step, 3);
  // Replaying steps 2..4 ends exactly where the first run did.
  Step(h, 3, n);
  Step(h, 4, n);
  EXPECT_TRUE(BitIdentical(W(h), w_at[5]));
}

// A device backend may keep w and v between steps only while they are exactly the
// last merge's output: the first merge (after the offer) and the one after a rewind
// must read the shard's state. (Every Harness also fails a test in which the backend
// was told a changed state was unchanged.) Every receive slot is pinned.
TEST(ShardRecoveryTest, DeviceKeepsTheStateOnlyWhileItIsTheLastMergesOutput) {
  TempDir dir;
  const int64_t n = 7;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.checkpoint_every = 1;
  auto store = OpenStore(dir.path(), o);
  Harness h(o, n, nullptr, store.get());
  h.JoinAll({0.5f, -0.25f, 1, 0, 2, -1, 0.125f});
  EXPECT_EQ(h.residency().pinned, 3);
  for (int64_t t = 0; t < 3; ++t) {
    Step(h, t, n);
    ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  }
  EXPECT_EQ(h.residency().calls, 3);
  EXPECT_EQ(h.residency().hits, 2);
  ASSERT_TRUE(h.core().Rewind(kJob, 2, 1).ok());  // the store keeps steps 3 and 2
  Step(h, 2, n);
  EXPECT_EQ(h.residency().calls, 4);
  EXPECT_EQ(h.residency().hits, 2);  // the rewound state was read
  Step(h, 3, n);
  EXPECT_EQ(h.residency().hits, 3);
  EXPECT_EQ(h.residency().mismatches, 0);
}

TEST(ShardRecoveryTest, RestartRestoresTheNewestValidCheckpointInANewGeneration) {
  TempDir dir;
  const int64_t n = 6;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.checkpoint_every = 2;
  std::vector<float> w4;
  {
    auto store = OpenStore(dir.path(), o);
    Harness h(o, n, nullptr, store.get());
    h.JoinAll({1, 2, 3, 4, 5, 6});
    for (int64_t t = 0; t < 5; ++t) {
      Step(h, t, n);
      ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
    }
    // Step 4 is the newest checkpoint, step 2 the one before; w has moved on to step 5.
  }
  {
    auto store = OpenStore(dir.path(), o);
    Harness h(o, n, nullptr, store.get());
    ASSERT_TRUE(h.core().RestoreNewest().ok());
    const ShardStatus st = h.core().GetStatus();
    EXPECT_TRUE(st.job.initialized);
    EXPECT_TRUE(st.job.restored);
    EXPECT_EQ(st.job.step, 4);
    EXPECT_EQ(st.job.job.generation, 1);
    absl::StatusOr<JoinInfo> join = h.core().Join(h.Args(0));
    ASSERT_TRUE(join.ok()) << join.status();
    EXPECT_FALSE(join->needs_parameters);
    h.JoinAll({});
    w4 = W(h);
    // The first point after a restore is the unperturbed w.
    EXPECT_TRUE(BitIdentical(h.EvalPoint(1, 4), w4));
  }
  // The newest file is damaged: the older one (step 2) is used instead.
  for (const auto& e : fs::directory_iterator(dir.path())) {
    if (e.path().string().find("-step-4.") != std::string::npos) {
      fs::resize_file(e.path(), fs::file_size(e.path()) / 2);
    }
  }
  {
    auto store = OpenStore(dir.path(), o);
    Harness h(o, n, nullptr, store.get());
    ASSERT_TRUE(h.core().RestoreNewest().ok());
    EXPECT_EQ(h.core().GetStatus().job.step, 2);
    // A worker of another model: the checkpoint is refused and the shard starts blank.
    JoinArgs other = h.Args(0);
    other.layout = Layout(n + 2);
    absl::StatusOr<JoinInfo> join = h.core().Join(other);
    ASSERT_TRUE(join.ok()) << join.status();
    EXPECT_TRUE(join->needs_parameters);
    EXPECT_FALSE(h.core().GetStatus().job.initialized);
  }
}

TEST(ShardRecoveryTest, OtherSettingsRefuseCheckpointsUnlessResumingWithNewConfig) {
  TempDir dir;
  const int64_t n = 4;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  {
    auto store = OpenStore(dir.path(), o);
    Harness h(o, n, nullptr, store.get());
    h.JoinAll({1, 2, 3, 4});
    Step(h, 0, n);
    h.core().Drain();  // writes step 1
    ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  }
  ShardOptions lower = o;
  lower.lr.peak = o.lr.peak / 2;  // an operator's remedy after a divergence
  {
    auto store = OpenStore(dir.path(), lower);
    EXPECT_TRUE(store->Candidates().empty());
  }
  CheckpointOptions c;
  c.dir = dir.path();
  c.config_hash = lower.ConfigHash();
  c.accept_other_config = true;
  auto store = CheckpointStore::Open(c);
  ASSERT_TRUE(store.ok());
  Harness h(lower, n, nullptr, store->get());
  ASSERT_TRUE(h.core().RestoreNewest().ok());
  EXPECT_EQ(h.core().GetStatus().job.step, 1);
  // It is this shard's checkpoint from now on: the next one carries the new hash.
  h.JoinAll({});
  Step(h, 1, n);
  h.core().Drain();
  ASSERT_TRUE((*store)->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(OpenStore(dir.path(), lower)->Candidates().front().step, 2);
}

class WaitRecorder : public ShardObserver {
 public:
  void OnWaiting(int ranks, absl::Duration waited) override {
    last_ranks = ranks;
    last_waited = waited;
  }
  int last_ranks = -1;
  absl::Duration last_waited;
};

TEST(ShardRecoveryTest, FreshNoiseCheckpointsAndRewindsOnlyToAStepsStart) {
  TempDir dir;
  const int64_t n = 6;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.noise_timing = NoiseTiming::kFresh;
  o.checkpoint_every = 1;  // optimizer steps: every second pass
  auto store = OpenStore(dir.path(), o, /*keep=*/4);
  Harness h(o, n, nullptr, store.get());
  h.JoinAll({1, 2, 3, 4, 5, 6});
  const std::vector<float> w0 = W(h);
  // Pass 0 (noise): w stays, every worker gets its own perturbed point.
  Step(h, 0, n);
  ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  EXPECT_TRUE(BitIdentical(W(h), w0));
  EXPECT_FALSE(BitIdentical(h.EvalPoint(0, 1), w0));
  EXPECT_FALSE(BitIdentical(h.EvalPoint(0, 1), h.EvalPoint(1, 1)));
  // Mid-step the shard offers the step's start, in memory, and no checkpoint of pass 1.
  EXPECT_EQ(h.core().GetStatus().job.rewind_steps, (std::vector<int64_t>{0}));
  // Pass 1 (update): w moves; every worker gets the same unperturbed w.
  Step(h, 1, n);
  ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  const std::vector<float> w2 = W(h);
  EXPECT_FALSE(BitIdentical(w2, w0));
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(BitIdentical(h.EvalPoint(r, 2), w2));
  EXPECT_EQ(h.core().GetStatus().job.rewind_steps, (std::vector<int64_t>{2, 0}));
  // After the next noise pass a rewind to pass 2 is in memory and exact; a drain's
  // checkpoint mid-step is that of pass 2.
  Step(h, 2, n);
  EXPECT_EQ(h.core().Rewind(kJob, 3, 1).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<JobStateInfo> r = h.core().Rewind(kJob, 2, 1);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->step, 2);
  EXPECT_TRUE(BitIdentical(W(h), w2));
  for (int rank = 0; rank < 3; ++rank) EXPECT_TRUE(BitIdentical(h.EvalPoint(rank, 2), w2));
  Step(h, 2, n);
  EXPECT_EQ(h.Step(), 3);
  h.core().Drain();
  ASSERT_TRUE(store->Flush(absl::Seconds(30)).ok());
  for (const CheckpointInfo& c : store->Candidates()) EXPECT_EQ(c.step % 2, 0) << c.path;
}

TEST(ShardRecoveryTest, StalledStepNamesTheRanksItWaitsFor) {
  FakeClock clock;
  WaitRecorder recorder;
  Harness h(ThreeWorkers(SmoothingMode::kNone), 4, &clock, nullptr, &recorder);
  h.JoinAll({0, 0, 0, 0});
  ASSERT_TRUE(h.Push(0, 0, 1, {1, 1, 1, 1}).ok());
  h.core().CloseStream(2, h.session(2));  // rank 2 was killed; no quorum: the step waits
  clock.now += absl::Seconds(40);
  h.core().CheckDeadline();
  EXPECT_EQ(recorder.last_ranks, 2);
  EXPECT_EQ(recorder.last_waited, absl::Seconds(40));
  const ShardStatus st = h.core().GetStatus();
  EXPECT_EQ(st.waiting_for, (std::vector<int>{1, 2}));
  EXPECT_EQ(st.waited, absl::Seconds(40));
  ASSERT_TRUE(h.Push(1, 0, 1, {1, 1, 1, 1}).ok());
  EXPECT_EQ(h.core().GetStatus().waiting_for, (std::vector<int>{2}));
}

TEST(ShardRecoveryTest, DoneOnceLiveWorkersLeftAfterTheLastStep) {
  ShardOptions o = ThreeWorkers(SmoothingMode::kNone);
  o.lr.total_steps = 1;
  Harness h(o, 4);
  h.JoinAll({0, 0, 0, 0});
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(h.Push(r, 0, 1, {1, 1, 1, 1}).ok());
  EXPECT_TRUE(h.core().Leave(0).ok());
  EXPECT_TRUE(h.core().Leave(1).ok());
  EXPECT_FALSE(h.core().Done());  // rank 2 is still connected
  h.core().CloseStream(2, h.session(2));
  EXPECT_TRUE(h.core().Done());  // rank 2 is gone: nobody is left to wait for
}

TEST(ShardRecoveryTest, NotDoneBeforeTheLastStepWhileAWorkerIsGone) {
  ShardOptions o = ThreeWorkers(SmoothingMode::kNone);
  o.lr.total_steps = 10;
  Harness h(o, 4);
  h.JoinAll({0, 0, 0, 0});
  EXPECT_TRUE(h.core().Leave(0).ok());
  h.core().CloseStream(1, h.session(1));
  h.core().CloseStream(2, h.session(2));
  EXPECT_FALSE(h.core().Done());  // they may come back: the job is at step 0 of 10
}

}  // namespace
}  // namespace gnc
