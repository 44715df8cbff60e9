// libFuzzer target: the shard core's request path. The input is a job's settings, then
// a sequence of operations on one ShardCore (no network, no checkpoints): joins with
// fuzzed layouts, offers, streams opened and closed, gradient chunks (handed to the
// core directly, encoded by the wire encoder and parsed back as the gRPC layer does, or
// raw bytes parsed as a TrainRequest), leaves, rewinds, the clock moving, drains.
// Shards have at most 48 elements.
//
// After every operation it checks, besides no crash, leak or undefined behaviour:
// - a refused operation changes nothing a worker sees: the same publication, w
//   bit-identical, the same step, generation and divergence;
// - w is always finite, and a job fed only small values at lr <= 1 never diverges;
// - the step never goes back (without checkpoints no rewind can move it) and moves by
//   at most one per operation; only a rewind changes the generation;
// - each completed step merges exactly the gradients the core accepted, and its w
//   matches an independent double-precision update computed from the values the
//   harness sent (sample weights, clipping, weight decay, momentum, Nesterov);
// - every published point has the shard's size in either dtype; in mode none it is w.
// GNC_FUZZ_TRACE=1 prints one line per operation (to follow an input being replayed).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/wire.h"
#include "server/shard_core.h"
#include "server/train_chunk.h"

namespace gnc {
namespace {

#define FUZZ_CHECK(cond)                                                            \
  do {                                                                              \
    if (!(cond)) {                                                                  \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                 \
    }                                                                               \
  } while (0)

constexpr int64_t kMaxShardElements = 48;

// Input: the fuzzer's bytes, read from the front; zeros once they run out.
class Input {
 public:
  Input(const uint8_t* data, size_t size) : p_(data), end_(data + size) {}
  bool done() const { return p_ >= end_; }
  uint8_t Byte() { return p_ < end_ ? *p_++ : 0; }
  int Pick(int n) { return Byte() % n; }  // REQUIRES: 1 <= n <= 256
  uint64_t U64(int bytes = 8) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(Byte()) << (8 * i);
    return v;
  }
  std::string Bytes(size_t n) {
    n = std::min<size_t>(n, end_ - p_);
    std::string s(reinterpret_cast<const char*>(p_), n);
    p_ += n;
    return s;
  }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
};

ShardOptions Options(Input& in) {
  ShardOptions o;
  const int a = in.Byte(), b = in.Byte(), c = in.Byte(), d = in.Byte();
  o.num_workers = 1 + a % 3;
  o.mode = static_cast<SmoothingMode>(a / 3 % 3);
  o.nesterov = a / 9 % 2 == 1;
  o.num_shards = 1 + b % 3;
  o.shard_index = b / 3 % o.num_shards;
  o.min_workers = b / 9 % (o.num_workers + 1);
  static constexpr double kMomentum[] = {0, 0.5, 0.9};
  o.momentum = kMomentum[c % 3];
  o.weight_decay = c / 3 % 2 == 1 ? 0.01 : 0;
  static constexpr double kClip[] = {0, 1, 1e30};
  o.max_gradient_norm = kClip[c / 6 % 3];
  o.max_perturbation_norm = c / 18 % 2 == 1 ? 0.5 : 0;
  static constexpr double kLr[] = {0.1, 1, 1e30};
  o.lr.peak = kLr[d % 3];
  o.lr.warmup_steps = d / 3 % 3;
  switch (d / 9 % 3) {
    case 1:
      o.lr.decay = LrDecay::kStep;
      o.lr.step_every = 2;
      break;
    case 2:
      o.lr.decay = LrDecay::kCosine;
      o.lr.total_steps = o.lr.warmup_steps + 3;
      break;
  }
  o.gnc_scale = d / 27 % 2 == 1 ? 1.0 : 0.5;
  o.seed = 7;
  o.straggler_timeout = absl::Seconds(10);
  o.stall_report_after = absl::Seconds(20);
  return o;
}

// FuzzedLayout: up to three tensors of up to three dimensions; a few dimension bytes
// stand for invalid or huge sizes, which ModelLayout must refuse or which the caller
// must not join with (a shard allocates its size).
absl::StatusOr<ModelLayout> FuzzedLayout(Input& in) {
  static constexpr int64_t kOdd[] = {0, -1, int64_t{1} << 40, INT64_MAX, int64_t{1} << 20, 3};
  std::vector<TensorSpec> tensors(1 + in.Pick(3));
  for (size_t t = 0; t < tensors.size(); ++t) {
    const int flags = in.Byte();
    tensors[t].name = flags % 8 == 0 ? "t0" : flags % 8 == 1 ? "" : "t" + std::to_string(t);
    for (int k = flags / 8 % 4; k > 0; --k) {
      const int v = in.Byte();
      tensors[t].shape.push_back(v < 250 ? 1 + v % 4 : kOdd[v - 250]);
    }
  }
  return ModelLayout::Create(std::move(tensors));
}

// Values: what a chunk carries, as the fuzzer's bytes say: small multiples of 1/16
// (exact in bfloat16), any bit pattern (NaN, infinities, subnormals), huge values,
// or zeros. Returns the payload's bytes in `dtype`.
std::string Values(Input& in, int64_t n, WireDType dtype, int kind) {
  std::string bytes;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits = 0;
    switch (kind) {
      case 0:
        bits = std::bit_cast<uint32_t>(static_cast<int8_t>(in.Byte()) / 16.0f);
        break;
      case 1:
        bits = static_cast<uint32_t>(in.U64(4));
        break;
      case 2:
        bits = std::bit_cast<uint32_t>(static_cast<int8_t>(in.Byte()) * 1e30f);
        break;
    }
    if (dtype == WireDType::kBfloat16) {
      const uint16_t h = kind == 1 ? static_cast<uint16_t>(bits) : FloatToBf16(std::bit_cast<float>(bits));
      bytes.append(reinterpret_cast<const char*>(&h), 2);
    } else {
      bytes.append(reinterpret_cast<const char*>(&bits), 4);
    }
  }
  return bytes;
}

