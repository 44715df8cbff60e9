// ShardCore: membership, the receive stage, the barrier, the merge and publications.
// Restores, rewinds and checkpoints are in shard_recovery.cc.
#include "server/shard_core.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/allocation.h"
#include "common/finite.h"
#include "common/log.h"

namespace gnc {
namespace {

bool AllFinite(const MergeStats& s) {
  return s.finite && std::isfinite(s.mean_grad_sqnorm) && std::isfinite(s.grad_sqnorm_mean) &&
         std::isfinite(s.noise_sqnorm_mean) && std::isfinite(s.perturbation_sqnorm);
}

// StreamStatus: OK when `session` is the rank's open stream `open`. Session 0 names no
// stream: a rank that joined but never opened one has no slot sized yet.
absl::Status StreamStatus(uint64_t open, uint64_t session) {
  if (session == 0) return absl::CancelledError("no Train stream is open for this rank");
  if (session != open) {
    return absl::CancelledError("stream superseded by a newer one for this rank");
  }
  return absl::OkStatus();
}

}  // namespace

std::shared_ptr<PointBuffer> ShardCore::NewPointBuffer(WireDType dtype, size_t d) const {
  auto buf = std::make_unique<PointBuffer>();
  buf->dtype = dtype;
  if (dtype == WireDType::kBfloat16) {
    buf->bf16.resize(d);
  } else {
    buf->f32.resize(d);
  }
  const std::span<const uint8_t> bytes = buf->Bytes();
  return PinWhileAlive(std::move(buf), bytes.data(), bytes.size(), pinner_);
}

// MergeJob: one step's merge, prepared under the lock and run without it.
struct ShardCore::MergeJob {
  PointTag tag;
  MergeParams params;
  MergeInputs inputs;
  std::vector<float> clip_scales;  // per contributor; 1 = not clipped
  SharedFloats w, v;
  std::shared_ptr<Floats> w_out, v_out;
  std::vector<std::shared_ptr<PointBuffer>> points;  // per contributor (mode != none)
  std::vector<PointOut> outs;
  MergeStats stats;
  absl::Time start;
};

ShardCore::ShardCore(ShardOptions options, std::unique_ptr<MergeBackend> backend,
                     ShardObserver* observer, ClockFn clock, CheckpointStore* checkpoints)
    : options_(std::move(options)),
      backend_(std::move(backend)),
      pinner_(backend_->Pinner()),
      observer_(observer),
      clock_(clock ? std::move(clock) : ClockFn([] { return absl::Now(); })),
      checkpoints_(checkpoints),
      w_pool_(pinner_),
      v_pool_(pinner_) {
  for (int k = 0; k < options_.num_workers; ++k) slots_.push_back(std::make_unique<Slot>());
  absl::MutexLock lock(&mu_);
  workers_.resize(options_.num_workers);
  points_.resize(options_.num_workers);
  last_step_time_ = step_began_ = clock_();
  state_.config_hash = options_.ConfigHash();
}

ShardCore::~ShardCore() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(
        +[](bool* merging) { return !*merging; }, &merging_));
  }
  if (pinner_ != nullptr) {
    for (const std::unique_ptr<Slot>& slot : slots_) {
      if (!slot->g.empty()) pinner_->Unpin(slot->g.data());
    }
  }
}

absl::Status ShardCore::CheckRank(int rank) const {
  if (rank < 0 || rank >= options_.num_workers) {
    return absl::NotFoundError(
        absl::StrCat("unknown worker rank ", rank, " (job has ", options_.num_workers,
                     " workers)"));
  }
  return absl::OkStatus();
}

absl::Status ShardCore::DivergedError() const {
  return absl::FailedPreconditionError(absl::StrCat(
      "shard ", options_.shard_index, " diverged at step ", state_.step,
      ": that step's update made the parameters non-finite; the shard keeps step ",
      state_.step, " and refuses training (see the README's Failures section)"));
}

