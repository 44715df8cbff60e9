#include "server/shard_core.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/log.h"

namespace gnc {

ShardCore::ShardCore(ShardOptions options, std::unique_ptr<MergeBackend> backend,
                     ShardObserver* observer, ClockFn clock)
    : options_(std::move(options)),
      backend_(std::move(backend)),
      observer_(observer),
      clock_(clock ? std::move(clock) : ClockFn([] { return absl::Now(); })) {
  absl::MutexLock lock(&mu_);
  workers_.resize(options_.num_workers);
  last_step_time_ = clock_();
}

absl::Status ShardCore::CheckRank(int rank) const {
  if (rank < 0 || rank >= options_.num_workers) {
    return absl::NotFoundError(
        absl::StrCat("unknown worker rank ", rank, " (job has ", options_.num_workers,
                     " workers)"));
  }
  return absl::OkStatus();
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
  if (!has_layout_) {
    range_ = ShardRangeFor(args.layout.NumElements(), options_.num_shards, options_.shard_index);
    if (range_.size() == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "model of ", args.layout.NumElements(), " elements leaves shard ",
          options_.shard_index, " of ", options_.num_shards, " empty"));
    }
    has_layout_ = true;
    layout_hash_ = layout_hash;
    LogInfo("shard ", options_.shard_index, ": layout fixed by rank ", args.rank, ": ",
            args.layout.NumElements(), " elements, range [", range_.begin, ", ", range_.end,
            ")");
  } else if (layout_hash != layout_hash_) {
    return absl::FailedPreconditionError(
        absl::StrCat("model layout mismatch: rank ", args.rank, " offers layout ",
                     absl::Hex(layout_hash), ", the job's is ", absl::Hex(layout_hash_)));
  }
  workers_[args.rank].joined = true;
  JoinInfo info;
  info.range = range_;
  info.needs_parameters = !initialized_;
  info.config_hash = config_hash;
  info.layout_hash = layout_hash_;
  info.step = step_;
  return info;
}

absl::StatusOr<int64_t> ShardCore::ShardSize() const {
  absl::MutexLock lock(&mu_);
  if (!has_layout_) return absl::FailedPreconditionError("no worker has joined yet");
  return range_.size();
}

absl::StatusOr<bool> ShardCore::OfferParameters(int rank, std::vector<float> values) {
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
  if (initialized_) return false;
  w_ = std::move(values);
  v_.assign(w_.size(), 0.0f);
  initialized_ = true;
  last_step_time_ = clock_();
  LogInfo("shard ", options_.shard_index, ": parameters initialised by rank ", rank);
  return true;
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
  if (w.session != 0) {
    LogWarning("shard ", options_.shard_index, ": rank ", rank,
               " opened a new stream; the old one is superseded");
  }
  w.session = next_session_++;
  w.ever_connected = true;
  w.finished = false;
  w.expected_offset = 0;
  w.poisoned = false;
  if (w.grad.size() != static_cast<size_t>(range_.size())) w.grad.resize(range_.size());
  ReportMembership();
  step_cv_.SignalAll();  // wakes a superseded stream's waiter
  return w.session;
}

void ShardCore::CloseStream(int rank, uint64_t session) {
  if (!CheckRank(rank).ok()) return;
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[rank];
  if (w.session != session) return;
  w.session = 0;
  w.expected_offset = 0;
  w.poisoned = false;
  ReportMembership();
  TryCompleteStep(/*deadline_passed=*/false);
}

absl::StatusOr<int64_t> ShardCore::WaitForStep(int rank, uint64_t session, int64_t after_step,
                                               absl::Duration max_wait) {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  const absl::Time until = absl::Now() + max_wait;
  absl::MutexLock lock(&mu_);
  while (true) {
    if (workers_[rank].session != session) {
      return absl::CancelledError("stream superseded by a newer one for this rank");
    }
    if (draining_) return absl::UnavailableError("shard is draining");
    if (step_ > after_step) return step_;
    if (step_cv_.WaitWithDeadline(&mu_, until)) {
      return absl::DeadlineExceededError("no new step yet");
    }
  }
}

