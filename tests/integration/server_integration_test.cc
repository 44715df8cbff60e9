// Real gnc-server processes (S = 2) on 127.0.0.1 driven by K = 3 scripted clients
// through the client library. Every evaluation point a client receives is checked
// against a double-precision reference of DESIGN section 1 computed in the test.
#include <algorithm>
#include <cmath>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/bf16.h"
#include "common/layout.h"
#include "gtest/gtest.h"
#include "server/noise_rng.h"
#include "tests/integration/server_process.h"
#include "worker/client.h"

namespace gnc {
namespace {

using testing::ServerProcess;

constexpr int kWorkers = 3;
constexpr int kShards = 2;
constexpr int kSteps = 6;
// Two chunks per shard (1 MiB chunks hold 262144 floats).
constexpr int64_t kElements = 2 * 262144 + 1234;

const double kLrPeak = 0.2;
const int64_t kWarmup = 2;
const double kMomentum = 0.9;
const double kWeightDecay = 0.01;
const double kRho = 0.5;
const uint64_t kSeed = 77;

double Lr(int64_t t) { return t < kWarmup ? kLrPeak * (t + 1) / kWarmup : kLrPeak; }

ModelLayout TestLayout() {
  return *ModelLayout::Create({TensorSpec{"weight", {kElements - 10}}, TensorSpec{"bias", {10}}});
}

float InitialValue(int64_t i) { return 0.01f * static_cast<float>((i * 37) % 101 - 50); }

// The scripted gradient: depends on the evaluation point, the rank and the step.
double Gradient(double x, int64_t i, int rank, int64_t step) {
  return 0.5 * x + 0.1 * (rank + 1) * std::sin(0.001 * i + step) + 0.05 * (rank - 1);
}

int64_t Samples(int rank) { return 16 + 16 * rank; }  // 16, 32, 48

double Bf16(double x) { return Bf16ToFloat(FloatToBf16(static_cast<float>(x))); }

// Reference: per shard, exactly the math of DESIGN section 1, in double. With bf16 on
// the wire, the workers see their points and the shards their gradients rounded to
// bfloat16; the state stays exact. A mode "<mode>-fresh" is that mode with the fresh
// noise timing: step t on the wire is a pass; even passes (at w) only form the deltas
// for the next pass, with the learning rate of optimizer step t / 2; odd passes (at the
// perturbed points) update w and v and perturb nothing.
class Reference {
 public:
  explicit Reference(const std::string& mode, bool bf16 = false)
      : mode_(mode.substr(0, mode.find('-'))),
        fresh_(mode.ends_with("-fresh")),
        bf16_(bf16),
        w_(kElements),
        v_(kElements, 0.0) {
    for (int64_t i = 0; i < kElements; ++i) w_[i] = InitialValue(i);
    for (int k = 0; k < kWorkers; ++k) delta_[k] = std::vector<double>(kElements, 0.0);
  }

  double X(int rank, int64_t i) const { return w_[i] + delta_.at(rank)[i]; }

  // Step: `contributors` pushed a gradient at their evaluation point.
  void Step(int64_t t, const std::vector<int>& contributors) {
    std::map<int, std::vector<double>> g;
    for (int k : contributors) {
      g[k].resize(kElements);
      for (int64_t i = 0; i < kElements; ++i) {
        g[k][i] = bf16_ ? Bf16(Gradient(Bf16(X(k, i)), i, k, t)) : Gradient(X(k, i), i, k, t);
      }
    }
    double total = 0;
    for (int k : contributors) total += Samples(k);
    std::map<int, std::vector<double>> next;
    for (int k = 0; k < kWorkers; ++k) next[k] = std::vector<double>(kElements, 0.0);
    const bool update = !fresh_ || t % 2 == 1;
    const bool perturb = !fresh_ || t % 2 == 0;
    const double lr = Lr(fresh_ ? t / 2 : t);
    for (int s = 0; s < kShards; ++s) {
      const ShardRange r = ShardRangeFor(kElements, kShards, s);
      std::vector<double> gbar(r.size(), 0.0);
      for (int k : contributors) {
        for (int64_t i = r.begin; i < r.end; ++i) gbar[i - r.begin] += Samples(k) * g[k][i] / total;
      }
      double noise = 0;
      for (int k : contributors) {
        for (int64_t i = r.begin; i < r.end; ++i) {
          const double e = g[k][i] - gbar[i - r.begin];
          noise += e * e / contributors.size();
          if (mode_ == "gnc" && perturb) next[k][i] = -kRho * lr * e;
        }
      }
      if (mode_ == "isotropic" && perturb) {
        const double sigma = std::sqrt(kRho * kRho * lr * lr * noise / r.size());
        for (int k : contributors) {
          const uint64_t key = NoiseKey(kSeed, t + 1, k);
          for (int64_t i = r.begin; i < r.end; ++i) next[k][i] = sigma * StandardNormal(key, i);
        }
      }
      for (int64_t i = r.begin; i < r.end && update; ++i) {
        const double ge = gbar[i - r.begin] + kWeightDecay * w_[i];
        v_[i] = kMomentum * v_[i] + ge;
        w_[i] -= lr * v_[i];
      }
    }
    delta_ = next;
  }

