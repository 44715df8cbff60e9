#include "worker/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "proto/gnc.grpc.pb.h"
#include "worker/job_sync.h"

namespace gnc {
namespace {

const char* ModeName(v1::SmoothingMode mode) {
  switch (mode) {
    case v1::NONE:
      return "none";
    case v1::GNC:
      return "gnc";
    case v1::ISOTROPIC:
      return "isotropic";
    default:
      return "unspecified";
  }
}

using TrainStream = grpc::ClientReaderWriter<v1::TrainRequest, v1::TrainResponse>;

// How long one unary call (Join, Rewind, GetStatus, Leave) may take.
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
// A call recovers at most this many times before it gives up.
constexpr int kMaxRecoveries = 20;

// Where a shard's Train stream stands.
enum class StreamState {
  kAwaitEval,  // an evaluation point is on its way (after Hello, OK or ABORTED ack)
  kHaveEval,   // evaluation point received; a gradient is due
};

// Tag: which point a shard sent (job, generation, step).
struct Tag {
  uint64_t job_id = 0;
  int64_t generation = 0;
  int64_t step = -1;
  bool operator==(const Tag&) const = default;
};

struct Shard {
  int index = 0;
  std::string address;
  std::unique_ptr<v1::ParameterShard::Stub> stub;
  ShardRange range;
  bool needs_parameters = false;
  v1::JobState job;  // as of the last Join
  std::unique_ptr<grpc::ClientContext> train_ctx;  // swapped under the client's cancel_mu_
  std::unique_ptr<TrainStream> train;
  StreamState state = StreamState::kAwaitEval;
  Tag tag;              // of the point last received
  bool broken = false;  // the stream failed during the current call
  // A point received while a push recovered, for the next ReceiveEvalPoint.
  std::vector<float> pending;
  bool has_pending = false;
};

// Recoverable: a stream that ended with this status may work again after a reconnect.
bool Recoverable(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
      return true;
    default:
      return false;
  }
}

// FanOutResult: the combined outcome of one call on every shard.
struct FanOutResult {
  absl::Status status;     // the first real error, else ABORTED if any, else OK
  bool broken = false;     // some stream failed (the others were cancelled)
  bool timed_out = false;  // the call ran past its timeout (every stream was cancelled)
};

class GrpcGncClient final : public GncClient {
 public:
  explicit GrpcGncClient(ClientOptions options) : options_(std::move(options)) {}
  ~GrpcGncClient() override { CloseStreams(); }

  absl::Status Init();
  const JobInfo& job() const override { return job_; }
  absl::Status OfferParameters(std::span<const float> params) override;
  absl::StatusOr<int64_t> ReceiveEvalPoint(std::span<float> x) override;
  absl::Status PushGradient(std::span<const float> g, int64_t num_samples) override;
  absl::StatusOr<int64_t> Pull(std::span<float> w) override;
  absl::Status Leave() override;

 private:
  struct JoinReply {
    uint64_t config_hash = 0;
    uint64_t layout_hash = 0;
    int64_t total_steps = 0;
    v1::SmoothingMode mode = v1::SMOOTHING_MODE_UNSPECIFIED;
  };

