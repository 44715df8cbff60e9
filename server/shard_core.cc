#include "server/shard_core.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/finite.h"
#include "common/log.h"

namespace gnc {
namespace {

bool AllFinite(const MergeStats& s) {
  return s.finite && std::isfinite(s.mean_grad_sqnorm) && std::isfinite(s.grad_sqnorm_mean) &&
         std::isfinite(s.noise_sqnorm_mean) && std::isfinite(s.perturbation_sqnorm);
}

}  // namespace

ShardCore::ShardCore(ShardOptions options, std::unique_ptr<MergeBackend> backend,
                     ShardObserver* observer, ClockFn clock, CheckpointStore* checkpoints)
    : options_(std::move(options)),
      backend_(std::move(backend)),
      observer_(observer),
      clock_(clock ? std::move(clock) : ClockFn([] { return absl::Now(); })),
      checkpoints_(checkpoints) {
  absl::MutexLock lock(&mu_);
  workers_.resize(options_.num_workers);
  last_step_time_ = step_began_ = clock_();
  state_.config_hash = options_.ConfigHash();
}

absl::Status ShardCore::CheckRank(int rank) const {
  if (rank < 0 || rank >= options_.num_workers) {
    return absl::NotFoundError(
        absl::StrCat("unknown worker rank ", rank, " (job has ", options_.num_workers,
                     " workers)"));
  }
  return absl::OkStatus();
}

JobStateInfo ShardCore::JobInfo() const {
  JobStateInfo info;
  info.initialized = initialized_;
  info.job = state_.job;
  info.step = state_.step;
  info.diverged = diverged_;
  info.restored = restored_;
  if (initialized_) {
    info.rewind_steps.push_back(state_.step);
    if (checkpoints_ != nullptr) {
      for (const CheckpointInfo& c : checkpoints_->Candidates()) {
        if (c.job.job_id == state_.job.job_id && c.step < state_.step &&
            c.layout_hash == state_.layout_hash) {
          info.rewind_steps.push_back(c.step);
        }
      }
    }
    std::sort(info.rewind_steps.begin(), info.rewind_steps.end(), std::greater<>());
    info.rewind_steps.erase(std::unique(info.rewind_steps.begin(), info.rewind_steps.end()),
                            info.rewind_steps.end());
  }
  return info;
}

absl::Status ShardCore::DivergedError() const {
  return absl::FailedPreconditionError(absl::StrCat(
      "shard ", options_.shard_index, " diverged at step ", state_.step,
      ": that step's update made the parameters non-finite; the shard keeps step ",
      state_.step, " and refuses training (see the README's Failures section)"));
}

bool ShardCore::Adopt(ShardState state, const std::string& from) {
  const ShardRange range =
      ShardRangeFor(state.model_elements, options_.num_shards, options_.shard_index);
  if (range.size() != static_cast<int64_t>(state.w.size()) || range.size() == 0) {
    LogWarning("checkpoint ", from, " refused: it holds ", state.w.size(),
               " elements, shard ", options_.shard_index, " of a ", state.model_elements,
               "-element model owns ", range.size());
    return false;
  }
  const int64_t old_generation = state.job.generation;
  if (state.config_hash != options_.ConfigHash()) {
    LogWarning("shard ", options_.shard_index, ": checkpoint ", from,
               " was written under config hash ", absl::Hex(state.config_hash),
               "; resuming under ", absl::Hex(options_.ConfigHash()),
               " (--resume_with_new_config)");
  }
  state_ = std::move(state);
  state_.config_hash = options_.ConfigHash();
  ++state_.job.generation;  // a restore starts a new generation
  range_ = range;
  has_layout_ = true;
  initialized_ = true;
  restored_ = true;
  checkpointed_step_ = state_.step;
  ResetStep();
  step_began_ = last_step_time_ = clock_();
  if (checkpoints_ != nullptr) checkpoints_->Truncate(state_.step, state_.job.generation);
  LogInfo("shard ", options_.shard_index, ": restored step ", state_.step, " of job ",
          absl::Hex(state_.job.job_id), " from ", from, " (generation ", old_generation, " -> ",
          state_.job.generation, ")");
  if (observer_ != nullptr) observer_->OnJobState(JobInfo());
  return true;
}

absl::Status ShardCore::RestoreNewest() {
  if (checkpoints_ == nullptr) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  for (const CheckpointInfo& info : checkpoints_->Candidates()) {
    absl::StatusOr<ShardState> state = checkpoints_->Load(info);
    if (state.ok() && Adopt(*std::move(state), info.path)) return absl::OkStatus();
  }
  LogInfo("shard ", options_.shard_index, ": no usable checkpoint; starting blank");
  return absl::OkStatus();
}

void ShardCore::Rebind(uint64_t layout_hash, uint64_t job_id) {
  auto fits = [&](uint64_t layout, uint64_t job) {
    return layout == layout_hash && (job_id == 0 || job == job_id);
  };
  if (fits(state_.layout_hash, state_.job.job_id)) return;
  LogWarning("shard ", options_.shard_index, ": the restored checkpoint of step ", state_.step,
             " is refused: it belongs to job ", absl::Hex(state_.job.job_id), " with layout ",
             absl::Hex(state_.layout_hash), ", the first worker joins with layout ",
             absl::Hex(layout_hash),
             job_id != 0 ? absl::StrCat(" of job ", absl::Hex(job_id)) : std::string());
  for (const CheckpointInfo& info : checkpoints_->Candidates()) {
    if (!fits(info.layout_hash, info.job.job_id)) continue;
    absl::StatusOr<ShardState> state = checkpoints_->Load(info);
    if (state.ok() && Adopt(*std::move(state), info.path)) return;
  }
  LogWarning("shard ", options_.shard_index, ": no checkpoint matches; starting blank");
  state_ = ShardState();
  state_.config_hash = options_.ConfigHash();
  has_layout_ = initialized_ = restored_ = false;
  range_ = ShardRange();
  if (observer_ != nullptr) observer_->OnJobState(JobInfo());
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
    range_ = ShardRangeFor(args.layout.NumElements(), options_.num_shards, options_.shard_index);
    if (range_.size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model of ", args.layout.NumElements(), " elements leaves shard ",
          options_.shard_index, " of ", options_.num_shards, " empty"));
    }
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

