// The shard core's interface types: what Join, OfferParameters, PushGradient and
// GetStatus take and give, the step report, and the hooks the core calls (ShardObserver
// for metrics, PointWaiter for a waiting stream). Plain values, free of gRPC.
#ifndef GNC_SERVER_SHARD_TYPES_H_
#define GNC_SERVER_SHARD_TYPES_H_

#include <cstdint>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "common/payload.h"
#include "server/merge_backend.h"
#include "server/shard_state.h"

namespace gnc {

// JobStateInfo: where this shard's job stands (JobState on the wire).
struct JobStateInfo {
  bool initialized = false;
  JobIdentity job;
  int64_t step = 0;
  std::vector<int64_t> rewind_steps;  // newest first
  bool diverged = false;
  bool restored = false;
};

// StepReport: what one completed step did, for metrics and logs.
struct StepReport {
  int64_t step = 0;             // the step (with fresh noise: the pass) that completed
  bool formed_points = false;   // it formed perturbations (stats.perturbation_sqnorm)
  int contributors = 0;         // gradients merged
  double total_samples = 0;     // B = sum n_k
  double mean_samples = 0;      // b = mean n_k
  double lr = 0;
  MergeStats stats;
  std::vector<int32_t> ranks;   // contributors' ranks, in the order of stats.noise_sqnorm
  int clipped = 0;              // gradients scaled down to max_gradient_norm
  // This step's noise estimates and their smoothed values; valid iff has_estimates
  // (a step with one contributor has none).
  bool has_estimates = false;
  double g2 = 0, trace = 0;
  double smoothed_g2 = 0, smoothed_trace = 0;
  absl::Duration merge_duration;
  absl::Duration step_duration;  // since the previous step completed
};

// ShardObserver: hooks for metrics. Called with the core's lock held: keep them
// cheap and never call back into the core.
class ShardObserver {
 public:
  virtual ~ShardObserver() = default;
  virtual void OnStep(const StepReport& report) {}
  // reason: a short snake_case label (non_finite, bad_chunk, bad_samples,
  // future_step, duplicate, unknown_worker, bad_size, rewound, diverged).
  virtual void OnRejected(std::string_view reason) {}
  virtual void OnLate() {}
  virtual void OnMembership(int connected, int finished) {}
  virtual void OnGradientBytes(int64_t bytes) {}
  // The job's identity, step or divergence changed (init, restore, rewind, diverge).
  virtual void OnJobState(const JobStateInfo& state) {}
  virtual void OnRewind() {}
  // Ranks the current step waits for and for how long (updated by CheckDeadline).
  virtual void OnWaiting(int ranks, absl::Duration waited) {}
  // Called by the transport, not the core:
  // Parameter payload sent to workers.
  virtual void OnSentBytes(int64_t bytes) {}
  // A call refused for a missing or wrong job token (or a non-health call on the
  // health port).
  virtual void OnUnauthenticated() {}
  // A call refused by a limit; reason: train_streams, concurrent_calls, hello_timeout,
  // shard_bytes (a Join), allocation (memory ran out).
  virtual void OnLimited(std::string_view reason) {}
  // Train streams open now (with or without a Hello).
  virtual void OnTrainStreams(int open) {}
};

// PointWaiter: a stream waiting for its next point; told once when it may be due (a
// step completed, a rewind, a drain, ...). It then asks NextPoint again. Called without
// the core's lock, from the thread that made the change.
class PointWaiter {
 public:
  virtual ~PointWaiter() = default;
  virtual void OnPointReady() = 0;
};

struct JoinArgs {
  int rank = 0;
  int num_workers = 0;
  int num_shards = 0;
  int shard_index = 0;
  ModelLayout layout;
  int64_t local_batch_size = 0;
  uint64_t config_hash = 0;  // 0 = not pinned
  uint64_t job_id = 0;       // the job the worker already belongs to; 0 = none
};

struct JoinInfo {
  ShardRange range;
  bool needs_parameters = false;
  uint64_t config_hash = 0;
  uint64_t layout_hash = 0;
  JobStateInfo job;
};

struct OfferResult {
  bool accepted = false;  // this offer initialised the shard
  uint64_t job_id = 0;    // the shard's job id after the call
};

// GradientChunk: one piece of a worker's gradient as it arrived.
struct GradientChunk {
  int rank = 0;
  uint64_t session = 0;
  int64_t generation = 0;
  int64_t step = 0;
  int64_t num_samples = 0;
  int64_t offset = 0;  // element offset within the shard
  WireDType dtype = WireDType::kFloat32;
  const Payload* payload = nullptr;  // whole elements of dtype; null only with decode_status
  bool last = false;
  // Not OK when the transport could not decode the chunk (dtype, payload size); the
  // core refuses it in sequence like any other bad chunk.
  absl::Status decode_status;
};

// PushOutcome: what the stream should tell the worker about a chunk.
enum class PushOutcome {
  kContinue,   // chunk stored; more expected; no reply
  kCommitted,  // gradient complete and accepted for the step; reply OK
  kDropped,    // rest of a refused gradient; no reply
};

struct ShardStatus {
  int connected = 0;
  int finished = 0;
  bool draining = false;
  ShardRange range;
  uint64_t layout_hash = 0;
  double lr = 0;
  JobStateInfo job;
  std::vector<int> waiting_for;  // ranks the current step still waits for
  absl::Duration waited;         // since the current step began
};

}  // namespace gnc

#endif  // GNC_SERVER_SHARD_TYPES_H_