  // JoinOnce: one Join of `shard`, waiting for it to be up until `deadline`.
  absl::Status JoinOnce(Shard& shard, uint64_t config_hash, absl::Time deadline,
                        JoinReply* reply);
  // Synchronize: joins every shard (retrying unreachable ones with backoff until
  // `deadline`) and acts on DecideJobSync until the job is consistent.
  absl::Status Synchronize(absl::Time deadline, absl::Status cause);
  // Recover: after a stream failure: close every stream, then Synchronize within
  // reconnect_timeout.
  absl::Status Recover(const absl::Status& cause);
  absl::Status OfferTo(Shard& shard, std::span<const float> params, uint64_t job_id,
                       uint64_t* shard_job_id);
  absl::Status OpenStream(Shard& shard);
  // StreamFailed: ends a broken stream and says why.
  absl::Status StreamFailed(Shard& shard);
  // ReadPoint: reads the shard's next evaluation point into dst (its slice).
  absl::Status ReadPoint(Shard& shard, std::span<float> dst);
  // Push: sends g (the shard's slice) for the shard's current point; waits for the Ack.
  absl::Status Push(Shard& shard, std::span<const float> g, int64_t num_samples);
  // RePush: after a recovery in the same generation, sends g again to each shard
  // whose first point is still `tags`; others keep their new point as pending.
  FanOutResult RePush(std::span<const float> g, int64_t num_samples,
                      const std::vector<Tag>& tags);
  void CloseStreams();
  void CancelStreams();
  // FanOut: runs fn on every shard concurrently. When a stream fails, or `timeout`
  // passes, the other shards' streams are cancelled, so no wait outlives the call.
  FanOutResult FanOut(const std::function<absl::Status(Shard&)>& fn, absl::Duration timeout);
  // StallError: DEADLINE_EXCEEDED for `what`, naming what every shard waits for.
  absl::Status StallError(absl::string_view what);
  bool PointsConsistent() const;
  absl::Status Named(const Shard& shard, const absl::Status& s) const;

  const ClientOptions options_;
  std::vector<Shard> shards_;
  JobInfo job_;
  bool left_ = false;
  // The recovery since the last ReceiveEvalPoint closed the streams: the gradient
  // the caller computed must be matched against fresh points before it is pushed.
  bool recovered_ = false;
  std::vector<Tag> point_tags_;  // per shard, of the last ReceiveEvalPoint

  absl::Mutex cancel_mu_;
  bool cancelling_ ABSL_GUARDED_BY(cancel_mu_) = false;
};

absl::Status GrpcGncClient::Named(const Shard& shard, const absl::Status& s) const {
  if (s.ok()) return s;
  return absl::Status(s.code(),
                      absl::StrCat("shard ", shard.index, " (", shard.address, "): ", s.message()));
}

void GrpcGncClient::CancelStreams() {
  absl::MutexLock lock(&cancel_mu_);
  cancelling_ = true;
  for (Shard& shard : shards_) {
    if (shard.train_ctx != nullptr) shard.train_ctx->TryCancel();
  }
}

FanOutResult GrpcGncClient::FanOut(const std::function<absl::Status(Shard&)>& fn,
                                   absl::Duration timeout) {
  const size_t n = shards_.size();
  std::vector<absl::Status> results(n);
  absl::Mutex mu;
  size_t pending = n;
  bool broken = false;
  {
    absl::MutexLock lock(&cancel_mu_);
    cancelling_ = false;
  }
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    shards_[i].broken = false;
    threads.emplace_back([&, i] {
      absl::Status s = fn(shards_[i]);
      absl::MutexLock lock(&mu);
      results[i] = std::move(s);
      --pending;
      if (shards_[i].broken) broken = true;
    });
  }
  FanOutResult out;
  bool cancel = false;
  {
    absl::MutexLock lock(&mu);
    auto settled = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu) { return pending == 0 || broken; };
    out.timed_out = !mu.AwaitWithTimeout(absl::Condition(&settled), timeout);
    cancel = pending > 0;  // timed out, or a stream broke while others still wait
  }
  if (cancel) CancelStreams();
  for (std::thread& t : threads) t.join();
  out.broken = false;
  for (const Shard& shard : shards_) out.broken |= shard.broken;
  // Prefer the error that broke a stream, then any real error, over ABORTED (late),
  // which callers treat as "carry on", and over the CANCELLED of streams we ended.
  absl::Status aborted, cancelled;
  for (size_t i = 0; i < n; ++i) {
    const absl::Status& r = results[i];
    if (r.ok()) continue;
    if (absl::IsAborted(r)) {
      if (aborted.ok()) aborted = Named(shards_[i], r);
    } else if (absl::IsCancelled(r)) {
      if (cancelled.ok()) cancelled = Named(shards_[i], r);
    } else if (out.status.ok()) {
      out.status = Named(shards_[i], r);
    }
  }
  if (out.status.ok()) out.status = !cancelled.ok() ? cancelled : aborted;
  return out;
}

