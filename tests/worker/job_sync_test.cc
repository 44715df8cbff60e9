// DecideJobSync against hand-made shard states: every case a restart, a drain or a
// lost checkpoint can produce.
#include "worker/job_sync.h"

#include "gtest/gtest.h"

namespace gnc {
namespace {

using Kind = SyncDecision::Kind;

ShardJobView Live(int index, uint64_t job, int64_t gen, int64_t step,
                  std::vector<int64_t> steps = {}) {
  ShardJobView v;
  v.index = index;
  v.address = "127.0.0.1:" + std::to_string(7000 + index);
  v.initialized = true;
  v.job_id = job;
  v.generation = gen;
  v.step = step;
  v.rewind_steps = steps.empty() ? std::vector<int64_t>{step} : steps;
  return v;
}

ShardJobView Blank(int index) {
  ShardJobView v;
  v.index = index;
  v.address = "127.0.0.1:" + std::to_string(7000 + index);
  return v;
}

TEST(JobSyncTest, NewJobIsReady) {
  SyncDecision d = DecideJobSync({Blank(0), Blank(1)}, 0);
  EXPECT_EQ(d.kind, Kind::kReady);
  EXPECT_EQ(d.job_id, 0u);
  // Shard 0 took w0 already, shard 1 not yet: the offer fills it in.
  d = DecideJobSync({Live(0, 7, 0, 0), Blank(1)}, 0);
  EXPECT_EQ(d.kind, Kind::kReady);
  EXPECT_EQ(d.job_id, 7u);
}

TEST(JobSyncTest, RunningJobWithinOneStepIsReady) {
  SyncDecision d = DecideJobSync({Live(0, 7, 3, 100), Live(1, 7, 3, 101)}, 7);
  EXPECT_EQ(d.kind, Kind::kReady);
  EXPECT_EQ(d.generation, 3);
}

TEST(JobSyncTest, BlankShardInAStartedJobFailsNamingEveryShard) {
  for (uint64_t known : {uint64_t{0}, uint64_t{7}}) {
    SyncDecision d = DecideJobSync({Live(0, 7, 0, 1002), Blank(1)}, known);
    ASSERT_EQ(d.kind, Kind::kFail) << known;
    EXPECT_NE(d.message.find("shard 0 (127.0.0.1:7000) is at step 1002"), std::string::npos)
        << d.message;
    EXPECT_NE(d.message.find("shard 1 (127.0.0.1:7001) holds no job"), std::string::npos)
        << d.message;
  }
  // A worker of a job whose every shard came back blank must not start a new one.
  EXPECT_EQ(DecideJobSync({Blank(0), Blank(1)}, 7).kind, Kind::kFail);
  // ... while a restarted worker of the same lost job (knowing no id) starts afresh.
  EXPECT_EQ(DecideJobSync({Blank(0), Blank(1)}, 0).kind, Kind::kReady);
}

TEST(JobSyncTest, DifferentJobsOrDivergedFail) {
  EXPECT_EQ(DecideJobSync({Live(0, 7, 0, 5), Live(1, 8, 0, 5)}, 0).kind, Kind::kFail);
  EXPECT_EQ(DecideJobSync({Live(0, 8, 0, 5), Live(1, 8, 0, 5)}, 7).kind, Kind::kFail);
  ShardJobView bad = Live(1, 7, 0, 5);
  bad.diverged = true;
  SyncDecision d = DecideJobSync({Live(0, 7, 0, 5), bad}, 7);
  ASSERT_EQ(d.kind, Kind::kFail);
  EXPECT_NE(d.message.find("diverged"), std::string::npos);
}

TEST(JobSyncTest, RestoredShardPullsTheOthersBackToItsStep) {
  // Shard 1 restored its checkpoint of step 100 (generation 2 -> 3); shard 0 ran on
  // to 103 and holds checkpoints of 100 and 90.
  SyncDecision d =
      DecideJobSync({Live(0, 7, 2, 103, {103, 100, 90}), Live(1, 7, 3, 100, {100, 90})}, 7);
  ASSERT_EQ(d.kind, Kind::kRewind);
  EXPECT_EQ(d.step, 100);
  EXPECT_EQ(d.generation, 3);
  EXPECT_EQ(d.shards, std::vector<int>{0});
  // Once applied, everyone is at (3, 100): ready.
  d = DecideJobSync({Live(0, 7, 3, 100, {100, 90}), Live(1, 7, 3, 100, {100, 90})}, 7);
  EXPECT_EQ(d.kind, Kind::kReady);
}

TEST(JobSyncTest, UnreachableTargetFallsBackToTheNewestCommonStep) {
  // Shard 1 drained at step 103 and restored it; shard 0 went on to 104 and has no
  // checkpoint of 103: both go back to 100 in a new generation.
  SyncDecision d =
      DecideJobSync({Live(0, 7, 2, 104, {104, 100, 90}), Live(1, 7, 3, 103, {103, 100})}, 7);
  ASSERT_EQ(d.kind, Kind::kRewind);
  EXPECT_EQ(d.step, 100);
  EXPECT_EQ(d.generation, 4);
  EXPECT_EQ(d.shards, (std::vector<int>{0, 1}));
}

TEST(JobSyncTest, TwoRestoredShardsAtDifferentStepsRewindTogether) {
  SyncDecision d =
      DecideJobSync({Live(0, 7, 5, 100, {100, 90}), Live(1, 7, 5, 90, {90, 80})}, 7);
  ASSERT_EQ(d.kind, Kind::kRewind);
  EXPECT_EQ(d.step, 90);
  EXPECT_EQ(d.generation, 6);
}

TEST(JobSyncTest, NoCommonStepFails) {
  SyncDecision d = DecideJobSync({Live(0, 7, 2, 120, {120, 110}), Live(1, 7, 3, 100, {100})}, 7);
  ASSERT_EQ(d.kind, Kind::kFail);
  EXPECT_NE(d.message.find("no common step"), std::string::npos) << d.message;
}

}  // namespace
}  // namespace gnc