absl::StatusOr<OfferResult> ShardCore::OfferParameters(int rank, uint64_t job_id,
                                                       std::vector<float> values) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  const int64_t bad = FindNonFinite(values);
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
  state_.job = JobIdentity{job_id, 0};
  state_.step = 0;
  state_.w = std::move(values);
  state_.v.assign(state_.w.size(), 0.0f);
  state_.noise = NoiseEma();
  initialized_ = true;
  last_step_time_ = step_began_ = clock_();
  LogInfo("shard ", options_.shard_index, ": parameters initialised by rank ", rank, ", job ",
          absl::Hex(job_id));
  Checkpoint();
  if (observer_ != nullptr) observer_->OnJobState(JobInfo());
  return OfferResult{true, job_id};
}

absl::StatusOr<uint64_t> ShardCore::OpenStream(int rank) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
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
  if (w.session != 0) {
    LogWarning("shard ", options_.shard_index, ": rank ", rank,
               " opened a new stream; the old one is superseded");
  }
  w.session = next_session_++;
  w.ever_connected = true;
  w.finished = false;
  w.since = w.last_heard = clock_();
  w.expected_offset = 0;
  w.poisoned = false;
  if (w.grad.size() != static_cast<size_t>(range_.size())) w.grad.resize(range_.size());
  ReportMembership();
  changed_.SignalAll();  // wakes a superseded stream's waiter
  return w.session;
}

void ShardCore::CloseStream(int rank, uint64_t session) {
  if (!CheckRank(rank).ok()) return;
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[rank];
  if (w.session != session) return;
  w.session = 0;
  w.since = clock_();
  w.expected_offset = 0;
  w.poisoned = false;
  ReportMembership();
  TryCompleteStep(/*deadline_passed=*/false);
}