absl::Status GrpcGncClient::StallError(absl::string_view what) {
  std::vector<std::string> parts(shards_.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < shards_.size(); ++i) {
    threads.emplace_back([&, i] {
      Shard& shard = shards_[i];
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
      v1::StatusRequest req;
      v1::StatusResponse resp;
      grpc::Status s = shard.stub->GetStatus(&ctx, req, &resp);
      std::string who = absl::StrCat("shard ", shard.index, " (", shard.address, ")");
      if (!s.ok()) {
        parts[i] = absl::StrCat(who, ": unreachable (", s.error_message(), ")");
      } else if (resp.job().diverged()) {
        parts[i] = absl::StrCat(who, ": diverged at step ", resp.step());
      } else if (resp.waiting_for_ranks_size() == 0) {
        parts[i] = absl::StrCat(who, ": at step ", resp.step(), ", waiting for no rank");
      } else {
        parts[i] = absl::StrCat(who, ": at step ", resp.step(), ", waiting ",
                                static_cast<int64_t>(resp.waiting_seconds()),
                                " s for rank(s) ", absl::StrJoin(resp.waiting_for_ranks(), ","));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return absl::DeadlineExceededError(
      absl::StrCat("worker ", options_.rank, ": no progress within ",
                   absl::FormatDuration(options_.step_timeout), " ", what, ": ",
                   absl::StrJoin(parts, "; ")));
}

absl::Status GrpcGncClient::JoinOnce(Shard& shard, uint64_t config_hash, absl::Time deadline,
                                     JoinReply* reply) {
  v1::JoinRequest req;
  req.set_rank(options_.rank);
  req.set_num_workers(options_.num_workers);
  req.set_num_shards(static_cast<int>(shards_.size()));
  req.set_shard_index(shard.index);
  req.set_local_batch_size(options_.local_batch_size);
  req.set_config_hash(config_hash);
  req.set_job_id(job_.job_id);
  for (const TensorSpec& t : options_.layout.tensors()) {
    v1::TensorSpec* out = req.mutable_layout()->add_tensors();
    out->set_name(t.name);
    for (int64_t d : t.shape) out->add_shape(d);
  }
  grpc::ClientContext ctx;
  ctx.set_wait_for_ready(true);  // a shard that is (re)starting is waited for
  ctx.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + kCallTimeout)));
  v1::JoinResponse resp;
  grpc::Status s = shard.stub->Join(&ctx, req, &resp);
  if (!s.ok()) return FromGrpcStatus(s);
  shard.range = ShardRange{resp.shard_begin(), resp.shard_end()};
  shard.needs_parameters = resp.needs_parameters();
  shard.job = resp.job();
  if (reply != nullptr) {
    reply->config_hash = resp.config_hash();
    reply->layout_hash = resp.layout_hash();
    reply->total_steps = resp.total_steps();
    reply->mode = resp.mode();
  }
  const ShardRange expected = ShardRangeFor(options_.layout.NumElements(),
                                            static_cast<int>(shards_.size()), shard.index);
  if (expected.begin != shard.range.begin || expected.end != shard.range.end) {
    return absl::FailedPreconditionError("shard range differs from the client's shard map");
  }
  return absl::OkStatus();
}

absl::Status GrpcGncClient::Synchronize(absl::Time deadline, absl::Status cause) {
  absl::Duration backoff = absl::Milliseconds(100);
  absl::Status last = std::move(cause);
  auto wait_or_fail = [&](const absl::Status& why) -> absl::Status {
    last = why;
    const absl::Time now = absl::Now();
    if (now >= deadline) return why;
    absl::SleepFor(std::min(backoff, deadline - now));
    backoff = std::min(backoff * 2, absl::Seconds(5));
    return absl::OkStatus();
  };
  while (true) {
    std::vector<absl::Status> joined(shards_.size());
    {
      std::vector<std::thread> threads;
      for (size_t i = 0; i < shards_.size(); ++i) {
        threads.emplace_back([&, i] {
          joined[i] = JoinOnce(shards_[i], job_.config_hash, deadline, nullptr);
        });
      }
      for (std::thread& t : threads) t.join();
    }
    absl::Status unreachable;
    for (size_t i = 0; i < shards_.size(); ++i) {
      const absl::Status& s = joined[i];
      if (s.ok()) continue;
      // A shard going down answers CANCELLED to the calls it had not finished.
      if (absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s) || absl::IsCancelled(s)) {
        if (unreachable.ok()) {
          unreachable = absl::UnavailableError(absl::StrCat(
              "shard ", i, " (", shards_[i].address, ") did not answer within ",
              absl::FormatDuration(options_.reconnect_timeout), ": ", s.message()));
        }
        continue;
      }
      return Named(shards_[i], s);
    }
    if (!unreachable.ok()) {
      if (absl::Status s = wait_or_fail(unreachable); !s.ok()) return s;
      continue;
    }
    std::vector<ShardJobView> views;
    for (const Shard& shard : shards_) {
      ShardJobView v;
      v.index = shard.index;
      v.address = shard.address;
      v.initialized = shard.job.initialized();
      v.job_id = shard.job.job_id();
      v.generation = shard.job.generation();
      v.step = shard.job.step();
      v.rewind_steps.assign(shard.job.rewind_steps().begin(), shard.job.rewind_steps().end());
      v.diverged = shard.job.diverged();
      views.push_back(std::move(v));
    }
    const SyncDecision d = DecideJobSync(views, job_.job_id);
    if (d.kind == SyncDecision::Kind::kFail) {
      return absl::FailedPreconditionError(absl::StrCat("worker ", options_.rank, ": ", d.message));
    }
    if (d.kind == SyncDecision::Kind::kReady) {
      job_.job_id = d.job_id;
      job_.generation = d.generation;
      return absl::OkStatus();
    }
    LogWarning("worker ", options_.rank, ": rewinding job ", absl::Hex(d.job_id), " to step ",
               d.step, " (generation ", d.generation, ") on shard(s) ",
               absl::StrJoin(d.shards, ","));
    std::vector<absl::Status> rewound(d.shards.size());
    {
      std::vector<std::thread> threads;
      for (size_t j = 0; j < d.shards.size(); ++j) {
        threads.emplace_back([&, j] {
          Shard& shard = shards_[d.shards[j]];
          grpc::ClientContext ctx;
          // Loading a checkpoint of a large shard takes a while: allow the whole budget.
          ctx.set_deadline(absl::ToChronoTime(std::max(deadline, absl::Now() + kCallTimeout)));
          v1::RewindRequest req;
          req.set_job_id(d.job_id);
          req.set_step(d.step);
          req.set_generation(d.generation);
          v1::JobState resp;
          rewound[j] = Named(shard, FromGrpcStatus(shard.stub->Rewind(&ctx, req, &resp)));
        });
      }
      for (std::thread& t : threads) t.join();
    }
    for (const absl::Status& s : rewound) {
      if (s.ok()) continue;
      // The shards moved on meanwhile (another client's rewind, a restart): look again.
      if (absl::Status e = wait_or_fail(s); !e.ok()) return e;
      break;
    }
  }
}

