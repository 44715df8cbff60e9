#include "worker/client.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/credentials.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "proto/gnc.grpc.pb.h"
#include "worker/job_sync.h"
#include "worker/shard_stream.h"

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

// How long one unary call (Join, Rewind, GetStatus, Leave) may take.
constexpr absl::Duration kCallTimeout = absl::Seconds(10);
// A call recovers at most this many times before it gives up.
constexpr int kMaxRecoveries = 20;

// Where a shard's Train stream stands.
enum class StreamState {
  kAwaitEval,  // an evaluation point is on its way (after Hello, OK or ABORTED ack)
  kHaveEval,   // evaluation point received; a gradient is due
};

struct Shard {
  int index = 0;
  std::string address;
  std::unique_ptr<v1::ParameterShard::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;
  ShardRange range;
  bool needs_parameters = false;
  v1::JobState job;  // as of the last Join
  std::shared_ptr<ShardStream> stream;  // null until the first point is asked for
  StreamState state = StreamState::kAwaitEval;
  ShardTag tag;  // of the point last received
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

// Reply: how one unary call on one shard ended.
template <typename Resp>
struct Reply {
  absl::Status status;
  Resp resp;
};

template <typename Resp>
using AsyncReader = std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>>;

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
  // Result: the combined outcome of one operation on every shard.
  struct Result {
    absl::Status status;     // the first real error, else ABORTED if any, else OK
    bool broken = false;     // some stream ended (the others were cancelled)
    bool timed_out = false;  // the operation ran past its timeout (all were cancelled)
  };

  // CallAll: starts `start(shard, ctx, cq)` on every shard in `which` and waits for
  // all to finish; each call gets `deadline` (and waits for a shard that is not up yet
  // when wait_for_ready). The calls complete on this thread's completion queue, so
  // gRPC is done with every one of them when CallAll returns.
  template <typename Resp>
  std::vector<Reply<Resp>> CallAll(
      const std::vector<int>& which, absl::Time deadline, bool wait_for_ready,
      const std::function<AsyncReader<Resp>(Shard&, grpc::ClientContext*,
                                            grpc::CompletionQueue*)>& start);
  // JoinAll: Join on the shards in `which`; per-shard statuses.
  std::vector<absl::Status> JoinAll(const std::vector<int>& which, uint64_t config_hash,
                                    absl::Time deadline, JoinReply* first);
  absl::Status Synchronize(absl::Time deadline, absl::Status cause);
  absl::Status Recover(const absl::Status& cause);
  absl::Status OfferTo(Shard& shard, std::span<const float> params, uint64_t job_id,
                       uint64_t* shard_job_id);
  // Run: starts `op(shard)` on every shard that `wanted(shard)`, waits for all of them
  // up to step_timeout, and cancels the others when a stream breaks or time runs out.
  Result Run(const std::function<bool(Shard&)>& op);
  absl::Status StallError(absl::string_view what);
  bool PointsConsistent() const;
  void CloseStreams();
  std::shared_ptr<ShardStream>& Stream(Shard& shard);
  absl::Status Named(const Shard& shard, const absl::Status& s) const;
  std::vector<int> AllShards() const;

  const ClientOptions options_;
  std::shared_ptr<const ChannelSecurity> security_;
  std::vector<Shard> shards_;
  JobInfo job_;
  bool left_ = false;
  // The recovery since the last ReceiveEvalPoint closed the streams: the gradient
  // the caller computed must be matched against fresh points before it is pushed.
  bool recovered_ = false;
  std::vector<ShardTag> point_tags_;  // per shard, of the last ReceiveEvalPoint
  CallGroup group_;
};

absl::Status GrpcGncClient::Named(const Shard& shard, const absl::Status& s) const {
  if (s.ok()) return s;
  return absl::Status(s.code(),
                      absl::StrCat("shard ", shard.index, " (", shard.address, "): ", s.message()));
}

