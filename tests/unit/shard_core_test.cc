// ShardCore without a network: the step barrier, the modes end to end, quorum and
// every refusal leaving the state bit-identical.
#include "server/shard_core.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <vector>

#include "common/bf16.h"
#include "gtest/gtest.h"
#include "tests/unit/reference_gnc.h"
#include "tests/unit/shard_harness.h"

namespace gnc {
namespace {

using testing::BitIdentical;
using testing::FakeClock;
using testing::Harness;
using testing::kJob;
using testing::Layout;
using testing::ThreeWorkers;

using testing::RefConfig;
using testing::RefMode;
using testing::RefShard;

TEST(ShardCoreTest, GncTwoStepsMatchReferenceElementByElement) {
  const int64_t n = 7;
  Harness h(ThreeWorkers(SmoothingMode::kGnc), n);
  const std::vector<float> w0 = {0.5f, -0.25f, 1.0f, 0.0f, 2.0f, -1.0f, 0.125f};
  h.JoinAll(w0);
  // Hand-made gradients, unequal batch sizes n = {1, 2, 5}.
  const std::map<int, double> samples = {{0, 1}, {1, 2}, {2, 5}};
  std::vector<std::vector<float>> g = {
      {1, 2, 3, 4, 5, 6, 7}, {-1, 0, 1, 0, -1, 0, 1}, {0.5f, 0.5f, -0.5f, 2, 0, 0, -3}};
  RefShard ref(std::vector<double>(w0.begin(), w0.end()));
  RefConfig rc;
  rc.mode = RefMode::kGnc;
  rc.rho = 0.5;
  rc.weight_decay = 0.01;

  for (int64_t step = 0; step < 2; ++step) {
    std::map<int, std::vector<double>> rg;
    for (int r = 0; r < 3; ++r) {
      // Each worker's gradient depends on its own evaluation point x_k.
      std::vector<float> x = h.EvalPoint(r, step);
      std::vector<double> rx = ref.EvalPoint(r);
      for (int64_t i = 0; i < n; ++i) ASSERT_NEAR(x[i], rx[i], 1e-6) << "x_" << r << "[" << i << "]";
      std::vector<float> gk(n);
      for (int64_t i = 0; i < n; ++i) gk[i] = g[r][i] + 0.5f * x[i];
      rg[r] = std::vector<double>(n);
      for (int64_t i = 0; i < n; ++i) rg[r][i] = g[r][i] + 0.5 * rx[i];
      absl::StatusOr<PushOutcome> out = h.Push(r, step, static_cast<int64_t>(samples.at(r)), gk);
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, PushOutcome::kCommitted);
      EXPECT_EQ(h.Step(), r < 2 ? step : step + 1);
    }
    ref.Step(rc, step == 0 ? 0.1 : 0.2, rg, samples);
  }
  std::vector<float> w;
  int64_t step = 0;
  ASSERT_TRUE(h.Snapshot(&w, &step).ok());
  EXPECT_EQ(step, 2);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(w[i], ref.w[i], 1e-6) << i;
  for (int r = 0; r < 3; ++r) {
    std::vector<float> x = h.EvalPoint(r, 2);
    std::vector<double> rx = ref.EvalPoint(r);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(x[i], rx[i], 1e-6) << r << " " << i;
  }
  // One value by hand: step 0, element 0. x = w0 for everyone; g_k = g[k] + 0.5*0.5.
  // gbar = (1*1.25 + 2*(-0.75) + 5*0.75) / 8 = 0.4375; v = gbar + 0.01*0.5 = 0.4425;
  // w1 = 0.5 - 0.1*0.4425 = 0.45575; delta_0 = -0.5*0.1*(1.25-0.4375) = -0.040625.
  RefShard hand(std::vector<double>(w0.begin(), w0.end()));
  std::map<int, std::vector<double>> g0;
  for (int r = 0; r < 3; ++r) {
    g0[r] = std::vector<double>(n);
    for (int64_t i = 0; i < n; ++i) g0[r][i] = g[r][i] + 0.5 * w0[i];
  }
  hand.Step(rc, 0.1, g0, samples);
  EXPECT_NEAR(hand.w[0], 0.45575, 1e-12);
  EXPECT_NEAR(hand.delta[0][0], -0.040625, 1e-12);
}

TEST(ShardCoreTest, ModeNoneSendsUnperturbedPoint) {
  Harness h(ThreeWorkers(SmoothingMode::kNone), 5);
  h.JoinAll({1, 2, 3, 4, 5});
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(h.Push(r, 0, 4, {1.0f * r, 1, 1, 1, 1}).ok());
  std::vector<float> w;
  int64_t step;
  ASSERT_TRUE(h.Snapshot(&w, &step).ok());
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(BitIdentical(h.EvalPoint(r, 1), w));
}

TEST(ShardCoreTest, EveryRefusalLeavesStateBitIdentical) {
  const int64_t n = 6;
  Harness h(ThreeWorkers(SmoothingMode::kGnc), n);
  h.JoinAll({1, 1, 1, 1, 1, 1});
  const std::vector<float> good = {1, 2, 3, 4, 5, 6};
  // Complete step 0 so there are deltas and momentum to protect.
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(h.Push(r, 0, 2 + r, {good[0] * r, 2, 3, 4, 5, 6}).ok());
  ASSERT_TRUE(h.Push(0, 1, 2, good).ok());  // rank 0 is in for step 1 already
  const std::vector<float> before = h.State();

  auto chunk = [&](int rank, int64_t step, int64_t off, std::vector<float> v, bool last,
                   int64_t samples = 4) {
    static std::vector<float> keep;
    keep = std::move(v);
    const Payload payload = testing::FloatPayload(keep);
    GradientChunk c;
    c.rank = rank;
    c.session = h.session(rank);
    c.step = step;
    c.num_samples = samples;
    c.offset = off;
    c.payload = &payload;
    c.last = last;
    return h.core().PushGradient(c);
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Bad {
    const char* what;
    absl::StatusCode code;
    std::function<absl::StatusOr<PushOutcome>()> push;
  };
  std::vector<Bad> cases = {
      {"unknown worker", absl::StatusCode::kNotFound,
       [&] { return chunk(9, 1, 0, {1}, false); }},
      {"stale step", absl::StatusCode::kAborted, [&] { return chunk(1, 0, 0, good, true); }},
      {"future step", absl::StatusCode::kFailedPrecondition,
       [&] { return chunk(1, 2, 0, good, true); }},
      {"duplicate gradient", absl::StatusCode::kAlreadyExists,
       [&] { return chunk(0, 1, 0, good, true); }},
      {"gap", absl::StatusCode::kInvalidArgument,
       [&] {
         EXPECT_TRUE(chunk(1, 1, 0, {1, 2}, false).ok());
         return chunk(1, 1, 3, {1, 2, 3}, true);
       }},
      {"duplicate chunk", absl::StatusCode::kInvalidArgument,
       [&] {
         EXPECT_TRUE(chunk(1, 1, 0, {1, 2}, false).ok());
         return chunk(1, 1, 0 + 1, {1, 2}, false);
       }},
      {"out of range", absl::StatusCode::kInvalidArgument,
       [&] { return chunk(1, 1, 0, {1, 2, 3, 4, 5, 6, 7}, true); }},
      {"NaN", absl::StatusCode::kInvalidArgument,
       [&] {
         EXPECT_TRUE(chunk(1, 1, 0, {1, 2, 3}, false).ok());
         return chunk(1, 1, 3, {4, nan, 6}, true);
       }},
      {"Inf", absl::StatusCode::kInvalidArgument, [&] { return chunk(1, 1, 0, {inf}, false); }},
      {"zero samples", absl::StatusCode::kInvalidArgument,
       [&] { return chunk(1, 1, 0, good, true, 0); }},
      {"early last", absl::StatusCode::kInvalidArgument,
       [&] { return chunk(1, 1, 0, {1, 2}, true); }},
      {"missing last", absl::StatusCode::kInvalidArgument,
       [&] { return chunk(1, 1, 0, good, false); }},
      {"bad decode", absl::StatusCode::kInvalidArgument,
       [&] {
         GradientChunk c;
         c.rank = 1;
         c.session = h.session(1);
         c.step = 1;
         c.num_samples = 1;
         c.decode_status = absl::InvalidArgumentError("payload of 3 bytes");
         return h.core().PushGradient(c);
       }},
      {"stale session", absl::StatusCode::kCancelled,
       [&] {
         GradientChunk c;
         c.rank = 1;
         c.session = 12345;
         c.step = 1;
         c.num_samples = 1;
         static const Payload payload = testing::FloatPayload(good);
         c.payload = &payload;
         c.last = true;
         return h.core().PushGradient(c);
       }},
  };
  for (const Bad& b : cases) {
    absl::StatusOr<PushOutcome> out = b.push();
    EXPECT_EQ(out.status().code(), b.code) << b.what << ": " << out.status();
    EXPECT_FALSE(out.status().message().empty()) << b.what;
    EXPECT_TRUE(BitIdentical(h.State(), before)) << b.what;
    EXPECT_EQ(h.Step(), 1) << b.what;
  }
  // The rest of a refused attempt is dropped without a second verdict.
  ASSERT_FALSE(chunk(1, 1, 0, {nan, 1}, false).ok());
  EXPECT_EQ(*chunk(1, 1, 2, {1, 2}, false), PushOutcome::kDropped);

  // Join refusals.
  JoinArgs a = h.Args(1);
  a.layout = Layout(n + 1);
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kFailedPrecondition);
  a = h.Args(1);
  a.config_hash = 42;
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kFailedPrecondition);
  a = h.Args(1);
  a.num_workers = 4;
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kFailedPrecondition);
  a = h.Args(1);
  a.shard_index = 1;
  a.num_shards = 2;
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kFailedPrecondition);
  a = h.Args(5);
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kInvalidArgument);
  a = h.Args(1);
  a.local_batch_size = 0;
  EXPECT_EQ(h.core().Join(a).status().code(), absl::StatusCode::kInvalidArgument);
  a = h.Args(1);
  a.config_hash = h.core().options().ConfigHash();
  EXPECT_TRUE(h.core().Join(a).ok());  // idempotent re-join
  // Offers: wrong size, non-finite, and a second valid one that must be discarded.
  EXPECT_EQ(h.core().OfferParameters(1, kJob, {1, 2}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(h.core().OfferParameters(1, kJob, {1, 2, 3, nan, 5, 6}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(h.core().OfferParameters(1, kJob, {9, 9, 9, 9, 9, 9})->accepted);
  EXPECT_TRUE(BitIdentical(h.State(), before));

  // After all that, valid gradients complete step 1 exactly as if nothing happened.
  Harness clean(ThreeWorkers(SmoothingMode::kGnc), n);
  clean.JoinAll({1, 1, 1, 1, 1, 1});
  for (int r = 0; r < 3; ++r) {
    ASSERT_TRUE(clean.Push(r, 0, 2 + r, {good[0] * r, 2, 3, 4, 5, 6}).ok());
  }
  ASSERT_TRUE(clean.Push(0, 1, 2, good).ok());
  for (Harness* x : {&h, &clean}) {
    ASSERT_TRUE(x->Push(1, 1, 3, {6, 5, 4, 3, 2, 1}).ok());
    ASSERT_TRUE(x->Push(2, 1, 3, {0, 0, 0, 1, 1, 1}).ok());
  }
  EXPECT_TRUE(BitIdentical(h.State(), clean.State()));
}

TEST(ShardCoreTest, ChunkOutsideAnyStreamIsCancelled) {
  // Session 0 is "no stream": a rank that joined but never opened one, or whose stream
  // closed. Its slot is sized only by OpenStream, so such a chunk must not reach it.
  const int64_t n = 4;
  Harness h(ThreeWorkers(SmoothingMode::kGnc), n);
  for (int r = 0; r < 3; ++r) ASSERT_TRUE(h.core().Join(h.Args(r)).ok());
  ASSERT_TRUE(h.core().OfferParameters(0, kJob, {1, 2, 3, 4}).ok());
  h.Reconnect(0);
  h.Reconnect(2);
  h.core().CloseStream(2, h.session(2));
  const std::vector<float> before = h.State();
  const std::vector<float> g = {1, 2, 3, 4};
  const Payload payload = testing::FloatPayload(g);
  for (int rank : {1, 2}) {
    GradientChunk c;
    c.rank = rank;
    c.session = 0;
    c.num_samples = 1;
    c.payload = &payload;
    c.last = true;
    EXPECT_EQ(h.core().PushGradient(c).status().code(), absl::StatusCode::kCancelled) << rank;
    EXPECT_EQ(h.core().NextPoint(rank, 0, PointTag()).status().code(),
              absl::StatusCode::kCancelled)
        << rank;
  }
  EXPECT_TRUE(BitIdentical(h.State(), before));
  EXPECT_EQ(h.Step(), 0);
}

TEST(ShardCoreTest, StragglerTimeoutCompletesWithQuorumAndLateGradientIsAborted) {
  FakeClock clock;
  ShardOptions o = ThreeWorkers(SmoothingMode::kGnc);
  o.min_workers = 2;
  o.straggler_timeout = absl::Seconds(5);
  Harness h(o, 4, &clock);
  h.JoinAll({0, 0, 0, 0});
  ASSERT_TRUE(h.Push(0, 0, 1, {1, 1, 1, 1}).ok());
  ASSERT_TRUE(h.Push(1, 0, 1, {3, 3, 3, 3}).ok());
  clock.now += absl::Seconds(4);
  h.core().CheckDeadline();
  EXPECT_EQ(h.Step(), 0);  // still waiting for rank 2
  clock.now += absl::Seconds(2);
  h.core().CheckDeadline();
  EXPECT_EQ(h.Step(), 1);
  std::vector<float> w;
  int64_t step;
  ASSERT_TRUE(h.Snapshot(&w, &step).ok());
  EXPECT_NEAR(w[0], -0.1 * 2.0, 1e-6);  // mean of the two, lr(0) = 0.1
  // The straggler's gradient for step 0 is late; it carries on from w (no delta).
  absl::StatusOr<PushOutcome> late = h.Push(2, 0, 1, {100, 100, 100, 100});
  EXPECT_EQ(late.status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(BitIdentical(h.EvalPoint(2, 1), w));
  EXPECT_FALSE(BitIdentical(h.EvalPoint(0, 1), w));  // contributors are perturbed
  ASSERT_TRUE(h.Snapshot(&w, &step).ok());
  EXPECT_NEAR(w[0], -0.2, 1e-6);  // the late gradient changed nothing
}

TEST(ShardCoreTest, QuorumIsNotEnoughBeforeTheTimeoutButDisconnectIs) {
  FakeClock clock;
  ShardOptions o = ThreeWorkers(SmoothingMode::kNone);
  o.min_workers = 2;
  Harness h(o, 4, &clock);
  h.JoinAll({0, 0, 0, 0});
  ASSERT_TRUE(h.Push(0, 0, 1, {1, 1, 1, 1}).ok());
  ASSERT_TRUE(h.Push(1, 0, 1, {1, 1, 1, 1}).ok());
  EXPECT_EQ(h.Step(), 0);
  h.core().CloseStream(2, h.session(2));  // worker 2 died
  EXPECT_EQ(h.Step(), 1);
  EXPECT_EQ(h.core().GetStatus().connected, 2);
}

TEST(ShardCoreTest, BelowQuorumWaitsEvenAfterTimeout) {
  FakeClock clock;
  ShardOptions o = ThreeWorkers(SmoothingMode::kNone);
  o.min_workers = 2;
  Harness h(o, 4, &clock);
  h.JoinAll({0, 0, 0, 0});
  ASSERT_TRUE(h.Push(0, 0, 1, {1, 1, 1, 1}).ok());
  h.core().CloseStream(1, h.session(1));
  h.core().CloseStream(2, h.session(2));
  clock.now += absl::Hours(1);
  h.core().CheckDeadline();
  EXPECT_EQ(h.Step(), 0);
}

TEST(ShardCoreTest, NewStreamSupersedesOldAndLeaveFinishesJob) {
  Harness h(ThreeWorkers(SmoothingMode::kNone), 4);
  h.JoinAll({0, 0, 0, 0});
  const uint64_t old = h.session(1);
  absl::StatusOr<uint64_t> fresh = h.core().OpenStream(1);
  ASSERT_TRUE(fresh.ok());
  EXPECT_EQ(h.core().NextPoint(1, old, PointTag()).status().code(),
            absl::StatusCode::kCancelled);
  h.core().CloseStream(1, old);  // the old stream's close must not disconnect the new one
  EXPECT_EQ(h.core().GetStatus().connected, 3);
  for (int r = 0; r < 3; ++r) EXPECT_TRUE(h.core().Leave(r).ok());
  EXPECT_TRUE(h.core().Done());
  EXPECT_EQ(h.core().Leave(7).code(), absl::StatusCode::kNotFound);
  h.core().Drain();
  EXPECT_EQ(h.core().Join(h.Args(0)).status().code(), absl::StatusCode::kUnavailable);
}

// Waiter: counts the core's notices.
class Waiter : public PointWaiter {
 public:
  void OnPointReady() override { ++told; }
  int told = 0;
};

TEST(ShardCoreTest, APointIsDueOncePerStepAndWaitersAreToldWhenItIs) {
  Harness h(ThreeWorkers(SmoothingMode::kGnc), 4);
  h.JoinAll({0, 0, 0, 0});
  auto waiter = std::make_shared<Waiter>();
  absl::StatusOr<std::shared_ptr<const Publication>> first =
      h.core().NextPoint(0, h.session(0), PointTag(), waiter);
  ASSERT_TRUE(first.ok() && *first != nullptr);
  EXPECT_EQ((*first)->tag().step, 0);
  // Sent already: nothing is due until the step completes; the waiter is told then.
  absl::StatusOr<std::shared_ptr<const Publication>> again =
      h.core().NextPoint(0, h.session(0), (*first)->tag(), waiter);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*again, nullptr);
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(h.Push(r, 0, 1, {1, 2, 3, 4}).ok());
  EXPECT_EQ(waiter->told, 0);
  ASSERT_TRUE(h.Push(2, 0, 1, {4, 3, 2, 1}).ok());
  EXPECT_EQ(waiter->told, 1);
  absl::StatusOr<std::shared_ptr<const Publication>> next =
      h.core().NextPoint(0, h.session(0), (*first)->tag(), waiter);
  ASSERT_TRUE(next.ok() && *next != nullptr);
  EXPECT_EQ((*next)->tag().step, 1);
  // The step-0 publication is unchanged: immutable once published.
  EXPECT_EQ((*first)->tag().step, 0);
  EXPECT_FALSE((*first)->Perturbed(0));
  EXPECT_TRUE((*next)->Perturbed(0));
  // A superseded stream's waiter is told too (its next NextPoint is CANCELLED).
  auto old_waiter = std::make_shared<Waiter>();
  ASSERT_TRUE(h.core().NextPoint(1, h.session(1), (*next)->tag(), old_waiter)->get() == nullptr);
  const uint64_t old = h.session(1);
  h.Reconnect(1);
  EXPECT_EQ(old_waiter->told, 1);
  EXPECT_EQ(h.core().NextPoint(1, old, (*next)->tag()).status().code(),
            absl::StatusCode::kCancelled);
}

TEST(ShardCoreTest, Bf16StreamsGetTheirPointRoundedToNearestEven) {
  Harness h(ThreeWorkers(SmoothingMode::kGnc), 5);
  h.JoinAll({0.1f, 0.2f, 0.3f, 0.4f, 0.5f});
  absl::StatusOr<uint64_t> bf16 = h.core().OpenStream(2, WireDType::kBfloat16);
  ASSERT_TRUE(bf16.ok());
  for (int r = 0; r < 2; ++r) ASSERT_TRUE(h.Push(r, 0, 1, {1, 2, 3, 4, 5}).ok());
  // Rank 2's new stream pushes with its own session.
  const std::vector<float> g2 = {0.5f, 0.25f, 0.125f, 1, 3};
  const Payload payload = testing::FloatPayload(g2);
  GradientChunk c;
  c.rank = 2;
  c.session = *bf16;
  c.num_samples = 1;
  c.payload = &payload;
  c.last = true;
  ASSERT_TRUE(h.core().PushGradient(c).ok());
  std::shared_ptr<const Publication> pub = h.core().Current();
  ASSERT_EQ(pub->tag().step, 1);
  const std::vector<float> x2 = h.EvalPoint(2, 1);  // float32 view of the same point
  const PointBytes b = pub->For(2, WireDType::kBfloat16);
  ASSERT_EQ(b.bytes.size(), 5 * sizeof(uint16_t));
  for (int i = 0; i < 5; ++i) {
    uint16_t h16;
    std::memcpy(&h16, b.bytes.data() + 2 * i, 2);
    EXPECT_EQ(h16, FloatToBf16(x2[i])) << i;
  }
  // w itself in bf16 for a worker that gets it unperturbed.
  const PointBytes wb = pub->For(-1, WireDType::kBfloat16);
  uint16_t w0;
  std::memcpy(&w0, wb.bytes.data(), 2);
  EXPECT_EQ(w0, FloatToBf16((*pub->w())[0]));
}

}  // namespace
}  // namespace gnc

namespace gnc {
namespace {

using testing::Harness;

// A first Join whose layout would need more than max_shard_bytes is refused before
// anything is fixed: the next Join, of a layout that fits, fixes its own; the limit
// counts (2K + 4) floats per element with perturbations, (K + 4) without.
TEST(ShardCoreLimitsTest, OversizedFirstJoinFixesNothing) {
  ShardOptions o;
  o.num_workers = 2;
  o.mode = SmoothingMode::kGnc;
  o.max_shard_bytes = 4 * 8 * 1000;  // (2K + 4) = 8 floats for 1000 elements
  Harness h(o, 1000);
  EXPECT_EQ(h.core().OfferSize(0).status().code(), absl::StatusCode::kFailedPrecondition);
  JoinArgs big = h.Args(0);
  big.layout = *ModelLayout::Create({TensorSpec{"everything", {int64_t{1} << 40}}});
  absl::StatusOr<JoinInfo> refused = h.core().Join(big);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(refused.status().message().find("--max_shard_bytes"), std::string::npos);
  JoinArgs over = h.Args(0);
  over.layout = testing::Layout(1001);  // one element too many
  EXPECT_EQ(h.core().Join(over).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(h.core().OfferSize(0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(h.core().GetStatus().range.size(), 0);
  // The layout that fits is taken by both ranks; the oversized one stays refused.
  ASSERT_TRUE(h.core().Join(h.Args(0)).ok());
  ASSERT_TRUE(h.core().Join(h.Args(1)).ok());
  EXPECT_EQ(*h.core().OfferSize(1), 1000);
  EXPECT_EQ(h.core().Join(big).status().code(), absl::StatusCode::kFailedPrecondition);

  ShardOptions none = o;
  none.mode = SmoothingMode::kNone;  // (K + 4) = 6 floats per element
  none.max_shard_bytes = 4 * 6 * 1000;
  Harness h2(none, 1000);
  EXPECT_TRUE(h2.core().Join(h2.Args(0)).ok());
}

}  // namespace
}  // namespace gnc
