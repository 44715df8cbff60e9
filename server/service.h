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

#include <memory>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
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

class Admission;
class HelloDeadlines;

// ServiceLimits: what one caller, or many, may hold open. A call over a limit ends
// with RESOURCE_EXHAUSTED before anything is allocated for it.
struct ServiceLimits {
  // Train streams open at once, with or without their Hello; 0 = no limit.
  int max_train_streams = 0;
  // OfferParameters and PullParameters calls in progress (the unary calls finish in
  // their handler); 0 = no limit.
  int max_concurrent_rpcs = 0;
  // A Train stream whose Hello has not come this long after it opened ends with
  // DEADLINE_EXCEEDED (checked by CheckDeadlines).
  absl::Duration hello_timeout = absl::Seconds(10);
};

class ParameterShardService final : public internal::ShardServiceBase {
 public:
  // REQUIRES: core (and observer, if not null) outlive the service and every call.
  ParameterShardService(ShardCore* core, ShardObserver* observer = nullptr,
                        ServiceLimits limits = {});
  ~ParameterShardService() override;

  // CheckDeadlines: ends the Train streams whose Hello is overdue. Call often (the
  // daemon does, with the core's CheckDeadline).
  void CheckDeadlines();
  // Drain: ends every Train stream still without a Hello (UNAVAILABLE), so that they
  // do not hold the shard's shutdown up; call with the core's Drain. A stream opened
  // later still gets its hello_timeout.
  void Drain();

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
  const ServiceLimits limits_;
  const std::unique_ptr<Admission> train_streams_;
  const std::unique_ptr<Admission> calls_;
  const std::unique_ptr<HelloDeadlines> hellos_;
};

}  // namespace gnc

#endif  // GNC_SERVER_SERVICE_H_
