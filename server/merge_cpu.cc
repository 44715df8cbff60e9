// The CPU reference merge. The shard is cut into blocks of kBlock elements; each block
// is handled while it is in cache: the weighted mean, the norms, the optimizer update
// and (gnc mode without a cap) the evaluation points in one read of the gradients. A
// second pass writes the points when they need a shard-wide number first (the
// isotropic sigma, a cap's scale). Blocks run on a ParallelFor; every block writes its
// partial sums to its own slot and the slots are added in block order, so the result
// is the same for any thread count.
#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "server/merge_backend.h"
#include "server/noise_rng.h"
#include "server/parallel_for.h"

namespace gnc {
namespace {

constexpr size_t kBlock = 2048;  // elements; a multiple of 2 (noise pairs)

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Built for AVX2+FMA as well as the x86-64 baseline; the loader picks what the CPU has.
#define GNC_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define GNC_CLONES
#endif

// StorePoint: x = w + delta into a point buffer, float32 or bf16.
struct PointWriter {
  float* f32;
  uint16_t* bf16;
};

// Pass1Args: what the first pass reads and writes for a range of blocks.
struct Pass1Args {
  const MergeParams* p;
  const MergeInputs* in;
  const float* weight;  // num
  const float* w;
  const float* v;
  float* w_out;
  float* v_out;
  float* gbar_out;            // d, or null when no second pass needs it
  const PointWriter* points;  // num, or null when this pass writes no points
  size_t d;
  size_t num;
  // Per block b: partials[b * stride + k] = ||g_k||^2 (k < num), [num + k] =
  // ||g_k - gbar||^2, [2 num] = ||gbar||^2, [2 num + 1] = NaN when w or v went
  // non-finite.
  double* partials;
  size_t stride;
};

GNC_CLONES void Pass1(const Pass1Args& a, size_t block_begin, size_t block_end) {
  const MergeParams& p = *a.p;
  const float lr = static_cast<float>(p.lr);
  const float mu = static_cast<float>(p.momentum);
  const float wd = static_cast<float>(p.weight_decay);
  const float coef = static_cast<float>(-p.gnc_scale * p.lr);
  alignas(64) float gbar[kBlock];
  for (size_t b = block_begin; b < block_end; ++b) {
    const size_t base = b * kBlock;
    const size_t len = std::min(kBlock, a.d - base);
    double* part = a.partials + b * a.stride;
    std::fill(gbar, gbar + len, 0.0f);
    for (size_t k = 0; k < a.num; ++k) {
      const float* g = a.in->grads[k].data() + base;
      const float wk = a.weight[k];
      float s = 0;
#pragma omp simd reduction(+ : s)
      for (size_t j = 0; j < len; ++j) {
        gbar[j] += wk * g[j];
        s += g[j] * g[j];
      }
      part[k] = s;
    }
    const float* wb = a.w + base;
    const float* vb = a.v + base;
    float* wo = a.w_out + base;
    float* vo = a.v_out + base;
    float m = 0, bad = 0;
    if (p.apply_update) {
#pragma omp simd reduction(+ : m, bad)
      for (size_t j = 0; j < len; ++j) {
        const float gb = gbar[j];
        m += gb * gb;
        const float ge = gb + wd * wb[j];
        const float vn = mu * vb[j] + ge;
        const float wn = wb[j] - lr * (p.nesterov ? ge + mu * vn : vn);
        vo[j] = vn;
        wo[j] = wn;
        bad += (wn - wn) + (vn - vn);  // 0 for finite values, NaN otherwise
      }
    } else {
#pragma omp simd reduction(+ : m)
      for (size_t j = 0; j < len; ++j) m += gbar[j] * gbar[j];
      if (wo != wb) std::copy(wb, wb + len, wo);
      if (vo != vb) std::copy(vb, vb + len, vo);
    }
    part[2 * a.num] = m;
    part[2 * a.num + 1] = bad;
    if (a.gbar_out != nullptr) std::copy(gbar, gbar + len, a.gbar_out + base);
    for (size_t k = 0; k < a.num; ++k) {
      const float* g = a.in->grads[k].data() + base;
      float s = 0;
      const PointWriter* out = a.points != nullptr ? &a.points[k] : nullptr;
      if (out != nullptr && out->f32 != nullptr) {
        float* x = out->f32 + base;
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; ++j) {
          const float e = g[j] - gbar[j];
          s += e * e;
          x[j] = wo[j] + coef * e;
        }
      } else if (out != nullptr) {
        uint16_t* x = out->bf16 + base;
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; ++j) {
          const float e = g[j] - gbar[j];
          s += e * e;
          x[j] = FloatToBf16(wo[j] + coef * e);
        }
      } else {
#pragma omp simd reduction(+ : s)
        for (size_t j = 0; j < len; ++j) {
          const float e = g[j] - gbar[j];
          s += e * e;
        }
      }
      part[a.num + k] = s;
    }
  }
}

