// The gRPC client behind GncClient::Connect, shared by its two files: client.cc (joining,
// synchronising the shards' jobs, offering parameters, leaving) and client_steps.cc
// (each step's points, gradients and pulls over the Train streams, and their recovery).
// Internal to gnc_client.
#ifndef GNC_WORKER_GRPC_CLIENT_H_
#define GNC_WORKER_GRPC_CLIENT_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/credentials.h"
#include "proto/gnc.grpc.pb.h"
#include "worker/client.h"
#include "worker/shard_stream.h"

namespace gnc::client_internal {

// Where a shard's Train stream stands.
enum class StreamState {
  kAwaitEval,  // an evaluation point is on its way (after Hello, OK or ABORTED ack)
  kHaveEval,   // evaluation point received; a gradient is due
};

struct Shard {
  int index = 0;
  std::string address;
  std::unique_ptr<v1::ParameterShard::Stub> stub;
  std::unique_ptr<grpc::GenericStub> generic;
  ShardRange range;
  bool needs_parameters = false;
  v1::JobState job;  // as of the last Join
  std::shared_ptr<ShardStream> stream;  // null until the first point is asked for
  StreamState state = StreamState::kAwaitEval;
  ShardTag tag;  // of the point last received
  // A point received while a push recovered, for the next ReceiveEvalPoint.
  std::vector<float> pending;
  bool has_pending = false;
};

// Reply: how one unary call on one shard ended.
template <typename Resp>
struct Reply {
  absl::Status status;
  Resp resp;
};

template <typename Resp>
using AsyncReader = std::unique_ptr<grpc::ClientAsyncResponseReader<Resp>>;

// GrpcGncClient: GncClient over one channel per shard. Thread-compatible, as GncClient.
class GrpcGncClient final : public GncClient {
 public:
  explicit GrpcGncClient(ClientOptions options) : options_(std::move(options)) {}
  ~GrpcGncClient() override { CloseStreams(); }

  absl::Status Init();
  const JobInfo& job() const override { return job_; }
  absl::Status OfferParameters(std::span<const float> params) override;
  absl::StatusOr<int64_t> ReceiveEvalPoint(std::span<float> x) override;
  absl::Status PushGradient(std::span<const float> g, int64_t num_samples) override;
  absl::StatusOr<int64_t> Pull(std::span<float> w) override;
  absl::Status Leave() override;

 private:
  struct JoinReply {
    uint64_t config_hash = 0;
    uint64_t layout_hash = 0;
    int64_t total_steps = 0;
    v1::SmoothingMode mode = v1::SMOOTHING_MODE_UNSPECIFIED;
  };
  // Result: the combined outcome of one operation on every shard.
  struct Result {
    absl::Status status;     // the first real error, else ABORTED if any, else OK
    bool broken = false;     // some stream ended (the others were cancelled)
    bool timed_out = false;  // the operation ran past its timeout (all were cancelled)
  };

  // CallAll: starts `start(shard, ctx, cq)` on every shard in `which` and waits for
  // all to finish; each call gets `deadline` (and waits for a shard that is not up yet
  // when wait_for_ready). The calls complete on this thread's completion queue, so
  // gRPC is done with every one of them when CallAll returns.
  template <typename Resp>
  std::vector<Reply<Resp>> CallAll(
      const std::vector<int>& which, absl::Time deadline, bool wait_for_ready,
      const std::function<AsyncReader<Resp>(Shard&, grpc::ClientContext*,
                                            grpc::CompletionQueue*)>& start);
  // JoinAll: Join on the shards in `which`; per-shard statuses.
  std::vector<absl::Status> JoinAll(const std::vector<int>& which, uint64_t config_hash,
                                    absl::Time deadline, JoinReply* first);
  absl::Status Synchronize(absl::Time deadline, absl::Status cause);
  absl::Status Recover(const absl::Status& cause);
  absl::Status OfferTo(Shard& shard, std::span<const float> params, uint64_t job_id,
                       uint64_t* shard_job_id);
  // Run: starts `op(shard)` on every shard that `wanted(shard)`, waits for all of them
  // up to step_timeout, and cancels the others when a stream breaks or time runs out.
  Result Run(const std::function<bool(Shard&)>& op);
  absl::Status StallError(absl::string_view what);
  bool PointsConsistent() const;
  void CloseStreams();
  std::shared_ptr<ShardStream>& Stream(Shard& shard);
  absl::Status Named(const Shard& shard, const absl::Status& s) const;
  std::vector<int> AllShards() const;

  const ClientOptions options_;
  std::shared_ptr<const ChannelSecurity> security_;
  std::vector<Shard> shards_;
  JobInfo job_;
  bool left_ = false;
  // The recovery since the last ReceiveEvalPoint closed the streams: the gradient
  // the caller computed must be matched against fresh points before it is pushed.
  bool recovered_ = false;
  std::vector<ShardTag> point_tags_;  // per shard, of the last ReceiveEvalPoint
  CallGroup group_;
};

}  // namespace gnc::client_internal

#endif  // GNC_WORKER_GRPC_CLIENT_H_