std::vector<int> GrpcGncClient::AllShards() const {
  std::vector<int> all(shards_.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
  return all;
}

template <typename Resp>
std::vector<Reply<Resp>> GrpcGncClient::CallAll(
    const std::vector<int>& which, absl::Time deadline, bool wait_for_ready,
    const std::function<AsyncReader<Resp>(Shard&, grpc::ClientContext*, grpc::CompletionQueue*)>&
        start) {
  struct Call {
    grpc::ClientContext ctx;
    grpc::Status status;
    Resp resp;
  };
  grpc::CompletionQueue cq;
  std::vector<Call> calls(which.size());
  for (size_t j = 0; j < which.size(); ++j) {
    Call& call = calls[j];
    call.ctx.set_deadline(absl::ToChronoTime(deadline));
    call.ctx.set_wait_for_ready(wait_for_ready);
    security_->Authorize(&call.ctx);
    start(shards_[which[j]], &call.ctx, &cq)->Finish(&call.resp, &call.status, &call);
  }
  // Every call ends by its deadline, so this wait does too.
  void* tag = nullptr;
  bool ok = false;
  for (size_t j = 0; j < calls.size() && cq.Next(&tag, &ok); ++j) {
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  std::vector<Reply<Resp>> out(calls.size());
  for (size_t j = 0; j < calls.size(); ++j) {
    out[j].status = FromGrpcStatus(calls[j].status);
    out[j].resp = std::move(calls[j].resp);
  }
  return out;
}

std::vector<absl::Status> GrpcGncClient::JoinAll(const std::vector<int>& which,
                                                 uint64_t config_hash, absl::Time deadline,
                                                 JoinReply* first) {
  v1::JoinRequest req;
  req.set_rank(options_.rank);
  req.set_num_workers(options_.num_workers);
  req.set_num_shards(static_cast<int>(shards_.size()));
  req.set_local_batch_size(options_.local_batch_size);
  req.set_config_hash(config_hash);
  req.set_job_id(job_.job_id);
  for (const TensorSpec& t : options_.layout.tensors()) {
    v1::TensorSpec* out = req.mutable_layout()->add_tensors();
    out->set_name(t.name);
    for (int64_t d : t.shape) out->add_shape(d);
  }
  std::vector<v1::JoinRequest> reqs(which.size(), req);
  size_t next = 0;
  auto calls = CallAll<v1::JoinResponse>(
      which, std::min(deadline, absl::Now() + kCallTimeout), /*wait_for_ready=*/true,
      [&](Shard& shard, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        v1::JoinRequest& r = reqs[next++];
        r.set_shard_index(shard.index);
        return shard.stub->AsyncJoin(ctx, r, cq);
      });
  std::vector<absl::Status> out;
  for (size_t j = 0; j < which.size(); ++j) {
    Shard& shard = shards_[which[j]];
    absl::Status s = calls[j].status;
    const v1::JoinResponse& resp = calls[j].resp;
    if (s.ok()) {
      shard.range = ShardRange{resp.shard_begin(), resp.shard_end()};
      shard.needs_parameters = resp.needs_parameters();
      shard.job = resp.job();
      const ShardRange expected = ShardRangeFor(options_.layout.NumElements(),
                                                static_cast<int>(shards_.size()), shard.index);
      if (expected.begin != shard.range.begin || expected.end != shard.range.end) {
        s = absl::FailedPreconditionError("shard range differs from the client's shard map");
      }
      if (first != nullptr && j == 0) {
        first->config_hash = resp.config_hash();
        first->layout_hash = resp.layout_hash();
        first->total_steps = resp.total_steps();
        first->mode = resp.mode();
      }
    }
    out.push_back(s);
  }
  return out;
}

absl::Status GrpcGncClient::StallError(absl::string_view what) {
  auto calls = CallAll<v1::StatusResponse>(
      AllShards(), absl::Now() + absl::Seconds(5), /*wait_for_ready=*/false,
      [](Shard& shard, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return shard.stub->AsyncGetStatus(ctx, v1::StatusRequest(), cq);
      });
  std::vector<std::string> parts;
  for (size_t i = 0; i < shards_.size(); ++i) {
    const Shard& shard = shards_[i];
    const v1::StatusResponse& resp = calls[i].resp;
    std::string who = absl::StrCat("shard ", shard.index, " (", shard.address, ")");
    if (!calls[i].status.ok()) {
      parts.push_back(absl::StrCat(who, ": unreachable (", calls[i].status.message(), ")"));
    } else if (resp.job().diverged()) {
      parts.push_back(absl::StrCat(who, ": diverged at step ", resp.step()));
    } else if (resp.waiting_for_ranks_size() == 0) {
      parts.push_back(absl::StrCat(who, ": at step ", resp.step(), ", waiting for no rank"));
    } else {
      parts.push_back(absl::StrCat(who, ": at step ", resp.step(), ", waiting ",
                                   static_cast<int64_t>(resp.waiting_seconds()),
                                   " s for rank(s) ",
                                   absl::StrJoin(resp.waiting_for_ranks(), ",")));
    }
  }
  return absl::DeadlineExceededError(
      absl::StrCat("worker ", options_.rank, ": no progress within ",
                   absl::FormatDuration(options_.step_timeout), " ", what, ": ",
                   absl::StrJoin(parts, "; ")));
}

absl::Status GrpcGncClient::Synchronize(absl::Time deadline, absl::Status cause) {
  absl::Duration backoff = absl::Milliseconds(100);
  auto wait_or_fail = [&](const absl::Status& why) -> absl::Status {
    const absl::Time now = absl::Now();
    if (now >= deadline) return why;
    absl::SleepFor(std::min(backoff, deadline - now));
    backoff = std::min(backoff * 2, absl::Seconds(5));
    return absl::OkStatus();
  };
  while (true) {
    std::vector<absl::Status> joined = JoinAll(AllShards(), job_.config_hash, deadline, nullptr);
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
    v1::RewindRequest req;
    req.set_job_id(d.job_id);
    req.set_step(d.step);
    req.set_generation(d.generation);
    // Loading a checkpoint of a large shard takes a while: allow the whole budget.
    auto calls = CallAll<v1::JobState>(
        d.shards, std::max(deadline, absl::Now() + kCallTimeout), /*wait_for_ready=*/false,
        [&](Shard& shard, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
          return shard.stub->AsyncRewind(ctx, req, cq);
        });
    for (size_t j = 0; j < calls.size(); ++j) {
      if (calls[j].status.ok()) continue;
      // The shards moved on meanwhile (another client's rewind, a restart): look again.
      if (absl::Status e = wait_or_fail(Named(shards_[d.shards[j]], calls[j].status)); !e.ok()) {
        return e;
      }
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
  ChannelSecurityOptions security;
  security.tls_ca_file = options_.tls_ca_file;
  security.tls_cert_file = options_.tls_cert_file;
  security.tls_key_file = options_.tls_key_file;
  security.auth_token_file = options_.auth_token_file;
  absl::StatusOr<std::shared_ptr<const ChannelSecurity>> loaded = ChannelSecurity::Load(security);
  if (!loaded.ok()) return loaded.status();
  security_ = *std::move(loaded);
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
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(shard.address, security_->credentials(), args);
    security_->WarnIfExposed(shard.address);
    shard.stub = v1::ParameterShard::NewStub(channel);
    shard.generic = std::make_unique<grpc::GenericStub>(channel);
  }
  // Shard 0 first: it fixes the config hash that every other shard must have.
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  JoinReply first;
  while (true) {
    absl::Status s = JoinAll({0}, options_.config_hash, deadline, &first)[0];
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
  // Sync, once per shard per job: the offer is not on the training path.
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + options_.step_timeout));
  security_->Authorize(&ctx);
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
  for (Shard& shard : shards_) {
    if (!shard.needs_parameters) continue;
    uint64_t theirs = 0;
    if (absl::Status s = OfferTo(shard, params, id, &theirs); !s.ok()) return Named(shard, s);
    if (shard.index == 0) {
      id = theirs;  // another worker's offer may have won
    } else if (theirs != id) {
      return Named(shard, absl::FailedPreconditionError(absl::StrCat(
                              "serves job ", absl::Hex(theirs), ", shard 0 serves job ",
                              absl::Hex(id))));
    }
  }
  job_.job_id = id;
  return absl::OkStatus();
}

std::shared_ptr<ShardStream>& GrpcGncClient::Stream(Shard& shard) {
  if (shard.stream == nullptr) {
    shard.stream =
        ShardStream::Start(shard.generic.get(), *security_, options_.rank, options_.wire_dtype,
                           &group_);
    shard.state = StreamState::kAwaitEval;
  }
  return shard.stream;
}

GrpcGncClient::Result GrpcGncClient::Run(const std::function<bool(Shard&)>& op) {
  // Each op either starts one stream operation (returns true: its End follows) or
  // finishes at once (false).
  std::vector<bool> started(shards_.size(), false);
  group_.Begin(static_cast<int>(shards_.size()));
  for (Shard& shard : shards_) {
    started[shard.index] = op(shard);
    if (!started[shard.index]) group_.End(false);
  }
  Result r;
  r.timed_out = !group_.Wait(options_.step_timeout, /*stop_on_break=*/true);
  r.broken = group_.broke();
  if (r.timed_out || r.broken) {
    // Cancel what still waits: a broken stream leaves the others waiting for a step
    // that cannot complete. Every operation then ends, quickly.
    for (Shard& shard : shards_) {
      if (shard.stream != nullptr) shard.stream->Cancel();
    }
    group_.WaitAll();
  }
  for (Shard& shard : shards_) {
    if (shard.stream != nullptr && shard.stream->broken()) r.broken = true;
  }
  r.broken |= group_.broke();
  absl::Status aborted, cancelled;
  for (Shard& shard : shards_) {
    if (!started[shard.index]) continue;
    const absl::Status& s = shard.stream->status();
    if (s.ok()) continue;
    if (absl::IsAborted(s)) {
      if (aborted.ok()) aborted = Named(shard, s);
    } else if (absl::IsCancelled(s)) {
      if (cancelled.ok()) cancelled = Named(shard, s);
    } else if (r.status.ok()) {
      r.status = Named(shard, s);
    }
  }
  if (r.status.ok()) r.status = !cancelled.ok() ? cancelled : aborted;
  return r;
}

bool GrpcGncClient::PointsConsistent() const {
  const ShardTag& first = shards_[0].tag;
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
  for (const Shard& shard : shards_) {
    if (shard.state == StreamState::kHaveEval && !shard.has_pending) {
      return Named(shard, absl::FailedPreconditionError(absl::StrCat(
                              "no evaluation point is due: the gradient for step ",
                              shard.tag.step, " has not been accepted yet (push it again)")));
    }
  }
  for (int recoveries = 0;; ++recoveries) {
    Result r = Run([&](Shard& shard) {
      std::span<float> slice = x.subspan(shard.range.begin, shard.range.size());
      if (shard.has_pending) {
        std::copy(shard.pending.begin(), shard.pending.end(), slice.begin());
        shard.has_pending = false;
        return false;
      }
      Stream(shard)->ReadPoint(slice);
      return true;
    });
    if (r.timed_out) return StallError("waiting for the next evaluation point");
    absl::Status cause = r.status;
    if (cause.ok()) {
      for (Shard& shard : shards_) {
        if (shard.stream != nullptr && shard.state == StreamState::kAwaitEval) {
          shard.tag = shard.stream->tag();
          shard.state = StreamState::kHaveEval;
        }
      }
      if (!PointsConsistent()) {
        cause = absl::DataLossError(
            "the shards sent points of different generations (a rewind is under way)");
      }
    } else if (!(r.broken && Recoverable(cause))) {
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
  std::vector<bool> pushed(shards_.size(), false);
  auto push = [&](Shard& shard) {
    pushed[shard.index] = shard.state == StreamState::kHaveEval && !shard.has_pending;
    if (!pushed[shard.index]) return false;
    shard.stream->PushGradient(g.subspan(shard.range.begin, shard.range.size()), num_samples,
                               shard.tag);
    return true;
  };
  auto settle = [&] {
    // A verdict of OK or ABORTED moves the shard on to its next point.
    for (Shard& shard : shards_) {
      if (!pushed[shard.index]) continue;
      const absl::Status& s = shard.stream->status();
      if (s.ok() || absl::IsAborted(s)) shard.state = StreamState::kAwaitEval;
    }
  };
  Result r;
  if (!recovered_) {
    r = Run(push);
    settle();
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
    r = Run([&](Shard& shard) {
      shard.pending.resize(static_cast<size_t>(shard.range.size()));
      Stream(shard)->ReadPoint(shard.pending);
      return true;
    });
    if (!r.status.ok() || r.timed_out) continue;
    for (Shard& shard : shards_) {
      shard.tag = shard.stream->tag();
      shard.state = StreamState::kHaveEval;
      shard.has_pending = shard.tag != point_tags_[shard.index];
    }
    r = Run(push);
    settle();
  }
}

absl::StatusOr<int64_t> GrpcGncClient::Pull(std::span<float> w) {
  if (static_cast<int64_t>(w.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError("parameter buffer has the wrong size");
  }
  std::vector<ShardTag> tags(shards_.size());
  for (int recoveries = 0;; ++recoveries) {
    CallGroup group;
    std::vector<std::shared_ptr<PullCall>> calls;
    group.Begin(static_cast<int>(shards_.size()));
    for (Shard& shard : shards_) {
      calls.push_back(PullCall::Start(shard.generic.get(), *security_,
                                      w.subspan(shard.range.begin, shard.range.size()),
                                      options_.step_timeout, &group));
    }
    group.WaitAll();
    absl::Status failed;
    for (size_t i = 0; i < shards_.size(); ++i) {
      calls[i]->WaitDone();
      tags[i] = calls[i]->tag();
      if (failed.ok() && !calls[i]->status().ok()) failed = Named(shards_[i], calls[i]->status());
    }
    if (failed.ok()) {
      bool same = true;
      for (const ShardTag& t : tags) {
        same &= t.job_id == tags[0].job_id && t.generation == tags[0].generation;
      }
      if (same) break;
      failed = absl::DataLossError("the shards answered from different generations");
    }
    if (!Recoverable(failed) || recoveries >= kMaxRecoveries) return failed;
    if (absl::Status s = Recover(failed); !s.ok()) return s;
  }
  int64_t step = tags[0].step;
  for (const ShardTag& t : tags) step = std::min(step, t.step);
  return step;
}

void GrpcGncClient::CloseStreams() {
  for (Shard& shard : shards_) {
    if (shard.stream != nullptr) shard.stream->Cancel();
  }
  for (Shard& shard : shards_) {
    shard.state = StreamState::kAwaitEval;
    shard.has_pending = false;
    if (shard.stream == nullptr) continue;
    shard.stream->WaitDone();  // gRPC lets go of it (and of any gradient it was sending)
    shard.stream.reset();
  }
}

absl::Status GrpcGncClient::Leave() {
  if (left_) return absl::OkStatus();
  v1::LeaveRequest req;
  req.set_rank(options_.rank);
  auto calls = CallAll<v1::LeaveResponse>(
      AllShards(), absl::Now() + kCallTimeout, /*wait_for_ready=*/false,
      [&](Shard& shard, grpc::ClientContext* ctx, grpc::CompletionQueue* cq) {
        return shard.stub->AsyncLeave(ctx, req, cq);
      });
  CloseStreams();
  left_ = true;
  for (size_t i = 0; i < calls.size(); ++i) {
    if (!calls[i].status.ok()) return Named(shards_[i], calls[i].status);
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