absl::StatusOr<JoinInfo> ShardCore::Join(const JoinArgs& args) {
  if (args.rank < 0 || args.rank >= options_.num_workers) {
    return absl::InvalidArgumentError(absl::StrCat("rank ", args.rank, " is outside [0, ",
                                                   options_.num_workers, ")"));
  }
  if (args.num_workers != options_.num_workers) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker expects ", args.num_workers, " workers, the job has ", options_.num_workers));
  }
  if (args.num_shards != options_.num_shards || args.shard_index != options_.shard_index) {
    return absl::FailedPreconditionError(absl::StrCat(
        "worker thinks this is shard ", args.shard_index, " of ", args.num_shards,
        ", it is shard ", options_.shard_index, " of ", options_.num_shards,
        " (check the order of --servers)"));
  }
  if (args.local_batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("local batch size must be >= 1, got ", args.local_batch_size));
  }
  const uint64_t config_hash = options_.ConfigHash();
  if (args.config_hash != 0 && args.config_hash != config_hash) {
    return absl::FailedPreconditionError(
        absl::StrCat("config hash mismatch: worker expects ", absl::Hex(args.config_hash),
                     ", server has ", absl::Hex(config_hash)));
  }
  const uint64_t layout_hash = args.layout.Hash();
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("shard is draining");
  if (restored_ && !bound_) Rebind(layout_hash, args.job_id);
  if (!has_layout_) {
    // Nothing is fixed until every check has passed: a refused Join leaves the shard
    // as blank as it was.
    const ShardRange range =
        ShardRangeFor(args.layout.NumElements(), options_.num_shards, options_.shard_index);
    if (range.size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model of ", args.layout.NumElements(), " elements leaves shard ",
          options_.shard_index, " of ", options_.num_shards, " empty"));
    }
    const double bytes = options_.StateBytes(range.size());
    if (options_.max_shard_bytes > 0 && bytes > static_cast<double>(options_.max_shard_bytes)) {
      if (observer_ != nullptr) observer_->OnLimited("shard_bytes");
      return absl::ResourceExhaustedError(absl::StrCat(
          "shard ", options_.shard_index, " would need about ",
          absl::StrFormat("%.0f", bytes / (1 << 20)), " MiB, above its --max_shard_bytes of ",
          options_.max_shard_bytes >> 20, " MiB, for its ", range.size(), " of the model's ",
          args.layout.NumElements(), " elements with K=", options_.num_workers));
    }
    range_ = range;
    has_layout_ = true;
    state_.layout_hash = layout_hash;
    state_.model_elements = args.layout.NumElements();
    LogInfo("shard ", options_.shard_index, ": layout fixed by rank ", args.rank, ": ",
            args.layout.NumElements(), " elements, range [", range_.begin, ", ", range_.end,
            ")");
  } else if (layout_hash != state_.layout_hash) {
    return absl::FailedPreconditionError(
        absl::StrCat("model layout mismatch: rank ", args.rank, " offers layout ",
                     absl::Hex(layout_hash), ", the job's is ", absl::Hex(state_.layout_hash)));
  }
  if (args.job_id != 0 && initialized_ && args.job_id != state_.job.job_id) {
    return absl::FailedPreconditionError(absl::StrCat(
        "rank ", args.rank, " belongs to job ", absl::Hex(args.job_id), ", shard ",
        options_.shard_index, " serves job ", absl::Hex(state_.job.job_id), " at step ",
        state_.step));
  }
  bound_ = true;
  Worker& w = workers_[args.rank];
  w.joined = true;
  w.local_batch = args.local_batch_size;
  JoinInfo info;
  info.range = range_;
  info.needs_parameters = !initialized_;
  info.config_hash = config_hash;
  info.layout_hash = state_.layout_hash;
  info.job = JobInfo();
  return info;
}

absl::StatusOr<int64_t> ShardCore::ShardSize() const {
  absl::MutexLock lock(&mu_);
  if (!has_layout_) return absl::FailedPreconditionError("no worker has joined yet");
  return range_.size();
}

absl::StatusOr<int64_t> ShardCore::OfferSize(int rank) const {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  if (!workers_[rank].joined) {
    return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " has not joined"));
  }
  return range_.size();
}

