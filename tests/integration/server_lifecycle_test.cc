// A real gnc-server over gRPC: status, health, refusals on the wire with their codes,
// a refused gradient leaving the model untouched, and a clean drain on SIGTERM.
#include <signal.h>
#include <sys/wait.h>

#include <cmath>
#include <future>
#include <limits>
#include <thread>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "proto/gnc.grpc.pb.h"
#include "tests/integration/server_process.h"
#include "worker/client.h"

namespace gnc {
namespace {

using testing::ServerProcess;

constexpr int64_t kElements = 1000;

ModelLayout TestLayout() { return *ModelLayout::Create({TensorSpec{"w", {kElements}}}); }

std::unique_ptr<ServerProcess> StartServer(int num_workers, const std::string& extra = "") {
  std::vector<std::string> flags = {absl::StrCat("--num_workers=", num_workers), "--mode=gnc",
                                    "--lr=0.1", "--drain_timeout=2s"};
  if (!extra.empty()) flags.push_back(extra);
  auto p = ServerProcess::Start(GNC_SERVER_BINARY, flags);
  EXPECT_TRUE(p.ok()) << p.status();
  return p.ok() ? *std::move(p) : nullptr;
}

std::unique_ptr<GncClient> Connect(const std::string& address, int rank, int num_workers) {
  ClientOptions o;
  o.servers = {address};
  o.rank = rank;
  o.num_workers = num_workers;
  o.layout = TestLayout();
  o.local_batch_size = 4;
  o.reconnect_timeout = absl::Seconds(2);  // a drained shard that stays away is an error
  auto c = GncClient::Connect(o);
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *std::move(c) : nullptr;
}

// HealthStatus: grpc.health.v1.Health/Check for the whole server, through a generic
// stub (HealthCheckRequest{} is empty; the response's field 1 is the status enum).
int HealthStatus(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  grpc::ByteBuffer request, response;
  grpc::Slice empty;
  request = grpc::ByteBuffer(&empty, 1);
  std::promise<grpc::Status> done;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) { done.set_value(s); });
  grpc::Status s = done.get_future().get();
  if (!s.ok()) return -1;
  std::vector<grpc::Slice> slices;
  response.Dump(&slices);
  std::string bytes;
  for (const grpc::Slice& sl : slices) bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return bytes.size() == 2 && bytes[0] == 0x08 ? bytes[1] : 0;  // absent field = UNKNOWN
}

TEST(ServerLifecycleTest, StatusAndHealth) {
  auto server = StartServer(2);
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(HealthStatus(server->address()), 1);  // SERVING
  auto stub = v1::ParameterShard::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  grpc::ClientContext ctx;
  v1::StatusResponse status;
  ASSERT_TRUE(stub->GetStatus(&ctx, v1::StatusRequest(), &status).ok());
  EXPECT_EQ(status.num_workers(), 2);
  EXPECT_EQ(status.mode(), v1::GNC);
  EXPECT_FALSE(status.initialized());
  EXPECT_EQ(status.step(), 0);
}

