// The CPU reference merge. One blocked pass reads every gradient once: for each
// block of kBlock elements it forms the weighted mean, the norms, the optimizer
// update and (gnc mode) the perturbations while the block is in cache.
#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "server/merge_backend.h"
#include "server/noise_rng.h"

namespace gnc {
namespace {

constexpr size_t kBlock = 2048;

// BlockedPass: the one pass over the gradients. For each block of kBlock elements it
// forms the weighted mean, the norms, the optimizer update and (gnc mode) the deltas
// while the block is in cache. Built for AVX2+FMA as well as the x86-64 baseline; the
// loader picks the variant the CPU supports (the merge is bound by memory and by the
// vector width: AVX2 measured about 20 % faster on a 2-core VM).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("arch=x86-64-v3", "default")))
#endif
void BlockedPass(const MergeParams& p, const MergeInputs& in, const std::vector<float>& weight,
                 std::span<const float> w, std::span<const float> v, std::span<float> w_out,
                 std::span<float> v_out, std::span<const std::span<float>> deltas,
                 std::vector<double>& grad_sq, std::vector<double>& noise_sq,
                 double* mean_sq_out, bool* finite_out) {
  const size_t num = in.grads.size();
  const size_t d = w.size();
  const bool write_gnc = p.mode == SmoothingMode::kGnc;
  const float lr = static_cast<float>(p.lr);
  const float mu = static_cast<float>(p.momentum);
  const float wd = static_cast<float>(p.weight_decay);
  const float gnc_coef = static_cast<float>(-p.gnc_scale * p.lr);

  double mean_sq = 0;
  // x - x is 0 for every finite x and NaN otherwise: one vectorised sum tells whether
  // the whole update stayed finite, without a second pass.
  float nonfinite = 0;
  alignas(64) float gbar[kBlock];

  for (size_t base = 0; base < d; base += kBlock) {
    const size_t len = std::min(kBlock, d - base);
    std::fill(gbar, gbar + len, 0.0f);
    for (size_t k = 0; k < num; ++k) {
      const float* g = in.grads[k].data() + base;
      const float a = weight[k];
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (size_t j = 0; j < len; ++j) {
        gbar[j] += a * g[j];
        s += g[j] * g[j];
      }
      grad_sq[k] += s;
    }
    const float* wb = w.data() + base;
    const float* vb = v.data() + base;
    float* wo = w_out.data() + base;
    float* vo = v_out.data() + base;
    float m = 0, bad = 0;
#pragma omp simd reduction(+ : m, bad)
    for (size_t j = 0; j < len; ++j) {
      const float gb = gbar[j];
      m += gb * gb;
      const float ge = gb + wd * wb[j];
      const float vn = mu * vb[j] + ge;
      const float wn = wb[j] - lr * (p.nesterov ? ge + mu * vn : vn);
      vo[j] = vn;
      wo[j] = wn;
      bad += (wn - wn) + (vn - vn);
    }
    mean_sq += m;
    nonfinite += bad;
    for (size_t k = 0; k < num; ++k) {
      const float* g = in.grads[k].data() + base;
      float* out = deltas[k].data() + base;
      float s = 0;
      if (write_gnc) {
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; ++j) {
          const float e = g[j] - gbar[j];
          s += e * e;
          out[j] = gnc_coef * e;
        }
      } else {
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; ++j) {
          const float e = g[j] - gbar[j];
          s += e * e;
        }
      }
      noise_sq[k] += s;
    }
  }

  *mean_sq_out = mean_sq;
  *finite_out = nonfinite == 0;
}

class CpuMergeBackend final : public MergeBackend {
 public:
  std::string Name() const override { return "cpu"; }

  absl::Status MergeInto(const MergeParams& p, const MergeInputs& in, std::span<const float> w,
                         std::span<const float> v, std::span<float> w_out,
                         std::span<float> v_out, std::span<const std::span<float>> deltas,
                         MergeStats* stats) override {
    const size_t num = in.grads.size();
    const size_t d = w.size();
    if (absl::Status s = ValidateMergeInputs(in, w, v, deltas, w_out.size(), v_out.size());
        !s.ok()) {
      return s;
    }
    double total = 0;
    for (double n : in.num_samples) total += n;
    std::vector<float> weight(num);
    for (size_t k = 0; k < num; ++k) weight[k] = static_cast<float>(in.num_samples[k] / total);

    std::vector<double> grad_sq(num, 0.0), noise_sq(num, 0.0);
    double mean_sq = 0;
    BlockedPass(p, in, weight, w, v, w_out, v_out, deltas, grad_sq, noise_sq, &mean_sq,
                &stats->finite);

    double grad_sq_sum = 0, noise_sq_sum = 0;
    for (size_t k = 0; k < num; ++k) {
      grad_sq_sum += grad_sq[k];
      noise_sq_sum += noise_sq[k];
    }
    stats->mean_grad_sqnorm = mean_sq;
    stats->grad_sqnorm_mean = grad_sq_sum / num;
    stats->noise_sqnorm_mean = noise_sq_sum / num;
    stats->noise_sqnorm = noise_sq;

    // Squared norm of each delta before any cap.
    std::vector<double> delta_sq(num, 0.0);
    const double coef2 = p.gnc_scale * p.gnc_scale * p.lr * p.lr;
    if (p.mode == SmoothingMode::kGnc) {
      for (size_t k = 0; k < num; ++k) delta_sq[k] = coef2 * noise_sq[k];
    } else if (p.mode == SmoothingMode::kIsotropic) {
      // Same expected squared norm as GNC's perturbation, no direction.
      const double sigma = d > 0 ? std::sqrt(coef2 * stats->noise_sqnorm_mean / d) : 0.0;
      for (size_t k = 0; k < num; ++k) {
        const uint64_t key = NoiseKey(p.seed, p.noise_step, in.ranks[k]);
        float* out = deltas[k].data();
        double s = 0;
        // Pairs of elements share one draw: compute it once per pair (the values are
        // exactly StandardNormal's, element by element).
        size_t j = 0;
        if (d > 0 && (p.global_offset & 1)) {
          out[0] = static_cast<float>(sigma * StandardNormal(key, p.global_offset));
          j = 1;
        }
        for (; j + 1 < d; j += 2) {
          double r, theta;
          NormalPairPolar(key, (p.global_offset + static_cast<int64_t>(j)) >> 1, &r, &theta);
          out[j] = static_cast<float>(sigma * static_cast<float>(r * std::cos(theta)));
          out[j + 1] = static_cast<float>(sigma * static_cast<float>(r * std::sin(theta)));
        }
        if (j < d) out[j] = static_cast<float>(sigma * StandardNormal(key, p.global_offset + j));
        for (size_t i = 0; i < d; ++i) s += static_cast<double>(out[i]) * out[i];
        delta_sq[k] = s;
      }
    }
    double pert = 0;
    for (size_t k = 0; k < num; ++k) {
      const double norm = std::sqrt(delta_sq[k]);
      if (p.mode != SmoothingMode::kNone && p.max_perturbation_norm > 0 &&
          norm > p.max_perturbation_norm) {
        const float scale = static_cast<float>(p.max_perturbation_norm / norm);
        for (float& x : deltas[k]) x *= scale;
        delta_sq[k] = p.max_perturbation_norm * p.max_perturbation_norm;
      }
      pert += delta_sq[k];
    }
    stats->perturbation_sqnorm = p.mode == SmoothingMode::kNone ? 0.0 : pert / num;
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<MergeBackend> NewCpuMergeBackend() { return std::make_unique<CpuMergeBackend>(); }

}  // namespace gnc