// Decode: the harness's own reading of a payload (little-endian float32 or the upper
// half of one).
std::vector<float> Decode(const std::string& bytes, WireDType dtype) {
  std::vector<float> out;
  const size_t width = ElementBytes(dtype);
  for (size_t i = 0; i + width <= bytes.size(); i += width) {
    uint32_t bits = 0;
    std::memcpy(reinterpret_cast<char*>(&bits) + (4 - width), bytes.data() + i, width);
    out.push_back(std::bit_cast<float>(bits));
  }
  return out;
}

bool Small(const std::vector<float>& v) {
  return std::all_of(v.begin(), v.end(), [](float x) { return std::fabs(x) <= 8; });
}

// SplitPayload: bytes in pieces cut where the fuzzer says (elements may straddle).
Payload SplitPayload(const std::string& bytes, uint8_t seed) {
  Payload p;
  p.size = bytes.size();
  uint32_t state = seed;
  size_t at = 0;
  while (at < bytes.size()) {
    state = state * 1103515245u + 12345u;
    const size_t piece =
        seed == 0 ? bytes.size() : std::min<size_t>(1 + (state >> 16) % 7, bytes.size() - at);
    p.pieces.emplace_back(reinterpret_cast<const uint8_t*>(bytes.data()) + at, piece);
    at += piece;
  }
  return p;
}

std::string Flatten(const Payload& p) {
  std::string out;
  for (auto piece : p.pieces) out.append(reinterpret_cast<const char*>(piece.data()), piece.size());
  return out;
}

class Recorder final : public ShardObserver {
 public:
  void OnStep(const StepReport& report) override { steps.push_back(report); }
  std::vector<StepReport> steps;
};

// Seen: what workers can see of the shard.
struct Seen {
  std::shared_ptr<const Publication> pub;
  std::vector<float> w;
  JobStateInfo job;
};

class Harness {
 public:
  explicit Harness(Input& in)
      : options_(Options(in)),
        core_(options_, NewCpuMergeBackend(), &recorder_, [this] { return now_; }),
        ranks_(options_.num_workers) {
    tame_ = options_.lr.peak <= 1;
    absl::StatusOr<ModelLayout> layout = FuzzedLayout(in);
    if (layout.ok() && layout->NumElements() <= options_.num_shards * kMaxShardElements) {
      layout_ = *std::move(layout);
    } else {
      layout_ = *ModelLayout::Create({TensorSpec{"w", {5}}, TensorSpec{"b", {1}}});
    }
  }

