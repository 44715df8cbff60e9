// The CPU reference merge. The shard is cut into blocks of kBlock elements; each block
// is handled while it is in cache: the weighted mean, the norms, the optimizer update
// and (gnc mode without a cap) the evaluation points in one read of the gradients. A
// second pass writes the points when they need a shard-wide number first (the
// isotropic sigma, a cap's scale). Blocks run on a ParallelFor; every block writes its
// partial sums to its own slot and the slots are added in block order, so the result
// is the same for any thread count. Within a block the contributors are visited a
// sub-block (kSub elements) at a time, so every input stream advances together.
#include <algorithm>
#include <cmath>
#include <cstring>
#if defined(__SSE2__)
#include <immintrin.h>
#endif
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"
#include "common/simd_clones.h"
#include "server/merge_backend.h"
#include "server/noise_rng.h"
#include "server/parallel_for.h"

namespace gnc {
namespace {

constexpr size_t kBlock = 2048;  // elements; a multiple of 2 (noise pairs)

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
  bool stream_points;  // non-temporal stores for the points
};

// Sub-blocks: within a block the contributors are visited kSub elements at a time, so
// that all K + 2 input streams advance together (the hardware prefetcher keeps every
// stream in flight; visiting one contributor's whole block after the other halved the
// bandwidth) and the re-reads of a sub-block hit L1. Every sum is kept in kLanes
// partial sums that are added in lane order at the end of the block.
constexpr size_t kSub = 64;
// Points are written with non-temporal stores once they add up to more than this: they
// could not stay in the cache until they are sent anyway, and skipping the read of
// each written line saved 15-25 % of the gnc merge at N = 4 Mi, K = 4. w and v are
// stored normally: the next step and (mode none) the sender read them soon.
constexpr size_t kStreamPointsBytes = 16u << 20;
constexpr size_t kLanes = 16;
static_assert(kBlock % kSub == 0 && kSub % kLanes == 0);

// Put: n floats (or bf16s) from a sub-block's scratch to their destination. With
// `stream` and a 16-byte aligned destination the stores are non-temporal: they skip
// the read of each destination line that an ordinary store costs, and leave the cache
// to the inputs (used for shards far larger than the cache).
__attribute__((always_inline)) inline void Put(float* dst, const float* src, size_t n,
                                               bool stream) {
#if defined(__SSE2__)
  if (stream && n % 4 == 0 && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    for (size_t j = 0; j < n; j += 4) _mm_stream_ps(dst + j, _mm_load_ps(src + j));
    return;
  }
#endif
  std::copy(src, src + n, dst);
}
__attribute__((always_inline)) inline void Put(uint16_t* dst, const uint16_t* src, size_t n,
                                               bool stream) {
#if defined(__SSE2__)
  if (stream && n % 8 == 0 && (reinterpret_cast<uintptr_t>(dst) & 15) == 0) {
    for (size_t j = 0; j < n; j += 8) {
      _mm_stream_si128(reinterpret_cast<__m128i*>(dst + j),
                       _mm_load_si128(reinterpret_cast<const __m128i*>(src + j)));
    }
    return;
  }
#endif
  std::copy(src, src + n, dst);
}

// SubBlock: elements [at, at + n) of the shard, n <= kSub. Inlined twice into Pass1:
// with n = kSub (constant trip counts) and for the shard's last, shorter sub-block.
// lanes: [k * kLanes] ||g_k||^2, [(num + k) * kLanes] ||g_k - gbar||^2,
// [2 num * kLanes] ||gbar||^2, [(2 num + 1) * kLanes] NaN when w or v went non-finite.
__attribute__((always_inline)) inline void SubBlock(const Pass1Args& a, size_t at, size_t n,
                                                    float* lanes) {
  const MergeParams& p = *a.p;
  const float lr = static_cast<float>(p.lr);
  const float mu = static_cast<float>(p.momentum);
  const float wd = static_cast<float>(p.weight_decay);
  const float coef = static_cast<float>(-p.gnc_scale * p.lr);
  const size_t num = a.num;
  alignas(64) float gbar[kSub];
  alignas(64) float wt[kSub];
  alignas(64) float vt[kSub];
  alignas(64) float xt[kSub];
  alignas(64) uint16_t xb[kSub];
  for (size_t j = 0; j < n; ++j) gbar[j] = 0.0f;
  for (size_t k = 0; k < num; ++k) {
    const float* g = a.in->grads[k].data() + at;
    const float wk = a.weight[k];
    float* acc = lanes + k * kLanes;
    for (size_t j0 = 0; j0 < n; j0 += kLanes) {
      const size_t m = std::min(kLanes, n - j0);
      for (size_t l = 0; l < m; ++l) {
        const float x = g[j0 + l];
        gbar[j0 + l] += wk * x;
        acc[l] += x * x;
      }
    }
  }
  const float* wb = a.w + at;
  const float* vb = a.v + at;
  float* macc = lanes + 2 * num * kLanes;
  float* bad = macc + kLanes;
  // wn: the updated w of the sub-block, which the points add their deltas to.
  const float* wn = wb;
  if (p.apply_update) {
    for (size_t j0 = 0; j0 < n; j0 += kLanes) {
      const size_t m = std::min(kLanes, n - j0);
      for (size_t l = 0; l < m; ++l) {
        const size_t j = j0 + l;
        const float gb = gbar[j];
        macc[l] += gb * gb;
        const float ge = gb + wd * wb[j];
        const float vj = mu * vb[j] + ge;
        const float wj = wb[j] - lr * (p.nesterov ? ge + mu * vj : vj);
        vt[j] = vj;
        wt[j] = wj;
        bad[l] += (wj - wj) + (vj - vj);  // 0 for finite values, NaN otherwise
      }
    }
    Put(a.w_out + at, wt, n, false);
    Put(a.v_out + at, vt, n, false);
    wn = wt;
  } else {
    for (size_t j0 = 0; j0 < n; j0 += kLanes) {
      const size_t m = std::min(kLanes, n - j0);
      for (size_t l = 0; l < m; ++l) macc[l] += gbar[j0 + l] * gbar[j0 + l];
    }
    if (a.w_out != a.w) std::copy(wb, wb + n, a.w_out + at);
    if (a.v_out != a.v) std::copy(vb, vb + n, a.v_out + at);
  }
  if (a.gbar_out != nullptr) std::copy(gbar, gbar + n, a.gbar_out + at);
  for (size_t k = 0; k < num; ++k) {
    const float* g = a.in->grads[k].data() + at;
    float* acc = lanes + (num + k) * kLanes;
    const PointWriter* out = a.points != nullptr ? &a.points[k] : nullptr;
    for (size_t j0 = 0; j0 < n; j0 += kLanes) {
      const size_t m = std::min(kLanes, n - j0);
      if (out != nullptr && out->f32 != nullptr) {
        for (size_t l = 0; l < m; ++l) {
          const float e = g[j0 + l] - gbar[j0 + l];
          acc[l] += e * e;
          xt[j0 + l] = wn[j0 + l] + coef * e;
        }
      } else if (out != nullptr) {
        for (size_t l = 0; l < m; ++l) {
          const float e = g[j0 + l] - gbar[j0 + l];
          acc[l] += e * e;
          xb[j0 + l] = FloatToBf16(wn[j0 + l] + coef * e);
        }
      } else {
        for (size_t l = 0; l < m; ++l) {
          const float e = g[j0 + l] - gbar[j0 + l];
          acc[l] += e * e;
        }
      }
    }
    if (out != nullptr && out->f32 != nullptr) {
      Put(out->f32 + at, xt, n, a.stream_points);
    } else if (out != nullptr) {
      Put(out->bf16 + at, xb, n, a.stream_points);
    }
  }
}

// FullSubBlock: SubBlock for n = kSub, written with explicit 8-float vectors so that
// the sub-block's mean gradient and every lane sum stay in registers. Same arithmetic,
// element by element, as SubBlock.
// (Always inlined: no vector crosses a call, so the -Wpsabi note does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
using V8 = float __attribute__((vector_size(32)));
__attribute__((always_inline)) inline V8 Load8(const float* p) {
  V8 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
__attribute__((always_inline)) inline void Store8(float* p, V8 v) {
  std::memcpy(p, &v, sizeof(v));
}
static_assert(kSub == 64 && kLanes == 16, "FullSubBlock is written for 8 vectors, 2 per lane row");

__attribute__((always_inline)) inline void FullSubBlock(const Pass1Args& a, size_t at,
                                                        float* lanes) {
  const MergeParams& p = *a.p;
  const float lr = static_cast<float>(p.lr);
  const float mu = static_cast<float>(p.momentum);
  const float wd = static_cast<float>(p.weight_decay);
  const float coef = static_cast<float>(-p.gnc_scale * p.lr);
  const size_t num = a.num;
  V8 gbar[8];
  for (int i = 0; i < 8; ++i) gbar[i] = V8{};
  for (size_t k = 0; k < num; ++k) {
    const float* g = a.in->grads[k].data() + at;
    const float wk = a.weight[k];
    float* acc = lanes + k * kLanes;
    V8 a0 = Load8(acc), a1 = Load8(acc + 8);
    for (int i = 0; i < 8; i += 2) {
      const V8 x0 = Load8(g + 8 * i), x1 = Load8(g + 8 * i + 8);
      gbar[i] += wk * x0;
      gbar[i + 1] += wk * x1;
      a0 += x0 * x0;
      a1 += x1 * x1;
    }
    Store8(acc, a0);
    Store8(acc + 8, a1);
  }
  alignas(64) float wt[kSub];
  alignas(64) float vt[kSub];
  alignas(64) float xt[kSub];
  alignas(64) uint16_t xb[kSub];
  const float* wb = a.w + at;
  const float* vb = a.v + at;
  float* macc = lanes + 2 * num * kLanes;
  float* bad = macc + kLanes;
  const float* wn = wb;
  {
    V8 m0 = Load8(macc), m1 = Load8(macc + 8);
    for (int i = 0; i < 8; i += 2) {
      m0 += gbar[i] * gbar[i];
      m1 += gbar[i + 1] * gbar[i + 1];
    }
    Store8(macc, m0);
    Store8(macc + 8, m1);
  }
  if (p.apply_update) {
    V8 b0 = Load8(bad), b1 = Load8(bad + 8);
    for (int i = 0; i < 8; ++i) {
      const V8 wj0 = Load8(wb + 8 * i);
      const V8 ge = gbar[i] + wd * wj0;
      const V8 vj = mu * Load8(vb + 8 * i) + ge;
      const V8 wj = wj0 - lr * (p.nesterov ? ge + mu * vj : vj);
      Store8(vt + 8 * i, vj);
      Store8(wt + 8 * i, wj);
      ((i & 1) ? b1 : b0) += (wj - wj) + (vj - vj);
    }
    Store8(bad, b0);
    Store8(bad + 8, b1);
    Put(a.w_out + at, wt, kSub, false);
    Put(a.v_out + at, vt, kSub, false);
    wn = wt;
  } else {
    if (a.w_out != a.w) std::copy(wb, wb + kSub, a.w_out + at);
    if (a.v_out != a.v) std::copy(vb, vb + kSub, a.v_out + at);
  }
  if (a.gbar_out != nullptr) {
    for (int i = 0; i < 8; ++i) Store8(a.gbar_out + at + 8 * i, gbar[i]);
  }
  for (size_t k = 0; k < num; ++k) {
    const float* g = a.in->grads[k].data() + at;
    float* acc = lanes + (num + k) * kLanes;
    const PointWriter* out = a.points != nullptr ? &a.points[k] : nullptr;
    V8 a0 = Load8(acc), a1 = Load8(acc + 8);
    if (out == nullptr) {
      for (int i = 0; i < 8; i += 2) {
        const V8 e0 = Load8(g + 8 * i) - gbar[i], e1 = Load8(g + 8 * i + 8) - gbar[i + 1];
        a0 += e0 * e0;
        a1 += e1 * e1;
      }
    } else {
      for (int i = 0; i < 8; i += 2) {
        const V8 e0 = Load8(g + 8 * i) - gbar[i], e1 = Load8(g + 8 * i + 8) - gbar[i + 1];
        a0 += e0 * e0;
        a1 += e1 * e1;
        Store8(xt + 8 * i, Load8(wn + 8 * i) + coef * e0);
        Store8(xt + 8 * i + 8, Load8(wn + 8 * i + 8) + coef * e1);
      }
      if (out->f32 != nullptr) {
        Put(out->f32 + at, xt, kSub, a.stream_points);
      } else {
        for (size_t j = 0; j < kSub; ++j) xb[j] = FloatToBf16(xt[j]);
        Put(out->bf16 + at, xb, kSub, a.stream_points);
      }
    }
    Store8(acc, a0);
    Store8(acc + 8, a1);
  }
}

// Pass1: blocks [block_begin, block_end). `lanes` is scratch of (2 num + 2) kLanes
// floats owned by the calling thread.
GNC_CLONES void Pass1(const Pass1Args& a, size_t block_begin, size_t block_end, float* lanes) {
  const size_t rows = 2 * a.num + 2;
  for (size_t b = block_begin; b < block_end; ++b) {
    const size_t base = b * kBlock;
    const size_t len = std::min(kBlock, a.d - base);
    std::fill(lanes, lanes + rows * kLanes, 0.0f);
    size_t s0 = 0;
    for (; s0 + kSub <= len; s0 += kSub) FullSubBlock(a, base + s0, lanes);
    if (s0 < len) SubBlock(a, base + s0, len - s0, lanes);
    double* part = a.partials + b * a.stride;
    for (size_t r = 0; r < rows; ++r) {
      double sum = 0;
      for (size_t l = 0; l < kLanes; ++l) sum += lanes[r * kLanes + l];
      part[r] = sum;
    }
  }
#if defined(__SSE2__)
  // Non-temporal stores are weakly ordered: make them visible before this thread
  // reports its part done (the sender reads the points on another thread).
  if (a.stream_points) _mm_sfence();
#endif
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
              d,        num,          partials_.data(), stride,
              num * d * sizeof(float) >= kStreamPointsBytes};
  pool_.Run(static_cast<int64_t>(blocks), [&](int64_t b0, int64_t b1) {
    // Per-thread scratch for the lane sums, kept across steps.
    thread_local std::vector<float> lanes;
    lanes.resize(std::max(lanes.size(), stride * kLanes));
    Pass1(a, static_cast<size_t>(b0), static_cast<size_t>(b1), lanes.data());
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