absl::Status GrpcGncClient::Init() {
  if (options_.servers.empty()) return absl::InvalidArgumentError("no servers given");
  if (options_.rank < 0 || options_.rank >= options_.num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options_.rank, " outside [0, ", options_.num_workers, ")"));
  }
  if (options_.layout.NumElements() == 0) {
    return absl::InvalidArgumentError("empty model layout");
  }
  if (options_.step_timeout <= absl::ZeroDuration() ||
      options_.reconnect_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("step_timeout and reconnect_timeout must be positive");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  // Reconnect quickly to a shard that restarts (gRPC's default backoff grows to 2 min).
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  shards_.resize(options_.servers.size());
  for (size_t i = 0; i < shards_.size(); ++i) {
    Shard& shard = shards_[i];
    shard.index = static_cast<int>(i);
    shard.address = options_.servers[i];
    shard.stub = v1::ParameterShard::NewStub(
        grpc::CreateCustomChannel(shard.address, grpc::InsecureChannelCredentials(), args));
  }
  // Shard 0 first: it fixes the config hash that every other shard must have.
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  JoinReply first;
  while (true) {
    absl::Status s = JoinOnce(shards_[0], options_.config_hash, deadline, &first);
    if (s.ok()) break;
    if (!(absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s))) return Named(shards_[0], s);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("shard 0 (", shards_[0].address, "): no answer within ",
                       absl::FormatDuration(options_.connect_timeout), ": ", s.message()));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  job_.config_hash = first.config_hash;
  job_.layout_hash = first.layout_hash;
  job_.total_steps = first.total_steps;
  job_.mode = ModeName(first.mode);
  if (absl::Status s = Synchronize(deadline, absl::OkStatus()); !s.ok()) {
    return absl::IsUnavailable(s) ? absl::DeadlineExceededError(s.message()) : s;
  }
  for (const Shard& shard : shards_) job_.ranges.push_back(shard.range);
  return absl::OkStatus();
}

