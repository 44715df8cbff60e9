#include "worker/worker_metrics.h"

#include <limits>
#include <string>

#include "absl/strings/str_cat.h"

namespace gnc {
namespace {

// Step phases range from sub-millisecond (a push on loopback) to the straggler
// timeout (a receive that waits for a late worker).
prometheus::Histogram::BucketBoundaries PhaseBuckets() {
  return {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
}

prometheus::Family<prometheus::Histogram>& PhaseFamily(prometheus::Registry& registry) {
  return prometheus::BuildHistogram()
      .Name("gnc_worker_step_duration_seconds")
      .Help(
          "Time a worker spends per step in each phase: receive (wait for and read x_k), "
          "compute (forward and backward), push (send the gradient, wait for the verdict)")
      .Register(registry);
}

}  // namespace

WorkerMetrics::WorkerMetrics(prometheus::Registry& registry, int rank, bool evaluator)
    : phase_family_(PhaseFamily(registry)),
      receive_(phase_family_.Add({{"worker", absl::StrCat(rank)}, {"phase", "receive"}},
                                 PhaseBuckets())),
      compute_(phase_family_.Add({{"worker", absl::StrCat(rank)}, {"phase", "compute"}},
                                 PhaseBuckets())),
      push_(phase_family_.Add({{"worker", absl::StrCat(rank)}, {"phase", "push"}}, PhaseBuckets())),
      samples_(prometheus::BuildCounter()
                   .Name("gnc_worker_samples_total")
                   .Help("Training samples whose gradient this worker pushed")
                   .Register(registry)
                   .Add({{"worker", absl::StrCat(rank)}})),
      loss_(prometheus::BuildGauge()
                .Name("gnc_worker_loss")
                .Help("Mean cross-entropy of this worker's last minibatch, at its evaluation "
                      "point x_k")
                .Register(registry)
                .Add({{"worker", absl::StrCat(rank)}})),
      late_(prometheus::BuildCounter()
                .Name("gnc_worker_late_steps_total")
                .Help("Gradients refused because the step had completed without them (ABORTED)")
                .Register(registry)
                .Add({{"worker", absl::StrCat(rank)}})),
      step_(prometheus::BuildGauge()
                .Name("gnc_worker_step")
                .Help("The last step this worker received an evaluation point for")
                .Register(registry)
                .Add({{"worker", absl::StrCat(rank)}})) {
  if (evaluator) {
    eval_accuracy_ = &prometheus::BuildGauge()
                          .Name("gnc_eval_accuracy")
                          .Help("Test accuracy of the unperturbed parameters w, last evaluation")
                          .Register(registry)
                          .Add({{"worker", absl::StrCat(rank)}});
    eval_loss_ = &prometheus::BuildGauge()
                      .Name("gnc_eval_loss")
                      .Help(
                          "Mean test cross-entropy of the unperturbed parameters w, last "
                          "evaluation")
                      .Register(registry)
                      .Add({{"worker", absl::StrCat(rank)}});
    // NaN until the first evaluation, so that no dashboard shows a made-up 0.
    eval_accuracy_->Set(std::numeric_limits<double>::quiet_NaN());
    eval_loss_->Set(std::numeric_limits<double>::quiet_NaN());
  }
}

void WorkerMetrics::ObservePhase(StepPhase phase, absl::Duration duration) {
  const double seconds = absl::ToDoubleSeconds(duration);
  switch (phase) {
    case StepPhase::kReceive:
      receive_.Observe(seconds);
      break;
    case StepPhase::kCompute:
      compute_.Observe(seconds);
      break;
    case StepPhase::kPush:
      push_.Observe(seconds);
      break;
  }
}

void WorkerMetrics::AddSamples(int64_t samples) {
  samples_.Increment(static_cast<double>(samples));
}
void WorkerMetrics::SetLoss(double loss) { loss_.Set(loss); }
void WorkerMetrics::AddLate() { late_.Increment(); }
void WorkerMetrics::SetStep(int64_t step) { step_.Set(static_cast<double>(step)); }

void WorkerMetrics::SetEvaluation(double accuracy, double loss) {
  if (eval_accuracy_ == nullptr) return;
  eval_accuracy_->Set(accuracy);
  eval_loss_->Set(loss);
}

}  // namespace gnc
