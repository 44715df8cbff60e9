#include "server/metrics.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace gnc {
namespace {

using prometheus::BuildCounter;
using prometheus::BuildGauge;
using prometheus::BuildHistogram;
using prometheus::Histogram;

Histogram::BucketBoundaries LatencyBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30};
}

}  // namespace

ShardMetrics::ShardMetrics(prometheus::Registry& registry, const ShardMetricsOptions& options)
    : options_(options),
      rejected_family_(BuildCounter()
                           .Name("gnc_rejected_gradients_total")
                           .Help("Gradient chunks refused, by reason")
                           .Register(registry)),
      limited_family_(BuildCounter()
                          .Name("gnc_limited_calls_total")
                          .Help("Calls refused by a limit (RESOURCE_EXHAUSTED or, for a "
                                "stream without its Hello in time, DEADLINE_EXCEEDED), by "
                                "reason")
                          .Register(registry)),
      unauthenticated_(BuildCounter()
                           .Name("gnc_unauthenticated_requests_total")
                           .Help("Calls refused for a missing or wrong job token, or for "
                                 "not being a health check on the health port")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      train_streams_(BuildGauge()
                         .Name("gnc_train_streams")
                         .Help("Train streams open on this shard, with or without a Hello")
                         .Register(registry)
                         .Add({{"shard", absl::StrCat(options.shard_index)}})),
      steps_(BuildCounter()
                 .Name("gnc_steps_total")
                 .Help("Steps completed by this shard")
                 .Register(registry)
                 .Add({{"shard", absl::StrCat(options.shard_index)}})),
      step_duration_(BuildHistogram()
                         .Name("gnc_step_duration_seconds")
                         .Help("Time between consecutive step completions")
                         .Register(registry)
                         .Add({{"shard", absl::StrCat(options.shard_index)}}, LatencyBuckets())),
      merge_duration_(BuildHistogram()
                          .Name("gnc_merge_duration_seconds")
                          .Help("Time of the merge and optimizer update of one step")
                          .Register(registry)
                          .Add({{"shard", absl::StrCat(options.shard_index)}}, LatencyBuckets())),
      received_bytes_(BuildCounter()
                          .Name("gnc_received_bytes_total")
                          .Help("Gradient payload bytes received")
                          .Register(registry)
                          .Add({{"shard", absl::StrCat(options.shard_index)}})),
      sent_bytes_(BuildCounter()
                      .Name("gnc_sent_bytes_total")
                      .Help("Parameter payload bytes sent (evaluation points and pulls)")
                      .Register(registry)
                      .Add({{"shard", absl::StrCat(options.shard_index)}})),
      active_workers_(BuildGauge()
                          .Name("gnc_active_workers")
                          .Help("Workers with an open Train stream")
                          .Register(registry)
                          .Add({{"shard", absl::StrCat(options.shard_index)}})),
      finished_workers_(BuildGauge()
                            .Name("gnc_finished_workers")
                            .Help("Workers that have left the job")
                            .Register(registry)
                            .Add({{"shard", absl::StrCat(options.shard_index)}})),
      quorum_workers_(BuildGauge()
                          .Name("gnc_quorum_workers")
                          .Help("Live workers a step needs now: min(min_workers, K - finished), "
                                "at least 1; 0 once every worker has left")
                          .Register(registry)
                          .Add({{"shard", absl::StrCat(options.shard_index)}})),
      late_(BuildCounter()
                .Name("gnc_late_gradients_total")
                .Help("Gradients refused because their step had completed")
                .Register(registry)
                .Add({{"shard", absl::StrCat(options.shard_index)}})),
      grad_sqnorm_estimate_(BuildGauge()
                                .Name("gnc_grad_sqnorm_estimate")
                                .Help("EMA of this shard's partial |G|^2 estimate")
                                .Register(registry)
                                .Add({{"shard", absl::StrCat(options.shard_index)}})),
      noise_trace_estimate_(BuildGauge()
                                .Name("gnc_noise_trace_estimate")
                                .Help("EMA of this shard's partial tr(Sigma) estimate")
                                .Register(registry)
                                .Add({{"shard", absl::StrCat(options.shard_index)}})),
      grad_sqnorm_raw_(BuildGauge()
                           .Name("gnc_grad_sqnorm_estimate_raw")
                           .Help("Last step's partial |G|^2 estimate, before the EMA")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      noise_trace_raw_(BuildGauge()
                           .Name("gnc_noise_trace_estimate_raw")
                           .Help("Last step's partial tr(Sigma) estimate, before the EMA")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      perturbation_sqnorm_(BuildGauge()
                               .Name("gnc_perturbation_sqnorm")
                               .Help("Mean over workers of ||delta_k||^2 on this shard")
                               .Register(registry)
                               .Add({{"shard", absl::StrCat(options.shard_index)}})),
      learning_rate_(BuildGauge()
                         .Name("gnc_learning_rate")
                         .Help("Learning rate of the last completed step")
                         .Register(registry)
                         .Add({{"shard", absl::StrCat(options.shard_index)}})),
      step_gauge_(BuildGauge()
                      .Name("gnc_step")
                      .Help("Current step of this shard")
                      .Register(registry)
                      .Add({{"shard", absl::StrCat(options.shard_index)}})),
      contributors_(BuildGauge()
                        .Name("gnc_step_contributors")
                        .Help("Gradients merged in the last completed step")
                        .Register(registry)
                        .Add({{"shard", absl::StrCat(options.shard_index)}})),
      global_batch_(BuildGauge()
                        .Name("gnc_global_batch_samples")
                        .Help("Samples behind the last completed step (B)")
                        .Register(registry)
                        .Add({{"shard", absl::StrCat(options.shard_index)}})),
      clipped_(BuildCounter()
                   .Name("gnc_clipped_gradients_total")
                   .Help("Gradients scaled down to --max_gradient_norm")
                   .Register(registry)
                   .Add({{"shard", absl::StrCat(options.shard_index)}})),
      generation_(BuildGauge()
                      .Name("gnc_job_generation")
                      .Help("Generation of the job: incremented by every restore and rewind")
                      .Register(registry)
                      .Add({{"shard", absl::StrCat(options.shard_index)}})),
      diverged_(BuildGauge()
                    .Name("gnc_diverged")
                    .Help("1 once a step made w or v non-finite: the shard refuses training")
                    .Register(registry)
                    .Add({{"shard", absl::StrCat(options.shard_index)}})),
      rewinds_(BuildCounter()
                   .Name("gnc_rewinds_total")
                   .Help("Rewinds of the job applied on this shard")
                   .Register(registry)
                   .Add({{"shard", absl::StrCat(options.shard_index)}})),
      waiting_workers_(BuildGauge()
                           .Name("gnc_waiting_workers")
                           .Help("Workers the current step still waits for")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      step_wait_(BuildGauge()
                     .Name("gnc_step_wait_seconds")
                     .Help("How long the current step has waited for its workers")
                     .Register(registry)
                     .Add({{"shard", absl::StrCat(options.shard_index)}})),
      checkpoints_(BuildCounter()
                       .Name("gnc_checkpoints_total")
                       .Help("Checkpoints written")
                       .Register(registry)
                       .Add({{"shard", absl::StrCat(options.shard_index)}})),
      checkpoint_failures_(BuildCounter()
                               .Name("gnc_checkpoint_failures_total")
                               .Help("Checkpoints that could not be written")
                               .Register(registry)
                               .Add({{"shard", absl::StrCat(options.shard_index)}})),
      checkpoint_step_(BuildGauge()
                           .Name("gnc_checkpoint_step")
                           .Help("Step of the newest checkpoint written")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      checkpoint_time_(BuildGauge()
                           .Name("gnc_checkpoint_timestamp_seconds")
                           .Help("Unix time of the newest checkpoint written")
                           .Register(registry)
                           .Add({{"shard", absl::StrCat(options.shard_index)}})),
      checkpoint_duration_(BuildHistogram()
                               .Name("gnc_checkpoint_duration_seconds")
                               .Help("Time to write one checkpoint (in the background)")
                               .Register(registry)
                               .Add({{"shard", absl::StrCat(options.shard_index)}},
                                    LatencyBuckets())) {
  BuildGauge()
      .Name("gnc_build_info")
      .Help("Build and configuration of this shard (value 1)")
      .Register(registry)
      .Add({{"shard", absl::StrCat(options.shard_index)},
            {"version", "0.1.0"},
            {"mode", options.mode},
            {"device", options.device}})
      .Set(1);
  if (options.per_worker_noise) {
    auto& family = BuildGauge()
                       .Name("gnc_worker_noise_sqnorm")
                       .Help("||g_k - g_mean||^2 of worker k on this shard, at its last merged step")
                       .Register(registry);
    for (int k = 0; k < options.num_workers; ++k) {
      worker_noise_.push_back(&family.Add(
          {{"shard", absl::StrCat(options.shard_index)}, {"worker", absl::StrCat(k)}}));
    }
  }
  BuildGauge()
      .Name("gnc_job_workers")
      .Help("Workers in the job (K)")
      .Register(registry)
      .Add({{"shard", absl::StrCat(options.shard_index)}})
      .Set(options.num_workers);
  OnMembership(0, 0);
  for (const char* reason :
       {"non_finite", "bad_chunk", "bad_size", "bad_samples", "future_step", "duplicate",
        "unknown_worker", "rewound", "diverged"}) {
    rejected_family_.Add({{"shard", absl::StrCat(options.shard_index)}, {"reason", reason}});
  }
  for (const char* reason :
       {"train_streams", "concurrent_calls", "hello_timeout", "shard_bytes", "allocation"}) {
    limited_family_.Add({{"shard", absl::StrCat(options.shard_index)}, {"reason", reason}});
  }
}

void ShardMetrics::OnStep(const StepReport& r) {
  steps_.Increment();
  step_gauge_.Set(static_cast<double>(r.step + 1));
  step_duration_.Observe(absl::ToDoubleSeconds(r.step_duration));
  merge_duration_.Observe(absl::ToDoubleSeconds(r.merge_duration));
  learning_rate_.Set(r.lr);
  if (r.formed_points) perturbation_sqnorm_.Set(r.stats.perturbation_sqnorm);
  contributors_.Set(r.contributors);
  global_batch_.Set(r.total_samples);
  if (!worker_noise_.empty() && r.stats.noise_sqnorm.size() == r.ranks.size()) {
    for (size_t k = 0; k < r.ranks.size(); ++k) {
      const int32_t rank = r.ranks[k];
      if (rank >= 0 && rank < static_cast<int32_t>(worker_noise_.size())) {
        worker_noise_[rank]->Set(r.stats.noise_sqnorm[k]);
      }
    }
  }
  if (r.clipped > 0) clipped_.Increment(r.clipped);
  if (!r.has_estimates) return;
  grad_sqnorm_raw_.Set(r.g2);
  noise_trace_raw_.Set(r.trace);
  grad_sqnorm_estimate_.Set(r.smoothed_g2);
  noise_trace_estimate_.Set(r.smoothed_trace);
}

void ShardMetrics::OnJobState(const JobStateInfo& state) {
  generation_.Set(static_cast<double>(state.job.generation));
  diverged_.Set(state.diverged ? 1 : 0);
  step_gauge_.Set(static_cast<double>(state.step));
}

void ShardMetrics::OnRewind() { rewinds_.Increment(); }

void ShardMetrics::OnWaiting(int ranks, absl::Duration waited) {
  waiting_workers_.Set(ranks);
  step_wait_.Set(absl::ToDoubleSeconds(waited));
}

void ShardMetrics::OnCheckpointWritten(int64_t step, int64_t, absl::Duration took) {
  checkpoints_.Increment();
  checkpoint_step_.Set(static_cast<double>(step));
  checkpoint_time_.Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
  checkpoint_duration_.Observe(absl::ToDoubleSeconds(took));
}

void ShardMetrics::OnCheckpointFailed(const absl::Status&) { checkpoint_failures_.Increment(); }

void ShardMetrics::OnRejected(std::string_view reason) {
  rejected_family_
      .Add({{"shard", absl::StrCat(options_.shard_index)}, {"reason", std::string(reason)}})
      .Increment();
}

void ShardMetrics::OnLate() { late_.Increment(); }

void ShardMetrics::OnMembership(int connected, int finished) {
  active_workers_.Set(connected);
  finished_workers_.Set(finished);
  const int left = options_.num_workers - finished;
  quorum_workers_.Set(left <= 0 ? 0 : std::max(1, std::min(options_.min_workers, left)));
}

void ShardMetrics::OnGradientBytes(int64_t bytes) {
  received_bytes_.Increment(static_cast<double>(bytes));
}

void ShardMetrics::OnSentBytes(int64_t bytes) { sent_bytes_.Increment(static_cast<double>(bytes)); }

void ShardMetrics::OnUnauthenticated() { unauthenticated_.Increment(); }

void ShardMetrics::OnLimited(std::string_view reason) {
  limited_family_
      .Add({{"shard", absl::StrCat(options_.shard_index)}, {"reason", std::string(reason)}})
      .Increment();
}

void ShardMetrics::OnTrainStreams(int open) { train_streams_.Set(open); }

}  // namespace gnc
