// MergeBackend: the device interface of one shard's step. Given the step's
// gradients it computes the sample-weighted mean, the noise partials, applies the
// optimizer to w and v, and forms every contributor's perturbation delta_k. A CPU
// implementation is always present; a CUDA one is added when built with CUDA.
#ifndef GNC_SERVER_MERGE_BACKEND_H_
#define GNC_SERVER_MERGE_BACKEND_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "server/host_pinner.h"
#include "server/options.h"

namespace gnc {

// MergeParams: per-step settings of the merge.
struct MergeParams {
  SmoothingMode mode = SmoothingMode::kGnc;
  double lr = 0.1;                     // eta_t of the step being completed
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  double gnc_scale = 1.0;              // rho
  double max_perturbation_norm = 0.0;  // 0 = no cap
  uint64_t seed = 1;
  int64_t noise_step = 0;              // step whose evaluation point delta is for
  int64_t global_offset = 0;           // global index of the shard's element 0
  // False: a noise pass (fresh noise timing): w_out and v_out become copies of w and
  // v, and the points are x_k = w + delta_k; lr then only scales delta.
  bool apply_update = true;
  // Versions of the shard state, so that a device backend can keep w and v resident
  // between steps. out_version names the w_out and v_out this call writes; the caller
  // passes it back as state_version when exactly those buffers, unchanged, are the
  // next call's w and v. 0 means "not the output of an earlier call" (a restored,
  // rewound or first state): the backend must read w and v.
  uint64_t state_version = 0;
  uint64_t out_version = 0;
};

// PointOut: where a contributor's next evaluation point x_k = w_out + delta_k goes,
// already in its wire encoding: exactly one of the two spans has the shard's d
// elements (bf16: round to nearest even).
struct PointOut {
  std::span<float> f32;
  std::span<uint16_t> bf16;
};

// MergeInputs: the step's contributors. Spans point at buffers owned by the caller
// (the shard core) and stay valid for the call.
struct MergeInputs {
  std::vector<std::span<const float>> grads;  // g_k, each of size d
  std::vector<double> num_samples;            // n_k >= 1
  std::vector<int32_t> ranks;                 // worker ranks (noise streams)
};

// MergeStats: the step's noise partials over this shard.
struct MergeStats {
  double mean_grad_sqnorm = 0;     // A = ||g_mean||^2
  double grad_sqnorm_mean = 0;     // C = mean_k ||g_k||^2
  double noise_sqnorm_mean = 0;    // mean_k ||g_k - g_mean||^2
  double perturbation_sqnorm = 0;  // mean_k ||delta_k||^2 (after any cap)
  // ||g_k - g_mean||^2 per contributor, in MergeInputs order (parallel to ranks).
  // Every backend fills it; its mean is noise_sqnorm_mean.
  std::vector<double> noise_sqnorm;
  // False when the updated w or v holds a NaN or an infinity: the step diverged.
  bool finite = true;
};

// MergeBackend: thread-compatible; the shard core serialises calls.
class MergeBackend {
 public:
  virtual ~MergeBackend() = default;
  virtual std::string Name() const = 0;

  // MergeInto: one step. Reads w and v (size d) and writes the updated ones to w_out
  // and v_out, which may be w and v themselves or other buffers of size d (the shard
  // core keeps the old state until it knows the new one is finite). Writes contributor
  // k's next evaluation point x_k = w_out + delta_k to points[k] in its encoding (in
  // mode none points may be empty: every worker gets w_out). stats->finite says
  // whether w_out and v_out are free of NaN and infinity.
  // REQUIRES: inputs non-empty, all sizes equal d, points.size() == grads.size() (or
  // empty in mode none).
  // Errors: INVALID_ARGUMENT for inconsistent sizes; INTERNAL for device failures
  // (w_out, v_out are then unspecified; the backend reports the failure with context).
  virtual absl::Status MergeInto(const MergeParams& params, const MergeInputs& inputs,
                                 std::span<const float> w, std::span<const float> v,
                                 std::span<float> w_out, std::span<float> v_out,
                                 std::span<const PointOut> points, MergeStats* stats) = 0;

  // Pinner: the backend's page-locking service, or null when it has none (the CPU
  // backend). The shard core pins through it every host buffer a call reads or writes
  // many times (receive slots, pooled w and v, point buffers) so that a device backend
  // moves them by direct DMA, without a staging copy.
  virtual std::shared_ptr<HostPinner> Pinner() { return nullptr; }

  // Merge: MergeInto with w and v updated in place.
  absl::Status Merge(const MergeParams& params, const MergeInputs& inputs, std::span<float> w,
                     std::span<float> v, std::span<const PointOut> points, MergeStats* stats) {
    return MergeInto(params, inputs, w, v, w, v, points, stats);
  }
};

// ValidateMergeInputs: the size checks every backend makes before it touches w, v or
// a delta. INVALID_ARGUMENT naming the mismatch.
inline absl::Status ValidateMergeInputs(const MergeParams& p, const MergeInputs& in,
                                        std::span<const float> w, std::span<const float> v,
                                        std::span<const PointOut> points, size_t w_out_size,
                                        size_t v_out_size) {
  const size_t num = in.grads.size();
  const size_t d = w.size();
  if (num == 0) return absl::InvalidArgumentError("merge with no gradients");
  const bool points_needed = p.mode != SmoothingMode::kNone;
  if (in.num_samples.size() != num || in.ranks.size() != num || v.size() != d ||
      w_out_size != d || v_out_size != d ||
      (points.size() != num && (points_needed || !points.empty()))) {
    return absl::InvalidArgumentError("merge inputs disagree in size");
  }
  for (size_t k = 0; k < num; ++k) {
    if (in.grads[k].size() != d) {
      return absl::InvalidArgumentError(
          absl::StrCat("contributor ", k, " has ", in.grads[k].size(), " gradient elements, not ", d));
    }
    if (k < points.size() && (points[k].f32.size() == d) == (points[k].bf16.size() == d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("contributor ", k, " needs exactly one point buffer of ", d, " elements"));
    }
  }
  return absl::OkStatus();
}

// NewCpuMergeBackend: the reference backend: blocks of the shard in cache (one pass
// over the gradients, a second only for isotropic noise or a perturbation cap) on
// `threads` threads; per-block partial sums are added in block order, so the results
// do not depend on the thread count.
std::unique_ptr<MergeBackend> NewCpuMergeBackend(int threads = 1);

}  // namespace gnc

#endif  // GNC_SERVER_MERGE_BACKEND_H_
