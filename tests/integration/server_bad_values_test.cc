// Finite bad values through a real gnc-server: FLT_MAX gradients make the shard stop
// with "diverged" (no checkpoint ever holds a non-finite value), a sample count of
// 2^62 is refused and changes nothing, and --max_gradient_norm keeps FLT_MAX
// gradients finite.
#include <filesystem>
#include <future>
#include <limits>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/finite.h"
#include "gtest/gtest.h"
#include "server/checkpoint.h"
#include "server/options.h"
#include "tests/integration/server_process.h"
#include "worker/client.h"
#include "tests/unit/temp_dir.h"

namespace gnc {
namespace {

namespace fs = std::filesystem;
using testing::ServerProcess;

constexpr int64_t kElements = 1000;

using testing::TempDir;

std::unique_ptr<GncClient> Connect(const std::string& address, int rank, int num_workers) {
  ClientOptions o;
  o.servers = {address};
  o.rank = rank;
  o.num_workers = num_workers;
  o.layout = *ModelLayout::Create({TensorSpec{"w", {kElements}}});
  o.local_batch_size = 4;
  o.step_timeout = absl::Seconds(30);
  o.reconnect_timeout = absl::Seconds(2);
  auto c = GncClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// ConnectTwo: ranks 0 and 1 of a two-worker job, parameters offered.
std::pair<std::unique_ptr<GncClient>, std::unique_ptr<GncClient>> ConnectTwo(
    const std::string& address) {
  auto a = Connect(address, 0, 2);
  auto b = Connect(address, 1, 2);
  if (!a || !b) return {};
  EXPECT_TRUE(a->OfferParameters(std::vector<float>(kElements, 0.5f)).ok());
  EXPECT_TRUE(b->OfferParameters(std::vector<float>(kElements, 0.5f)).ok());
  return {std::move(a), std::move(b)};
}

// Steps: both clients push `g` every step until a call fails; returns that status.
absl::Status PushUntilRefused(GncClient& a, GncClient& b, const std::vector<float>& g,
                              int max_steps) {
  std::vector<float> xa(kElements), xb(kElements);
  for (int t = 0; t < max_steps; ++t) {
    auto ra = std::async(std::launch::async, [&] { return a.ReceiveEvalPoint(xa); });
    auto rb = std::async(std::launch::async, [&] { return b.ReceiveEvalPoint(xb); });
    absl::StatusOr<int64_t> sa = ra.get(), sb = rb.get();
    if (!sa.ok()) return sa.status();
    if (!sb.ok()) return sb.status();
    auto pa = std::async(std::launch::async, [&] { return a.PushGradient(g, 4); });
    auto pb = std::async(std::launch::async, [&] { return b.PushGradient(g, 4); });
    absl::Status s1 = pa.get(), s2 = pb.get();
    if (!s1.ok()) return s1;
    if (!s2.ok()) return s2;
  }
  return absl::OkStatus();
}

TEST(ServerBadValuesTest, FltMaxGradientsDivergeAndNoCheckpointHoldsANonFiniteValue) {
  TempDir dir;
  auto server = ServerProcess::Start(
      GNC_SERVER_BINARY, {"--num_workers=2", "--mode=gnc", "--lr=0.1", "--drain_timeout=2s",
                          absl::StrCat("--checkpoint_dir=", dir.path()), "--checkpoint_every=1"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto [a, b] = ConnectTwo((*server)->address());
  ASSERT_TRUE(a && b);
  const std::vector<float> poison(kElements, std::numeric_limits<float>::max());
  absl::Status s = PushUntilRefused(*a, *b, poison, 10);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("diverged at step"), std::string::npos) << s;
  // The shard keeps serving its last good parameters for inspection.
  std::vector<float> w(kElements);
  absl::StatusOr<int64_t> pulled = a->Pull(w);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_EQ(FindNonFinite(w), -1);
  EXPECT_EQ((*server)->Stop(), 0);
  // The shard's config hash, from the same settings as its flags.
  ShardOptions o;
  o.num_workers = 2;
  o.mode = SmoothingMode::kGnc;
  o.lr.peak = 0.1;
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir.path())) {
    absl::StatusOr<ShardState> state =
        CheckpointStore::ReadFile(e.path().string(), 0, 1, o.ConfigHash());
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(FindNonFinite(*state->w), -1) << e.path();
    EXPECT_EQ(FindNonFinite(*state->v), -1) << e.path();
    ++files;
  }
  EXPECT_GE(files, 1);
}

TEST(ServerBadValuesTest, ClippingKeepsFltMaxGradientsFinite) {
  auto server = ServerProcess::Start(
      GNC_SERVER_BINARY,
      {"--num_workers=2", "--mode=gnc", "--lr=0.1", "--max_gradient_norm=1", "--drain_timeout=2s"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto [a, b] = ConnectTwo((*server)->address());
  ASSERT_TRUE(a && b);
  const std::vector<float> poison(kElements, std::numeric_limits<float>::max());
  EXPECT_TRUE(PushUntilRefused(*a, *b, poison, 5).ok());
  std::vector<float> w(kElements);
  ASSERT_EQ(*a->Pull(w), 5);
  EXPECT_EQ(FindNonFinite(w), -1);
  // Each step moves w by at most lr * |v|, and |g_mean| <= 1 per shard.
  EXPECT_GT(w[0], 0.5f - 5 * 0.1f * 10.0f);
}

TEST(ServerBadValuesTest, HugeSampleCountIsRefusedAndChangesNothing) {
  auto server = ServerProcess::Start(GNC_SERVER_BINARY,
                                     {"--num_workers=1", "--mode=gnc", "--drain_timeout=2s"});
  ASSERT_TRUE(server.ok()) << server.status();
  auto c = Connect((*server)->address(), 0, 1);
  ASSERT_TRUE(c);
  const std::vector<float> w0(kElements, 0.5f);
  ASSERT_TRUE(c->OfferParameters(w0).ok());
  std::vector<float> x(kElements), w(kElements);
  ASSERT_EQ(*c->ReceiveEvalPoint(x), 0);
  const std::vector<float> g(kElements, 1.0f);
  absl::Status s = c->PushGradient(g, int64_t{1} << 62);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("num_samples must be in [1, 4]"), std::string::npos) << s;
  ASSERT_EQ(*c->Pull(w), 0);
  EXPECT_EQ(w, w0);
  ASSERT_TRUE(c->PushGradient(g, 4).ok());  // the stream stays open
  ASSERT_EQ(*c->ReceiveEvalPoint(x), 1);
}

}  // namespace
}  // namespace gnc