absl::Status GrpcGncClient::OfferTo(Shard& shard, std::span<const float> params, uint64_t job_id,
                                    uint64_t* shard_job_id) {
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.step_timeout));
  v1::OfferParametersResponse resp;
  std::unique_ptr<grpc::ClientWriter<v1::OfferParametersRequest>> writer =
      shard.stub->OfferParameters(&ctx, &resp);
  v1::OfferParametersRequest req;
  req.set_rank(options_.rank);
  req.set_job_id(job_id);
  const int64_t size = shard.range.size();
  for (int64_t offset = 0; offset < size; offset += kDefaultChunkElements) {
    const int64_t count = std::min(kDefaultChunkElements, size - offset);
    v1::Chunk* chunk = req.mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_last(offset + count == size);
    absl::Status s = EncodeChunk(params.subspan(shard.range.begin + offset, count), {},
                                 v1::FLOAT32, chunk);
    if (!s.ok()) return s;
    if (!writer->Write(req)) break;  // the server ended the call: Finish says why
  }
  writer->WritesDone();
  absl::Status s = FromGrpcStatus(writer->Finish());
  if (!s.ok()) return s;
  shard.needs_parameters = false;
  *shard_job_id = resp.job_id();
  return absl::OkStatus();
}

absl::Status GrpcGncClient::OfferParameters(std::span<const float> params) {
  if (static_cast<int64_t>(params.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "offered ", params.size(), " parameters, layout has ", options_.layout.NumElements()));
  }
  bool any = false;
  for (const Shard& shard : shards_) any |= shard.needs_parameters;
  if (!any) return absl::OkStatus();
  // Shard 0 fixes the job id: the first offer's proposal, or the id it already has.
  uint64_t id = job_.job_id;
  if (id == 0 && shards_[0].job.initialized()) id = shards_[0].job.job_id();
  if (id == 0) {
    std::random_device rd;
    while (id == 0) id = (static_cast<uint64_t>(rd()) << 32) ^ rd();
  }
  if (shards_[0].needs_parameters) {
    if (absl::Status s = OfferTo(shards_[0], params, id, &id); !s.ok()) {
      return Named(shards_[0], s);
    }
  }
  FanOutResult r = FanOut(
      [&](Shard& shard) -> absl::Status {
        if (!shard.needs_parameters) return absl::OkStatus();
        uint64_t theirs = 0;
        if (absl::Status s = OfferTo(shard, params, id, &theirs); !s.ok()) return s;
        if (theirs != id) {
          return absl::FailedPreconditionError(absl::StrCat(
              "serves job ", absl::Hex(theirs), ", shard 0 serves job ", absl::Hex(id)));
        }
        return absl::OkStatus();
      },
      options_.step_timeout);
  if (!r.status.ok()) return r.status;
  job_.job_id = id;
  return absl::OkStatus();
}

absl::Status GrpcGncClient::OpenStream(Shard& shard) {
  {
    absl::MutexLock lock(&cancel_mu_);
    if (cancelling_) {
      shard.broken = true;
      return absl::CancelledError("the call was cancelled");
    }
    shard.train_ctx = std::make_unique<grpc::ClientContext>();
  }
  shard.train = shard.stub->Train(shard.train_ctx.get());
  v1::TrainRequest hello;
  hello.mutable_hello()->set_rank(options_.rank);
  shard.state = StreamState::kAwaitEval;
  if (!shard.train->Write(hello)) return StreamFailed(shard);
  return absl::OkStatus();
}

