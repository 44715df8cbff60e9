// merge_bench: the CPU merge's bytes touched per second against memcpy of the same
// number of bytes on the same number of threads, measured in the same run, reps
// interleaved. Prints a table of medians; asserts nothing.
//   merge_bench [--sizes=1,4,16] [--workers=2,4,8] [--threads=1,2] [--reps=7]
//               [--modes=none,gnc,isotropic] [--bf16]          (sizes in Mi floats)
// Bytes touched per element: none reads K gradients, w and v and writes w and v
// (K + 4 floats); gnc also writes K points (2K + 4); isotropic also reads w again and
// writes K points in its second pass (2K + 5). bf16 points count 2 bytes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/merge_backend.h"
#include "server/parallel_for.h"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

std::vector<int> ParseList(const char* arg, const char* name, std::vector<int> fallback) {
  const std::string prefix = std::string("--") + name + "=";
  if (std::strncmp(arg, prefix.c_str(), prefix.size()) != 0) return fallback;
  std::vector<int> out;
  for (absl::string_view part : absl::StrSplit(arg + prefix.size(), ',')) {
    int v;
    if (absl::SimpleAtoi(part, &v) && v > 0) out.push_back(v);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {1, 4, 16}, workers = {2, 4, 8}, threads = {1}, reps = {7};
  std::vector<gnc::SmoothingMode> modes = {gnc::SmoothingMode::kNone, gnc::SmoothingMode::kGnc,
                                           gnc::SmoothingMode::kIsotropic};
  bool bf16 = false;
  for (int i = 1; i < argc; ++i) {
    sizes = ParseList(argv[i], "sizes", sizes);
    workers = ParseList(argv[i], "workers", workers);
    threads = ParseList(argv[i], "threads", threads);
    reps = ParseList(argv[i], "reps", reps);
    if (std::strcmp(argv[i], "--bf16") == 0) bf16 = true;
    if (std::strncmp(argv[i], "--modes=", 8) == 0) {
      modes.clear();
      for (absl::string_view m : absl::StrSplit(argv[i] + 8, ',')) {
        gnc::SmoothingMode mode;
        if (gnc::ParseSmoothingMode(std::string(m), &mode).ok()) modes.push_back(mode);
      }
    }
  }
  std::printf("%-6s %-3s %-3s %-9s %10s %10s %11s %7s\n", "N(Mi)", "K", "T", "mode", "merge ms",
              "merge GB/s", "memcpy GB/s", "ratio");
  for (int t : threads) {
    auto backend = gnc::NewCpuMergeBackend(t);
    gnc::ParallelFor pool(t);
    for (int mi : sizes) {
      const size_t d = static_cast<size_t>(mi) << 20;
      for (int k : workers) {
        std::vector<std::vector<float>> grads(k, std::vector<float>(d));
        std::vector<std::vector<float>> x(k, std::vector<float>(bf16 ? 0 : d));
        std::vector<std::vector<uint16_t>> xb(k, std::vector<uint16_t>(bf16 ? d : 0));
        std::vector<float> w(d, 0.5f), v(d, 0.0f), w2(d), v2(d);
        for (int j = 0; j < k; ++j) {
          for (size_t i = 0; i < d; ++i) grads[j][i] = 1e-3f * static_cast<float>((i + j) % 97);
        }
        gnc::MergeInputs in;
        std::vector<gnc::PointOut> points(k);
        for (int j = 0; j < k; ++j) {
          in.grads.emplace_back(grads[j]);
          in.num_samples.push_back(64);
          in.ranks.push_back(j);
          if (bf16) {
            points[j].bf16 = xb[j];
          } else {
            points[j].f32 = x[j];
          }
        }
        for (gnc::SmoothingMode mode : modes) {
          gnc::MergeParams p;
          p.mode = mode;
          p.lr = 1e-6;
          const double point_bytes = bf16 ? 2.0 : 4.0;
          const double bytes =
              mode == gnc::SmoothingMode::kNone ? 4.0 * d * (k + 4)
              : mode == gnc::SmoothingMode::kGnc
                  ? 4.0 * d * (k + 4) + point_bytes * d * k
                  : 4.0 * d * (k + 5) + point_bytes * d * k;
          // Yardstick: memcpy on the same threads moving bytes/2 (it reads and writes
          // each byte once).
          const size_t copy_bytes = static_cast<size_t>(bytes / 2);
          std::vector<char> src(copy_bytes, 1), dst(copy_bytes, 0);
          std::vector<double> t_merge, t_copy;
          for (int r = 0; r < reps[0]; ++r) {
            gnc::MergeStats stats;
            auto t0 = Clock::now();
            // Out of place, as the shard core does (w, v into w2, v2).
            if (!backend->MergeInto(p, in, w, v, w2, v2, points, &stats).ok()) return 1;
            auto t1 = Clock::now();
            pool.Run(static_cast<int64_t>(copy_bytes), [&](int64_t b, int64_t e) {
              std::memcpy(dst.data() + b, src.data() + b, static_cast<size_t>(e - b));
            });
            auto t2 = Clock::now();
            t_merge.push_back(std::chrono::duration<double>(t1 - t0).count());
            t_copy.push_back(std::chrono::duration<double>(t2 - t1).count());
          }
          const double tm = Median(t_merge), tc = Median(t_copy);
          const double merge_bw = bytes / tm / 1e9, copy_bw = 2.0 * copy_bytes / tc / 1e9;
          std::printf("%-6d %-3d %-3d %-9s %10.2f %10.2f %11.2f %6.0f%%\n", mi, k, t,
                      gnc::SmoothingModeName(mode), tm * 1e3, merge_bw, copy_bw,
                      100.0 * merge_bw / copy_bw);
          std::fflush(stdout);
        }
      }
    }
  }
  return 0;
}
