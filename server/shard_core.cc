// ShardCore: membership (Join, the parameters offered at a job's start, Train streams,
// leaving), status and draining. The receive stage is in shard_receive.cc; the
// barrier, the merge and publications in shard_merge.cc; restores, rewinds and
// checkpoints in shard_recovery.cc.
#include "server/shard_core.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/allocation.h"
#include "common/finite.h"
#include "common/log.h"

namespace gnc {

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