  void Run(Input& in) {
    while (!in.done()) {
      const Seen before = Look();
      recorder_.steps.clear();
      Step(in, before);
    }
  }

 private:
  struct Rank {
    bool joined = false;
    int64_t local_batch = 0;
    uint64_t session = 0, stale = 0;
    WireDType dtype = WireDType::kFloat32;
    int64_t expected = 0;          // next offset the harness sends
    std::vector<float> attempt;    // the values of the attempt the core is receiving
    bool committed = false;        // accepted for the current step
    std::vector<float> gradient;   // the accepted values
    int64_t samples = 0;
  };

  Seen Look() const {
    Seen s;
    s.pub = core_.Current();
    if (s.pub != nullptr) s.w = *s.pub->w();
    s.job = core_.GetStatus().job;
    return s;
  }

  int64_t ShardSize() const {
    absl::StatusOr<int64_t> size = core_.ShardSize();
    return size.ok() ? *size : 0;
  }

  // Unchanged: a refused (or read-only) operation left everything alone.
  static void Unchanged(const Seen& a, const Seen& b) {
    FUZZ_CHECK(a.pub == b.pub);
    FUZZ_CHECK(a.w.size() == b.w.size() &&
               (a.w.empty() || std::memcmp(a.w.data(), b.w.data(), a.w.size() * sizeof(float)) == 0));
    FUZZ_CHECK(a.job.step == b.job.step && a.job.job == b.job.job &&
               a.job.diverged == b.job.diverged && a.job.initialized == b.job.initialized);
  }

  void Step(Input& in, const Seen& before) {
    bool changes = false;   // the operation may complete a step or publish
    bool rewound = false;   // a rewind that moved the generation
    const int op = in.Pick(16);
    switch (op) {
      case 0:
        Join(in);
        break;
      case 1:
        changes = Offer(in);
        break;
      case 2:
        Open(in);
        break;
      case 3: {
        const int r = in.Pick(options_.num_workers);
        core_.CloseStream(r, in.Pick(2) == 0 ? ranks_[r].session : ranks_[r].stale);
        ranks_[r].expected = 0;
        changes = true;
        break;
      }
      case 4:
        NextPoint(in, before);
        break;
      case 5:
      case 6:
      case 7:
      case 8:
        changes = Chunk(in, before);
        break;
      case 9:
      case 10:
        changes = Whole(in, before);
        break;
      case 11:
        changes = RawWire(in);
        break;
      case 12: {
        const int r = in.Pick(options_.num_workers + 2) - 1;
        changes = core_.Leave(r).ok();
        break;
      }
      case 13:
        rewound = Rewind(in, before);
        changes = rewound;
        break;
      case 14:
        now_ += absl::Seconds(in.Pick(40));
        core_.CheckDeadline();
        changes = true;
        break;
      case 15:
        if (in.Pick(8) == 0) {
          core_.Drain();
        } else {
          Bootstrap(in);
          changes = true;
        }
        break;
    }
    const Seen after = Look();
    if (trace_) {
      std::fprintf(stderr, "op %d: step %lld gen %lld%s -> step %lld gen %lld%s\n", op,
                   static_cast<long long>(before.job.step),
                   static_cast<long long>(before.job.job.generation),
                   before.job.diverged ? " diverged" : "", static_cast<long long>(after.job.step),
                   static_cast<long long>(after.job.job.generation),
                   after.job.diverged ? " diverged" : "");
    }
    Check(before, after, changes, rewound);
  }

