// ShardState: one shard of a job at a step boundary — the parameters w, the momentum
// v, the step, the noise-estimator EMAs and the job's identity and hashes. It is the
// one object that checkpoints save and restore (DESIGN sections 2 and 6); the
// perturbations are not part of it (after a restore or a rewind every worker's first
// point is the unperturbed w). A value type whose buffers are shared, never changed:
// copying a ShardState copies no parameters. Thread-compatible.
#ifndef GNC_SERVER_SHARD_STATE_H_
#define GNC_SERVER_SHARD_STATE_H_

#include <cstdint>
#include <memory>
#include <vector>

namespace gnc {

// JobIdentity: fixed when a shard accepts w0 (job_id), incremented by every restore
// and rewind (generation). job_id 0 means "no job yet".
struct JobIdentity {
  uint64_t job_id = 0;
  int64_t generation = 0;

  bool operator==(const JobIdentity&) const = default;
};

// NoiseEma: bias-corrected exponential moving averages of the per-shard |G|^2 and
// tr(Sigma) estimates (DESIGN section 4).
struct NoiseEma {
  double g2 = 0;
  double trace = 0;
  double weight = 0;  // 1 - beta^n: the bias correction

  // Add: one step's estimates with smoothing factor beta in [0, 1).
  void Add(double step_g2, double step_trace, double beta) {
    g2 = beta * g2 + (1 - beta) * step_g2;
    trace = beta * trace + (1 - beta) * step_trace;
    weight = beta * weight + (1 - beta);
  }
  double SmoothedG2() const { return weight > 0 ? g2 / weight : 0; }
  double SmoothedTrace() const { return weight > 0 ? trace / weight : 0; }
};

// NoiseEstimates: DESIGN section 4's unbiased estimators from one step's partials,
// A = ||g_mean||^2 and C = mean_k ||g_k||^2, per-worker batch b and global batch B.
// Returns false (and leaves outputs alone) when B <= b, i.e. a single contributor.
inline bool NoiseEstimates(double a, double c, double b, double big_b, double* g2,
                           double* trace) {
  if (!(big_b > b) || !(b > 0)) return false;
  *g2 = (big_b * a - b * c) / (big_b - b);
  *trace = (c - a) / (1.0 / b - 1.0 / big_b);
  return true;
}

// Floats: a shard-sized vector that is immutable once shared (published parameters,
// a checkpoint's snapshot), so that every reader holds it without a copy.
using Floats = std::vector<float>;
using SharedFloats = std::shared_ptr<const Floats>;

struct ShardState {
  JobIdentity job;
  int64_t step = 0;
  uint64_t config_hash = 0;
  uint64_t layout_hash = 0;
  int64_t model_elements = 0;  // of the whole model; with S and the index: the range
  SharedFloats w;              // the shard's slice, unperturbed
  SharedFloats v;              // momentum, same size
  NoiseEma noise;

  size_t size() const { return w == nullptr ? 0 : w->size(); }
};

}  // namespace gnc

#endif  // GNC_SERVER_SHARD_STATE_H_