inline void Store(const PointWriter& out, size_t i, float x) {
  if (out.f32 != nullptr) {
    out.f32[i] = x;
  } else {
    out.bf16[i] = FloatToBf16(x);
  }
}

// CappedGncPoints: x = w + (coef (g - gbar)) scale, for the blocks in range.
GNC_CLONES void CappedGncPoints(const float* g, const float* gbar, const float* w, float coef,
                                float scale, const PointWriter& out, size_t begin, size_t end) {
  if (out.f32 != nullptr) {
    float* x = out.f32;
#pragma omp simd
    for (size_t j = begin; j < end; ++j) x[j] = w[j] + (coef * (g[j] - gbar[j])) * scale;
  } else {
    uint16_t* x = out.bf16;
#pragma omp simd
    for (size_t j = begin; j < end; ++j) {
      x[j] = FloatToBf16(w[j] + (coef * (g[j] - gbar[j])) * scale);
    }
  }
}

// IsotropicBlock: delta = (sigma z) scale for elements [begin, end) of the shard
// (global index global_offset + j); with `out`, x = w + delta is stored; returns
// sum delta^2. `begin` is even (a block start), so pairs never straddle blocks
// except through the shard's own parity, handled element by element.
GNC_CLONES float IsotropicBlock(uint64_t key, int64_t global_offset, float sigma, float scale,
                                const float* w, const PointWriter* out, size_t begin,
                                size_t end) {
  float s = 0;
  size_t j = begin;
  // Global index parity: element j pairs with j+1 when global_offset + j is even.
  if ((global_offset + static_cast<int64_t>(j)) & 1) {
    const float delta = (sigma * StandardNormal(key, global_offset + j)) * scale;
    s += delta * delta;
    if (out != nullptr) Store(*out, j, w[j] + delta);
    ++j;
  }
  const size_t pairs = (end - j) / 2;
  const int64_t first_pair = (global_offset + static_cast<int64_t>(j)) >> 1;
  if (out == nullptr) {
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < pairs; ++i) {
      const NormalPair z = NormalPairOf(key, first_pair + static_cast<int64_t>(i));
      const float d0 = (sigma * z.z0) * scale, d1 = (sigma * z.z1) * scale;
      s += d0 * d0 + d1 * d1;
    }
  } else if (out->f32 != nullptr) {
    float* x = out->f32 + j;
    const float* wj = w + j;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < pairs; ++i) {
      const NormalPair z = NormalPairOf(key, first_pair + static_cast<int64_t>(i));
      const float d0 = (sigma * z.z0) * scale, d1 = (sigma * z.z1) * scale;
      s += d0 * d0 + d1 * d1;
      x[2 * i] = wj[2 * i] + d0;
      x[2 * i + 1] = wj[2 * i + 1] + d1;
    }
  } else {
    uint16_t* x = out->bf16 + j;
    const float* wj = w + j;
#pragma omp simd reduction(+ : s)
    for (size_t i = 0; i < pairs; ++i) {
      const NormalPair z = NormalPairOf(key, first_pair + static_cast<int64_t>(i));
      const float d0 = (sigma * z.z0) * scale, d1 = (sigma * z.z1) * scale;
      s += d0 * d0 + d1 * d1;
      x[2 * i] = FloatToBf16(wj[2 * i] + d0);
      x[2 * i + 1] = FloatToBf16(wj[2 * i + 1] + d1);
    }
  }
  j += 2 * pairs;
  if (j < end) {
    const float delta = (sigma * StandardNormal(key, global_offset + j)) * scale;
    s += delta * delta;
    if (out != nullptr) Store(*out, j, w[j] + delta);
  }
  return s;
}