  void Check(const Seen& before, const Seen& after, bool changes, bool rewound) {
    if (after.pub != nullptr) {
      FUZZ_CHECK(static_cast<int64_t>(after.w.size()) == ShardSize());
      for (float x : after.w) FUZZ_CHECK(std::isfinite(x));
      for (int r = -1; r < options_.num_workers; ++r) {
        for (WireDType t : {WireDType::kFloat32, WireDType::kBfloat16}) {
          const PointBytes p = after.pub->For(r, t);
          FUZZ_CHECK(p.bytes.size() == after.w.size() * ElementBytes(t));
          if (options_.mode == SmoothingMode::kNone && t == WireDType::kFloat32) {
            FUZZ_CHECK(p.bytes.empty() ||
                       std::memcmp(p.bytes.data(), after.w.data(), p.bytes.size()) == 0);
          }
        }
      }
    }
    if (tame_) FUZZ_CHECK(!after.job.diverged);
    if (!changes) {
      Unchanged(before, after);
      FUZZ_CHECK(recorder_.steps.empty());
      return;
    }
    FUZZ_CHECK(after.job.step >= before.job.step && after.job.step <= before.job.step + 1);
    if (!rewound) FUZZ_CHECK(after.job.job.generation == before.job.job.generation);
    if (rewound) {
      // ResetStep: gradients committed for the step are forgotten.
      for (Rank& r : ranks_) r.committed = false;
    }
    if (after.job.step == before.job.step + 1) {
      FUZZ_CHECK(recorder_.steps.size() == 1);
      CheckStep(recorder_.steps[0], before, after);
    } else {
      FUZZ_CHECK(recorder_.steps.empty());
    }
  }

  // CheckStep: the step merged exactly the accepted gradients, and w moved as a
  // double-precision update from the harness's own copy of them says.
  void CheckStep(const StepReport& report, const Seen& before, const Seen& after) {
    const size_t d = before.w.size();
    FUZZ_CHECK(after.w.size() == d && report.step == before.job.step);
    std::vector<int> committed;
    for (int r = 0; r < options_.num_workers; ++r) {
      if (ranks_[r].committed) committed.push_back(r);
    }
    FUZZ_CHECK(report.ranks.size() == committed.size());
    for (size_t i = 0; i < committed.size(); ++i) FUZZ_CHECK(report.ranks[i] == committed[i]);
    double total = 0;
    for (int r : committed) total += static_cast<double>(ranks_[r].samples);
    std::vector<double> gbar(d, 0.0), gabs(d, 0.0);
    for (int r : committed) {
      const std::vector<float>& g = ranks_[r].gradient;
      FUZZ_CHECK(g.size() == d);
      double sq = 0;
      for (float x : g) sq += static_cast<double>(x) * x;
      const double max = options_.max_gradient_norm;
      const double scale = max > 0 && sq > max * max ? max / std::sqrt(sq) : 1.0;
      const double weight = ranks_[r].samples / total;
      for (size_t i = 0; i < d; ++i) {
        gbar[i] += weight * scale * g[i];
        gabs[i] += weight * std::fabs(scale * g[i]);
      }
    }
    const double lr = report.lr, mu = options_.momentum, wd = options_.weight_decay;
    for (size_t i = 0; i < d; ++i) {
      const double w = before.w[i];
      const double ge = gbar[i] + wd * w;
      const double vn = mu * v_[i] + ge;
      const double expected = w - lr * (options_.nesterov ? ge + mu * vn : vn);
      const double ge_abs = gabs[i] + wd * std::fabs(w);
      const double vn_abs = mu * v_abs_[i] + ge_abs;
      const double scale = std::fabs(w) + lr * (ge_abs + vn_abs * (1 + mu));
      const double err = std::fabs(after.w[i] - expected);
      if (!(err <= 1e-4 * scale + 1e-37)) {
        std::fprintf(stderr, "element %zu: w %.9g -> %.9g, expected %.9g (scale %.3g)\n", i, w,
                     after.w[i], expected, scale);
        FUZZ_CHECK(false);
      }
      v_[i] = vn;
      v_abs_[i] = vn_abs;
    }
    for (Rank& r : ranks_) r.committed = false;
  }

  JoinArgs Args(int rank) const {
    JoinArgs a;
    a.rank = rank;
    a.num_workers = options_.num_workers;
    a.num_shards = options_.num_shards;
    a.shard_index = options_.shard_index;
    a.layout = layout_;
    a.local_batch_size = 8;
    return a;
  }

