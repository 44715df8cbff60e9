// ShardCore, stages 2 to 4 (DESIGN section 2): the barrier, the merge outside every
// lock, and the publication of the step's points.
#include <algorithm>
#include <cmath>
#include <utility>

#include "common/allocation.h"
#include "common/log.h"
#include "server/shard_core.h"

namespace gnc {
namespace {

bool AllFinite(const MergeStats& s) {
  return s.finite && std::isfinite(s.mean_grad_sqnorm) && std::isfinite(s.grad_sqnorm_mean) &&
         std::isfinite(s.noise_sqnorm_mean) && std::isfinite(s.perturbation_sqnorm);
}

}  // namespace

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

}  // namespace gnc
