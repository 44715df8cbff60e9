#include "server/options.h"

#include <cmath>
#include <numbers>

#include "absl/strings/str_cat.h"
#include "common/layout.h"

namespace gnc {

absl::Status ParseSmoothingMode(const std::string& text, SmoothingMode* mode) {
  if (text == "none") {
    *mode = SmoothingMode::kNone;
  } else if (text == "gnc") {
    *mode = SmoothingMode::kGnc;
  } else if (text == "isotropic") {
    *mode = SmoothingMode::kIsotropic;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown smoothing mode '", text, "' (none, gnc, isotropic)"));
  }
  return absl::OkStatus();
}

const char* SmoothingModeName(SmoothingMode mode) {
  switch (mode) {
    case SmoothingMode::kNone:
      return "none";
    case SmoothingMode::kGnc:
      return "gnc";
    case SmoothingMode::kIsotropic:
      return "isotropic";
  }
  return "?";
}

absl::Status ParseNoiseTiming(const std::string& text, NoiseTiming* timing) {
  if (text == "previous") {
    *timing = NoiseTiming::kPrevious;
  } else if (text == "fresh") {
    *timing = NoiseTiming::kFresh;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown noise timing '", text, "' (previous, fresh)"));
  }
  return absl::OkStatus();
}

const char* NoiseTimingName(NoiseTiming timing) {
  return timing == NoiseTiming::kFresh ? "fresh" : "previous";
}

absl::Status ParseLrDecay(const std::string& text, LrDecay* decay) {
  if (text == "none") {
    *decay = LrDecay::kNone;
  } else if (text == "step") {
    *decay = LrDecay::kStep;
  } else if (text == "cosine") {
    *decay = LrDecay::kCosine;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown lr decay '", text, "' (none, step, cosine)"));
  }
  return absl::OkStatus();
}

double LrSchedule::Rate(int64_t t) const {
  if (t < warmup_steps) return peak * static_cast<double>(t + 1) / warmup_steps;
  switch (decay) {
    case LrDecay::kNone:
      return peak;
    case LrDecay::kStep: {
      const int64_t k = step_every > 0 ? (t - warmup_steps) / step_every : 0;
      return peak * std::pow(step_gamma, static_cast<double>(k));
    }
    case LrDecay::kCosine: {
      const double span = static_cast<double>(total_steps - warmup_steps);
      const double p = std::min(1.0, static_cast<double>(t - warmup_steps) / span);
      return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * p));
    }
  }
  return peak;
}

absl::Status ShardOptions::Validate() const {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (num_workers < 1) return bad("num_workers must be >= 1, got ", num_workers);
  if (min_workers < 0 || min_workers > num_workers) {
    return bad("min_workers must be in [0, num_workers=", num_workers, "], got ", min_workers);
  }
  if (num_shards < 1) return bad("num_shards must be >= 1, got ", num_shards);
  if (shard_index < 0 || shard_index >= num_shards) {
    return bad("shard_index must be in [0, ", num_shards, "), got ", shard_index);
  }
  if (!(gnc_scale >= 0) || !std::isfinite(gnc_scale)) {
    return bad("gnc_scale must be finite and >= 0, got ", gnc_scale);
  }
  if (!(max_perturbation_norm >= 0)) return bad("max_perturbation_norm must be >= 0");
  if (noise_timing == NoiseTiming::kFresh && mode == SmoothingMode::kNone) {
    return bad("gnc_noise=fresh needs mode gnc or isotropic (mode none has no noise to time)");
  }
  if (!(momentum >= 0 && momentum < 1)) return bad("momentum must be in [0, 1), got ", momentum);
  if (!(weight_decay >= 0)) return bad("weight_decay must be >= 0, got ", weight_decay);
  if (!(lr.peak > 0) || !std::isfinite(lr.peak)) return bad("lr must be > 0, got ", lr.peak);
  if (lr.warmup_steps < 0) return bad("warmup_steps must be >= 0");
  if (lr.decay == LrDecay::kCosine && lr.total_steps <= lr.warmup_steps) {
    return bad("cosine decay needs total_steps (", lr.total_steps, ") > warmup_steps (",
               lr.warmup_steps, ")");
  }
  if (lr.decay == LrDecay::kStep && lr.step_every < 1) {
    return bad("step decay needs lr_step_every >= 1");
  }
  if (lr.min_lr < 0 || lr.min_lr > lr.peak) return bad("min_lr must be in [0, lr]");
  if (!(max_gradient_norm >= 0) || !std::isfinite(max_gradient_norm)) {
    return bad("max_gradient_norm must be finite and >= 0, got ", max_gradient_norm);
  }
  if (straggler_timeout <= absl::ZeroDuration()) return bad("straggler_timeout must be > 0");
  if (max_shard_bytes < 0) return bad("max_shard_bytes must be >= 0, got ", max_shard_bytes);
  if (!(noise_ema >= 0 && noise_ema < 1)) return bad("noise_ema must be in [0, 1), got ", noise_ema);
  if (checkpoint_every < 0) return bad("checkpoint_every must be >= 0, got ", checkpoint_every);
  if (stall_report_after <= absl::ZeroDuration()) return bad("stall_report_after must be > 0");
  return absl::OkStatus();
}

double ShardOptions::StateBytes(int64_t elements) const {
  const int per_element = 4 + num_workers + (mode == SmoothingMode::kNone ? 0 : num_workers);
  return 4.0 * static_cast<double>(elements) * per_element;
}

uint64_t ShardOptions::ConfigHash() const {
  Fnv1a64 h;
  h.AddString("gnc.v1");
  h.AddInt(num_workers);
  h.AddInt(EffectiveMinWorkers());
  h.AddInt(num_shards);
  h.AddInt(static_cast<int64_t>(mode));
  h.AddDouble(gnc_scale);
  h.AddDouble(max_perturbation_norm);
  h.AddDouble(momentum);
  h.AddInt(nesterov);
  h.AddDouble(weight_decay);
  h.AddDouble(lr.peak);
  h.AddInt(lr.warmup_steps);
  h.AddInt(static_cast<int64_t>(lr.decay));
  h.AddInt(lr.total_steps);
  h.AddDouble(lr.min_lr);
  h.AddInt(lr.step_every);
  h.AddDouble(lr.step_gamma);
  h.AddInt(static_cast<int64_t>(seed));
  if (max_gradient_norm > 0) h.AddDouble(max_gradient_norm);  // old hashes stay valid
  if (noise_timing != NoiseTiming::kPrevious) h.AddInt(static_cast<int64_t>(noise_timing));
  return h.value();
}

}  // namespace gnc
