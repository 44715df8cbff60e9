// WorkerMetrics: the Prometheus view of one gnc-worker (DESIGN section 4), every
// series labelled worker="<rank>". Handles are created once in the constructor.
// Thread-safe (prometheus-cpp metrics are atomic).
#ifndef GNC_WORKER_WORKER_METRICS_H_
#define GNC_WORKER_WORKER_METRICS_H_

#include <cstdint>

#include "absl/time/time.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace gnc {

// StepPhase: the parts of one training step, label phase="receive|compute|push".
enum class StepPhase { kReceive, kCompute, kPush };

class WorkerMetrics {
 public:
  // REQUIRES: registry outlives this object. The evaluation gauges
  // (gnc_eval_accuracy, gnc_eval_loss) exist only when `evaluator` is true.
  WorkerMetrics(prometheus::Registry& registry, int rank, bool evaluator);

  // gnc_worker_step_duration_seconds{worker,phase}
  void ObservePhase(StepPhase phase, absl::Duration duration);
  // gnc_worker_samples_total{worker}: samples whose gradient was pushed.
  void AddSamples(int64_t samples);
  // gnc_worker_loss{worker}: mean training loss of the last minibatch.
  void SetLoss(double loss);
  // gnc_worker_late_steps_total{worker}: gradients refused as late (ABORTED).
  void AddLate();
  // gnc_worker_step{worker}: the last step this worker received.
  void SetStep(int64_t step);
  // gnc_eval_accuracy{worker}, gnc_eval_loss{worker}: no-op unless evaluator.
  void SetEvaluation(double accuracy, double loss);

 private:
  prometheus::Family<prometheus::Histogram>& phase_family_;
  prometheus::Histogram& receive_;
  prometheus::Histogram& compute_;
  prometheus::Histogram& push_;
  prometheus::Counter& samples_;
  prometheus::Gauge& loss_;
  prometheus::Counter& late_;
  prometheus::Gauge& step_;
  prometheus::Gauge* eval_accuracy_ = nullptr;
  prometheus::Gauge* eval_loss_ = nullptr;
};

}  // namespace gnc

#endif  // GNC_WORKER_WORKER_METRICS_H_