  void Join(Input& in) {
    const int rank = in.Pick(options_.num_workers + 2) - 1;
    const int flags = in.Byte();
    JoinArgs a = Args(rank);
    if (flags & 1) a.num_workers += 1;
    if (flags & 2) a.num_shards += 1;
    if (flags & 4) a.shard_index = (a.shard_index + 1) % (a.num_shards + 1);
    if (flags & 8) {
      absl::StatusOr<ModelLayout> layout = FuzzedLayout(in);
      if (!layout.ok() || layout->NumElements() > options_.num_shards * kMaxShardElements) return;
      a.layout = *std::move(layout);
    }
    if (flags & 16) a.config_hash = flags & 32 ? options_.ConfigHash() : in.U64();
    if (flags & 64) a.job_id = flags & 128 ? job_id_ : in.U64(2);
    a.local_batch_size = in.Pick(10);
    absl::StatusOr<JoinInfo> info = core_.Join(a);
    if (!info.ok()) return;
    FUZZ_CHECK(rank >= 0 && rank < options_.num_workers);
    FUZZ_CHECK(info->range.size() > 0 && info->range.size() <= kMaxShardElements);
    ranks_[rank].joined = true;
    ranks_[rank].local_batch = a.local_batch_size;
  }

  bool Offer(Input& in) {
    const int rank = in.Pick(options_.num_workers + 2) - 1;
    const int flags = in.Byte();
    const int64_t size = std::max<int64_t>(0, ShardSize() + flags % 3 - 1);
    const uint64_t job = flags / 3 % 4 == 0 ? 0 : 0x600d + flags / 12 % 2;
    const int kind = flags / 24 % 4;
    const std::vector<float> w0 = Decode(Values(in, size, WireDType::kFloat32, kind),
                                         WireDType::kFloat32);
    absl::StatusOr<OfferResult> result = core_.OfferParameters(rank, job, w0);
    if (!result.ok() || !result->accepted) return false;
    FUZZ_CHECK(static_cast<int64_t>(w0.size()) == ShardSize());
    tame_ = tame_ && Small(w0);
    job_id_ = job;
    v_.assign(w0.size(), 0.0);
    v_abs_.assign(w0.size(), 0.0);
    return true;
  }

  void Open(Input& in, int forced_rank = -2) {
    const int rank = forced_rank != -2 ? forced_rank : in.Pick(options_.num_workers + 2) - 1;
    const WireDType dtype = in.Pick(2) == 0 ? WireDType::kFloat32 : WireDType::kBfloat16;
    absl::StatusOr<uint64_t> session = core_.OpenStream(rank, dtype);
    if (!session.ok()) return;
    Rank& r = ranks_[rank];
    FUZZ_CHECK(*session != 0 && *session != r.session);
    r.stale = r.session;
    r.session = *session;
    r.dtype = dtype;
    r.expected = 0;
  }

  // Bootstrap: every rank joins with the job's layout, w0 of small values is offered
  // and every stream opened: the shortcut to a running job.
  void Bootstrap(Input& in) {
    for (int r = 0; r < options_.num_workers; ++r) {
      if (core_.Join(Args(r)).ok()) {
        ranks_[r].joined = true;
        ranks_[r].local_batch = 8;
      }
    }
    const std::vector<float> w0 =
        Decode(Values(in, ShardSize(), WireDType::kFloat32, 0), WireDType::kFloat32);
    absl::StatusOr<OfferResult> result = core_.OfferParameters(0, 0x600d, w0);
    if (result.ok() && result->accepted) {
      job_id_ = 0x600d;
      v_.assign(w0.size(), 0.0);
      v_abs_.assign(w0.size(), 0.0);
    }
    for (int r = 0; r < options_.num_workers; ++r) Open(in, r);
  }

  void NextPoint(Input& in, const Seen& before) {
    const int rank = in.Pick(options_.num_workers);
    PointTag sent;
    if (in.Pick(2) == 0 && before.pub != nullptr) sent = before.pub->tag();
    absl::StatusOr<std::shared_ptr<const Publication>> pub =
        core_.NextPoint(rank, ranks_[rank].session, sent);
    if (pub.ok() && *pub != nullptr) {
      FUZZ_CHECK((*pub)->tag() != sent);
      FUZZ_CHECK(!ranks_[rank].committed);
    }
  }

