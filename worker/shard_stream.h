// The client's calls to one shard on gRPC's callback API, for GrpcGncClient: the Train
// stream (ShardStream), a pull (PullCall) and an offer of w0 (OfferCall). They send
// and receive the hand-encoded wire format (common/wire.h): a gradient is sent from the
// caller's memory (or one bf16 encoding of it), a point is decoded straight into the
// caller's buffer. No thread is created: gRPC's callbacks drive them, and the client
// waits on a CallGroup.
//
// Thread-safety: each object is driven by one client thread at a time; its callbacks
// report to the CallGroup under the group's lock.
#ifndef GNC_WORKER_SHARD_STREAM_H_
#define GNC_WORKER_SHARD_STREAM_H_

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/credentials.h"
#include "common/payload.h"
#include "proto/gnc.grpc.pb.h"

namespace gnc {

// CallGroup: counts the operations in flight across shards and says when they are all
// done, or one broke a stream, or a deadline passed.
class CallGroup {
 public:
  void Begin(int n = 1);
  // End: one operation finished; `broke` when its stream ended (the others are then
  // cancelled by the waiter).
  void End(bool broke);
  // Wait: until every operation ended, or (when stop_on_break) one broke a stream, or
  // `timeout` passed. Returns false on timeout.
  bool Wait(absl::Duration timeout, bool stop_on_break);
  // WaitAll: until every operation ended, however long (used after cancelling).
  void WaitAll();
  bool broke() const;

 private:
  mutable absl::Mutex mu_;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool broke_ ABSL_GUARDED_BY(mu_) = false;
};

// PointTagView: which point a shard sent.
struct ShardTag {
  uint64_t job_id = 0;
  int64_t generation = 0;
  int64_t step = -1;
  bool operator==(const ShardTag&) const = default;
};

// ShardStream: one worker's Train stream to one shard.
class ShardStream final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Start: opens the stream and sends the Hello. The caller must WaitDone (after a
  // Cancel, or once the stream ended) before letting go of it; gRPC's hold ends there,
  // on the caller's thread. Until then a hold (AddHold) keeps the call alive between
  // operations, so that the caller may start one from its own thread at any time. The call carries security's token. REQUIRES: group
  // outlives it.
  static std::shared_ptr<ShardStream> Start(grpc::GenericStub* stub,
                                            const ChannelSecurity& security, int rank,
                                            WireDType dtype, CallGroup* group);

  // ReadPoint: reads the next point into dst (the shard's slice of x); the group's
  // End follows. Then status() and tag() say how it went.
  void ReadPoint(std::span<float> dst);
  // PushGradient: sends g (the shard's slice) for `tag` and reads the verdict (an Ack,
  // whose status status() then is); the group's End follows.
  void PushGradient(std::span<const float> g, int64_t num_samples, const ShardTag& tag);

  // Cancel: ends the stream; the operation in flight fails and its End follows.
  void Cancel() { context_.TryCancel(); }
  // WaitDone: until gRPC has let go of the stream (OnDone); then drops gRPC's hold, so
  // the caller's reference is the last.
  void WaitDone();

  const absl::Status& status() const { return status_; }
  const ShardTag& tag() const { return tag_; }
  bool broken() const;  // the stream has ended

  void OnWriteDone(bool ok) override;
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& s) override;

 private:
  enum class Op { kNone, kRead, kPush };
  ShardStream(WireDType dtype, CallGroup* group) : group_(group), dtype_(dtype) {}
  // Begin: false when the stream has ended already; the operation then completes with
  // the stream's status (now, or in OnDone).
  bool Begin();
  void WriteChunk();
  void Complete(absl::Status status);
  void Fail();  // the stream ended under an operation: its status follows in OnDone
  void ReleaseHold();  // ends the hold taken at Start (once)

  std::shared_ptr<ShardStream> self_;  // gRPC's hold, released by WaitDone
  grpc::ClientContext context_;
  CallGroup* const group_;
  const WireDType dtype_;
  grpc::ByteBuffer hello_, out_, in_;
  std::vector<grpc::Slice> slices_;

  // The operation in flight (one at a time).
  Op op_ = Op::kNone;
  absl::Status status_;
  ShardTag tag_;
  // kRead
  std::span<float> dst_;
  int64_t next_ = 0;
  ShardTag reading_;
  // kPush
  std::span<const float> grad_;
  std::vector<uint16_t> bf16_;  // the gradient in bf16, reused
  int64_t samples_ = 0;
  int64_t sent_ = 0;

  mutable absl::Mutex mu_;
  bool held_ ABSL_GUARDED_BY(mu_) = true;           // Start's AddHold is in place
  bool hello_pending_ ABSL_GUARDED_BY(mu_) = true;  // the Hello's write is in flight
  bool push_waiting_ ABSL_GUARDED_BY(mu_) = false;  // a push waits for it
  bool ended_ ABSL_GUARDED_BY(mu_) = false;         // the stream ended (read or write failed)
  bool op_failed_ ABSL_GUARDED_BY(mu_) = false;     // ... under the operation in flight
  bool done_ ABSL_GUARDED_BY(mu_) = false;          // OnDone has taken the final status
  bool finished_ ABSL_GUARDED_BY(mu_) = false;      // ... and is about to return
  grpc::Status final_ ABSL_GUARDED_BY(mu_);
};

// PullCall: PullParameters of one shard, decoded straight into dst (its slice of w).
class PullCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Start: the call, carrying security's token; the group's End follows when it is
  // over. REQUIRES: dst and group outlive the call (WaitDone).
  static std::shared_ptr<PullCall> Start(grpc::GenericStub* stub,
                                         const ChannelSecurity& security, std::span<float> dst,
                                         absl::Duration timeout, CallGroup* group);

  void Cancel() { context_.TryCancel(); }
  void WaitDone();
  // status: OK when every element arrived in order; tag: the step, job and generation.
  const absl::Status& status() const { return status_; }
  const ShardTag& tag() const { return tag_; }

  void OnWriteDone(bool ok) override {}
  void OnReadDone(bool ok) override;
  void OnDone(const grpc::Status& s) override;

 private:
  PullCall(std::span<float> dst, CallGroup* group) : group_(group), dst_(dst) {}

  std::shared_ptr<PullCall> self_;  // gRPC's hold, released by WaitDone
  grpc::ClientContext context_;
  CallGroup* const group_;
  const std::span<float> dst_;
  grpc::ByteBuffer request_, in_;
  std::vector<grpc::Slice> slices_;
  int64_t next_ = 0;
  absl::Status status_;  // a problem found while reading (kept over OnDone's)
  ShardTag tag_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace gnc

#endif  // GNC_WORKER_SHARD_STREAM_H_
