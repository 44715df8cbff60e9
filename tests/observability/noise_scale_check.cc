// noise_scale_check: drives S gnc-server shards (mode none) with K scripted clients
// whose gradients it knows, computes the gradient noise scale independently from
// DESIGN section 4, and checks what the shards export on /metrics and what
// Prometheus reports for gnc:gradient_noise_scale. Run by prometheus_live_test.py,
// which starts the shards (--noise_ema as below, --per_worker_noise_metrics) and a
// Prometheus that scrapes them with the gnc rules loaded. Exit status 0 = pass.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/layout.h"
#include "tests/observability/http_get.h"
#include "tests/observability/scripted_clients.h"

ABSL_FLAG(std::string, servers, "", "gRPC host:port of the shards, in order");
ABSL_FLAG(std::string, metrics, "", "/metrics host:port of the shards, in order");
ABSL_FLAG(int, prometheus_port, 0, "Prometheus on 127.0.0.1 (0: skip the Prometheus check)");
ABSL_FLAG(int64_t, steps, 30, "Steps to run");
ABSL_FLAG(int64_t, num_elements, 10001, "Parameters N (odd: the shards differ in size)");
ABSL_FLAG(double, noise_ema, 0.8, "The shards' --noise_ema");
ABSL_FLAG(double, tolerance, 1e-6, "Relative tolerance of the Prometheus value");

namespace gnc::obs {
namespace {

// Per-sample counts n_k: unequal, dyadic weights n_k / B (1/8, 1/8, 1/4, 1/2).
const std::vector<int64_t> kSamples = {16, 16, 32, 64};
constexpr int kWorkers = 4;

struct ShardExpectation {
  double ema_g2 = 0, ema_s = 0, weight = 0;  // EMAs and 1 - beta^n
  double raw_g2 = 0, raw_s = 0;              // last step's estimates
  std::vector<double> noise_sqnorm;          // last step's ||g_k - g_mean||^2
  double g2() const { return ema_g2 / weight; }
  double trace() const { return ema_s / weight; }
};

// Expected: replays the job. DESIGN section 4: A = ||g_mean||^2 with the sample-
// weighted mean, C = mean_k ||g_k||^2, b = mean n_k, B = sum n_k, per shard;
// bias-corrected EMAs of both estimators.
std::vector<ShardExpectation> Expected(int num_shards, int64_t n, int64_t steps, double beta) {
  std::vector<ShardExpectation> out(num_shards);
  double big_b = 0;
  for (int64_t s : kSamples) big_b += static_cast<double>(s);
  const double b = big_b / kWorkers;
  std::vector<std::vector<float>> g(kWorkers, std::vector<float>(n));
  for (int64_t t = 0; t < steps; ++t) {
    for (int k = 0; k < kWorkers; ++k) IntegerGradient(t, k, g[k]);
    for (int s = 0; s < num_shards; ++s) {
      const ShardRange r = ShardRangeFor(n, num_shards, s);
      double a = 0, c = 0;
      std::vector<double> noise(kWorkers, 0.0);
      for (int64_t j = r.begin; j < r.end; ++j) {
        double mean = 0;
        for (int k = 0; k < kWorkers; ++k) mean += kSamples[k] / big_b * g[k][j];
        a += mean * mean;
        for (int k = 0; k < kWorkers; ++k) {
          c += static_cast<double>(g[k][j]) * g[k][j] / kWorkers;
          noise[k] += (g[k][j] - mean) * (g[k][j] - mean);
        }
      }
      ShardExpectation& e = out[s];
      e.raw_g2 = (big_b * a - b * c) / (big_b - b);
      e.raw_s = (c - a) / (1.0 / b - 1.0 / big_b);
      e.ema_g2 = beta * e.ema_g2 + (1 - beta) * e.raw_g2;
      e.ema_s = beta * e.ema_s + (1 - beta) * e.raw_s;
      e.weight = beta * e.weight + (1 - beta);
      e.noise_sqnorm = noise;
    }
  }
  return out;
}

double RelErr(double got, double want) {
  return std::abs(got - want) / std::max(std::abs(want), 1e-300);
}

class Checker {
 public:
  void Near(const std::string& what, std::optional<double> got, double want, double tol) {
    if (!got.has_value()) {
      std::printf("FAIL %s: missing (want %.17g)\n", what.c_str(), want);
      ok_ = false;
      return;
    }
    const double err = RelErr(*got, want);
    const bool pass = std::isfinite(*got) && err <= tol;
    std::printf("%s %s: got %.17g want %.17g rel.err %.3g\n", pass ? "ok  " : "FAIL", what.c_str(),
                *got, want, err);
    ok_ = ok_ && pass;
  }
  void Fail(const std::string& what) {
    std::printf("FAIL %s\n", what.c_str());
    ok_ = false;
  }
  bool ok() const { return ok_; }

 private:
  bool ok_ = true;
};

int Run() {
  const std::vector<std::string> servers = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',');
  const std::vector<std::string> metrics = absl::StrSplit(absl::GetFlag(FLAGS_metrics), ',');
  const int num_shards = static_cast<int>(servers.size());
  if (absl::GetFlag(FLAGS_servers).empty() || metrics.size() != servers.size()) {
    std::fprintf(stderr, "need --servers and as many --metrics addresses\n");
    return 2;
  }
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  const int64_t n = absl::GetFlag(FLAGS_num_elements);