absl::StatusOr<OfferResult> ShardCore::OfferParameters(int rank, uint64_t job_id,
                                                       std::vector<float> values) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  const int64_t bad = FindNonFinite(values);
  Waiters wake;
  OfferResult result;
  {
    absl::MutexLock lock(&mu_);
    if (!workers_[rank].joined) {
      return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " has not joined"));
    }
    if (static_cast<int64_t>(values.size()) != range_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("offered ", values.size(),
                                                     " parameters, shard has ", range_.size()));
    }
    if (bad >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("offered parameters hold a non-finite value at element ", bad));
    }
    if (initialized_) return OfferResult{false, state_.job.job_id};
    if (job_id == 0) return absl::InvalidArgumentError("an offer must name a non-zero job id");
    SharedFloats v;
    if (absl::Status s = TryAllocate("the shard's momentum",
                                     [&] { v = std::make_shared<const Floats>(values.size(), 0.0f); });
        !s.ok()) {
      if (observer_ != nullptr) observer_->OnLimited("allocation");
      return s;
    }
    state_.job = JobIdentity{job_id, 0};
    state_.step = 0;
    state_.v = std::move(v);
    state_.w = std::make_shared<const Floats>(std::move(values));
    state_.noise = NoiseEma();
    initialized_ = true;
    last_step_time_ = step_began_ = clock_();
    LogInfo("shard ", options_.shard_index, ": parameters initialised by rank ", rank, ", job ",
            absl::Hex(job_id));
    Checkpoint();
    Publish(&wake);
    if (observer_ != nullptr) observer_->OnJobState(JobInfo());
    result = OfferResult{true, job_id};
  }
  Wake(wake);
  return result;
}

absl::StatusOr<uint64_t> ShardCore::OpenStream(int rank, WireDType dtype) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  Slot& slot = *slots_[rank];
  Waiters wake;
  uint64_t session = 0;
  {
    absl::MutexLock slot_lock(&slot.mu);
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("shard is draining");
    Worker& w = workers_[rank];
    if (!w.joined) {
      return absl::FailedPreconditionError(absl::StrCat("rank ", rank, " has not joined"));
    }
    if (!initialized_) {
      return absl::FailedPreconditionError("parameters have not been offered yet");
    }
    if (diverged_) return DivergedError();
    // Resized only while the worker has no committed gradient (the merge may read it).
    if (!w.committed && slot.g.size() != static_cast<size_t>(range_.size())) {
      // The slot is pinned for a device backend while it has its size (uploads from
      // it then need no staging copy).
      if (pinner_ != nullptr && !slot.g.empty()) pinner_->Unpin(slot.g.data());
      if (absl::Status s = TryAllocate("a gradient slot", [&] { slot.g.resize(range_.size()); });
          !s.ok()) {
        if (observer_ != nullptr) observer_->OnLimited("allocation");
        return s;
      }
      if (pinner_ != nullptr) pinner_->Pin(slot.g.data(), slot.g.size() * sizeof(float));
    }
    if (w.session != 0) {
      LogWarning("shard ", options_.shard_index, ": rank ", rank,
                 " opened a new stream; the old one is superseded");
      if (auto old = w.waiter.lock()) wake.push_back(std::move(old));  // it ends now
      w.waiter.reset();
    }
    w.session = next_session_++;
    w.dtype = dtype;
    w.ever_connected = true;
    w.finished = false;
    w.since = w.last_heard = clock_();
    slot.expected = 0;
    slot.poisoned = false;
    session = w.session;
    ReportMembership();
  }
  Wake(wake);
  return session;
}

void ShardCore::CloseStream(int rank, uint64_t session) {
  if (!CheckRank(rank).ok()) return;
  Slot& slot = *slots_[rank];
  {
    absl::MutexLock slot_lock(&slot.mu);
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[rank];
    if (w.session != session) return;
    w.session = 0;
    w.since = clock_();
    w.waiter.reset();
    slot.expected = 0;
    slot.poisoned = false;
    ReportMembership();
  }
  MaybeMerge();  // the barrier may have waited only for this worker
}

absl::StatusOr<std::shared_ptr<const Publication>> ShardCore::NextPoint(
    int rank, uint64_t session, const PointTag& sent, std::weak_ptr<PointWaiter> waiter) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[rank];
  if (absl::Status s = StreamStatus(w.session, session); !s.ok()) return s;
  if (draining_) return absl::UnavailableError("shard is draining");
  if (diverged_) return DivergedError();
  if (publication_ != nullptr && publication_->tag() != sent && !w.committed) return publication_;
  w.waiter = std::move(waiter);
  return std::shared_ptr<const Publication>();
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

absl::Status ShardCore::Leave(int rank) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  {
    absl::MutexLock lock(&mu_);
    Worker& w = workers_[rank];
    if (!w.finished) {
      w.finished = true;
      LogInfo("shard ", options_.shard_index, ": rank ", rank, " finished");
    }
    ReportMembership();
  }
  MaybeMerge();
  return absl::OkStatus();
}

