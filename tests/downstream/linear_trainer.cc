// linear_trainer: a trainer of its own model against a gnc job, built against an
// installed gnc with find_package(gnc) only. The model is linear regression,
// y = <w, a> + b, on synthetic data drawn from known true weights, so that the
// parameters the job learns can be checked against the truth.
//
// Usage: linear_trainer --servers=HOST:PORT,... [--steps=N] [--rank=R --num_workers=K]
// Prints the first and last losses and |w - w*| / |w*| of the pulled parameters;
// exits 0 when that error is below 0.05, 1 otherwise or on an error, 2 on bad flags.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "common/version.h"
#include "worker/client.h"

namespace {

constexpr int kDim = 32;
constexpr int kBatch = 64;

float TrueWeight(int i) { return 0.5f * static_cast<float>(i % 5 - 2); }
constexpr float kTrueBias = 1.0f;

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int Fail(const absl::Status& s, const char* what) {
  std::fprintf(stderr, "linear_trainer: %s: %s\n", what, s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  gnc::ClientOptions options;
  int64_t steps = 60;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const auto value = [&](const char* name) -> const char* {
      const std::string prefix = std::string("--") + name + "=";
      return arg.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("servers")) {
      options.servers = Split(v);
    } else if (const char* v = value("steps")) {
      steps = std::atoll(v);
    } else if (const char* v = value("rank")) {
      options.rank = std::atoi(v);
    } else if (const char* v = value("num_workers")) {
      options.num_workers = std::atoi(v);
    } else {
      std::fprintf(stderr, "linear_trainer: unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  if (options.servers.empty() || steps < 1) {
    std::fprintf(stderr, "usage: linear_trainer --servers=HOST:PORT,... [--steps=N>0]\n");
    return 2;
  }
  absl::StatusOr<gnc::ModelLayout> layout = gnc::ModelLayout::Create({{"w", {kDim}}, {"b", {1}}});
  if (!layout.ok()) return Fail(layout.status(), "layout");
  options.layout = *layout;
  options.local_batch_size = kBatch;
  std::printf("gnc client %s, %zu shard(s)\n", GNC_VERSION, options.servers.size());

  absl::StatusOr<std::unique_ptr<gnc::GncClient>> client = gnc::GncClient::Connect(options);
  if (!client.ok()) return Fail(client.status(), "connect");
  std::vector<float> x(kDim + 1, 0.0f), grad(kDim + 1);
  if (absl::Status s = (*client)->OfferParameters(x); !s.ok()) return Fail(s, "offer");

  double first_loss = -1, last_loss = -1;
  std::vector<float> a(kDim);
  while (true) {
    absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);
    if (!step.ok()) return Fail(step.status(), "receive");
    if (*step >= steps) break;
    // Loss 0.5 * mean (<w, a> + b - y)^2 on a batch derived from (rank, step).
    std::mt19937_64 rng(static_cast<uint64_t>(*step) * 1000 + options.rank);
    std::normal_distribution<float> normal;
    std::fill(grad.begin(), grad.end(), 0.0f);
    double loss = 0;
    for (int n = 0; n < kBatch; ++n) {
      float y = kTrueBias, pred = x[kDim];
      for (int i = 0; i < kDim; ++i) {
        a[i] = normal(rng);
        y += TrueWeight(i) * a[i];
        pred += x[i] * a[i];
      }
      const float r = pred - y;
      loss += 0.5 * r * r / kBatch;
      for (int i = 0; i < kDim; ++i) grad[i] += r * a[i] / kBatch;
      grad[kDim] += r / kBatch;
    }
    if (first_loss < 0) first_loss = loss;
    last_loss = loss;
    absl::Status pushed = (*client)->PushGradient(grad, kBatch);
    if (!pushed.ok() && !absl::IsAborted(pushed)) return Fail(pushed, "push");
  }
  absl::StatusOr<int64_t> at = (*client)->Pull(x);
  if (!at.ok()) return Fail(at.status(), "pull");
  double err = 0, norm = 0;
  for (int i = 0; i <= kDim; ++i) {
    const double truth = i < kDim ? TrueWeight(i) : kTrueBias;
    err += (x[i] - truth) * (x[i] - truth);
    norm += truth * truth;
  }
  const double rel = std::sqrt(err / norm);
  std::printf(
      "loss %.4f at the first step, %.6f at the last; after %lld steps |w - w*|/|w*| = %.4f\n",
      first_loss, last_loss, static_cast<long long>(*at), rel);
  if (absl::Status s = (*client)->Leave(); !s.ok()) return Fail(s, "leave");
  return rel < 0.05 ? 0 : 1;
}
