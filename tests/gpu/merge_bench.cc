// gnc_merge_cuda_bench: throughput of the device merge in bytes touched per second, against a
// device-to-device cudaMemcpy timed in the same run (DESIGN.md section 3: ratios to a
// yardstick on the same machine). Only device work is timed: the fused pass and the
// row reduction (gnc), plus the noise kernel and its reduction (isotropic).
//
// Bytes touched per merge: K gradients read, w and v read and written, K deltas
// written: (2K + 4) N floats. The copy moves the K gradients into the delta buffer:
// 2 K N floats touched. Both columns are rates, so their ratio compares like with like.
//
// Usage: gnc_merge_cuda_bench [--max_mi=256] [--runs=9] [--blocks_per_sm=2]
// Exits 0 with a message when there is no CUDA device.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "server/cuda/merge_kernels.h"

namespace gnc::cuda {
namespace {

#define BENCH_CHECK(expr)                                                                         \
  do {                                                                                            \
    const cudaError_t e_ = (expr);                                                                \
    if (e_ != cudaSuccess) {                                                                      \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_)); \
      return false;                                                                               \
    }                                                                                             \
  } while (false)

struct Options {
  int64_t max_mi = 256;
  int runs = 9;
  int blocks_per_sm = kMergeBlocksPerSm;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Buffers: one configuration's device memory, freed on scope exit.
struct Buffers {
  std::vector<void*> owned;
  ~Buffers() {
    for (void* p : owned) cudaFree(p);
  }
  template <typename T>
  cudaError_t Get(size_t n, T** out) {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T));
    if (e == cudaSuccess) owned.push_back(p);
    *out = static_cast<T*>(p);
    return e;
  }
};

