// Settings of one gnc shard: job shape, optimizer, learning-rate schedule and
// smoothing. Filled from flags by the daemon; a value type.
#ifndef GNC_SERVER_OPTIONS_H_
#define GNC_SERVER_OPTIONS_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace gnc {

enum class SmoothingMode { kNone, kGnc, kIsotropic };
enum class LrDecay { kNone, kStep, kCosine };
// NoiseTiming: where a step's perturbation comes from. kPrevious (the default): the
// previous step's gradient noise, one pass per step. kFresh: a first pass gathers every
// worker's gradient at the unperturbed w, its noise forms the perturbations, and a
// second pass merges the gradients taken at the perturbed points (two passes per step).
enum class NoiseTiming { kPrevious, kFresh };

// ParseSmoothingMode: "none" | "gnc" | "isotropic".
absl::Status ParseSmoothingMode(const std::string& text, SmoothingMode* mode);
const char* SmoothingModeName(SmoothingMode mode);
// ParseNoiseTiming: "previous" | "fresh".
absl::Status ParseNoiseTiming(const std::string& text, NoiseTiming* timing);
const char* NoiseTimingName(NoiseTiming timing);
// ParseLrDecay: "none" | "step" | "cosine".
absl::Status ParseLrDecay(const std::string& text, LrDecay* decay);

// LrSchedule: linear warm-up from 0 to `peak` over `warmup_steps`, then the decay.
struct LrSchedule {
  double peak = 0.1;
  int64_t warmup_steps = 0;
  LrDecay decay = LrDecay::kNone;
  int64_t total_steps = 0;        // cosine: lr reaches `min_lr` here (required > warmup)
  double min_lr = 0.0;            // cosine floor
  int64_t step_every = 0;         // step decay: multiply by gamma every this many steps
  double step_gamma = 0.1;

  // Rate: the learning rate of step t (0-based). Step t of warm-up uses
  // peak * (t + 1) / warmup_steps, so the first step already moves.
  double Rate(int64_t t) const;
};

// ShardOptions: everything that defines one shard's behaviour. All shards of a job
// share these except shard_index; ConfigHash() covers the rest.
struct ShardOptions {
  int num_workers = 1;          // K
  int min_workers = 0;          // quorum after the straggler timeout; 0 = K
  int num_shards = 1;           // S
  int shard_index = 0;
  SmoothingMode mode = SmoothingMode::kGnc;
  NoiseTiming noise_timing = NoiseTiming::kPrevious;  // kFresh needs mode gnc or isotropic
  double gnc_scale = 1.0;                // rho
  double max_perturbation_norm = 0.0;    // cap on ||delta_k|| per shard; 0 = none
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  LrSchedule lr;
  uint64_t seed = 1;                     // isotropic noise
  // Each worker's gradient is scaled down to this L2 norm on this shard when longer;
  // 0 = no clipping.
  double max_gradient_norm = 0.0;

  // Per-shard operational settings, outside the config hash.
  absl::Duration straggler_timeout = absl::Seconds(30);
  double noise_ema = 0.9;           // EMA factor of the noise estimators, in [0, 1)
  int64_t checkpoint_every = 0;     // steps between checkpoints; 0 = none (but w0)
  // A step waiting longer than this is reported (log line, metrics) as stalled.
  absl::Duration stall_report_after = absl::Seconds(30);
  // A first Join whose layout would make StateBytes() exceed this is refused
  // (RESOURCE_EXHAUSTED) before anything is allocated or fixed; 0 = no limit.
  int64_t max_shard_bytes = 0;

  int EffectiveMinWorkers() const { return min_workers > 0 ? min_workers : num_workers; }
  // PassesPerStep: rounds of gradients per optimizer step (2 with fresh noise). The
  // step on the wire, in checkpoints and in metrics counts passes; the learning-rate
  // schedule, total_steps and checkpoint_every count optimizer steps.
  int64_t PassesPerStep() const { return noise_timing == NoiseTiming::kFresh ? 2 : 1; }
  // TotalPasses: the job's length on the wire (0: not set).
  int64_t TotalPasses() const { return lr.total_steps * PassesPerStep(); }
  // StateBytes: the memory a shard of `elements` floats holds at most while training:
  // w and v and their next-step buffers, K gradient slots and, unless mode is none,
  // K perturbed points (4 bytes each). A double: any int64 layout fits without overflow.
  double StateBytes(int64_t elements) const;
  // Validate: INVALID_ARGUMENT naming the bad setting.
  absl::Status Validate() const;
  // ConfigHash: stable hash of every job-wide setting (not shard_index, nor the
  // operational settings below seed's, which operators may tune per shard).
  uint64_t ConfigHash() const;
};

}  // namespace gnc

#endif  // GNC_SERVER_OPTIONS_H_