std::vector<int> ShardCore::WaitingFor() const {
  std::vector<int> ranks;
  if (!initialized_ || diverged_ || draining_) return ranks;
  for (size_t r = 0; r < workers_.size(); ++r) {
    const Worker& w = workers_[r];
    if (!w.finished && !w.committed) ranks.push_back(static_cast<int>(r));
  }
  return ranks;
}

void ShardCore::CheckDeadline() {
  MaybeMerge();
  absl::MutexLock lock(&mu_);
  const std::vector<int> waiting = WaitingFor();
  const absl::Time now = clock_();
  const absl::Duration waited = waiting.empty() ? absl::ZeroDuration() : now - step_began_;
  if (observer_ != nullptr) observer_->OnWaiting(static_cast<int>(waiting.size()), waited);
  if (waited < options_.stall_report_after ||
      now - last_stall_report_ < options_.stall_report_after) {
    return;
  }
  last_stall_report_ = now;
  std::vector<std::string> who;
  for (int r : waiting) {
    const Worker& w = workers_[r];
    if (!w.ever_connected) {
      who.push_back(absl::StrCat(r, " (never connected)"));
    } else if (w.session == 0) {
      who.push_back(absl::StrCat(r, " (disconnected ",
                                 absl::FormatDuration(absl::Trunc(now - w.since, absl::Seconds(1))),
                                 " ago)"));
    } else {
      who.push_back(absl::StrCat(
          r, " (connected, silent for ",
          absl::FormatDuration(absl::Trunc(now - w.last_heard, absl::Seconds(1))), ")"));
    }
  }
  LogWarning("shard ", options_.shard_index, ": step ", state_.step, " has waited ",
             absl::FormatDuration(absl::Trunc(waited, absl::Seconds(1))), " for rank(s) ",
             absl::StrJoin(who, ", "));
}

int ShardCore::Quorum() const {
  int finished = 0;
  for (const Worker& w : workers_) finished += w.finished ? 1 : 0;
  // Workers that left on purpose do not hold the job back.
  return std::max(1, std::min(options_.EffectiveMinWorkers(), options_.num_workers - finished));
}

bool ShardCore::StepReady() const {
  if (!initialized_ || diverged_ || draining_ || merging_) return false;
  const absl::Time now = clock_();
  if (now < retry_after_) return false;
  int committed = 0;
  bool all_in = true;
  for (const Worker& w : workers_) {
    if (w.committed) {
      ++committed;
      continue;
    }
    // Waited for: unfinished workers that are connected, or have never connected
    // (the job's first steps wait for everyone to show up, up to the timeout).
    if (!w.finished && (w.session != 0 || !w.ever_connected)) all_in = false;
  }
  if (committed == 0 || committed < Quorum()) return false;
  return all_in || now >= deadline_;
}

void ShardCore::MaybeMerge() {
  std::unique_ptr<MergeJob> job;
  {
    absl::MutexLock lock(&mu_);
    if (!StepReady()) return;
    const absl::Status s = TryAllocate("the step's buffers", [&] { job = PrepareMerge(); });
    if (!s.ok()) {
      // As a failed merge: the gradients stay committed and the step is retried.
      merging_ = false;
      retry_after_ = clock_() + absl::Seconds(1);
      LogError("shard ", options_.shard_index, ": step ", state_.step, ": ", s.message(),
               "; retrying in 1 s");
      if (observer_ != nullptr) observer_->OnLimited("allocation");
      return;
    }
  }
  // Merge: outside every lock. The contributors' slots are committed, so no stream
  // writes them; w and v are read-only; the outputs are this job's own buffers.
  for (size_t k = 0; k < job->inputs.grads.size(); ++k) {
    if (job->clip_scales[k] == 1.0f) continue;
    auto g = const_cast<float*>(job->inputs.grads[k].data());  // the slot, committed
    for (size_t i = 0; i < job->inputs.grads[k].size(); ++i) g[i] *= job->clip_scales[k];
  }
  absl::Status status;
  const absl::Status alloc = TryAllocate("the merge's scratch space", [&] {
    status = backend_->MergeInto(job->params, job->inputs, *job->w, *job->v, *job->w_out,
                                 *job->v_out, job->outs, &job->stats);
  });
  if (!alloc.ok()) status = alloc;
  Waiters wake;
  {
    absl::MutexLock lock(&mu_);
    FinishMerge(*job, status, &wake);
  }
  Wake(wake);
}

