// The fused merge pass: one read of every gradient (kept in registers for up to 16
// contributors; re-read from cache beyond that) gives the weighted mean, the norms,
// the optimizer update and the gnc perturbations. Built with --fmad=false so the
// element-wise arithmetic rounds as the CPU reference's does (no contraction there).
#include <algorithm>

#include "server/cuda/merge_kernels.h"

namespace gnc::cuda {
namespace {

constexpr int kWarps = kMergeThreads / 32;

__device__ __forceinline__ float WarpSum(float x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(0xffffffffu, x, offset);
  return x;
}

__device__ __forceinline__ float SquaredNorm(float4 a) {
  return a.x * a.x + a.y * a.y + a.z * a.z + a.w * a.w;
}

// Accumulate: gb += a * g, element-wise, in the CPU reference's order.
__device__ __forceinline__ void Accumulate(float a, float4 g, float4& gb) {
  gb.x += a * g.x;
  gb.y += a * g.y;
  gb.z += a * g.z;
  gb.w += a * g.w;
}

__device__ __forceinline__ float4 Sub(float4 a, float4 b) {
  return make_float4(a.x - b.x, a.y - b.y, a.z - b.z, a.w - b.w);
}

__device__ __forceinline__ float4 Scale(float c, float4 a) {
  return make_float4(c * a.x, c * a.y, c * a.z, c * a.w);
}

// Step: the optimizer on one element, the CPU reference's expression.
__device__ __forceinline__ void Step(const MergePassArgs& a, float gb, float& w, float& v) {
  const float ge = gb + a.weight_decay * w;
  const float vn = a.momentum * v + ge;
  v = vn;
  w -= a.lr * (a.nesterov ? ge + a.momentum * vn : vn);
}

// kCacheK > 0: contributors' float4s stay in registers between the two loops over k
// (requires num <= kCacheK); 0: the second loop re-reads them (from L1/L2: each block
// touches kMergeThreads float4s per row per tile).
template <int kCacheK>
__global__ void __launch_bounds__(kMergeThreads) MergePassKernel(const MergePassArgs a) {
  extern __shared__ double shared[];
  const int rows = 2 * a.num + 1;
  double* red = shared;  // [rows][kWarps]: each warp's running sums
  float* weight = reinterpret_cast<float*>(red + rows * kWarps);
  for (int i = threadIdx.x; i < rows * kWarps; i += kMergeThreads) red[i] = 0;
  for (int k = threadIdx.x; k < a.num; k += kMergeThreads) weight[k] = a.weights[k];
  __syncthreads();

  const int warp = threadIdx.x / 32;
  const bool leader = threadIdx.x % 32 == 0;
  const int64_t n4 = a.stride / 4;
  const float4* grads = reinterpret_cast<const float4*>(a.grads);
  float4* deltas = reinterpret_cast<float4*>(a.deltas);
  float4* w4 = reinterpret_cast<float4*>(a.w);
  float4* v4 = reinterpret_cast<float4*>(a.v);
  const float4 zero = make_float4(0, 0, 0, 0);
  constexpr int kSlots = kCacheK > 0 ? kCacheK : 1;
  const int loop_k = kCacheK > 0 ? kCacheK : a.num;

  // Whole blocks step through the tiles together, so every warp-wide sum below sees
  // all 32 lanes; lanes past the end contribute zeros.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kMergeThreads; base < n4;
       base += static_cast<int64_t>(gridDim.x) * kMergeThreads) {
    const int64_t i = base + threadIdx.x;
    const bool in = i < n4;
    [[maybe_unused]] float4 cache[kSlots];
    float4 gb = zero;
#pragma unroll
    for (int k = 0; k < loop_k; ++k) {
      if (k >= a.num) break;
      const float4 g = in ? grads[k * n4 + i] : zero;
      if constexpr (kCacheK > 0) cache[k] = g;
      Accumulate(weight[k], g, gb);
      const float s = WarpSum(SquaredNorm(g));
      if (leader) red[k * kWarps + warp] += s;
    }

    const float m = WarpSum(SquaredNorm(gb));
    if (leader) red[2 * a.num * kWarps + warp] += m;
    if (in && a.write_state) {
      float4 w = w4[i], v = v4[i];
      Step(a, gb.x, w.x, v.x);
      Step(a, gb.y, w.y, v.y);
      Step(a, gb.z, w.z, v.z);
      Step(a, gb.w, w.w, v.w);
      w4[i] = w;
      v4[i] = v;
    }

#pragma unroll
    for (int k = 0; k < loop_k; ++k) {
      if (k >= a.num) break;
      float4 g;
      if constexpr (kCacheK > 0) {
        g = cache[k];
      } else {
        g = in ? grads[k * n4 + i] : zero;
      }
      const float4 e = Sub(g, gb);
      const float s = WarpSum(SquaredNorm(e));
      if (leader) red[(a.num + k) * kWarps + warp] += s;
      if (a.write_deltas && in) __stcs(&deltas[k * n4 + i], Scale(a.delta_coef, e));
    }
  }

  __syncthreads();
  for (int r = threadIdx.x; r < rows; r += kMergeThreads) {
    double total = 0;
    for (int j = 0; j < kWarps; ++j) total += red[r * kWarps + j];
    a.partials[static_cast<int64_t>(r) * gridDim.x + blockIdx.x] = total;
  }
}

}  // namespace

int PersistentBlocks(int64_t items, int sm_count, int blocks_per_sm) {
  const int64_t needed = (items + kMergeThreads - 1) / kMergeThreads;
  const int64_t full = static_cast<int64_t>(std::max(sm_count, 1)) * std::max(blocks_per_sm, 1);
  return static_cast<int>(std::max<int64_t>(1, std::min(needed, full)));
}

size_t MergePassSharedBytes(int num) {
  return static_cast<size_t>(2 * num + 1) * kWarps * sizeof(double) +
         static_cast<size_t>(num) * sizeof(float);
}

cudaError_t LaunchMergePass(const MergePassArgs& a, cudaStream_t stream) {
  const bool aligned = reinterpret_cast<uintptr_t>(a.grads) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(a.w) % 16 == 0 &&
                       reinterpret_cast<uintptr_t>(a.v) % 16 == 0 &&
                       (!a.write_deltas || reinterpret_cast<uintptr_t>(a.deltas) % 16 == 0);
  if (a.num < 1 || a.num_blocks < 1 || a.stride <= 0 || a.stride % 4 != 0 || !aligned ||
      a.weights == nullptr || a.partials == nullptr) {
    return cudaErrorInvalidValue;
  }
  void (*kernel)(MergePassArgs);
  if (a.num <= 4) {
    kernel = MergePassKernel<4>;
  } else if (a.num <= 8) {
    kernel = MergePassKernel<8>;
  } else if (a.num <= 16) {
    kernel = MergePassKernel<16>;
  } else {
    kernel = MergePassKernel<0>;
  }
  const size_t shared = MergePassSharedBytes(a.num);
  if (shared > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(shared));
    if (e != cudaSuccess) return e;
  }
  kernel<<<a.num_blocks, kMergeThreads, shared, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace gnc::cuda
