// GncClient::Connect and the client's calls outside the steps: joining every shard,
// synchronising their jobs (carry on, rewind, or say why not), offering the initial
// parameters and leaving. Each step's streams are in client_steps.cc.
#include <algorithm>
#include <functional>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "worker/grpc_client.h"
#include "worker/job_sync.h"

namespace gnc {
namespace client_internal {
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

}  // namespace

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

}  // namespace client_internal

absl::StatusOr<std::unique_ptr<GncClient>> GncClient::Connect(const ClientOptions& options) {
  auto client = std::make_unique<client_internal::GrpcGncClient>(options);
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

}  // namespace gnc