absl::Status ShardCore::ReadEvalPoint(int rank, int64_t step, int64_t offset, int64_t count,
                                      EvalPointSink sink) const {
  if (absl::Status s = CheckRank(rank); !s.ok()) return s;
  absl::ReaderMutexLock lock(&mu_);
  if (step != step_) {
    return absl::AbortedError(absl::StrCat("step ", step, " is no longer current (", step_, ")"));
  }
  if (offset < 0 || count < 0 || offset + count > range_.size()) {
    return absl::InvalidArgumentError("evaluation point range outside the shard");
  }
  const Worker& w = workers_[rank];
  std::span<const float> wspan(w_.data() + offset, count);
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
  absl::MutexLock lock(&mu_);
  Worker& w = workers_[c.rank];
  if (w.session != c.session) {
    return absl::CancelledError("stream superseded by a newer one for this rank");
  }
  if (c.offset == 0) {
    w.poisoned = false;
    w.expected_offset = 0;
  } else if (w.poisoned) {
    return PushOutcome::kDropped;
  }
  if (!c.decode_status.ok()) return Refuse(w, "bad_chunk", c.decode_status);
  if (c.step < step_) {
    return Refuse(w, "late",
                  absl::AbortedError(absl::StrCat("step ", c.step,
                                                  " has completed without this gradient; "
                                                  "current step is ",
                                                  step_)));
  }
  if (c.step > step_) {
    return Refuse(w, "future_step",
                  absl::FailedPreconditionError(absl::StrCat(
                      "gradient for step ", c.step, " but the shard is at step ", step_)));
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
    if (c.num_samples < 1) {
      return Refuse(w, "bad_chunk",
                    absl::InvalidArgumentError(absl::StrCat(
                        "num_samples must be >= 1, got ", c.num_samples)));
    }
    w.attempt_samples = c.num_samples;
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

void ShardCore::CheckDeadline() {
  absl::MutexLock lock(&mu_);
  if (deadline_ != absl::InfiniteFuture() && clock_() >= deadline_) {
    TryCompleteStep(/*deadline_passed=*/true);
  }
}

int ShardCore::Quorum() const {
  int finished = 0;
  for (const Worker& w : workers_) finished += w.finished ? 1 : 0;
  // Workers that left on purpose do not hold the job back.
  return std::max(1, std::min(options_.EffectiveMinWorkers(), options_.num_workers - finished));
}

void ShardCore::TryCompleteStep(bool deadline_passed) {
  if (!initialized_) return;
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
    LogWarning("shard ", options_.shard_index, ": step ", step_,
               " completes on the straggler timeout with ", committed, " of ",
               options_.num_workers, " gradients");
  }
  CompleteStep();
}

void ShardCore::CompleteStep() {
  const absl::Time start = clock_();
  MergeInputs inputs;
  std::vector<std::span<float>> deltas;
  std::vector<Worker*> contributors;
  for (size_t k = 0; k < workers_.size(); ++k) {
    Worker& w = workers_[k];
    w.has_delta = false;
    if (!w.committed) continue;
    if (w.delta.size() != w_.size()) w.delta.resize(w_.size());
    inputs.grads.emplace_back(w.grad);
    inputs.num_samples.push_back(static_cast<double>(w.attempt_samples));
    inputs.ranks.push_back(static_cast<int32_t>(k));
    deltas.emplace_back(w.delta);
    contributors.push_back(&w);
  }
  MergeParams params;
  params.mode = options_.mode;
  params.lr = options_.lr.Rate(step_);
  params.momentum = options_.momentum;
  params.nesterov = options_.nesterov;
  params.weight_decay = options_.weight_decay;
  params.gnc_scale = options_.gnc_scale;
  params.max_perturbation_norm = options_.max_perturbation_norm;
  params.seed = options_.seed;
  params.noise_step = step_ + 1;
  params.global_offset = range_.begin;
  StepReport report;
  absl::Status s = backend_->Merge(params, inputs, std::span<float>(w_), std::span<float>(v_),
                                   deltas, &report.stats);
  if (!s.ok()) {
    // The device failed: the step's gradients stay committed and the step is retried
    // on the next completion attempt; nothing is lost.
    LogError("shard ", options_.shard_index, ": merge of step ", step_, " failed: ", s.ToString());
    return;
  }
  for (Worker* w : contributors) {
    w->has_delta = options_.mode != SmoothingMode::kNone;
    w->committed = false;
  }
  const absl::Time end = clock_();
  report.step = step_;
  report.contributors = static_cast<int>(contributors.size());
  for (double n : inputs.num_samples) report.total_samples += n;
  report.mean_samples = report.total_samples / report.contributors;
  report.lr = params.lr;
  report.ranks = std::move(inputs.ranks);
  report.merge_duration = end - start;
  report.step_duration = end - last_step_time_;
  last_step_time_ = end;
  ++step_;
  deadline_ = absl::InfiniteFuture();
  if (observer_ != nullptr) observer_->OnStep(report);
  step_cv_.SignalAll();
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

absl::Status ShardCore::Snapshot(std::vector<float>* w, int64_t* step) const {
  absl::ReaderMutexLock lock(&mu_);
  if (!initialized_) return absl::FailedPreconditionError("parameters have not been offered yet");
  *w = w_;
  *step = step_;
  return absl::OkStatus();
}

ShardStatus ShardCore::GetStatus() const {
  absl::ReaderMutexLock lock(&mu_);
  ShardStatus s;
  s.step = step_;
  for (const Worker& w : workers_) {
    s.connected += w.session != 0 ? 1 : 0;
    s.finished += w.finished ? 1 : 0;
  }
  s.initialized = initialized_;
  s.draining = draining_;
  s.range = range_;
  s.layout_hash = layout_hash_;
  s.lr = options_.lr.Rate(step_);
  return s;
}

void ShardCore::Drain() {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  step_cv_.SignalAll();
}

bool ShardCore::AllFinished() const {
  absl::ReaderMutexLock lock(&mu_);
  for (const Worker& w : workers_) {
    if (!w.finished) return false;
  }
  return true;
}

}  // namespace gnc