absl::StatusOr<PointTag> ShardCore::WaitForPoint(int rank, uint64_t session,
                                                 const PointTag& sent,
                                                 absl::Duration max_wait) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  const absl::Time until = absl::Now() + max_wait;
  absl::MutexLock lock(&mu_);
  while (true) {
    const Worker& w = workers_[rank];
    if (w.session != session) {
      return absl::CancelledError("stream superseded by a newer one for this rank");
    }
    if (draining_) return absl::UnavailableError("shard is draining");
    if (diverged_) return DivergedError();
    if (Tag() != sent && !w.committed) return Tag();
    if (changed_.WaitWithDeadline(&mu_, until)) {
      return absl::DeadlineExceededError(
          absl::StrCat("step ", state_.step, " has not completed yet"));
    }
  }
}

absl::Status ShardCore::ReadEvalPoint(int rank, const PointTag& tag, int64_t offset,
                                      int64_t count, EvalPointSink sink) const {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  if (tag != Tag()) {
    return absl::AbortedError(absl::StrCat("step ", tag.step, " of generation ",
                                           tag.job.generation, " is no longer current (step ",
                                           state_.step, ", generation ",
                                           state_.job.generation, ")"));
  }
  if (offset < 0 || count < 0 || offset + count > range_.size()) {
    return absl::InvalidArgumentError("evaluation point range outside the shard");
  }
  const Worker& w = workers_[rank];
  std::span<const float> wspan(state_.w.data() + offset, count);
  std::span<const float> dspan;
  if (w.has_delta) dspan = std::span<const float>(w.delta.data() + offset, count);
  return sink(wspan, dspan);
}

absl::Status ShardCore::Refuse(Worker& w, std::string_view reason, absl::Status status) {
  w.poisoned = true;
  w.expected_offset = 0;
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
  const int64_t n = static_cast<int64_t>(c.values.size());
  const int64_t bad = FindNonFinite(c.values);
  double sqnorm = 0;
  if (options_.max_gradient_norm > 0 && bad < 0) {
    for (float x : c.values) sqnorm += static_cast<double>(x) * x;
  }
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[c.rank];
  if (w.session != c.session) {
    return absl::CancelledError("stream superseded by a newer one for this rank");
  }
  w.last_heard = clock_();
  if (diverged_) return Refuse(w, "diverged", DivergedError());
  if (c.offset == 0) {
    w.poisoned = false;
    w.expected_offset = 0;
  } else if (w.poisoned) {
    return PushOutcome::kDropped;
  }
  if (!c.decode_status.ok()) return Refuse(w, "bad_chunk", c.decode_status);
  if (c.generation != state_.job.generation) {
    return Refuse(w, "rewound",
                  absl::AbortedError(absl::StrCat(
                      "gradient of generation ", c.generation, " step ", c.step,
                      ": the job was rewound; it is at step ", state_.step, " of generation ",
                      state_.job.generation)));
  }
  if (c.step < state_.step) {
    return Refuse(w, "late",
                  absl::AbortedError(absl::StrCat("step ", c.step,
                                                  " has completed without this gradient; "
                                                  "current step is ",
                                                  state_.step)));
  }
  if (c.step > state_.step) {
    return Refuse(w, "future_step",
                  absl::FailedPreconditionError(absl::StrCat(
                      "gradient for step ", c.step, " but the shard is at step ", state_.step)));
  }
  if (w.committed) {
    return Refuse(w, "duplicate",
                  absl::AlreadyExistsError(absl::StrCat("rank ", c.rank,
                                                        " already pushed its gradient for step ",
                                                        c.step)));
  }
  if (c.offset != w.expected_offset) {
    const char* what = c.offset < w.expected_offset ? "duplicate chunk" : "gap";
    return Refuse(w, "bad_chunk",
                  absl::InvalidArgumentError(absl::StrCat(what, ": chunk at offset ", c.offset,
                                                          ", expected offset ",
                                                          w.expected_offset)));
  }
  if (n == 0 || c.offset + n > range_.size()) {
    return Refuse(w, "bad_size",
                  absl::InvalidArgumentError(absl::StrCat(
                      "chunk [", c.offset, ", ", c.offset + n, ") is empty or outside the shard's ",
                      range_.size(), " elements")));
  }
  if (c.offset == 0) {
    if (c.num_samples < 1 || c.num_samples > w.local_batch) {
      return Refuse(w, "bad_samples",
                    absl::InvalidArgumentError(absl::StrCat(
                        "num_samples must be in [1, ", w.local_batch,
                        "] (the local batch size rank ", c.rank, " declared at Join), got ",
                        c.num_samples)));
    }
    w.attempt_samples = c.num_samples;
    w.attempt_sqnorm = 0;
  }
  if (bad >= 0) {
    return Refuse(w, "non_finite",
                  absl::InvalidArgumentError(absl::StrCat(
                      "gradient holds a non-finite value at element ", c.offset + bad,
                      " of the shard")));
  }
  const bool complete = c.offset + n == range_.size();
  if (complete != c.last) {
    return Refuse(w, "bad_chunk",
                  absl::InvalidArgumentError(
                      complete ? "final chunk is not marked last"
                               : absl::StrCat("chunk marked last ends at element ", c.offset + n,
                                              " of ", range_.size())));
  }
  std::copy(c.values.begin(), c.values.end(), w.grad.begin() + c.offset);
  w.expected_offset += n;
  w.attempt_sqnorm += sqnorm;
  if (observer_ != nullptr) observer_->OnGradientBytes(n * static_cast<int64_t>(sizeof(float)));
  if (!complete) return PushOutcome::kContinue;

  w.committed = true;
  w.expected_offset = 0;
  if (deadline_ == absl::InfiniteFuture()) deadline_ = clock_() + options_.straggler_timeout;
  TryCompleteStep(/*deadline_passed=*/false);
  return PushOutcome::kCommitted;
}