class CpuMergeBackend final : public MergeBackend {
 public:
  explicit CpuMergeBackend(int threads) : pool_(threads) {}
  std::string Name() const override {
    return pool_.threads() == 1 ? "cpu" : absl::StrCat("cpu (", pool_.threads(), " threads)");
  }

  absl::Status MergeInto(const MergeParams& p, const MergeInputs& in, std::span<const float> w,
                         std::span<const float> v, std::span<float> w_out,
                         std::span<float> v_out, std::span<const PointOut> points,
                         MergeStats* stats) override;

 private:
  ParallelFor pool_;
  // Scratch reused across steps (the shard's size rarely changes).
  std::vector<double> partials_;
  std::vector<float> gbar_;
  std::vector<PointWriter> writers_;
};

absl::Status CpuMergeBackend::MergeInto(const MergeParams& p, const MergeInputs& in,
                                        std::span<const float> w, std::span<const float> v,
                                        std::span<float> w_out, std::span<float> v_out,
                                        std::span<const PointOut> points, MergeStats* stats) {
  if (absl::Status s = ValidateMergeInputs(p, in, w, v, points, w_out.size(), v_out.size());
      !s.ok()) {
    return s;
  }
  const size_t num = in.grads.size();
  const size_t d = w.size();
  double total = 0;
  for (double n : in.num_samples) total += n;
  if (!(total > 0)) return absl::InvalidArgumentError("merge with no samples");
  std::vector<float> weight(num);
  for (size_t k = 0; k < num; ++k) weight[k] = static_cast<float>(in.num_samples[k] / total);

  const bool write_points = p.mode != SmoothingMode::kNone && !points.empty();
  const bool capped = p.mode != SmoothingMode::kNone && p.max_perturbation_norm > 0;
  // gnc without a cap writes the points in the first pass; with one it needs the
  // norms first, and the mean gradient again.
  const bool points_in_pass1 = write_points && p.mode == SmoothingMode::kGnc && !capped;
  writers_.clear();
  for (const PointOut& o : points) {
    writers_.push_back({o.f32.empty() ? nullptr : o.f32.data(),
                        o.bf16.empty() ? nullptr : o.bf16.data()});
  }
  const size_t blocks = (d + kBlock - 1) / kBlock;
  const size_t stride = 2 * num + 2;
  partials_.assign(blocks * stride, 0.0);
  if (write_points && p.mode == SmoothingMode::kGnc && capped) gbar_.resize(d);

  Pass1Args a{&p,       &in,          weight.data(), w.data(), v.data(), w_out.data(),
              v_out.data(),
              write_points && p.mode == SmoothingMode::kGnc && capped ? gbar_.data() : nullptr,
              points_in_pass1 ? writers_.data() : nullptr,
              d,        num,          partials_.data(), stride};
  pool_.Run(static_cast<int64_t>(blocks), [&](int64_t b0, int64_t b1) {
    Pass1(a, static_cast<size_t>(b0), static_cast<size_t>(b1));
  });

  std::vector<double> grad_sq(num, 0.0), noise_sq(num, 0.0);
  double mean_sq = 0, bad = 0;
  for (size_t b = 0; b < blocks; ++b) {
    const double* part = partials_.data() + b * stride;
    for (size_t k = 0; k < num; ++k) {
      grad_sq[k] += part[k];
      noise_sq[k] += part[num + k];
    }
    mean_sq += part[2 * num];
    bad += part[2 * num + 1];
  }
  *stats = MergeStats();
  stats->finite = bad == 0;
  double grad_sq_sum = 0, noise_sq_sum = 0;
  for (size_t k = 0; k < num; ++k) {
    grad_sq_sum += grad_sq[k];
    noise_sq_sum += noise_sq[k];
  }
  stats->mean_grad_sqnorm = mean_sq;
  stats->grad_sqnorm_mean = grad_sq_sum / num;
  stats->noise_sqnorm_mean = noise_sq_sum / num;
  stats->noise_sqnorm = noise_sq;
  if (p.mode == SmoothingMode::kNone) return absl::OkStatus();

  // Squared norm of each delta before any cap, and the cap's scale.
  const double coef2 = p.gnc_scale * p.gnc_scale * p.lr * p.lr;
  const float sigma =
      d > 0 ? static_cast<float>(std::sqrt(coef2 * stats->noise_sqnorm_mean / d)) : 0.0f;
  std::vector<double> delta_sq(num, 0.0);
  std::vector<uint64_t> keys(num);
  for (size_t k = 0; k < num; ++k) keys[k] = NoiseKey(p.seed, p.noise_step, in.ranks[k]);
  // IsoNorms / IsoPoints: the isotropic deltas' norms (scale 1) or the points, per
  // block and contributor, partials added in block order.
  auto iso_pass = [&](const std::vector<float>& scales, bool store) {
    partials_.assign(blocks * num, 0.0);
    pool_.Run(static_cast<int64_t>(blocks), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const size_t begin = static_cast<size_t>(b) * kBlock;
        const size_t end = std::min(d, begin + kBlock);
        for (size_t k = 0; k < num; ++k) {
          partials_[b * num + k] =
              IsotropicBlock(keys[k], p.global_offset, sigma, scales[k], w_out.data(),
                             store ? &writers_[k] : nullptr, begin, end);
        }
      }
    });
    std::vector<double> sums(num, 0.0);
    for (size_t b = 0; b < blocks; ++b) {
      for (size_t k = 0; k < num; ++k) sums[k] += partials_[b * num + k];
    }
    return sums;
  };
  std::vector<float> scales(num, 1.0f);
  if (p.mode == SmoothingMode::kGnc) {
    for (size_t k = 0; k < num; ++k) delta_sq[k] = coef2 * noise_sq[k];
  } else if (capped || !write_points) {
    delta_sq = iso_pass(scales, /*store=*/false);
  }
  double pert = 0;
  for (size_t k = 0; k < num; ++k) {
    const double norm = std::sqrt(delta_sq[k]);
    if (capped && norm > p.max_perturbation_norm) {
      scales[k] = static_cast<float>(p.max_perturbation_norm / norm);
      delta_sq[k] = p.max_perturbation_norm * p.max_perturbation_norm;
    }
  }
  if (write_points && p.mode == SmoothingMode::kIsotropic) {
    std::vector<double> stored = iso_pass(scales, /*store=*/true);
    if (!capped) delta_sq = stored;
  } else if (write_points && capped) {
    const float coef = static_cast<float>(-p.gnc_scale * p.lr);
    pool_.Run(static_cast<int64_t>(blocks), [&](int64_t b0, int64_t b1) {
      const size_t begin = static_cast<size_t>(b0) * kBlock;
      const size_t end = std::min(d, static_cast<size_t>(b1) * kBlock);
      for (size_t k = 0; k < num; ++k) {
        CappedGncPoints(in.grads[k].data(), gbar_.data(), w_out.data(), coef, scales[k],
                        writers_[k], begin, end);
      }
    });
  }
  for (size_t k = 0; k < num; ++k) pert += delta_sq[k];
  stats->perturbation_sqnorm = pert / num;
  return absl::OkStatus();
}

}  // namespace

std::unique_ptr<MergeBackend> NewCpuMergeBackend(int threads) {
  return std::make_unique<CpuMergeBackend>(threads);
}

}  // namespace gnc
