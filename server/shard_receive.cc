// ShardCore, stage 1 (DESIGN section 2): receiving a gradient chunk, checked under the
// shard's lock and copied into the worker's slot without it.
#include <cmath>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "common/finite.h"
#include "server/shard_core.h"

namespace gnc {

// StreamStatus: OK when `session` is the rank's open stream `open`. Session 0 names no
// stream: a rank that joined but never opened one has no slot sized yet.
absl::Status ShardCore::StreamStatus(uint64_t open, uint64_t session) {
  if (session == 0) return absl::CancelledError("no Train stream is open for this rank");
  if (session != open) {
    return absl::CancelledError("stream superseded by a newer one for this rank");
  }
  return absl::OkStatus();
}

absl::Status ShardCore::Refuse(Slot& slot, std::string_view reason, absl::Status status) {
  slot.poisoned = true;
  slot.expected = 0;
  if (observer_ != nullptr) {
    if (reason == "late") {
      observer_->OnLate();
    } else {
      observer_->OnRejected(reason);
    }
  }
  return status;
}

absl::StatusOr<PushOutcome> ShardCore::PushGradient(const GradientChunk& c) {
  if (absl::Status s = CheckRank(c.rank); !s.ok()) {
    if (observer_ != nullptr) observer_->OnRejected("unknown_worker");
    return s;
  }
  Slot& slot = *slots_[c.rank];
  absl::MutexLock slot_lock(&slot.mu);
  const int64_t n = c.payload != nullptr
                        ? static_cast<int64_t>(c.payload->size / ElementBytes(c.dtype))
                        : 0;
  bool complete = false;
  {
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[c.rank];
    if (absl::Status s = StreamStatus(w.session, c.session); !s.ok()) return s;
    w.last_heard = clock_();
    if (diverged_) return Refuse(slot, "diverged", DivergedError());
    if (c.offset == 0) {
      slot.poisoned = false;
      slot.expected = 0;
    } else if (slot.poisoned) {
      return PushOutcome::kDropped;
    }
    if (!c.decode_status.ok()) return Refuse(slot, "bad_chunk", c.decode_status);
    if (c.generation != state_.job.generation) {
      return Refuse(slot, "rewound",
                    absl::AbortedError(absl::StrCat(
                        "gradient of generation ", c.generation, " step ", c.step,
                        ": the job was rewound; it is at step ", state_.step,
                        " of generation ", state_.job.generation)));
    }
    if (c.step < state_.step) {
      return Refuse(slot, "late",
                    absl::AbortedError(absl::StrCat("step ", c.step,
                                                    " has completed without this gradient; "
                                                    "current step is ",
                                                    state_.step)));
    }
    if (c.step > state_.step) {
      return Refuse(slot, "future_step",
                    absl::FailedPreconditionError(absl::StrCat(
                        "gradient for step ", c.step, " but the shard is at step ", state_.step)));
    }
    if (w.committed) {
      return Refuse(slot, "duplicate",
                    absl::AlreadyExistsError(absl::StrCat(
                        "rank ", c.rank, " already pushed its gradient for step ", c.step)));
    }
    if (c.offset != slot.expected) {
      const char* what = c.offset < slot.expected ? "duplicate chunk" : "gap";
      return Refuse(slot, "bad_chunk",
                    absl::InvalidArgumentError(absl::StrCat(what, ": chunk at offset ", c.offset,
                                                            ", expected offset ",
                                                            slot.expected)));
    }
    if (n == 0 || c.offset + n > range_.size()) {
      return Refuse(slot, "bad_size",
                    absl::InvalidArgumentError(absl::StrCat(
                        "chunk [", c.offset, ", ", c.offset + n,
                        ") is empty or outside the shard's ", range_.size(), " elements")));
    }
    if (c.offset == 0) {
      if (c.num_samples < 1 || c.num_samples > w.local_batch) {
        return Refuse(slot, "bad_samples",
                      absl::InvalidArgumentError(absl::StrCat(
                          "num_samples must be in [1, ", w.local_batch,
                          "] (the local batch size rank ", c.rank, " declared at Join), got ",
                          c.num_samples)));
      }
      slot.samples = c.num_samples;
      slot.sqnorm = 0;
    }
    complete = c.offset + n == range_.size();
    if (complete != c.last) {
      return Refuse(slot, "bad_chunk",
                    absl::InvalidArgumentError(
                        complete ? "final chunk is not marked last"
                                 : absl::StrCat("chunk marked last ends at element ",
                                                c.offset + n, " of ", range_.size())));
    }
  }

  // Receive: the copy into the worker's slot holds the slot's lock alone.
  const std::span<float> dst(slot.g.data() + c.offset, static_cast<size_t>(n));
  DecodePayload(*c.payload, c.dtype, dst);
  if (const int64_t bad = FindNonFinite(dst); bad >= 0) {
    return Refuse(slot, "non_finite",
                  absl::InvalidArgumentError(absl::StrCat(
                      "gradient holds a non-finite value at element ", c.offset + bad,
                      " of the shard")));
  }
  if (options_.max_gradient_norm > 0) {
    double s = 0;
    for (float x : dst) s += static_cast<double>(x) * x;
    slot.sqnorm += s;
  }
  slot.expected += n;
  if (observer_ != nullptr) observer_->OnGradientBytes(n * static_cast<int64_t>(sizeof(float)));
  if (!complete) return PushOutcome::kContinue;

  bool ready = false;
  {
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[c.rank];
    // The step may have moved on, or the job been rewound, while the bytes were copied.
    if (absl::Status s = StreamStatus(w.session, c.session); !s.ok()) return s;
    if (diverged_) return Refuse(slot, "diverged", DivergedError());
    if (c.generation != state_.job.generation || c.step != state_.step) {
      return Refuse(slot, c.generation != state_.job.generation ? "rewound" : "late",
                    absl::AbortedError(absl::StrCat(
                        "step ", c.step, " completed (or was rewound) while this gradient "
                        "arrived; current step is ", state_.step)));
    }
    w.committed = true;
    w.samples = slot.samples;
    w.sqnorm = slot.sqnorm;
    slot.expected = 0;
    if (deadline_ == absl::InfiniteFuture()) deadline_ = clock_() + options_.straggler_timeout;
    ready = StepReady();
  }
  if (ready) MaybeMerge();
  return PushOutcome::kCommitted;
}

}  // namespace gnc