absl::Status ShardCore::Leave(int rank) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[rank];
  if (!w.finished) {
    w.finished = true;
    LogInfo("shard ", options_.shard_index, ": rank ", rank, " finished");
  }
  ReportMembership();
  TryCompleteStep(/*deadline_passed=*/false);
  return absl::OkStatus();
}

absl::StatusOr<JobStateInfo> ShardCore::Rewind(uint64_t job_id, int64_t step,
                                               int64_t generation) {
  std::optional<CheckpointInfo> source;
  {
    absl::MutexLock lock(&mu_);
    if (draining_) return absl::UnavailableError("shard is draining");
    if (!initialized_) return absl::FailedPreconditionError("the shard holds no job yet");
    if (diverged_) return DivergedError();
    if (job_id != state_.job.job_id) {
      return absl::FailedPreconditionError(absl::StrCat("rewind for job ", absl::Hex(job_id),
                                                        ", this shard serves job ",
                                                        absl::Hex(state_.job.job_id)));
    }
    if (generation <= state_.job.generation) return JobInfo();  // done already: a no-op
    if (step != state_.step) {
      if (checkpoints_ != nullptr) {
        for (const CheckpointInfo& c : checkpoints_->Candidates()) {
          if (c.job.job_id == job_id && c.step == step && c.step < state_.step &&
              c.layout_hash == state_.layout_hash) {
            source = c;
            break;
          }
        }
      }
      if (!source.has_value()) {
        return absl::FailedPreconditionError(
            absl::StrCat("shard ", options_.shard_index, " cannot rewind to step ", step,
                         ": it is at step ", state_.step, " and holds no checkpoint of it"));
      }
    }
  }
  // The file is read without the lock; the state is re-checked after.
  std::optional<ShardState> loaded;
  if (source.has_value()) {
    absl::StatusOr<ShardState> state = checkpoints_->Load(*source);
    if (!state.ok()) return state.status();
    loaded = *std::move(state);
  }
  absl::MutexLock lock(&mu_);
  if (draining_) return absl::UnavailableError("shard is draining");
  if (diverged_) return DivergedError();
  if (generation <= state_.job.generation) return JobInfo();  // another rewind won
  if (job_id != state_.job.job_id) return absl::FailedPreconditionError("job id changed");
  if (loaded.has_value()) {
    if (static_cast<int64_t>(loaded->w.size()) != range_.size()) {
      return absl::FailedPreconditionError(
          absl::StrCat("checkpoint ", source->path, " does not fit the shard"));
    }
    state_.w = std::move(loaded->w);
    state_.v = std::move(loaded->v);
    state_.noise = loaded->noise;
    state_.step = loaded->step;
  } else if (step != state_.step) {
    return absl::FailedPreconditionError(absl::StrCat("shard ", options_.shard_index,
                                                      " moved to step ", state_.step,
                                                      " while rewinding; ask again"));
  }
  const int64_t old_generation = state_.job.generation;
  state_.job.generation = generation;
  ResetStep();
  step_began_ = last_step_time_ = clock_();
  checkpointed_step_ = loaded.has_value() ? state_.step : -1;
  if (checkpoints_ != nullptr) checkpoints_->Truncate(state_.step, generation);
  LogInfo("shard ", options_.shard_index, ": rewound to step ", state_.step, " (",
          loaded.has_value() ? absl::StrCat("from ", source->path) : std::string("in memory"),
          "), generation ", old_generation, " -> ", generation);
  if (observer_ != nullptr) {
    observer_->OnRewind();
    observer_->OnJobState(JobInfo());
  }
  changed_.SignalAll();
  return JobInfo();
}

