// Test harness for ShardCore (no network): a CPU-backed core with K workers.
#ifndef GNC_TESTS_UNIT_SHARD_HARNESS_H_
#define GNC_TESTS_UNIT_SHARD_HARNESS_H_

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
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

// ResidencyCounts: what a ResidentStateBackend saw.
struct ResidencyCounts {
  int calls = 0;
  int hits = 0;        // calls whose w and v the backend still held
  int mismatches = 0;  // ... and held something else than the w and v it was given
  int pinned = 0;      // ranges pinned now
  // Gradients, w_out, v_out or points a call got in memory that was not pinned (a
  // device backend would have staged them).
  int unpinned_io = 0;
};

// RecordingPinner: a device backend's pinner without a device: keeps the ranges and
// fails the test when a range is pinned over one still pinned (memory freed while
// pinned and allocated again) or when ranges are still pinned once every holder has
// let go (freed without Unpin).
class RecordingPinner final : public HostPinner {
 public:
  explicit RecordingPinner(std::shared_ptr<ResidencyCounts> counts) : counts_(std::move(counts)) {}
  ~RecordingPinner() override {
    EXPECT_EQ(pinned_.size(), 0u) << "ranges still pinned after their last holder";
  }
  void Pin(const void* data, size_t bytes) override {
    absl::MutexLock lock(&mu_);
    const bool added = pinned_.Add(data, bytes);
    EXPECT_TRUE(added) << "pinned over a range that was never unpinned";
    if (added) ++counts_->pinned;
  }
  void Unpin(const void* data) override {
    absl::MutexLock lock(&mu_);
    if (pinned_.Remove(data)) --counts_->pinned;
  }
  bool Contains(const void* data, size_t bytes) {
    absl::MutexLock lock(&mu_);
    return pinned_.Contains(data, bytes);
  }

 private:
  std::shared_ptr<ResidencyCounts> counts_;
  absl::Mutex mu_;
  PinnedRanges pinned_;
};

// ResidentStateBackend: the CPU merge, keeping each applied call's w_out and v_out
// under its out_version as a device backend keeps them resident. A call that names
// that version as its state_version is merged from the held copies, as on a device,
// and counts a mismatch if they differ from the w and v the shard core passed: the
// core claimed "unchanged since" for a state that changed (a restore, a rewind).
class ResidentStateBackend final : public MergeBackend {
 public:
  explicit ResidentStateBackend(std::shared_ptr<ResidencyCounts> counts)
      : inner_(NewCpuMergeBackend()),
        counts_(counts),
        pinner_(std::make_shared<RecordingPinner>(std::move(counts))) {}
  std::string Name() const override { return "cpu (resident state)"; }

  absl::Status MergeInto(const MergeParams& p, const MergeInputs& in, std::span<const float> w,
                         std::span<const float> v, std::span<float> w_out,
                         std::span<float> v_out, std::span<const PointOut> points,
                         MergeStats* stats) override {
    ++counts_->calls;
    auto pinned = [&](const void* data, size_t bytes) {
      if (!pinner_->Contains(data, bytes)) ++counts_->unpinned_io;
    };
    for (std::span<const float> g : in.grads) pinned(g.data(), g.size_bytes());
    pinned(w_out.data(), w_out.size_bytes());
    pinned(v_out.data(), v_out.size_bytes());
    for (const PointOut& x : points) {
      if (x.f32.empty()) {
        pinned(x.bf16.data(), x.bf16.size_bytes());
      } else {
        pinned(x.f32.data(), x.f32.size_bytes());
      }
    }
    std::vector<float> use_w(w.begin(), w.end()), use_v(v.begin(), v.end());
    if (p.state_version != 0 && p.state_version == held_version_) {
      ++counts_->hits;
      if (held_w_ != use_w || held_v_ != use_v) ++counts_->mismatches;
      use_w = held_w_;
      use_v = held_v_;
    }
    held_version_ = 0;
    absl::Status s = inner_->MergeInto(p, in, use_w, use_v, w_out, v_out, points, stats);
    if (s.ok() && p.apply_update) {
      held_w_.assign(w_out.begin(), w_out.end());
      held_v_.assign(v_out.begin(), v_out.end());
      held_version_ = p.out_version;
    }
    return s;
  }
  std::shared_ptr<HostPinner> Pinner() override { return pinner_; }

 private:
  std::unique_ptr<MergeBackend> inner_;
  std::shared_ptr<ResidencyCounts> counts_;
  uint64_t held_version_ = 0;
  std::vector<float> held_w_, held_v_;
  std::shared_ptr<RecordingPinner> pinner_;
};

// Harness: a ShardCore on the CPU backend (as a ResidentStateBackend) with K joined
// workers and helpers to push whole gradients and read evaluation points. Every
// harness checks, when it ends, that the core never claimed a changed state resident
// and that every buffer a merge read or wrote was pinned (as a device backend wants).
class Harness {
 public:
  Harness(ShardOptions o, int64_t n, FakeClock* clock = nullptr,
          CheckpointStore* checkpoints = nullptr, ShardObserver* observer = nullptr)
      : counts_(std::make_shared<ResidencyCounts>()),
        core_(o, std::make_unique<ResidentStateBackend>(counts_), observer,
              clock ? clock->Fn() : nullptr, checkpoints),
        n_(n) {}
  ~Harness() {
    EXPECT_EQ(counts_->mismatches, 0)
        << "the shard core passed a state_version for a w or v that had changed";
    EXPECT_EQ(counts_->unpinned_io, 0)
        << "a merge read or wrote a shard buffer that was not pinned";
  }

  ShardCore& core() { return core_; }
  const ResidencyCounts& residency() const { return *counts_; }

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
  std::shared_ptr<ResidencyCounts> counts_;
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