// Timed: median milliseconds of `runs` executions of `work` after one warm-up.
template <typename Work>
bool Timed(cudaStream_t s, int runs, Work work, double* ms) {
  cudaEvent_t start, stop;
  BENCH_CHECK(cudaEventCreate(&start));
  BENCH_CHECK(cudaEventCreate(&stop));
  std::vector<double> times;
  bool ok = true;
  for (int r = 0; r <= runs && ok; ++r) {
    ok = cudaEventRecord(start, s) == cudaSuccess && work() == cudaSuccess &&
         cudaEventRecord(stop, s) == cudaSuccess && cudaEventSynchronize(stop) == cudaSuccess;
    float t = 0;
    if (ok && cudaEventElapsedTime(&t, start, stop) == cudaSuccess && r > 0) times.push_back(t);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  if (!ok || times.empty()) return false;
  *ms = Median(times);
  return true;
}

bool RunOne(const Options& o, int sm_count, int64_t n, int num, cudaStream_t s) {
  const double touched = static_cast<double>(2 * num + 4) * n * sizeof(float);
  const double copy_touched = 2.0 * num * n * sizeof(float);
  size_t free_bytes = 0, total_bytes = 0;
  BENCH_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  const double need = static_cast<double>(2 * num + 2) * n * sizeof(float);
  if (need > 0.9 * free_bytes) {
    std::printf("%-9s %7lld %3d   skipped: needs %.1f GiB, %.1f GiB free\n", "-",
                static_cast<long long>(n >> 20), num, need / (1 << 30),
                free_bytes / double(1 << 30));
    return true;
  }
  Buffers b;
  float *grads, *deltas, *w, *v, *weights;
  uint64_t* keys;
  double *partials, *sums;
  const int pass_blocks = PersistentBlocks(n / 4, sm_count, o.blocks_per_sm);
  const int row_blocks = PersistentBlocks(n, sm_count, 2);
  BENCH_CHECK(b.Get(static_cast<size_t>(num) * n, &grads));
  BENCH_CHECK(b.Get(static_cast<size_t>(num) * n, &deltas));
  BENCH_CHECK(b.Get(n, &w));
  BENCH_CHECK(b.Get(n, &v));
  BENCH_CHECK(b.Get(num, &weights));
  BENCH_CHECK(b.Get(num, &keys));
  BENCH_CHECK(b.Get(std::max<size_t>(size_t(2 * num + 1) * pass_blocks, size_t(num) * row_blocks),
                    &partials));
  BENCH_CHECK(b.Get(2 * num + 1, &sums));
  // 0x3c3c3c3c is about 0.0115: finite, normal values everywhere.
  BENCH_CHECK(cudaMemsetAsync(grads, 0x3c, sizeof(float) * num * n, s));
  BENCH_CHECK(cudaMemsetAsync(w, 0x3c, sizeof(float) * n, s));
  BENCH_CHECK(cudaMemsetAsync(v, 0, sizeof(float) * n, s));
  std::vector<float> host_weights(num, 1.0f / num);
  std::vector<uint64_t> host_keys(num);
  for (int k = 0; k < num; ++k) host_keys[k] = 0x9e3779b97f4a7c15ull * (k + 1);
  BENCH_CHECK(
      cudaMemcpy(weights, host_weights.data(), num * sizeof(float), cudaMemcpyHostToDevice));
  BENCH_CHECK(cudaMemcpy(keys, host_keys.data(), num * sizeof(uint64_t), cudaMemcpyHostToDevice));

  double copy_ms = 0;
  if (!Timed(
          s, o.runs,
          [&] {
            return cudaMemcpyAsync(deltas, grads, sizeof(float) * num * n, cudaMemcpyDeviceToDevice,
                                   s);
          },
          &copy_ms)) {
    std::fprintf(stderr, "copy failed\n");
    return false;
  }
  const double copy_rate = copy_touched / (copy_ms * 1e-3) / 1e9;

  for (const char* mode : {"gnc", "isotropic"}) {
    const bool iso = std::strcmp(mode, "isotropic") == 0;
    MergePassArgs a;
    a.grads = grads;
    a.deltas = deltas;
    a.w = w;
    a.v = v;
    a.weights = weights;
    a.partials = partials;
    a.stride = n;
    a.num = num;
    a.num_blocks = pass_blocks;
    a.lr = 1e-3f;
    a.momentum = 0.9f;
    a.weight_decay = 5e-4f;
    a.delta_coef = -1e-3f;
    a.write_deltas = !iso;
    IsotropicNoiseArgs z;
    z.deltas = deltas;
    z.keys = keys;
    z.partials = partials;
    z.stride = n;
    z.d = n;
    z.sigma = 1e-3;
    z.num = num;
    z.num_blocks = row_blocks;
    double ms = 0;
    const bool ok = Timed(
        s, o.runs,
        [&] {
          cudaError_t e = LaunchMergePass(a, s);
          if (e == cudaSuccess) e = LaunchReduceRows(partials, 2 * num + 1, pass_blocks, sums, s);
          if (iso && e == cudaSuccess) e = LaunchIsotropicNoise(z, s);
          if (iso && e == cudaSuccess) e = LaunchReduceRows(partials, num, row_blocks, sums, s);
          return e;
        },
        &ms);
    if (!ok) {
      std::fprintf(stderr, "merge (%s) failed: %s\n", mode, cudaGetErrorString(cudaGetLastError()));
      return false;
    }
    const double rate = touched / (ms * 1e-3) / 1e9;
    std::printf("%-9s %7lld %3d %10.3f %11.1f %12.1f %7.2f\n", mode,
                static_cast<long long>(n >> 20), num, ms, rate, copy_rate, rate / copy_rate);
  }
  std::fflush(stdout);
  return true;
}

bool ParseFlag(const char* arg, const char* name, int64_t* value) {
  const size_t len = std::strlen(name);
  if (std::strncmp(arg, name, len) != 0 || arg[len] != '=') return false;
  *value = std::strtoll(arg + len + 1, nullptr, 10);
  return true;
}

int Main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    int64_t value = 0;
    if (ParseFlag(argv[i], "--max_mi", &value)) {
      o.max_mi = value;
    } else if (ParseFlag(argv[i], "--runs", &value)) {
      o.runs = static_cast<int>(std::max<int64_t>(1, value));
    } else if (ParseFlag(argv[i], "--blocks_per_sm", &value)) {
      o.blocks_per_sm = static_cast<int>(std::max<int64_t>(1, value));
    } else {
      std::fprintf(stderr,
                   "usage: gnc_merge_cuda_bench [--max_mi=256] [--runs=9] [--blocks_per_sm=%d]\n",
                   kMergeBlocksPerSm);
      return 2;
    }
  }
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    std::printf("gnc_merge_cuda_bench: no CUDA device (%s); nothing to measure\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "cudaGetDeviceCount returned 0");
    return 0;
  }
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, 0) != cudaSuccess) return 1;
  cudaStream_t s;
  if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return 1;
  std::printf(
      "gnc_merge_cuda_bench: %s, %d SMs, %.1f GiB; %d blocks/SM of %d threads; median of %d\n",
      prop.name, prop.multiProcessorCount, prop.totalGlobalMem / double(1 << 30), o.blocks_per_sm,
      kMergeThreads, o.runs);
  std::printf("rates are bytes touched per second (GB/s = 1e9 B/s); ratio = merge / copy\n");
  std::printf("%-9s %7s %3s %10s %11s %12s %7s\n", "mode", "N(Mi)", "K", "merge_ms", "merge_GB/s",
              "memcpy_GB/s", "ratio");
  bool ok = true;
  for (int64_t mi = 1; mi <= o.max_mi && ok; mi *= 4) {
    for (int num : {4, 16}) {
      ok = ok && RunOne(o, prop.multiProcessorCount, mi << 20, num, s);
    }
  }
  cudaStreamDestroy(s);
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace gnc::cuda

int main(int argc, char** argv) { return gnc::cuda::Main(argc, argv); }