  ScriptedJobOptions o;
  o.servers = servers;
  o.num_workers = kWorkers;
  o.num_elements = n;
  o.steps = steps;
  o.num_samples = kSamples;
  if (absl::Status s = RunScriptedJob(o, IntegerGradient); !s.ok()) {
    std::printf("FAIL scripted job: %s\n", s.ToString().c_str());
    return 1;
  }
  const std::vector<ShardExpectation> want =
      Expected(num_shards, n, steps, absl::GetFlag(FLAGS_noise_ema));

  Checker check;
  double sum_g2 = 0, sum_s = 0;
  for (int s = 0; s < num_shards; ++s) {
    sum_g2 += want[s].g2();
    sum_s += want[s].trace();
    const std::vector<std::string> hp = absl::StrSplit(metrics[s], ':');
    absl::StatusOr<std::string> text = HttpGet(hp[0], std::stoi(hp[1]), "/metrics");
    if (!text.ok()) {
      check.Fail(absl::StrCat("GET /metrics of shard ", s, ": ", text.status().ToString()));
      continue;
    }
    const std::string l = absl::StrCat("{shard=\"", s, "\"}");
    check.Near(absl::StrCat("shard ", s, " gnc_step"), TextMetricValue(*text, "gnc_step" + l),
               static_cast<double>(steps), 0);
    check.Near(absl::StrCat("shard ", s, " gnc_step_contributors"),
               TextMetricValue(*text, "gnc_step_contributors" + l), kWorkers, 0);
    check.Near(absl::StrCat("shard ", s, " gnc_grad_sqnorm_estimate"),
               TextMetricValue(*text, "gnc_grad_sqnorm_estimate" + l), want[s].g2(), 1e-9);
    check.Near(absl::StrCat("shard ", s, " gnc_noise_trace_estimate"),
               TextMetricValue(*text, "gnc_noise_trace_estimate" + l), want[s].trace(), 1e-9);
    check.Near(absl::StrCat("shard ", s, " gnc_grad_sqnorm_estimate_raw"),
               TextMetricValue(*text, "gnc_grad_sqnorm_estimate_raw" + l), want[s].raw_g2, 1e-9);
    check.Near(absl::StrCat("shard ", s, " gnc_noise_trace_estimate_raw"),
               TextMetricValue(*text, "gnc_noise_trace_estimate_raw" + l), want[s].raw_s, 1e-9);
    for (int k = 0; k < kWorkers; ++k) {
      check.Near(absl::StrCat("shard ", s, " gnc_worker_noise_sqnorm worker ", k),
                 TextMetricValue(*text, absl::StrCat("gnc_worker_noise_sqnorm{shard=\"", s,
                                                     "\",worker=\"", k, "\"}")),
                 want[s].noise_sqnorm[k], 1e-9);
    }
  }
  const double b_simple = sum_s / sum_g2;
  std::printf("expected B_simple = %.17g (sum tr(Sigma) %.17g / sum |G|^2 %.17g)\n", b_simple,
              sum_s, sum_g2);

  if (const int port = absl::GetFlag(FLAGS_prometheus_port); port > 0) {
    // Wait until Prometheus has scraped every shard after the last step, then let the
    // recording rule run (1s evaluation interval) on that scrape.
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    absl::StatusOr<double> seen = absl::NotFoundError("not queried");
    while (absl::Now() < deadline) {
      seen = PrometheusQueryScalar(port,
                                   absl::StrCat("count(gnc_step == ", steps, ") == ", num_shards));
      if (seen.ok()) break;
      absl::SleepFor(absl::Milliseconds(250));
    }
    if (!seen.ok()) {
      check.Fail(absl::StrCat("Prometheus never saw step ", steps,
                              " on every shard: ", seen.status().ToString()));
    } else {
      absl::SleepFor(absl::Seconds(3));
      absl::StatusOr<double> rule = PrometheusQueryScalar(port, "gnc:gradient_noise_scale");
      if (!rule.ok()) {
        check.Fail(absl::StrCat("gnc:gradient_noise_scale: ", rule.status().ToString()));
      } else {
        check.Near("Prometheus gnc:gradient_noise_scale", *rule, b_simple,
                   absl::GetFlag(FLAGS_tolerance));
      }
      absl::StatusOr<double> sum = PrometheusQueryScalar(port, "gnc:noise_trace_estimate:sum");
      check.Near("Prometheus gnc:noise_trace_estimate:sum",
                 sum.ok() ? std::optional<double>(*sum) : std::nullopt, sum_s,
                 absl::GetFlag(FLAGS_tolerance));
      sum = PrometheusQueryScalar(port, "gnc:grad_sqnorm_estimate:sum");
      check.Near("Prometheus gnc:grad_sqnorm_estimate:sum",
                 sum.ok() ? std::optional<double>(*sum) : std::nullopt, sum_g2,
                 absl::GetFlag(FLAGS_tolerance));
    }
  }
  std::printf("%s\n", check.ok() ? "PASS" : "FAIL");
  return check.ok() ? 0 : 1;
}

}  // namespace
}  // namespace gnc::obs

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return gnc::obs::Run();
}