std::unique_ptr<ShardCore::MergeJob> ShardCore::PrepareMerge() {
  auto job = std::make_unique<MergeJob>();
  merging_ = true;
  job->start = clock_();
  job->tag = Tag();
  const size_t d = state_.size();
  // With fresh noise only the noise pass forms perturbations; the update pass sends
  // every worker the updated w.
  const bool fresh = options_.noise_timing == NoiseTiming::kFresh;
  const bool perturbed = options_.mode != SmoothingMode::kNone && (!fresh || NoisePass());
  for (size_t k = 0; k < workers_.size(); ++k) {
    const Worker& w = workers_[k];
    if (!w.committed) continue;
    job->inputs.grads.emplace_back(slots_[k]->g.data(), d);
    job->inputs.num_samples.push_back(static_cast<double>(w.samples));
    job->inputs.ranks.push_back(static_cast<int32_t>(k));
    const double max = options_.max_gradient_norm;
    job->clip_scales.push_back(max > 0 && w.sqnorm > max * max
                                   ? static_cast<float>(max / std::sqrt(w.sqnorm))
                                   : 1.0f);
    if (!perturbed) continue;
    // Rewrite the rank's last point buffer unless a stream still holds it (one that
    // has not finished sending it, or bytes gRPC has not written yet).
    std::shared_ptr<PointBuffer>& buf = points_[k];
    const long holders =
        1 + (publication_ != nullptr && publication_->Perturbed(static_cast<int>(k)) ? 1 : 0);
    if (buf == nullptr || buf.use_count() > holders || buf->dtype != w.dtype ||
        buf->Elements() != d) {
      buf = NewPointBuffer(w.dtype, d);  // pinned while it lives (a device backend's DMA)
    }
    PointOut out;
    if (w.dtype == WireDType::kBfloat16) {
      out.bf16 = buf->bf16;
    } else {
      out.f32 = buf->f32;
    }
    job->points.push_back(buf);
    job->outs.push_back(out);
  }
  MergeParams& p = job->params;
  p.mode = perturbed ? options_.mode : SmoothingMode::kNone;
  p.apply_update = !NoisePass();
  p.lr = Rate();
  p.momentum = options_.momentum;
  p.nesterov = options_.nesterov;
  p.weight_decay = options_.weight_decay;
  p.gnc_scale = options_.gnc_scale;
  p.max_perturbation_norm = options_.max_perturbation_norm;
  p.seed = options_.seed;
  p.noise_step = state_.step + 1;
  p.global_offset = range_.begin;
  // w and v are the last merge's outputs, unchanged (the same buffers: no restore or
  // rewind replaced them): a device backend may still hold them.
  const bool resident = merged_w_ != nullptr && state_.w == merged_w_ && state_.v == merged_v_;
  p.state_version = resident ? merged_version_ : 0;
  p.out_version = ++next_version_;
  if (!resident) {  // not kept alive past a restore or a rewind
    merged_w_.reset();
    merged_v_.reset();
  }
  job->w = state_.w;
  job->v = state_.v;
  job->w_out = w_pool_.Acquire(d);
  job->v_out = v_pool_.Acquire(d);
  return job;
}

