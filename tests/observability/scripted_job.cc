// scripted_job: a load generator standing in for gnc-worker in the live Prometheus
// test: K scripted clients push integer gradients to the shards at a steady pace
// for --duration, then leave. Exit status 0 unless a client failed.
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "tests/observability/scripted_clients.h"

ABSL_FLAG(std::string, servers, "", "gRPC host:port of the shards, in order");
ABSL_FLAG(int, num_workers, 4, "K");
ABSL_FLAG(int64_t, num_elements, 100000, "Parameters N");
ABSL_FLAG(absl::Duration, pace, absl::Milliseconds(50), "Pause after each push");
ABSL_FLAG(absl::Duration, duration, absl::Seconds(60), "How long to run");

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  gnc::obs::ScriptedJobOptions o;
  o.servers = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',');
  o.num_workers = absl::GetFlag(FLAGS_num_workers);
  o.num_elements = absl::GetFlag(FLAGS_num_elements);
  o.steps = 0;
  o.num_samples.assign(o.num_workers, 32);
  o.pace = absl::GetFlag(FLAGS_pace);
  std::atomic<bool> stop{false};
  o.stop = &stop;
  std::atomic<bool> done{false};
  std::thread timer([&] {
    const absl::Time end = absl::Now() + absl::GetFlag(FLAGS_duration);
    while (!done && absl::Now() < end) absl::SleepFor(absl::Milliseconds(100));
    stop = true;
  });
  const absl::Status s = gnc::obs::RunScriptedJob(o, gnc::obs::IntegerGradient);
  done = true;
  timer.join();
  if (!s.ok()) {
    std::fprintf(stderr, "scripted_job: %s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
