// merge_bench: the CPU merge's bytes touched per second against memcpy of the same
// number of bytes, measured in the same run. Prints a table; asserts nothing.
//   merge_bench [--sizes=1,4,16] [--workers=2,4,8] [--reps=7]   (sizes in Mi floats)
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/merge_backend.h"

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
  std::vector<int> sizes = {1, 4, 16}, workers = {2, 4, 8}, reps = {7};
  for (int i = 1; i < argc; ++i) {
    sizes = ParseList(argv[i], "sizes", sizes);
    workers = ParseList(argv[i], "workers", workers);
    reps = ParseList(argv[i], "reps", reps);
  }
  std::printf("%-6s %-3s %-5s %12s %12s %12s %8s\n", "N(Mi)", "K", "mode", "merge ms",
              "merge GB/s", "memcpy GB/s", "ratio");
  auto backend = gnc::NewCpuMergeBackend();
  for (int mi : sizes) {
    const size_t d = static_cast<size_t>(mi) << 20;
    for (int k : workers) {
      std::vector<std::vector<float>> grads(k, std::vector<float>(d));
      std::vector<std::vector<float>> deltas(k, std::vector<float>(d));
      std::vector<float> w(d, 0.5f), v(d, 0.0f);
      for (int j = 0; j < k; ++j) {
        for (size_t i = 0; i < d; ++i) grads[j][i] = 1e-3f * static_cast<float>((i + j) % 97);
        std::fill(deltas[j].begin(), deltas[j].end(), 0.0f);  // fault the pages in
      }
      gnc::MergeInputs in;
      for (int j = 0; j < k; ++j) {
        in.grads.emplace_back(grads[j]);
        in.num_samples.push_back(64);
        in.ranks.push_back(j);
      }
      std::vector<std::span<float>> dspans(deltas.begin(), deltas.end());
      for (gnc::SmoothingMode mode : {gnc::SmoothingMode::kNone, gnc::SmoothingMode::kGnc}) {
        gnc::MergeParams p;
        p.mode = mode;
        p.lr = 1e-6;
        // Bytes each merge must touch: read K gradients, w, v; write w, v; in gnc mode
        // read the gradients' block again from cache and write K deltas.
        const double bytes =
            4.0 * d * (mode == gnc::SmoothingMode::kGnc ? 2 * k + 4 : k + 4);
        // Yardstick: memcpy moving bytes/2 (it reads and writes each byte once).
        const size_t copy_bytes = static_cast<size_t>(bytes / 2);
        std::vector<char> src(copy_bytes, 1), dst(copy_bytes, 0);
        std::vector<double> t_merge, t_copy;
        for (int r = 0; r < reps[0]; ++r) {
          gnc::MergeStats stats;
          auto t0 = Clock::now();
          if (!backend->Merge(p, in, w, v, dspans, &stats).ok()) return 1;
          auto t1 = Clock::now();
          std::memcpy(dst.data(), src.data(), copy_bytes);
          auto t2 = Clock::now();
          t_merge.push_back(std::chrono::duration<double>(t1 - t0).count());
          t_copy.push_back(std::chrono::duration<double>(t2 - t1).count());
        }
        const double tm = Median(t_merge), tc = Median(t_copy);
        const double merge_bw = bytes / tm / 1e9, copy_bw = 2.0 * copy_bytes / tc / 1e9;
        std::printf("%-6d %-3d %-5s %12.2f %12.2f %12.2f %7.0f%%\n", mi, k,
                    gnc::SmoothingModeName(mode), tm * 1e3, merge_bw, copy_bw,
                    100.0 * merge_bw / copy_bw);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}