  // Push: hands one chunk to the core and keeps the harness's copy of the attempt in
  // step with what the core accepted. Returns whether a step may have completed.
  bool Push(const GradientChunk& c, const std::string& payload) {
    absl::StatusOr<PushOutcome> out = core_.PushGradient(c);
    if (c.rank < 0 || c.rank >= options_.num_workers) {
      FUZZ_CHECK(!out.ok());
      return false;
    }
    Rank& r = ranks_[c.rank];
    const int64_t d = ShardSize();
    if (!out.ok() || *out == PushOutcome::kDropped) {
      FUZZ_CHECK(!out.ok() || c.offset != 0);
      r.expected = 0;
      return false;
    }
    // Stored: the chunk was in sequence, in range and finite.
    FUZZ_CHECK(c.decode_status.ok() && c.payload != nullptr);
    const std::vector<float> values = Decode(payload, c.dtype);
    FUZZ_CHECK(c.offset >= 0 && c.offset + static_cast<int64_t>(values.size()) <= d);
    FUZZ_CHECK(c.num_samples >= 1 || c.offset != 0);
    for (float x : values) FUZZ_CHECK(std::isfinite(x));
    if (c.offset == 0) {
      r.attempt.assign(d, 0.0f);
      r.samples = c.num_samples;
      FUZZ_CHECK(c.num_samples <= r.local_batch);
    }
    FUZZ_CHECK(r.attempt.size() == static_cast<size_t>(d));
    std::copy(values.begin(), values.end(), r.attempt.begin() + c.offset);
    r.expected = c.offset + static_cast<int64_t>(values.size());
    tame_ = tame_ && Small(values);
    if (*out == PushOutcome::kContinue) {
      FUZZ_CHECK(!c.last);
      return false;
    }
    FUZZ_CHECK(c.last && r.expected == d && !r.committed);
    r.committed = true;
    r.gradient = r.attempt;
    r.expected = 0;
    return true;
  }

  // PushVia: directly, or through the wire encoder and parser as the gRPC layer does.
  bool PushVia(bool wire, GradientChunk c, const std::string& payload, uint8_t split) {
    if (!wire) {
      const Payload p = SplitPayload(payload, split);
      if (c.decode_status.ok()) c.payload = &p;
      return Push(c, payload);
    }
    const v1::DType dtype = !c.decode_status.ok() ? static_cast<v1::DType>(7)
                                                  : ToProtoDType(c.dtype);
    const grpc::ByteBuffer msg = EncodeGradientChunk(
        c.step, c.num_samples, c.generation, c.offset, dtype, c.last,
        {reinterpret_cast<const uint8_t*>(payload.data()), payload.size()});
    std::vector<grpc::Slice> slices;
    TrainRequestView view;
    FUZZ_CHECK(ParseTrainRequest(msg, &slices, &view).ok());
    FUZZ_CHECK(view.kind == TrainRequestView::Kind::kGradient);
    return Push(ChunkFromWire(view, c.rank, c.session), Flatten(view.chunk.data));
  }

  int64_t Around(Input& in, int64_t current) {
    switch (in.Pick(8)) {
      case 6:
        return static_cast<int64_t>(static_cast<uint64_t>(current) - 1);
      case 7:
        return static_cast<int64_t>(static_cast<uint64_t>(current) + 1);
      default:
        return current;
    }
  }

  // Chunk: one chunk, each field right or wrong as the fuzzer says.
  bool Chunk(Input& in, const Seen& before) {
    const int64_t d = ShardSize();
    GradientChunk c;
    c.rank = in.Pick(options_.num_workers + 2) - 1;
    const Rank* r = c.rank >= 0 && c.rank < options_.num_workers ? &ranks_[c.rank] : nullptr;
    const int session = in.Pick(4);
    c.session = r == nullptr ? 1 : session < 2 ? r->session : session == 2 ? r->stale : in.U64(2);
    c.generation = Around(in, before.job.job.generation);
    c.step = Around(in, before.job.step);
    c.num_samples = in.Pick(10);
    const int64_t expected = r == nullptr ? 0 : r->expected;
    switch (in.Pick(8)) {
      case 5:
        c.offset = 0;
        break;
      case 6:
        c.offset = expected + 1;
        break;
      case 7:
        c.offset = static_cast<int64_t>(in.U64());
        break;
      default:
        c.offset = expected;
    }
    const int64_t n = in.Pick(static_cast<int>(d) + 2);
    const int dtype = in.Pick(4);
    c.dtype = dtype == 2 ? WireDType::kBfloat16 : WireDType::kFloat32;
    if (dtype == 3) c.decode_status = absl::InvalidArgumentError("unsupported dtype 7");
    const bool wrong_last = in.Pick(8) == 7;
    c.last = (static_cast<uint64_t>(c.offset) + n == static_cast<uint64_t>(d)) != wrong_last;
    const int kind = in.Pick(4);
    const uint8_t split = in.Byte();
    const bool wire = in.Pick(2) == 1;
    std::string payload = Values(in, n, c.dtype, kind);
    if (in.Pick(16) == 0 && !payload.empty()) {
      // Not a whole number of elements: the transport refuses it before the core.
      payload.pop_back();
      if (!wire) c.decode_status = absl::InvalidArgumentError("chunk payload not whole");
    }
    return PushVia(wire, c, payload, split);
  }

