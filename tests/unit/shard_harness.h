// Test harness for ShardCore (no network): a CPU-backed core with K workers.
#ifndef GNC_TESTS_UNIT_SHARD_HARNESS_H_
#define GNC_TESTS_UNIT_SHARD_HARNESS_H_

#include <algorithm>
#include <cstring>
#include <map>
#include <vector>

#include "gtest/gtest.h"
#include "server/shard_core.h"

namespace gnc::testing {

constexpr uint64_t kJob = 0x600d;

// FloatPayload: float32 values as a one-piece payload (the bytes of `v`).
inline Payload FloatPayload(std::span<const float> v) {
  Payload p;
  p.pieces.emplace_back(reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(float));
  p.size = v.size() * sizeof(float);
  return p;
}

inline ModelLayout Layout(int64_t n) {
  return *ModelLayout::Create({TensorSpec{"a", {n - 1}}, TensorSpec{"b", {1}}});
}

// FakeClock: time moves only when the test says so.
struct FakeClock {
  absl::Time now = absl::UnixEpoch();
  ShardCore::ClockFn Fn() {
    return [this] { return now; };
  }
};

// Harness: a ShardCore on the CPU backend with K joined workers and helpers to push
// whole gradients and read evaluation points.
class Harness {
 public:
  Harness(ShardOptions o, int64_t n, FakeClock* clock = nullptr,
          CheckpointStore* checkpoints = nullptr, ShardObserver* observer = nullptr)
      : core_(o, NewCpuMergeBackend(), observer, clock ? clock->Fn() : nullptr, checkpoints),
        n_(n) {}

  ShardCore& core() { return core_; }

  // JoinAll: joins every rank, offers w0 (unless empty: a restored shard) and opens
  // every stream.
  void JoinAll(const std::vector<float>& w0) {
    for (int r = 0; r < core_.options().num_workers; ++r) {
      JoinArgs a = Args(r);
      ASSERT_TRUE(core_.Join(a).ok());
    }
    if (!w0.empty()) ASSERT_TRUE(core_.OfferParameters(0, kJob, w0)->accepted);
    for (int r = 0; r < core_.options().num_workers; ++r) Reconnect(r);
  }

  // Reconnect: a new stream for rank (a restarted worker).
  void Reconnect(int rank) {
    absl::StatusOr<uint64_t> s = core_.OpenStream(rank);
    ASSERT_TRUE(s.ok()) << s.status();
    sessions_[rank] = *s;
  }

  JoinArgs Args(int rank) const {
    JoinArgs a;
    a.rank = rank;
    a.num_workers = core_.options().num_workers;
    a.num_shards = core_.options().num_shards;
    a.shard_index = core_.options().shard_index;
    a.layout = Layout(n_);
    a.local_batch_size = 8;
    return a;
  }

  uint64_t session(int rank) { return sessions_[rank]; }
  int64_t Step() const { return core_.GetStatus().job.step; }

  absl::Status Snapshot(std::vector<float>* w, int64_t* step) const {
    std::shared_ptr<const Publication> pub = core_.Current();
    if (pub == nullptr) return absl::FailedPreconditionError("not initialised");
    *w = *pub->w();
    *step = pub->tag().step;
    return absl::OkStatus();
  }

  // Push: the whole gradient in chunks of `chunk` elements.
  absl::StatusOr<PushOutcome> Push(int rank, int64_t step, int64_t samples,
                                   const std::vector<float>& g, int64_t chunk = 3) {
    absl::StatusOr<PushOutcome> out = PushOutcome::kContinue;
    for (int64_t off = 0; off < static_cast<int64_t>(g.size()); off += chunk) {
      const int64_t len = std::min<int64_t>(chunk, g.size() - off);
      GradientChunk c;
      c.rank = rank;
      c.session = sessions_[rank];
      c.generation = core_.GetStatus().job.job.generation;
      c.step = step;
      c.num_samples = samples;
      c.offset = off;
      const Payload payload = FloatPayload(std::span<const float>(g.data() + off, len));
      c.payload = &payload;
      c.last = off + len == static_cast<int64_t>(g.size());
      out = core_.PushGradient(c);
      if (!out.ok()) return out;
    }
    return out;
  }

  // EvalPoint: rank's point of `step` as the current publication carries it.
  std::vector<float> EvalPoint(int rank, int64_t step) {
    std::vector<float> x(n_);
    std::shared_ptr<const Publication> pub = core_.Current();
    EXPECT_NE(pub, nullptr);
    if (pub == nullptr) return x;
    EXPECT_EQ(pub->tag().step, step);
    const PointBytes bytes = pub->For(rank, WireDType::kFloat32);
    EXPECT_EQ(bytes.bytes.size(), x.size() * sizeof(float));
    std::memcpy(x.data(), bytes.bytes.data(), std::min(bytes.bytes.size(), x.size() * 4));
    return x;
  }

  // State: everything a refusal must leave alone, as bytes.
  std::vector<float> State() {
    std::vector<float> all, w;
    int64_t step = 0;
    EXPECT_TRUE(Snapshot(&w, &step).ok());
    all.push_back(static_cast<float>(step));
    all.insert(all.end(), w.begin(), w.end());
    for (int r = 0; r < core_.options().num_workers; ++r) {
      std::vector<float> x = EvalPoint(r, step);
      all.insert(all.end(), x.begin(), x.end());
    }
    return all;
  }

 private:
  ShardCore core_;
  int64_t n_;
  std::map<int, uint64_t> sessions_;
};

inline bool BitIdentical(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

inline ShardOptions ThreeWorkers(SmoothingMode mode) {
  ShardOptions o;
  o.num_workers = 3;
  o.mode = mode;
  o.gnc_scale = 0.5;
  o.momentum = 0.9;
  o.weight_decay = 0.01;
  o.lr.peak = 0.2;
  o.lr.warmup_steps = 2;  // lr(0) = 0.1, lr(1) = 0.2
  return o;
}

}  // namespace gnc::testing

#endif  // GNC_TESTS_UNIT_SHARD_HARNESS_H_
