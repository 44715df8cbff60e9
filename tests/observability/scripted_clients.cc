#include "tests/observability/scripted_clients.h"

#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/layout.h"
#include "worker/client.h"

namespace gnc::obs {
namespace {

uint64_t Mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

absl::Status RunWorker(const ScriptedJobOptions& o, const ModelLayout& layout, int rank,
                       const GradientFn& gradient) {
  ClientOptions co;
  co.servers = o.servers;
  co.rank = rank;
  co.num_workers = o.num_workers;
  co.layout = layout;
  co.local_batch_size = o.num_samples[rank];
  co.connect_timeout = absl::Seconds(30);
  absl::StatusOr<std::unique_ptr<GncClient>> client = GncClient::Connect(co);
  if (!client.ok()) return client.status();
  std::vector<float> x(o.num_elements), g(o.num_elements);
  if (absl::Status s = (*client)->OfferParameters(x); !s.ok()) return s;
  while (true) {
    absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);
    if (!step.ok()) return step.status();
    if (o.steps > 0 ? *step >= o.steps : (o.stop != nullptr && o.stop->load())) break;
    gradient(*step, rank, g);
    if (absl::Status s = (*client)->PushGradient(g, o.num_samples[rank]); !s.ok()) {
      return absl::Status(s.code(), absl::StrCat("step ", *step, ": ", s.message()));
    }
    if (o.pace > absl::ZeroDuration()) absl::SleepFor(o.pace);
  }
  return o.leave ? (*client)->Leave() : absl::OkStatus();
}

}  // namespace

void IntegerGradient(int64_t step, int rank, std::span<float> g) {
  for (size_t j = 0; j < g.size(); ++j) {
    const int mean = static_cast<int>((j * 7 + static_cast<size_t>(step) * 3) % 5) - 2;
    const uint64_t h =
        Mix((static_cast<uint64_t>(step) << 40) ^ (static_cast<uint64_t>(rank) << 32) ^ j);
    g[j] = static_cast<float>(mean + static_cast<int>(h % 3) - 1);
  }
}

absl::Status RunScriptedJob(const ScriptedJobOptions& o, const GradientFn& gradient) {
  if (static_cast<int>(o.num_samples.size()) != o.num_workers) {
    return absl::InvalidArgumentError("num_samples must have one entry per worker");
  }
  absl::StatusOr<ModelLayout> layout = ModelLayout::Create({{"w", {o.num_elements}}});
  if (!layout.ok()) return layout.status();
  absl::Mutex mu;
  absl::Status first;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < o.num_workers; ++rank) {
    threads.emplace_back([&, rank] {
      absl::Status s = RunWorker(o, *layout, rank, gradient);
      if (!s.ok()) {
        absl::MutexLock lock(&mu);
        if (first.ok())
          first = absl::Status(s.code(), absl::StrCat("worker ", rank, ": ", s.message()));
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return first;
}

}  // namespace gnc::obs