  // Whole: a whole, well-formed gradient for the current step, in chunks.
  bool Whole(Input& in, const Seen& before) {
    const int64_t d = ShardSize();
    const int rank = in.Pick(options_.num_workers);
    const Rank& r = ranks_[rank];
    const int64_t chunk = 1 + in.Pick(static_cast<int>(std::max<int64_t>(d, 1)));
    const int64_t samples = 1 + in.Pick(static_cast<int>(std::clamp<int64_t>(r.local_batch, 1, 8)));
    const int kind = in.Pick(8) == 0 ? 2 : 0;
    const bool wire = in.Pick(2) == 1;
    bool changes = false;
    for (int64_t off = 0; off < d; off += chunk) {
      GradientChunk c;
      c.rank = rank;
      c.session = r.session;
      c.generation = before.job.job.generation;
      c.step = before.job.step;
      // Only the chunk at offset 0 counts (Gradient.num_samples); the others may say
      // anything.
      c.num_samples = off == 0 ? samples : in.Pick(10);
      c.offset = off;
      c.dtype = r.dtype;
      const int64_t n = std::min(chunk, d - off);
      c.last = off + n == d;
      const std::string payload = Values(in, n, c.dtype, kind);
      const uint8_t split = in.Byte();
      changes |= PushVia(wire, c, payload, split);
    }
    return changes;
  }

  // RawWire: the fuzzer's bytes as a Train message on rank's stream.
  bool RawWire(Input& in) {
    const int rank = in.Pick(options_.num_workers);
    const std::string bytes = in.Bytes(in.Byte());
    grpc::Slice slice(bytes.data(), bytes.size());
    const grpc::ByteBuffer msg(&slice, 1);
    std::vector<grpc::Slice> slices;
    TrainRequestView view;
    if (!ParseTrainRequest(msg, &slices, &view).ok() ||
        view.kind != TrainRequestView::Kind::kGradient) {
      return false;
    }
    return Push(ChunkFromWire(view, rank, ranks_[rank].session), Flatten(view.chunk.data));
  }

  bool Rewind(Input& in, const Seen& before) {
    const uint64_t job = in.Pick(4) == 0 ? in.U64(2) : job_id_;
    const int64_t step = in.Pick(4) == 0 ? Around(in, before.job.step) - 1 : before.job.step;
    int64_t generation;
    switch (in.Pick(4)) {
      case 0:
        generation = before.job.job.generation;
        break;
      case 1:
        generation = static_cast<int64_t>(in.U64());
        break;
      default:
        generation = static_cast<int64_t>(static_cast<uint64_t>(before.job.job.generation) +
                                          1 + in.Pick(3));
    }
    absl::StatusOr<JobStateInfo> info = core_.Rewind(job, step, generation);
    if (!info.ok() || generation <= before.job.job.generation) return false;
    FUZZ_CHECK(info->job.generation == generation && info->step == before.job.step);
    for (Rank& r : ranks_) r.expected = 0;
    return true;
  }

  const ShardOptions options_;
  Recorder recorder_;
  absl::Time now_ = absl::UnixEpoch();
  ShardCore core_;
  ModelLayout layout_;
  std::vector<Rank> ranks_;
  uint64_t job_id_ = 0;
  // The reference's momentum, and a bound on its magnitude (for the tolerance).
  std::vector<double> v_, v_abs_;
  // Only small values and lr <= 1 so far: the job must not diverge.
  bool tame_ = true;
  // GNC_FUZZ_TRACE=1: one line per operation on stderr (replaying an input).
  const bool trace_ = std::getenv("GNC_FUZZ_TRACE") != nullptr;
};

}  // namespace
}  // namespace gnc

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  gnc::Input in(data, size);
  gnc::Harness harness(in);
  harness.Run(in);
  return 0;
}