 private:
  std::string mode_;
  bool fresh_;
  bool bf16_;
  std::vector<double> w_, v_;
  std::map<int, std::vector<double>> delta_;
};

struct Received {
  absl::Mutex mu;
  // (rank, step) -> evaluation point.
  std::map<std::pair<int, int64_t>, std::vector<float>> points;
  std::map<std::pair<int, int64_t>, absl::StatusCode> push_codes;
};

std::vector<std::string> ServerFlags(const std::string& mode, int shard, int min_workers) {
  return {absl::StrCat("--shard_index=", shard), absl::StrCat("--num_shards=", kShards),
          absl::StrCat("--num_workers=", kWorkers), absl::StrCat("--min_workers=", min_workers),
          "--mode=" + mode.substr(0, mode.find('-')),
          mode.ends_with("-fresh") ? "--gnc_noise=fresh" : "--gnc_noise=previous",
          absl::StrCat("--gnc_scale=", kRho), absl::StrCat("--lr=", kLrPeak),
          absl::StrCat("--warmup_steps=", kWarmup), absl::StrCat("--momentum=", kMomentum),
          absl::StrCat("--weight_decay=", kWeightDecay), absl::StrCat("--seed=", kSeed),
          "--straggler_timeout=2s", "--metrics_port=0"};
}

// RunWorker: the scripted client of `rank`. stall_step: before pushing that step,
// sleep long enough for the straggler timeout to fire.
void RunWorker(int rank, const std::vector<std::string>& servers, int64_t stall_step,
               Received* out, WireDType dtype = WireDType::kFloat32) {
  ClientOptions o;
  o.wire_dtype = dtype;
  o.servers = servers;
  o.rank = rank;
  o.num_workers = kWorkers;
  o.layout = TestLayout();
  o.local_batch_size = Samples(rank);
  o.connect_timeout = absl::Seconds(20);
  absl::StatusOr<std::unique_ptr<GncClient>> client = GncClient::Connect(o);
  ASSERT_TRUE(client.ok()) << client.status();
  std::vector<float> w0(kElements);
  for (int64_t i = 0; i < kElements; ++i) w0[i] = InitialValue(i);
  ASSERT_TRUE((*client)->OfferParameters(w0).ok());
  std::vector<float> x(kElements), g(kElements);
  while (true) {
    absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);
    ASSERT_TRUE(step.ok()) << step.status();
    {
      absl::MutexLock lock(&out->mu);
      out->points[{rank, *step}] = x;
    }
    if (*step >= kSteps) break;
    for (int64_t i = 0; i < kElements; ++i) {
      g[i] = static_cast<float>(Gradient(x[i], i, rank, *step));
    }
    if (*step == stall_step) absl::SleepFor(absl::Seconds(3));
    absl::Status s = (*client)->PushGradient(g, Samples(rank));
    {
      absl::MutexLock lock(&out->mu);
      out->push_codes[{rank, *step}] = s.code();
    }
    ASSERT_TRUE(s.ok() || absl::IsAborted(s)) << s;
  }
  std::vector<float> w(kElements);
  absl::StatusOr<int64_t> pulled = (*client)->Pull(w);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(*pulled, kSteps);
  ASSERT_TRUE((*client)->Leave().ok());
}

void CheckAgainstReference(const std::string& mode, Received& got, int64_t stall_step,
                           bool bf16 = false) {
  Reference ref(mode, bf16);
  int checked = 0;
  for (int64_t t = 0; t <= kSteps; ++t) {
    for (int k = 0; k < kWorkers; ++k) {
      auto it = got.points.find({k, t});
      ASSERT_NE(it, got.points.end()) << "rank " << k << " never saw step " << t;
      const std::vector<float>& x = it->second;
      double worst = 0;
      int64_t worst_i = 0;
      for (int64_t i = 0; i < kElements; ++i) {
        // bf16: the point is the shard's float32 x rounded to 8 bits of mantissa (half
        // an ulp, 2^-9 relative), and gradients taken at rounded points differ where
        // the shard's and the reference's x round apart.
        const double tolerance = bf16 ? std::abs(ref.X(k, i)) / 256 + 1e-3 : 2e-5;
        const double err = std::abs(x[i] - ref.X(k, i)) / tolerance;
        if (err > worst) {
          worst = err;
          worst_i = i;
        }
      }
      EXPECT_LT(worst, 1.0) << mode << ": x_" << k << " at step " << t << ", element "
                            << worst_i << ": got " << x[worst_i] << ", reference "
                            << ref.X(k, worst_i);
      ++checked;
    }
    if (t == kSteps) break;
    std::vector<int> contributors;
    for (int k = 0; k < kWorkers; ++k) {
      if (t == stall_step && k == kWorkers - 1) continue;
      contributors.push_back(k);
    }
    ref.Step(t, contributors);
  }
  EXPECT_EQ(checked, (kSteps + 1) * kWorkers);
}

class ServerIntegrationTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ServerIntegrationTest, EveryEvaluationPointMatchesReference) {
  const std::string mode = GetParam();
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> addresses;
  for (int s = 0; s < kShards; ++s) {
    auto p = ServerProcess::Start(GNC_SERVER_BINARY, ServerFlags(mode, s, kWorkers));
    ASSERT_TRUE(p.ok()) << p.status();
    addresses.push_back((*p)->address());
    servers.push_back(*std::move(p));
  }
  Received got;
  std::vector<std::thread> workers;
  for (int k = 0; k < kWorkers; ++k) {
    workers.emplace_back([&, k] { RunWorker(k, addresses, /*stall_step=*/-1, &got); });
  }
  for (std::thread& t : workers) t.join();
  if (HasFatalFailure()) return;
  CheckAgainstReference(mode, got, /*stall_step=*/-1);
  // Every worker left, so each server exits by itself, cleanly.
  for (auto& s : servers) EXPECT_EQ(s->Stop(), 0);
}

