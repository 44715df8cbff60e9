// ShardMetrics: the Prometheus view of one shard (DESIGN section 4). Implements
// ShardObserver, so the core feeds it; handles are created once in the constructor.
// Thread-safe (prometheus-cpp metrics are atomic; the EMA state has its own mutex).
#ifndef GNC_SERVER_METRICS_H_
#define GNC_SERVER_METRICS_H_

#include <memory>
#include <string>
#include <vector>

#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/checkpoint.h"
#include "server/shard_core.h"

namespace gnc {

struct ShardMetricsOptions {
  int shard_index = 0;
  std::string mode = "gnc";
  std::string device = "cpu";
  // Export gnc_worker_noise_sqnorm{shard,worker} = ||g_k - g_mean||^2 on this shard,
  // one series per worker (K series per shard, so off by default).
  bool per_worker_noise = false;
  int num_workers = 1;  // K
  int min_workers = 1;  // effective quorum setting (K when no quorum)
};

class ShardMetrics final : public ShardObserver, public CheckpointObserver {
 public:
  // REQUIRES: registry outlives this object.
  ShardMetrics(prometheus::Registry& registry, const ShardMetricsOptions& options);

  void OnStep(const StepReport& report) override;
  void OnRejected(std::string_view reason) override;
  void OnLate() override;
  void OnMembership(int connected, int finished) override;
  void OnGradientBytes(int64_t bytes) override;
  void OnSentBytes(int64_t bytes) override;
  void OnUnauthenticated() override;
  void OnLimited(std::string_view reason) override;
  void OnTrainStreams(int open) override;
  void OnJobState(const JobStateInfo& state) override;
  void OnRewind() override;
  void OnWaiting(int ranks, absl::Duration waited) override;
  void OnCheckpointWritten(int64_t step, int64_t bytes, absl::Duration took) override;
  void OnCheckpointFailed(const absl::Status& status) override;

 private:
  const ShardMetricsOptions options_;
  prometheus::Family<prometheus::Counter>& rejected_family_;
  prometheus::Family<prometheus::Counter>& limited_family_;
  prometheus::Counter& unauthenticated_;
  prometheus::Gauge& train_streams_;
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
  prometheus::Counter& clipped_;
  prometheus::Gauge& generation_;
  prometheus::Gauge& diverged_;
  prometheus::Counter& rewinds_;
  prometheus::Gauge& waiting_workers_;
  prometheus::Gauge& step_wait_;
  prometheus::Counter& checkpoints_;
  prometheus::Counter& checkpoint_failures_;
  prometheus::Gauge& checkpoint_step_;
  prometheus::Gauge& checkpoint_time_;
  prometheus::Histogram& checkpoint_duration_;
  // One gauge per worker rank when per_worker_noise, created with the family.
  std::vector<prometheus::Gauge*> worker_noise_;
};

}  // namespace gnc

#endif  // GNC_SERVER_METRICS_H_
