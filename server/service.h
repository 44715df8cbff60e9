// ParameterShardService: the gRPC adapter over a ShardCore, on gRPC's callback API.
// It converts proto <-> domain types and absl::Status <-> grpc::Status, and nothing
// else: every decision is the core's. Train and PullParameters are raw (ByteBuffer)
// methods on the hand-encoded wire format (common/wire.h): one reactor per stream
// copies each received chunk once, into the worker's slot, and sends each point from
// the step's Publication without a copy; a stream that waits for the next point is
// told by the core when it is published. No thread per stream, no polling.
//
// Thread-safe (gRPC calls it from its callback threads).
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

namespace internal {
using PS = v1::ParameterShard;
using ShardServiceBase = PS::WithCallbackMethod_Join<PS::WithCallbackMethod_OfferParameters<
    PS::WithRawCallbackMethod_Train<PS::WithRawCallbackMethod_PullParameters<
        PS::WithCallbackMethod_Leave<PS::WithCallbackMethod_GetStatus<
            PS::WithCallbackMethod_Rewind<PS::Service>>>>>>>;
}  // namespace internal

class ParameterShardService final : public internal::ShardServiceBase {
 public:
  // REQUIRES: core (and observer, if not null) outlive the service and every call.
  explicit ParameterShardService(ShardCore* core, ShardObserver* observer = nullptr)
      : core_(core), observer_(observer) {}

  grpc::ServerUnaryReactor* Join(grpc::CallbackServerContext* ctx, const v1::JoinRequest* req,
                                 v1::JoinResponse* resp) override;
  grpc::ServerReadReactor<v1::OfferParametersRequest>* OfferParameters(
      grpc::CallbackServerContext* ctx, v1::OfferParametersResponse* resp) override;
  grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* Train(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* PullParameters(grpc::CallbackServerContext* ctx,
                                                             const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* Leave(grpc::CallbackServerContext* ctx, const v1::LeaveRequest* req,
                                  v1::LeaveResponse* resp) override;
  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* ctx,
                                      const v1::StatusRequest* req,
                                      v1::StatusResponse* resp) override;
  grpc::ServerUnaryReactor* Rewind(grpc::CallbackServerContext* ctx,
                                   const v1::RewindRequest* req, v1::JobState* resp) override;

 private:
  ShardCore* const core_;
  ShardObserver* const observer_;
};

}  // namespace gnc

#endif  // GNC_SERVER_SERVICE_H_
