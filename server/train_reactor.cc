// The Train stream's reactor: one worker's gradients in, its points out, on gRPC's
// callback API (DESIGN section 2).
#include "server/train_reactor.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/allocation.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "server/train_chunk.h"

namespace gnc {
namespace {

// StreamEnd: the status a Train stream ends with. A stream superseded by a newer one
// for its rank (CANCELLED in the core) ends with FAILED_PRECONDITION, so that the
// older process stops instead of taking the rank back.
grpc::Status StreamEnd(int rank, const absl::Status& s) {
  if (absl::IsCancelled(s)) {
    return grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                        absl::StrCat("the Train stream of rank ", rank,
                                     " was superseded by a newer one (another process joined "
                                     "with this rank)"));
  }
  return ToGrpcStatus(s);
}

// TrainReactor: one worker's Train stream. Its phases alternate, so at most one read
// or write is outstanding: receive a gradient (reads), acknowledge it (one write),
// then fetch and send the next point (writes) — or wait for it, told by the core
// through a Hook. mu_ orders those phases against OnCancel and the core's notice.
class TrainReactor final : public grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  // Hook: what the core holds while the stream waits; forwards to the reactor while it
  // lives.
  class Hook final : public PointWaiter, public HelloWaiter {
   public:
    explicit Hook(TrainReactor* reactor) : reactor_(reactor) {}
    void OnPointReady() override {
      absl::MutexLock lock(&mu_);
      if (reactor_ != nullptr) reactor_->PointReady();
    }
    void OnHelloDue(bool draining) override {
      absl::MutexLock lock(&mu_);
      if (reactor_ != nullptr) reactor_->HelloDue(draining);
    }
    void Detach() {
      absl::MutexLock lock(&mu_);
      reactor_ = nullptr;
    }

   private:
    absl::Mutex mu_;
    TrainReactor* reactor_ ABSL_GUARDED_BY(mu_);
  };

  // REQUIRES: the caller has entered `streams` for this stream; OnDone leaves it.
  TrainReactor(ShardCore* core, ShardObserver* observer, Admission* streams,
               HelloDeadlines* hellos)
      : core_(core), observer_(observer), streams_(streams), hook_(std::make_shared<Hook>(this)) {
    hellos->Add(hook_);
    hello_timeout_ = hellos->timeout();
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  enum class State {
    kHello, kOpening, kReceiving, kAcking, kFetching, kWaiting, kSending, kFinished
  };

  void PointReady();
  void HelloDue(bool draining);
  void Fetch();
  void SendChunk();
  void Receive(const TrainRequestView& msg);
  void Read(State state);
  void End(const grpc::Status& status);

  ShardCore* const core_;
  ShardObserver* const observer_;
  Admission* const streams_;
  const std::shared_ptr<Hook> hook_;
  absl::Duration hello_timeout_;

  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kHello;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool ready_pending_ ABSL_GUARDED_BY(mu_) = false;  // a notice came while fetching
  bool finished_ ABSL_GUARDED_BY(mu_) = false;

  // Touched only by the phase that is active (the states above serialise them).
  grpc::ByteBuffer in_, out_;
  std::vector<grpc::Slice> slices_;
  int rank_ = -1;
  uint64_t session_ = 0;
  WireDType dtype_ = WireDType::kFloat32;
  PointTag sent_;          // the last point sent in full
  PointTag sending_;       // the point being sent
  PointBytes point_;       // its bytes, held until sent
  int64_t next_offset_ = 0;
  int64_t point_elements_ = 0;
  bool late_pending_ = false;  // a late attempt: the point follows its last chunk
  absl::Status verdict_;
  bool verdict_last_ = false;
};

void TrainReactor::Read(State state) {
  {
    absl::MutexLock lock(&mu_);
    state_ = state;
  }
  StartRead(&in_);
}

void TrainReactor::End(const grpc::Status& status) {
  {
    absl::MutexLock lock(&mu_);
    if (finished_) return;
    finished_ = true;
    state_ = State::kFinished;
  }
  point_ = PointBytes();
  Finish(status);
}

void TrainReactor::OnReadDone(bool ok) {
  if (!ok) {  // the worker closed its side, or the call was cancelled
    End(grpc::Status::OK);
    return;
  }
  TrainRequestView msg;
  if (absl::Status s = ParseTrainRequest(in_, &slices_, &msg); !s.ok()) {
    End(ToGrpcStatus(s));
    return;
  }
  if (rank_ < 0) {
    {
      absl::MutexLock lock(&mu_);
      if (finished_) return;  // the Hello came after its deadline: the stream has ended
      state_ = State::kOpening;
    }
    if (msg.kind != TrainRequestView::Kind::kHello) {
      End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                       "the first message of a Train stream must be a Hello"));
      return;
    }
    absl::StatusOr<WireDType> dtype = ToWireDType(msg.wire_dtype);
    if (!dtype.ok()) {
      End(ToGrpcStatus(dtype.status()));
      return;
    }
    absl::StatusOr<uint64_t> session = core_->OpenStream(msg.rank, *dtype);
    if (!session.ok()) {
      End(ToGrpcStatus(session.status()));
      return;
    }
    rank_ = msg.rank;
    session_ = *session;
    dtype_ = *dtype;
    // A restarted worker whose gradient for the current step is already in gets the
    // next step's point: Fetch waits for it.
    Fetch();
    return;
  }
  if (msg.kind != TrainRequestView::Kind::kGradient) {
    End(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     "expected a Gradient message after the Hello"));
    return;
  }
  Receive(msg);
}

