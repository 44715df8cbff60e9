// ShardMetrics: the Prometheus view of one shard (DESIGN section 4). Implements
// ShardObserver, so the core feeds it; handles are created once in the constructor.
// Thread-safe (prometheus-cpp metrics are atomic; the EMA state has its own mutex).
#ifndef GNC_SERVER_METRICS_H_
#define GNC_SERVER_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/shard_core.h"

namespace gnc {

struct ShardMetricsOptions {
  int shard_index = 0;
  std::string mode = "gnc";
  std::string device = "cpu";
  // Smoothing factor of the bias-corrected EMAs of the noise estimators.
  double noise_ema = 0.9;
  // Export gnc_worker_noise_sqnorm{shard,worker} = ||g_k - g_mean||^2 on this shard,
  // one series per worker (K series per shard, so off by default).
  bool per_worker_noise = false;
  int num_workers = 1;  // K
  int min_workers = 1;  // effective quorum setting (K when no quorum)
};

class ShardMetrics final : public ShardObserver {
 public:
  // REQUIRES: registry outlives this object.
  ShardMetrics(prometheus::Registry& registry, const ShardMetricsOptions& options);

  void OnStep(const StepReport& report) override;
  void OnRejected(std::string_view reason) override;
  void OnLate() override;
  void OnMembership(int connected, int finished) override;
  void OnGradientBytes(int64_t bytes) override;
  void OnSentBytes(int64_t bytes) override;

 private:
  const ShardMetricsOptions options_;
  prometheus::Family<prometheus::Counter>& rejected_family_;
  prometheus::Counter& steps_;
  prometheus::Histogram& step_duration_;
  prometheus::Histogram& merge_duration_;
  prometheus::Counter& received_bytes_;
  prometheus::Counter& sent_bytes_;
  prometheus::Gauge& active_workers_;
  prometheus::Gauge& finished_workers_;
  prometheus::Gauge& quorum_workers_;
  prometheus::Counter& late_;
  prometheus::Gauge& grad_sqnorm_estimate_;
  prometheus::Gauge& noise_trace_estimate_;
  prometheus::Gauge& grad_sqnorm_raw_;
  prometheus::Gauge& noise_trace_raw_;
  prometheus::Gauge& perturbation_sqnorm_;
  prometheus::Gauge& learning_rate_;
  prometheus::Gauge& step_gauge_;
  prometheus::Gauge& contributors_;
  prometheus::Gauge& global_batch_;
  // One gauge per worker rank when per_worker_noise, created with the family.
  std::vector<prometheus::Gauge*> worker_noise_;

  absl::Mutex mu_;
  double ema_g2_ ABSL_GUARDED_BY(mu_) = 0;
  double ema_s_ ABSL_GUARDED_BY(mu_) = 0;
  double ema_weight_ ABSL_GUARDED_BY(mu_) = 0;  // 1 - beta^n, for bias correction
};

// NoiseEstimates: DESIGN section 4's unbiased estimators from one step's partials.
// Returns false (and leaves outputs alone) when B <= b, i.e. a single contributor.
bool NoiseEstimates(double mean_grad_sqnorm, double grad_sqnorm_mean, double b, double B,
                    double* g2, double* trace);

}  // namespace gnc

#endif  // GNC_SERVER_METRICS_H_
