// ShardCore: job state, restores from checkpoints, rebinding at the first Join,
// rewinds and writing checkpoints (DESIGN section 6).
#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/log.h"
#include "server/shard_core.h"

namespace gnc {

JobStateInfo ShardCore::JobInfo() const {
  JobStateInfo info;
  info.initialized = initialized_;
  info.job = state_.job;
  info.step = state_.step;
  info.diverged = diverged_;
  info.restored = restored_;
  if (initialized_) {
    // Mid-step (after a noise pass) the shard can go back to the step's start in
    // memory: nothing but the perturbations changed.
    info.rewind_steps.push_back(StepStart());
    if (checkpoints_ != nullptr) {
      for (const CheckpointInfo& c : checkpoints_->Candidates()) {
        if (c.job.job_id == state_.job.job_id && c.step < StepStart() &&
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

bool ShardCore::Adopt(ShardState state, const std::string& from) {
  const ShardRange range =
      ShardRangeFor(state.model_elements, options_.num_shards, options_.shard_index);
  if (range.size() != static_cast<int64_t>(state.size()) || range.size() == 0) {
    LogWarning("checkpoint ", from, " refused: it holds ", state.size(), " elements, shard ",
               options_.shard_index, " of a ", state.model_elements, "-element model owns ",
               range.size());
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
  publication_ = std::make_shared<const Publication>(Tag(), state_.w);
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
  publication_.reset();
  if (observer_ != nullptr) observer_->OnJobState(JobInfo());
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
    if (step != StepStart()) {
      if (checkpoints_ != nullptr) {
        for (const CheckpointInfo& c : checkpoints_->Candidates()) {
          if (c.job.job_id == job_id && c.step == step && c.step < StepStart() &&
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
  // The file is read without the lock; the state is checked again after.
  std::optional<ShardState> loaded;
  if (source.has_value()) {
    absl::StatusOr<ShardState> state = checkpoints_->Load(*source);
    if (!state.ok()) return state.status();
    loaded = *std::move(state);
  }
  Waiters wake;
  JobStateInfo info;
  {
    absl::MutexLock lock(&mu_);
    // A merge in flight finishes first: it reads the slots the rewind frees.
    mu_.Await(absl::Condition(
        +[](bool* merging) { return !*merging; }, &merging_));
    if (draining_) return absl::UnavailableError("shard is draining");
    if (diverged_) return DivergedError();
    if (generation <= state_.job.generation) return JobInfo();  // another rewind won
    if (job_id != state_.job.job_id) return absl::FailedPreconditionError("job id changed");
    if (loaded.has_value()) {
      if (static_cast<int64_t>(loaded->size()) != range_.size()) {
        return absl::FailedPreconditionError(
            absl::StrCat("checkpoint ", source->path, " does not fit the shard"));
      }
      state_.w = std::move(loaded->w);
      state_.v = std::move(loaded->v);
      state_.noise = loaded->noise;
      state_.step = loaded->step;
    } else if (step != StepStart()) {
      return absl::FailedPreconditionError(absl::StrCat("shard ", options_.shard_index,
                                                        " moved to step ", state_.step,
                                                        " while rewinding; ask again"));
    } else {
      state_.step = step;  // back to the start of a fresh-noise step: w and v are its own
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
    Publish(&wake);
    info = JobInfo();
    if (observer_ != nullptr) {
      observer_->OnRewind();
      observer_->OnJobState(info);
    }
  }
  Wake(wake);
  return info;
}

void ShardCore::ResetStep() {
  // Attempts in flight are refused when they complete (their generation or step is
  // stale); committed gradients are forgotten.
  for (Worker& w : workers_) w.committed = false;
  deadline_ = absl::InfiniteFuture();
}

void ShardCore::Checkpoint() {
  if (checkpoints_ == nullptr || !initialized_ || diverged_) return;
  if (checkpointed_step_ == StepStart()) return;
  checkpointed_step_ = StepStart();
  // The snapshot shares w and v, which nobody changes: a checkpoint copies nothing
  // while the step waits. Mid-step (fresh noise) it is the state of the step's start.
  auto snapshot = std::make_shared<ShardState>(state_);
  snapshot->step = StepStart();
  checkpoints_->WriteAsync(std::move(snapshot));
}

}  // namespace gnc
