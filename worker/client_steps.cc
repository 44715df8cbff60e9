// GrpcGncClient, each step: the Train streams that carry points and gradients, pulls,
// and recovery when a stream breaks.
#include <algorithm>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/log.h"
#include "worker/grpc_client.h"

namespace gnc::client_internal {
namespace {

// A call recovers at most this many times before it gives up.
constexpr int kMaxRecoveries = 20;

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

}  // namespace

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

}  // namespace gnc::client_internal