void ShardCore::ResetStep() {
  for (Worker& w : workers_) {
    w.committed = false;
    w.poisoned = false;
    w.expected_offset = 0;
    w.has_delta = false;
  }
  deadline_ = absl::InfiniteFuture();
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
  absl::MutexLock lock(&mu_);
  if (deadline_ != absl::InfiniteFuture() && clock_() >= deadline_) {
    TryCompleteStep(/*deadline_passed=*/true);
  }
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

void ShardCore::TryCompleteStep(bool deadline_passed) {
  if (!initialized_ || diverged_) return;
  int committed = 0;
  bool all_in = true;
  for (const Worker& w : workers_) {
    if (w.committed) {
      ++committed;
      continue;
    }
    // Waited for: unfinished workers that are connected, or have never connected
    // (the job's first steps wait for everyone to show up, up to the timeout).
    const bool expected = !w.finished && (w.session != 0 || !w.ever_connected);
    if (expected) all_in = false;
  }
  if (committed == 0 || committed < Quorum()) return;
  if (!all_in && !deadline_passed) return;
  if (!all_in) {
    LogWarning("shard ", options_.shard_index, ": step ", state_.step,
               " completes on the straggler timeout with ", committed, " of ",
               options_.num_workers, " gradients");
  }
  CompleteStep();
}

void ShardCore::CompleteStep() {
  const absl::Time start = clock_();
  const size_t d = state_.w.size();
  MergeInputs inputs;
  std::vector<std::span<float>> deltas;
  std::vector<Worker*> contributors;
  StepReport report;
  for (size_t k = 0; k < workers_.size(); ++k) {
    Worker& w = workers_[k];
    if (!w.committed) continue;
    if (w.delta.size() != d) w.delta.resize(d);
    if (options_.max_gradient_norm > 0 &&
        w.attempt_sqnorm > options_.max_gradient_norm * options_.max_gradient_norm) {
      // Clipping scales the stored gradient once; a failed merge retried later sees
      // it already clipped, which clips to the same bound.
      const float scale =
          static_cast<float>(options_.max_gradient_norm / std::sqrt(w.attempt_sqnorm));
      for (float& x : w.grad) x *= scale;
      w.attempt_sqnorm = options_.max_gradient_norm * options_.max_gradient_norm;
      ++report.clipped;
    }
    inputs.grads.emplace_back(w.grad);
    inputs.num_samples.push_back(static_cast<double>(w.attempt_samples));
    inputs.ranks.push_back(static_cast<int32_t>(k));
    deltas.emplace_back(w.delta);
    contributors.push_back(&w);
  }
  MergeParams params;
  params.mode = options_.mode;
  params.lr = options_.lr.Rate(state_.step);
  params.momentum = options_.momentum;
  params.nesterov = options_.nesterov;
  params.weight_decay = options_.weight_decay;
  params.gnc_scale = options_.gnc_scale;
  params.max_perturbation_norm = options_.max_perturbation_norm;
  params.seed = options_.seed;
  params.noise_step = state_.step + 1;
  params.global_offset = range_.begin;
  w_next_.resize(d);
  v_next_.resize(d);
  absl::Status s = backend_->MergeInto(params, inputs, state_.w, state_.v, w_next_, v_next_,
                                       deltas, &report.stats);
  if (!s.ok()) {
    // The device failed: the step's gradients stay committed and the step is retried
    // on the next completion attempt; nothing is lost.
    LogError("shard ", options_.shard_index, ": merge of step ", state_.step,
             " failed: ", s.ToString());
    return;
  }
  if (!AllFinite(report.stats)) {
    diverged_ = true;
    for (Worker* w : contributors) w->has_delta = false;
    LogError("shard ", options_.shard_index, ": step ", state_.step,
             " diverged (its update made w or v non-finite); the update is not applied, "
             "the shard keeps step ",
             state_.step, " and refuses training");
    if (observer_ != nullptr) observer_->OnJobState(JobInfo());
    changed_.SignalAll();
    return;
  }
  std::swap(state_.w, w_next_);
  std::swap(state_.v, v_next_);
  for (Worker& w : workers_) {
    w.has_delta = w.committed && options_.mode != SmoothingMode::kNone;
    w.committed = false;
  }
  const absl::Time end = clock_();
  report.step = state_.step;
  report.contributors = static_cast<int>(contributors.size());
  for (double n : inputs.num_samples) report.total_samples += n;
  report.mean_samples = report.total_samples / report.contributors;
  report.lr = params.lr;
  report.ranks = std::move(inputs.ranks);
  report.has_estimates =
      NoiseEstimates(report.stats.mean_grad_sqnorm, report.stats.grad_sqnorm_mean,
                     report.mean_samples, report.total_samples, &report.g2, &report.trace);
  if (report.has_estimates) state_.noise.Add(report.g2, report.trace, options_.noise_ema);
  report.smoothed_g2 = state_.noise.SmoothedG2();
  report.smoothed_trace = state_.noise.SmoothedTrace();
  report.merge_duration = end - start;
  report.step_duration = end - last_step_time_;
  last_step_time_ = step_began_ = end;
  ++state_.step;
  deadline_ = absl::InfiniteFuture();
  if (options_.checkpoint_every > 0 && state_.step % options_.checkpoint_every == 0) {
    Checkpoint();
  }
  if (observer_ != nullptr) observer_->OnStep(report);
  changed_.SignalAll();
}

void ShardCore::Checkpoint() {
  if (checkpoints_ == nullptr || !initialized_ || diverged_) return;
  if (checkpointed_step_ == state_.step) return;
  checkpointed_step_ = state_.step;
  // The copy is the only part of a checkpoint that holds the step up. Once the
  // writer has let go of the last snapshot, its buffers are reused: a copy into
  // memory already mapped costs a memcpy, a fresh one page faults as well.
  if (snapshot_ == nullptr || snapshot_.use_count() > 1) {
    snapshot_ = std::make_shared<ShardState>();
  }
  *snapshot_ = state_;
  checkpoints_->WriteAsync(snapshot_);
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

absl::Status ShardCore::Snapshot(std::vector<float>* w, PointTag* tag) const {
  absl::ReaderMutexLock lock(&mu_);
  if (!initialized_) return absl::FailedPreconditionError("parameters have not been offered yet");
  *w = state_.w;
  *tag = Tag();
  return absl::OkStatus();
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
  s.lr = options_.lr.Rate(state_.step);
  s.job = JobInfo();
  s.waiting_for = WaitingFor();
  s.waited = s.waiting_for.empty() ? absl::ZeroDuration() : clock_() - step_began_;
  return s;
}

void ShardCore::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  Checkpoint();
  changed_.SignalAll();
}

bool ShardCore::Done() const {
  absl::ReaderMutexLock lock(&mu_);
  int finished = 0, live = 0;  // live: connected and not finished
  for (const Worker& w : workers_) {
    finished += w.finished ? 1 : 0;
    live += !w.finished && w.session != 0 ? 1 : 0;
  }
  if (finished == options_.num_workers) return true;
  const int64_t total = options_.lr.total_steps;
  return finished > 0 && live == 0 && (total == 0 || state_.step >= total);
}

}  // namespace gnc