INSTANTIATE_TEST_SUITE_P(Modes, ServerIntegrationTest,
                         ::testing::Values("none", "gnc", "isotropic", "gnc-fresh",
                                           "isotropic-fresh"),
                         [](const auto& info) {
                           std::string name = info.param;
                           std::replace(name.begin(), name.end(), '-', '_');
                           return name;
                         });

TEST(ServerIntegrationBf16Test, PointsAndGradientsInBfloat16MatchTheRoundedReference) {
  for (const char* mode : {"none", "gnc"}) {
    std::vector<std::unique_ptr<ServerProcess>> servers;
    std::vector<std::string> addresses;
    for (int s = 0; s < kShards; ++s) {
      auto p = ServerProcess::Start(GNC_SERVER_BINARY, ServerFlags(mode, s, kWorkers));
      ASSERT_TRUE(p.ok()) << p.status();
      addresses.push_back((*p)->address());
      servers.push_back(*std::move(p));
    }
    Received got;
    std::vector<std::thread> workers;
    for (int k = 0; k < kWorkers; ++k) {
      workers.emplace_back(
          [&, k] { RunWorker(k, addresses, -1, &got, WireDType::kBfloat16); });
    }
    for (std::thread& t : workers) t.join();
    if (HasFatalFailure()) return;
    // Every value a bf16 worker received is a bfloat16 value.
    for (const auto& [key, x] : got.points) {
      for (size_t i = 0; i < x.size(); i += 997) {
        ASSERT_EQ(Bf16(x[i]), x[i]) << mode << " rank " << key.first << " step " << key.second;
      }
    }
    CheckAgainstReference(mode, got, /*stall_step=*/-1, /*bf16=*/true);
    for (auto& s : servers) EXPECT_EQ(s->Stop(), 0);
  }
}

TEST(ServerIntegrationQuorumTest, StalledWorkerIsSkippedAndCarriesOn) {
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> addresses;
  for (int s = 0; s < kShards; ++s) {
    auto p = ServerProcess::Start(GNC_SERVER_BINARY, ServerFlags("gnc", s, /*min_workers=*/2));
    ASSERT_TRUE(p.ok()) << p.status();
    addresses.push_back((*p)->address());
    servers.push_back(*std::move(p));
  }
  Received got;
  const int64_t stall = 2;
  std::vector<std::thread> workers;
  for (int k = 0; k < kWorkers; ++k) {
    workers.emplace_back(
        [&, k] { RunWorker(k, addresses, k == kWorkers - 1 ? stall : -1, &got); });
  }
  for (std::thread& t : workers) t.join();
  if (HasFatalFailure()) return;
  EXPECT_EQ(got.push_codes[std::make_pair(kWorkers - 1, stall)], absl::StatusCode::kAborted);
  EXPECT_EQ(got.push_codes[std::make_pair(0, stall)], absl::StatusCode::kOk);
  CheckAgainstReference("gnc", got, stall);
}

}  // namespace
}  // namespace gnc