absl::Status GrpcGncClient::StreamFailed(Shard& shard) {
  absl::Status s = FromGrpcStatus(shard.train->Finish());
  shard.train.reset();
  shard.state = StreamState::kAwaitEval;
  shard.broken = true;
  if (s.ok()) s = absl::UnavailableError("the server closed the Train stream");
  return s;
}

absl::Status GrpcGncClient::ReadPoint(Shard& shard, std::span<float> dst) {
  if (shard.train == nullptr) {
    if (absl::Status s = OpenStream(shard); !s.ok()) return s;
  }
  if (shard.state != StreamState::kAwaitEval) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no evaluation point is due: the gradient for step ", shard.tag.step,
        " has not been accepted yet (push it again)"));
  }
  const int64_t size = shard.range.size();
  Tag tag;
  int64_t next = 0;
  v1::TrainResponse resp;
  while (shard.train->Read(&resp)) {
    if (!resp.has_eval_point()) continue;  // a stray Ack cannot carry a point
    const v1::TrainResponse::EvalPoint& p = resp.eval_point();
    if (p.chunk().offset() == 0) {
      tag = Tag{p.job_id(), p.generation(), p.step()};  // a (re)start of a point
      next = 0;
    }
    // A stream that sends a malformed point is treated as broken: it is reopened.
    auto garbled = [&](absl::string_view what) {
      shard.broken = true;
      return absl::DataLossError(
          absl::StrCat("evaluation point ", what, " at offset ", p.chunk().offset()));
    };
    if (Tag{p.job_id(), p.generation(), p.step()} != tag || p.chunk().offset() != next) {
      return garbled("out of order");
    }
    absl::StatusOr<int64_t> count = ChunkElementCount(p.chunk());
    if (!count.ok()) return garbled(count.status().message());
    if (next + *count > size) return garbled("exceeds the shard");
    if (!DecodeChunk(p.chunk(), dst.subspan(next, *count)).ok()) return garbled("undecodable");
    next += *count;
    if (p.chunk().last()) {
      if (next != size) return garbled("ended early");
      shard.tag = tag;
      shard.state = StreamState::kHaveEval;
      return absl::OkStatus();
    }
  }
  return StreamFailed(shard);
}

bool GrpcGncClient::PointsConsistent() const {
  const Tag& first = shards_[0].tag;
  int64_t lo = first.step, hi = first.step;
  for (const Shard& shard : shards_) {
    if (shard.tag.job_id != first.job_id || shard.tag.generation != first.generation) {
      return false;
    }
    lo = std::min(lo, shard.tag.step);
    hi = std::max(hi, shard.tag.step);
  }
  return (job_.job_id == 0 || first.job_id == job_.job_id) && hi - lo <= 1;
}

absl::Status GrpcGncClient::Recover(const absl::Status& cause) {
  LogWarning("worker ", options_.rank, ": ", cause.message(), "; reconnecting (for up to ",
             absl::FormatDuration(options_.reconnect_timeout), ")");
  CloseStreams();
  recovered_ = true;
  const int64_t generation = job_.generation;
  absl::Status s = Synchronize(absl::Now() + options_.reconnect_timeout, cause);
  if (!s.ok()) return s;
  LogInfo("worker ", options_.rank, ": reconnected to every shard",
          job_.generation != generation
              ? absl::StrCat("; the job is now at generation ", job_.generation)
              : std::string());
  return absl::OkStatus();
}