void ShardCore::FinishMerge(MergeJob& job, const absl::Status& status, Waiters* wake) {
  merging_ = false;
  if (!status.ok()) {
    // The device failed: the step's gradients stay committed and the step is retried
    // a second later (CheckDeadline); nothing is lost.
    LogError("shard ", options_.shard_index, ": merge of step ", state_.step,
             " failed: ", status.ToString());
    retry_after_ = clock_() + absl::Seconds(1);
    return;
  }
  if (!AllFinite(job.stats)) {
    diverged_ = true;
    LogError("shard ", options_.shard_index, ": step ", state_.step,
             " diverged (its update made w or v non-finite); the update is not applied, "
             "the shard keeps step ",
             state_.step, " and refuses training");
    if (observer_ != nullptr) observer_->OnJobState(JobInfo());
    TakeWaiters(wake);
    return;
  }
  std::vector<std::shared_ptr<const PointBuffer>> points(workers_.size());
  for (size_t i = 0; i < job.inputs.ranks.size(); ++i) {
    const int rank = job.inputs.ranks[i];
    if (i < job.points.size()) {
      points_[rank] = job.points[i];
      points[rank] = job.points[i];
    }
  }
  for (Worker& w : workers_) w.committed = false;
  if (job.params.apply_update) {
    state_.w = std::move(job.w_out);
    state_.v = std::move(job.v_out);
    merged_w_ = state_.w;
    merged_v_ = state_.v;
    merged_version_ = job.params.out_version;
  }
  StepReport report;
  report.formed_points = job.params.mode != SmoothingMode::kNone;
  report.stats = std::move(job.stats);
  report.step = state_.step;
  report.contributors = static_cast<int>(job.inputs.ranks.size());
  for (double n : job.inputs.num_samples) report.total_samples += n;
  report.mean_samples = report.total_samples / report.contributors;
  report.lr = job.params.lr;
  report.ranks = job.inputs.ranks;
  for (float s : job.clip_scales) report.clipped += s != 1.0f ? 1 : 0;
  // A noise pass changes no state, the EMAs included: its checkpoint is the step's.
  report.has_estimates =
      job.params.apply_update &&
      NoiseEstimates(report.stats.mean_grad_sqnorm, report.stats.grad_sqnorm_mean,
                     report.mean_samples, report.total_samples, &report.g2, &report.trace);
  if (report.has_estimates) state_.noise.Add(report.g2, report.trace, options_.noise_ema);
  report.smoothed_g2 = state_.noise.SmoothedG2();
  report.smoothed_trace = state_.noise.SmoothedTrace();
  const absl::Time end = clock_();
  report.merge_duration = end - job.start;
  report.step_duration = end - last_step_time_;
  last_step_time_ = step_began_ = end;
  ++state_.step;
  deadline_ = absl::InfiniteFuture();
  publication_ = std::make_shared<const Publication>(Tag(), state_.w, std::move(points));
  if (options_.checkpoint_every > 0 &&
      state_.step % (options_.checkpoint_every * options_.PassesPerStep()) == 0) {
    Checkpoint();
  }
  if (observer_ != nullptr) observer_->OnStep(report);
  TakeWaiters(wake);
}

void ShardCore::Publish(Waiters* wake) {
  publication_ = std::make_shared<const Publication>(Tag(), state_.w);
  TakeWaiters(wake);
}

void ShardCore::TakeWaiters(Waiters* wake) {
  for (Worker& w : workers_) {
    if (auto waiter = w.waiter.lock()) wake->push_back(std::move(waiter));
    w.waiter.reset();
  }
}

void ShardCore::Wake(const Waiters& wake) {
  for (const std::shared_ptr<PointWaiter>& w : wake) w->OnPointReady();
}

void ShardCore::ReportMembership() {
  if (observer_ == nullptr) return;
  int connected = 0, finished = 0;
  for (const Worker& w : workers_) {
    connected += w.session != 0 ? 1 : 0;
    finished += w.finished ? 1 : 0;
  }
  observer_->OnMembership(connected, finished);
}

std::shared_ptr<const Publication> ShardCore::Current() const {
  absl::ReaderMutexLock lock(&mu_);
  return publication_;
}

ShardStatus ShardCore::GetStatus() const {
  absl::ReaderMutexLock lock(&mu_);
  ShardStatus s;
  for (const Worker& w : workers_) {
    s.connected += w.session != 0 ? 1 : 0;
    s.finished += w.finished ? 1 : 0;
  }
  s.draining = draining_;
  s.range = range_;
  s.layout_hash = state_.layout_hash;
  s.lr = Rate();
  s.job = JobInfo();
  s.waiting_for = WaitingFor();
  s.waited = s.waiting_for.empty() ? absl::ZeroDuration() : clock_() - step_began_;
  return s;
}

void ShardCore::Drain() {
  Waiters wake;
  {
    absl::MutexLock lock(&mu_);
    draining_ = true;
    mu_.Await(absl::Condition(
        +[](bool* merging) { return !*merging; }, &merging_));
    Checkpoint();
    TakeWaiters(&wake);
  }
  Wake(wake);
}

bool ShardCore::Done() const {
  absl::ReaderMutexLock lock(&mu_);
  int finished = 0, live = 0;  // live: connected and not finished
  for (const Worker& w : workers_) {
    finished += w.finished ? 1 : 0;
    live += !w.finished && w.session != 0 ? 1 : 0;
  }
  if (finished == options_.num_workers) return true;
  const int64_t total = options_.TotalPasses();
  return finished > 0 && live == 0 && (total == 0 || state_.step >= total);
}

}  // namespace gnc