TEST(ServerLifecycleTest, RefusalsCarryCodesAndMessagesOverTheWire) {
  auto server = StartServer(2);
  ASSERT_NE(server, nullptr);
  auto stub = v1::ParameterShard::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  auto join = [&](v1::JoinRequest req) {
    grpc::ClientContext ctx;
    v1::JoinResponse resp;
    return stub->Join(&ctx, req, &resp);
  };
  v1::JoinRequest good;
  good.set_rank(0);
  good.set_num_workers(2);
  good.set_num_shards(1);
  good.set_local_batch_size(4);
  v1::TensorSpec* t = good.mutable_layout()->add_tensors();
  t->set_name("w");
  t->add_shape(kElements);

  v1::JoinRequest bad = good;
  bad.mutable_layout()->mutable_tensors(0)->set_shape(0, -3);
  grpc::Status s = join(bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("'w'"), std::string::npos) << s.error_message();

  bad = good;
  bad.set_num_shards(2);
  bad.set_shard_index(1);
  s = join(bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("--servers"), std::string::npos) << s.error_message();

  bad = good;
  bad.set_rank(2);
  EXPECT_EQ(join(bad).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // A Train stream before the parameters are offered.
  ASSERT_TRUE(join(good).ok());
  {
    grpc::ClientContext ctx;
    auto stream = stub->Train(&ctx);
    v1::TrainRequest hello;
    hello.mutable_hello()->set_rank(0);
    stream->Write(hello);
    stream->WritesDone();
    v1::TrainResponse resp;
    while (stream->Read(&resp)) {
    }
    EXPECT_EQ(stream->Finish().error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  }
  // A Train stream that does not start with a Hello.
  {
    grpc::ClientContext ctx;
    auto stream = stub->Train(&ctx);
    v1::TrainRequest msg;
    msg.mutable_gradient()->set_step(0);
    stream->Write(msg);
    stream->WritesDone();
    v1::TrainResponse resp;
    while (stream->Read(&resp)) {
    }
    s = stream->Finish();
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("Hello"), std::string::npos);
  }
  // Second join with another layout after the first fixed it.
  bad = good;
  bad.set_rank(1);
  bad.mutable_layout()->mutable_tensors(0)->set_shape(0, kElements + 1);
  s = join(bad);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("layout"), std::string::npos);
}

TEST(ServerLifecycleTest, NonFiniteGradientIsRefusedAndModelUnchanged) {
  auto server = StartServer(1);
  ASSERT_NE(server, nullptr);
  auto client = Connect(server->address(), 0, 1);
  ASSERT_NE(client, nullptr);
  std::vector<float> w0(kElements, 0.5f), x(kElements), g(kElements, 1.0f), w(kElements);
  ASSERT_TRUE(client->OfferParameters(w0).ok());
  ASSERT_EQ(*client->ReceiveEvalPoint(x), 0);
  g[123] = std::numeric_limits<float>::quiet_NaN();
  absl::Status s = client->PushGradient(g, 4);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("non-finite"), std::string::npos) << s;
  EXPECT_NE(s.message().find("element 123"), std::string::npos) << s;
  ASSERT_EQ(*client->Pull(w), 0);
  EXPECT_EQ(w, w0);
  // The stream stays open: the corrected gradient for the same step is accepted.
  g[123] = 1.0f;
  ASSERT_TRUE(client->PushGradient(g, 4).ok());
  ASSERT_EQ(*client->ReceiveEvalPoint(x), 1);
  ASSERT_EQ(*client->Pull(w), 1);
  EXPECT_NEAR(w[0], 0.5f - 0.1f * 1.0f, 1e-6);
  ASSERT_TRUE(client->Leave().ok());
}

TEST(ServerLifecycleTest, SigtermDrainsWaitingWorkerAndExitsCleanly) {
  auto server = StartServer(2);
  ASSERT_NE(server, nullptr);
  auto client = Connect(server->address(), 0, 2);
  ASSERT_NE(client, nullptr);
  std::vector<float> w0(kElements, 0.5f), x(kElements), g(kElements, 1.0f);
  ASSERT_TRUE(client->OfferParameters(w0).ok());
  ASSERT_TRUE(client->ReceiveEvalPoint(x).ok());
  ASSERT_TRUE(client->PushGradient(g, 4).ok());
  // Rank 1 never comes: rank 0 waits for step 1 until the server drains.
  auto waiting = std::async(std::launch::async, [&] { return client->ReceiveEvalPoint(x); });
  absl::SleepFor(absl::Milliseconds(300));
  // Stop() sends SIGTERM and only falls back to SIGKILL (status -1) after 10 s.
  EXPECT_EQ(server->Stop(), 0);
  // The worker retries for its reconnect_timeout, then gives up naming the shard.
  absl::StatusOr<int64_t> r = waiting.get();
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable) << r.status();
  EXPECT_NE(r.status().message().find("shard 0 ("), std::string::npos) << r.status();
}

}  // namespace
}  // namespace gnc
