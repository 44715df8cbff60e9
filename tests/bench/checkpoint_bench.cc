// checkpoint_bench: what a checkpoint of a shard of N floats costs, against
// yardsticks measured in the same run: what holds the step up (taking the snapshot,
// which shares w and v as the shard core does) against memcpy of the same bytes, and
// the background write (checksum, write, fsync, rename) and the verified read of a
// restore against a plain write + fsync of the same bytes. Medians of interleaved
// repetitions. Asserts nothing.
//   checkpoint_bench [--sizes=1,4,16] [--reps=5] [--dir=/tmp]   (sizes in Mi floats)
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "server/checkpoint.h"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// PlainWrite: the same bytes written and fsynced, nothing else.
void PlainWrite(const std::string& path, const std::vector<float>& a,
                const std::vector<float>& b) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) return;
  for (const auto* v : {&a, &b}) {
    const char* p = reinterpret_cast<const char*>(v->data());
    size_t left = v->size() * sizeof(float);
    while (left > 0) {
      const ssize_t n = ::write(fd, p, std::min<size_t>(left, 1 << 26));
      if (n <= 0) break;
      p += n;
      left -= static_cast<size_t>(n);
    }
  }
  ::fsync(fd);
  ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int> sizes = {1, 4, 16};
  int reps = 5;
  std::string dir = "/tmp";
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--sizes=", 0) == 0) {
      sizes.clear();
      for (absl::string_view part : absl::StrSplit(arg.substr(8), ',')) {
        int v;
        if (absl::SimpleAtoi(part, &v) && v > 0) sizes.push_back(v);
      }
    } else if (arg.rfind("--reps=", 0) == 0) {
      absl::SimpleAtoi(arg.substr(7), &reps);
    } else if (arg.rfind("--dir=", 0) == 0) {
      dir = arg.substr(6);
    }
  }
  reps = std::max(reps, 1);
  const std::string file = dir + "/gnc-checkpoint-bench." + std::to_string(::getpid());
  std::printf("%-6s %10s %10s %7s | %10s %10s %7s | %10s %7s\n", "N(Mi)", "copy ms",
              "memcpy ms", "ratio", "write ms", "plain ms", "ratio", "read ms", "ratio");
  for (int mi : sizes) {
    const size_t d = static_cast<size_t>(mi) << 20;
    gnc::ShardState state;
    state.job = gnc::JobIdentity{1, 0};
    state.step = 100;
    state.model_elements = static_cast<int64_t>(d);
    auto w = std::make_shared<gnc::Floats>(d);
    auto v = std::make_shared<gnc::Floats>(d);
    for (size_t i = 0; i < d; ++i) {
      (*w)[i] = 1e-3f * static_cast<float>(i % 1009);
      (*v)[i] = -1e-4f * static_cast<float>(i % 997);
    }
    state.w = w;
    state.v = v;
    std::vector<float> sink_w(d), sink_v(d);
    std::shared_ptr<const gnc::ShardState> snap;
    std::vector<double> copy, memcpy_ms, write, plain, read;
    for (int r = 0; r < reps; ++r) {
      auto t0 = Clock::now();
      snap = std::make_shared<const gnc::ShardState>(state);  // shares w and v
      auto t1 = Clock::now();
      std::memcpy(sink_w.data(), w->data(), d * sizeof(float));
      std::memcpy(sink_v.data(), v->data(), d * sizeof(float));
      auto t2 = Clock::now();
      absl::Status s = gnc::CheckpointStore::WriteFile(file, *snap, 0, 1);
      auto t3 = Clock::now();
      PlainWrite(file + ".plain", *w, *v);
      auto t4 = Clock::now();
      absl::StatusOr<gnc::ShardState> back = gnc::CheckpointStore::ReadFile(file, 0, 1, 0);
      auto t5 = Clock::now();
      if (!s.ok() || !back.ok()) {
        std::fprintf(stderr, "checkpoint_bench: %s %s\n", s.ToString().c_str(),
                     back.status().ToString().c_str());
        return 1;
      }
      copy.push_back(Ms(t0, t1));
      memcpy_ms.push_back(Ms(t1, t2));
      write.push_back(Ms(t2, t3));
      plain.push_back(Ms(t3, t4));
      read.push_back(Ms(t4, t5));
    }
    const double c = Median(copy), m = Median(memcpy_ms), wr = Median(write), p = Median(plain),
                 rd = Median(read);
    std::printf("%-6d %10.1f %10.1f %7.2f | %10.1f %10.1f %7.2f | %10.1f %7.2f\n", mi, c, m,
                c / m, wr, p, wr / p, rd, rd / p);
  }
  std::remove(file.c_str());
  std::remove((file + ".plain").c_str());
  return 0;
}
