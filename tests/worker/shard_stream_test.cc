// ShardStream against an in-process server that ends every Train stream right after
// its Hello: the client starts its next read from its own thread at any moment around
// that end, as a worker does when a shard drains between two operations. The read must
// complete with the server's status, never touch a call gRPC has let go of (the
// sanitized build of this test catches that), and WaitDone must return.
#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "worker/shard_stream.h"

namespace gnc {
namespace {

constexpr char kEnding[] = "the test shard ends every stream";

// EndAfterHello: reads one message, then finishes the stream with UNAVAILABLE.
class EndAfterHello final : public grpc::ServerGenericBidiReactor {
 public:
  EndAfterHello() { StartRead(&in_); }
  void OnReadDone(bool) override { Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, kEnding)); }
  void OnDone() override { delete this; }

 private:
  grpc::ByteBuffer in_;
};

class EndingService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext*) override {
    return new EndAfterHello();
  }
};

TEST(ShardStreamTest, ReadStartedAsTheServerEndsTheStreamCompletesWithItsStatus) {
  EndingService service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.RegisterCallbackGenericService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ASSERT_NE(server, nullptr);
  ASSERT_GT(port, 0);

  auto channel = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                     grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  absl::StatusOr<std::shared_ptr<const ChannelSecurity>> security =
      ChannelSecurity::Load(ChannelSecurityOptions{});
  ASSERT_TRUE(security.ok()) << security.status();

  std::mt19937 rng(7);
  std::uniform_int_distribution<int> delay_us(0, 400);
  std::vector<float> point(16);
  int with_status = 0;
  for (int i = 0; i < 1000; ++i) {
    CallGroup group;
    std::shared_ptr<ShardStream> stream =
        ShardStream::Start(&stub, **security, /*rank=*/0, WireDType::kFloat32, &group);
    // Idle for a while (the end may come in the meantime), then read.
    absl::SleepFor(absl::Microseconds(delay_us(rng)));
    group.Begin();
    stream->ReadPoint(point);
    ASSERT_TRUE(group.Wait(absl::Seconds(20), /*stop_on_break=*/false))
        << "iteration " << i << ": the read never completed";
    const absl::Status& s = stream->status();
    ASSERT_FALSE(s.ok()) << "iteration " << i;
    EXPECT_TRUE(absl::IsUnavailable(s)) << "iteration " << i << ": " << s;
    with_status += s.message() == kEnding ? 1 : 0;
    EXPECT_TRUE(stream->broken());
    stream->Cancel();
    stream->WaitDone();
  }
  // Most reads see the server's own status (a few may find the channel mid-reconnect).
  EXPECT_GT(with_status, 750);
  server->Shutdown();
}

}  // namespace
}  // namespace gnc