absl::StatusOr<int64_t> GrpcGncClient::ReceiveEvalPoint(std::span<float> x) {
  if (left_) return absl::FailedPreconditionError("the client has left the job");
  if (static_cast<int64_t>(x.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError("evaluation point buffer has the wrong size");
  }
  for (int recoveries = 0;; ++recoveries) {
    FanOutResult r = FanOut(
        [&](Shard& shard) -> absl::Status {
          std::span<float> slice = x.subspan(shard.range.begin, shard.range.size());
          if (shard.has_pending) {
            std::copy(shard.pending.begin(), shard.pending.end(), slice.begin());
            shard.has_pending = false;
            return absl::OkStatus();
          }
          return ReadPoint(shard, slice);
        },
        options_.step_timeout);
    if (r.timed_out) return StallError("waiting for the next evaluation point");
    absl::Status cause = r.status;
    if (cause.ok() && !PointsConsistent()) {
      cause = absl::DataLossError(
          "the shards sent points of different generations (a rewind is under way)");
    } else if (!cause.ok() && !(r.broken && Recoverable(cause))) {
      return cause;
    }
    if (cause.ok()) break;
    if (recoveries >= kMaxRecoveries) return cause;
    if (absl::Status s = Recover(cause); !s.ok()) return s;
  }
  recovered_ = false;
  job_.generation = shards_[0].tag.generation;
  point_tags_.clear();
  int64_t step = 0;
  for (const Shard& shard : shards_) {
    point_tags_.push_back(shard.tag);
    step = std::max(step, shard.tag.step);
  }
  return step;
}

absl::Status GrpcGncClient::Push(Shard& shard, std::span<const float> g, int64_t num_samples) {
  const int64_t size = shard.range.size();
  v1::TrainRequest req;
  v1::TrainRequest::Gradient* grad = req.mutable_gradient();
  grad->set_step(shard.tag.step);
  grad->set_generation(shard.tag.generation);
  grad->set_num_samples(num_samples);
  for (int64_t offset = 0; offset < size; offset += kDefaultChunkElements) {
    const int64_t count = std::min(kDefaultChunkElements, size - offset);
    v1::Chunk* chunk = grad->mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_last(offset + count == size);
    absl::Status s = EncodeChunk(g.subspan(offset, count), {}, v1::FLOAT32, chunk);
    if (!s.ok()) return s;
    if (!shard.train->Write(req)) break;  // the stream ended; Read/Finish say why
  }
  v1::TrainResponse resp;
  while (shard.train->Read(&resp)) {
    if (!resp.has_ack()) continue;
    const v1::TrainResponse::Ack& ack = resp.ack();
    const absl::Status verdict(static_cast<absl::StatusCode>(ack.code()), ack.message());
    if (verdict.ok() || absl::IsAborted(verdict)) shard.state = StreamState::kAwaitEval;
    return verdict;
  }
  return StreamFailed(shard);
}

FanOutResult GrpcGncClient::RePush(std::span<const float> g, int64_t num_samples,
                                   const std::vector<Tag>& tags) {
  return FanOut(
      [&](Shard& shard) -> absl::Status {
        if (shard.has_pending) return absl::OkStatus();
        shard.pending.resize(static_cast<size_t>(shard.range.size()));
        if (absl::Status s = ReadPoint(shard, shard.pending); !s.ok()) return s;
        if (shard.tag != tags[shard.index]) {
          shard.has_pending = true;  // this shard moved on: the point is the next one
          return absl::OkStatus();
        }
        return Push(shard, g.subspan(shard.range.begin, shard.range.size()), num_samples);
      },
      options_.step_timeout);
}

absl::Status GrpcGncClient::PushGradient(std::span<const float> g, int64_t num_samples) {
  if (left_) return absl::FailedPreconditionError("the client has left the job");
  if (static_cast<int64_t>(g.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError(absl::StrCat("gradient has ", g.size(),
                                                   " elements, layout has ",
                                                   options_.layout.NumElements()));
  }
  if (point_tags_.size() != shards_.size()) {
    return absl::FailedPreconditionError("no evaluation point received yet");
  }
  FanOutResult r;
  if (!recovered_) {
    r = FanOut(
        [&](Shard& shard) -> absl::Status {
          if (shard.state != StreamState::kHaveEval) return absl::OkStatus();
          return Push(shard, g.subspan(shard.range.begin, shard.range.size()), num_samples);
        },
        options_.step_timeout);
  }
  for (int recoveries = 0;; ++recoveries) {
    if (r.timed_out) return StallError("waiting for the shards to take the gradient");
    if (!recovered_) {
      if (r.status.ok() || !(r.broken && Recoverable(r.status))) return r.status;
      if (recoveries >= kMaxRecoveries) return r.status;
      if (absl::Status s = Recover(r.status); !s.ok()) return s;
    }
    // The streams are new. In another generation the gradient is void; in the same
    // one, shards still at the point it was taken at get it again.
    recovered_ = false;
    if (job_.generation != point_tags_[0].generation) {
      return absl::AbortedError(absl::StrCat("the job was rewound (generation ",
                                             job_.generation, ") before this gradient of step ",
                                             point_tags_[0].step, " was taken; carry on"));
    }
    r = RePush(g, num_samples, point_tags_);
  }
}

absl::StatusOr<int64_t> GrpcGncClient::Pull(std::span<float> w) {
  if (static_cast<int64_t>(w.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError("parameter buffer has the wrong size");
  }
  std::vector<Tag> tags(shards_.size());
  for (int recoveries = 0;; ++recoveries) {
    std::vector<absl::Status> results(shards_.size());
    std::vector<std::thread> threads;
    for (size_t i = 0; i < shards_.size(); ++i) {
      threads.emplace_back([&, i] {
        Shard& shard = shards_[i];
        grpc::ClientContext ctx;
        ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.step_timeout));
        v1::PullRequest req;
        req.set_dtype(v1::FLOAT32);
        std::unique_ptr<grpc::ClientReader<v1::PullResponse>> reader =
            shard.stub->PullParameters(&ctx, req);
        v1::PullResponse resp;
        int64_t next = 0;
        absl::Status s;
        while (s.ok() && reader->Read(&resp)) {
          absl::StatusOr<int64_t> count = ChunkElementCount(resp.chunk());
          if (!count.ok()) {
            s = count.status();
          } else if (resp.chunk().offset() != next || next + *count > shard.range.size()) {
            s = absl::DataLossError("parameter chunks out of order");
          } else {
            s = DecodeChunk(resp.chunk(), w.subspan(shard.range.begin + next, *count));
            next += *count;
            tags[i] = Tag{resp.job_id(), resp.generation(), resp.step()};
          }
        }
        if (!s.ok()) ctx.TryCancel();
        absl::Status f = FromGrpcStatus(reader->Finish());
        if (s.ok()) s = f;
        if (s.ok() && next != shard.range.size()) {
          s = absl::DataLossError("parameter pull ended early");
        }
        results[i] = Named(shard, s);
      });
    }
    for (std::thread& t : threads) t.join();
    absl::Status failed;
    for (const absl::Status& s : results) {
      if (!s.ok()) {
        failed = s;
        break;
      }
    }
    if (failed.ok()) {
      bool same = true;
      for (const Tag& t : tags) {
        same &= t.job_id == tags[0].job_id && t.generation == tags[0].generation;
      }
      if (same) break;
      failed = absl::DataLossError("the shards answered from different generations");
    }
    if (!Recoverable(failed) || recoveries >= kMaxRecoveries) return failed;
    if (absl::Status s = Recover(failed); !s.ok()) return s;
  }
  int64_t step = tags[0].step;
  for (const Tag& t : tags) step = std::min(step, t.step);
  return step;
}

void GrpcGncClient::CloseStreams() {
  CancelStreams();
  for (Shard& shard : shards_) {
    shard.state = StreamState::kAwaitEval;
    shard.has_pending = false;
    if (shard.train == nullptr) continue;
    shard.train->Finish();
    shard.train.reset();
  }
}

absl::Status GrpcGncClient::Leave() {
  if (left_) return absl::OkStatus();
  std::vector<absl::Status> results(shards_.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < shards_.size(); ++i) {
    threads.emplace_back([&, i] {
      grpc::ClientContext ctx;
      ctx.set_deadline(absl::ToChronoTime(absl::Now() + kCallTimeout));
      v1::LeaveRequest req;
      req.set_rank(options_.rank);
      v1::LeaveResponse resp;
      results[i] = Named(shards_[i], FromGrpcStatus(shards_[i].stub->Leave(&ctx, req, &resp)));
    });
  }
  for (std::thread& t : threads) t.join();
  CloseStreams();
  left_ = true;
  for (const absl::Status& s : results) {
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<GncClient>> GncClient::Connect(const ClientOptions& options) {
  auto client = std::make_unique<GrpcGncClient>(options);
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

}  // namespace gnc
