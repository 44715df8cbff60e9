// ScriptedJob: K GncClients in one process, each on its own thread, pushing
// gradients chosen by the test instead of computed by a model. The observability
// tests use it to drive real gnc-server processes with gradients whose noise
// statistics they know exactly.
#ifndef GNC_TESTS_OBSERVABILITY_SCRIPTED_CLIENTS_H_
#define GNC_TESTS_OBSERVABILITY_SCRIPTED_CLIENTS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace gnc::obs {

struct ScriptedJobOptions {
  std::vector<std::string> servers;            // gRPC host:port of shard 0..S-1
  int num_workers = 4;                         // K; ranks 0..K-1 run on threads
  int64_t num_elements = 10000;                // N, one tensor "w"
  int64_t steps = 20;                          // steps to push; 0 = until *stop becomes true
  std::vector<int64_t> num_samples;            // n_k per rank (size K)
  absl::Duration pace = absl::ZeroDuration();  // sleep after each push
  bool leave = true;                           // Leave() when done
  const std::atomic<bool>* stop = nullptr;     // polled between steps when steps == 0
};

// GradientFn: writes worker `rank`'s gradient of step `step` into g (size N). Called
// concurrently from the K threads: it must be a pure function of its arguments.
using GradientFn = std::function<void(int64_t step, int rank, std::span<float> g)>;

// RunScriptedJob: connects the K clients, offers w0 = 0, runs the steps, and returns
// the first error of any client. A late gradient (ABORTED) is an error here: the
// scripted workers never straggle.
absl::Status RunScriptedJob(const ScriptedJobOptions& options, const GradientFn& gradient);

// IntegerGradient: g_k[j] = m_j(t) + e_kj(t), integers with |m| <= 2 and |e| <= 1, so
// that with dyadic sample weights every sum the CPU merge forms in float32 is exact.
void IntegerGradient(int64_t step, int rank, std::span<float> g);

}  // namespace gnc::obs

#endif  // GNC_TESTS_OBSERVABILITY_SCRIPTED_CLIENTS_H_