void TrainReactor::Receive(const TrainRequestView& msg) {
  GradientChunk chunk = ChunkFromWire(msg, rank_, session_);
  absl::StatusOr<PushOutcome> outcome = core_->PushGradient(chunk);
  slices_.clear();  // the payload has been copied into the slot
  if (outcome.ok() && *outcome != PushOutcome::kCommitted) {
    if (late_pending_ && chunk.last) {
      late_pending_ = false;
      Fetch();
    } else {
      Read(State::kReceiving);
    }
    return;
  }
  if (absl::IsCancelled(outcome.status())) {
    End(StreamEnd(rank_, outcome.status()));
    return;
  }
  verdict_ = outcome.status();
  verdict_last_ = chunk.last;
  out_ = EncodeAck(chunk.step, static_cast<int32_t>(verdict_.code()),
                   std::string(verdict_.message()));
  {
    absl::MutexLock lock(&mu_);
    state_ = State::kAcking;
  }
  StartWrite(&out_);
}

void TrainReactor::OnWriteDone(bool ok) {
  if (!ok) {
    End(grpc::Status(grpc::StatusCode::CANCELLED, "the worker went away"));
    return;
  }
  State state;
  {
    absl::MutexLock lock(&mu_);
    state = state_;
  }
  if (state == State::kSending) {
    if (next_offset_ < point_elements_) {
      SendChunk();
      return;
    }
    sent_ = sending_;
    // Sent: the publication may reuse the buffer. The last chunk's message refers to
    // it too; without this it would keep the buffer until the next write (an Ack that
    // comes after the step's merge, which would then allocate a new buffer).
    point_ = PointBytes();
    out_.Clear();
    Read(State::kReceiving);
    return;
  }
  // An Ack went out. Accepted: the next point follows when the step completes. Late:
  // the point follows the attempt's last chunk (both sides writing at once could fill
  // both flow-control windows). A bad gradient: the worker may send it again.
  if (verdict_.ok() || (absl::IsAborted(verdict_) && verdict_last_)) {
    Fetch();
  } else {
    late_pending_ = absl::IsAborted(verdict_);
    Read(State::kReceiving);
  }
}

void TrainReactor::PointReady() {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != State::kWaiting) {
      ready_pending_ = true;
      return;
    }
    state_ = State::kFetching;
  }
  Fetch();
}

void TrainReactor::HelloDue(bool draining) {
  {
    absl::MutexLock lock(&mu_);
    if (state_ != State::kHello || finished_) return;
    finished_ = true;
    state_ = State::kFinished;
  }
  if (draining) {
    Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "shard is draining"));
    return;
  }
  if (observer_ != nullptr) observer_->OnLimited("hello_timeout");
  Finish(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED,
                      absl::StrCat("no Hello within ", absl::FormatDuration(hello_timeout_),
                                   " of opening the Train stream")));
}

void TrainReactor::Fetch() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (cancelled_ || finished_) break;
      state_ = State::kFetching;
      ready_pending_ = false;
    }
    absl::StatusOr<std::shared_ptr<const Publication>> pub =
        core_->NextPoint(rank_, session_, sent_, hook_);
    if (!pub.ok()) {
      End(StreamEnd(rank_, pub.status()));
      return;
    }
    if (*pub != nullptr) {
      sending_ = (*pub)->tag();
      if (absl::Status s = TryAllocate("the point in the stream's encoding",
                                       [&] { point_ = (*pub)->For(rank_, dtype_); });
          !s.ok()) {
        if (observer_ != nullptr) observer_->OnLimited("allocation");
        End(ToGrpcStatus(s));
        return;
      }
      point_elements_ =
          static_cast<int64_t>(point_.bytes.size() / ElementBytes(dtype_));
      next_offset_ = 0;
      {
        absl::MutexLock lock(&mu_);
        state_ = State::kSending;
      }
      SendChunk();
      return;
    }
    absl::MutexLock lock(&mu_);
    if (cancelled_) break;
    if (!ready_pending_) {
      state_ = State::kWaiting;  // the core tells the hook when a point is due
      return;
    }
  }
  End(grpc::Status(grpc::StatusCode::CANCELLED, "the worker went away"));
}

void TrainReactor::SendChunk() {
  const int64_t count = std::min(kDefaultChunkElements, point_elements_ - next_offset_);
  const size_t width = ElementBytes(dtype_);
  out_ = EncodeEvalPointChunk(
      sending_.step, sending_.job.job_id, sending_.job.generation, next_offset_,
      ToProtoDType(dtype_), next_offset_ + count == point_elements_,
      point_.bytes.subspan(static_cast<size_t>(next_offset_) * width, count * width),
      point_.owner);
  next_offset_ += count;
  if (observer_ != nullptr) observer_->OnSentBytes(count * static_cast<int64_t>(width));
  StartWrite(&out_);
}

void TrainReactor::OnCancel() {
  {
    absl::MutexLock lock(&mu_);
    cancelled_ = true;
    // A waiting stream has nothing outstanding that would end it: end it here. Any
    // other phase sees its read or write fail and ends.
    if (state_ != State::kWaiting) return;
    state_ = State::kFetching;
  }
  End(grpc::Status(grpc::StatusCode::CANCELLED, "the worker went away"));
}

void TrainReactor::OnDone() {
  hook_->Detach();
  if (session_ != 0) core_->CloseStream(rank_, session_);
  streams_->Leave();
  delete this;
}

}  // namespace

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewTrainReactor(
    ShardCore* core, ShardObserver* observer, Admission* streams, HelloDeadlines* hellos) {
  return new TrainReactor(core, observer, streams, hellos);
}

}  // namespace gnc
