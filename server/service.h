// ParameterShardService: the gRPC adapter over a ShardCore. It converts proto <->
// domain types and absl::Status <-> grpc::Status, and nothing else: every decision
// is the core's. Thread-safe (the sync gRPC server calls it from its pool).
#ifndef GNC_SERVER_SERVICE_H_
#define GNC_SERVER_SERVICE_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "common/layout.h"
#include "proto/gnc.grpc.pb.h"
#include "server/shard_core.h"

namespace gnc {

// LayoutFromProto: INVALID_ARGUMENT for a malformed layout.
absl::StatusOr<ModelLayout> LayoutFromProto(const v1::ModelLayout& proto);
void LayoutToProto(const ModelLayout& layout, v1::ModelLayout* proto);

class ParameterShardService final : public v1::ParameterShard::Service {
 public:
  // REQUIRES: core (and observer, if not null) outlive the service.
  explicit ParameterShardService(ShardCore* core, ShardObserver* observer = nullptr)
      : core_(core), observer_(observer) {}

  grpc::Status Join(grpc::ServerContext* ctx, const v1::JoinRequest* req,
                    v1::JoinResponse* resp) override;
  grpc::Status OfferParameters(grpc::ServerContext* ctx,
                               grpc::ServerReader<v1::OfferParametersRequest>* reader,
                               v1::OfferParametersResponse* resp) override;
  grpc::Status Train(grpc::ServerContext* ctx,
                     grpc::ServerReaderWriter<v1::TrainResponse, v1::TrainRequest>* stream)
      override;
  grpc::Status PullParameters(grpc::ServerContext* ctx, const v1::PullRequest* req,
                              grpc::ServerWriter<v1::PullResponse>* writer) override;
  grpc::Status Leave(grpc::ServerContext* ctx, const v1::LeaveRequest* req,
                     v1::LeaveResponse* resp) override;
  grpc::Status GetStatus(grpc::ServerContext* ctx, const v1::StatusRequest* req,
                         v1::StatusResponse* resp) override;
  grpc::Status Rewind(grpc::ServerContext* ctx, const v1::RewindRequest* req,
                      v1::JobState* resp) override;

 private:
  using TrainStream = grpc::ServerReaderWriter<v1::TrainResponse, v1::TrainRequest>;

  // SendEvalPoint: waits until a point other than `sent` is due for this rank, then
  // streams it (restarting if the step moves on mid-way). Returns the tag sent, or
  // the error that ended the stream.
  absl::StatusOr<PointTag> SendEvalPoint(grpc::ServerContext* ctx, TrainStream* stream,
                                         int rank, uint64_t session, const PointTag& sent);

  void CountSent(const v1::Chunk& chunk) {
    if (observer_ != nullptr) observer_->OnSentBytes(static_cast<int64_t>(chunk.data().size()));
  }

  ShardCore* const core_;
  ShardObserver* const observer_;
};

}  // namespace gnc

#endif  // GNC_SERVER_SERVICE_H_
