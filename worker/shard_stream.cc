#include "worker/shard_stream.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/bf16.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/wire.h"

namespace gnc {
namespace {

constexpr char kTrainMethod[] = "/gnc.v1.ParameterShard/Train";
constexpr char kPullMethod[] = "/gnc.v1.ParameterShard/PullParameters";

}  // namespace

void CallGroup::Begin(int n) {
  absl::MutexLock lock(&mu_);
  pending_ += n;
  broke_ = false;
}

void CallGroup::End(bool broke) {
  absl::MutexLock lock(&mu_);
  --pending_;
  broke_ |= broke;
}

bool CallGroup::Wait(absl::Duration timeout, bool stop_on_break) {
  absl::MutexLock lock(&mu_);
  auto settled = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return pending_ == 0 || (stop_on_break && broke_);
  };
  return mu_.AwaitWithTimeout(absl::Condition(&settled), timeout);
}

void CallGroup::WaitAll() {
  absl::MutexLock lock(&mu_);
  auto none = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
  mu_.Await(absl::Condition(&none));
}

bool CallGroup::broke() const {
  absl::MutexLock lock(&mu_);
  return broke_;
}

std::shared_ptr<ShardStream> ShardStream::Start(grpc::GenericStub* stub,
                                                const ChannelSecurity& security, int rank,
                                                WireDType dtype, CallGroup* group) {
  std::shared_ptr<ShardStream> s(new ShardStream(dtype, group));
  s->self_ = s;
  security.Authorize(&s->context_);
  stub->PrepareBidiStreamingCall(&s->context_, kTrainMethod, grpc::StubOptions(), s.get());
  s->hello_ = EncodeHello(rank, ToProtoDType(dtype));
  // The caller starts reads and pushes from its own thread, between reactions: without
  // a hold, a stream that the server ends while no operation is outstanding would be
  // torn down by gRPC under the caller's next StartRead. The hold goes when the stream
  // has failed under an operation (Fail), or when the caller is done with it (WaitDone).
  s->AddHold();
  s->StartWrite(&s->hello_);
  s->StartCall();
  return s;
}

void ShardStream::ReleaseHold() {
  {
    absl::MutexLock lock(&mu_);
    if (!held_) return;
    held_ = false;
  }
  RemoveHold();  // OnDone may now follow
}

bool ShardStream::broken() const {
  absl::MutexLock lock(&mu_);
  return ended_;
}

void ShardStream::WaitDone() {
  ReleaseHold();  // the caller starts nothing more
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&finished_));
  }
  // gRPC is done with the stream; letting go here, not in OnDone, keeps the
  // ClientContext's end on the caller's thread, before the caller moves on (or exits).
  self_.reset();
}

bool ShardStream::Begin() {
  absl::Status status;
  bool wait_for_done = false;
  {
    absl::MutexLock lock(&mu_);
    if (!ended_) return true;  // held: the stream stays gRPC's until this op is started
    wait_for_done = !done_;
    if (wait_for_done) {
      op_failed_ = true;  // OnDone completes the operation with the stream's status
    } else {
      status = FromGrpcStatus(final_);
    }
  }
  if (wait_for_done) {
    ReleaseHold();  // nothing is outstanding that would otherwise let OnDone come
    return false;
  }
  Complete(status.ok() ? absl::UnavailableError("the Train stream has ended") : status);
  return false;
}

void ShardStream::ReadPoint(std::span<float> dst) {
  op_ = Op::kRead;
  status_ = absl::OkStatus();
  dst_ = dst;
  next_ = 0;
  if (Begin()) StartRead(&in_);
}

void ShardStream::PushGradient(std::span<const float> g, int64_t num_samples,
                               const ShardTag& tag) {
  op_ = Op::kPush;
  status_ = absl::OkStatus();
  grad_ = g;
  samples_ = num_samples;
  tag_ = tag;
  sent_ = 0;
  if (dtype_ == WireDType::kBfloat16) {
    bf16_.resize(g.size());
    FloatsToBf16(g.data(), g.size(), bf16_.data());
  }
  if (!Begin()) return;
  {
    absl::MutexLock lock(&mu_);
    if (hello_pending_) {
      push_waiting_ = true;  // the Hello's OnWriteDone starts it
      return;
    }
  }
  WriteChunk();
}

void ShardStream::WriteChunk() {
  const int64_t size = static_cast<int64_t>(grad_.size());
  const int64_t count = std::min(kDefaultChunkElements, size - sent_);
  std::span<const uint8_t> payload =
      dtype_ == WireDType::kBfloat16
          ? std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bf16_.data() + sent_),
                                     count * sizeof(uint16_t))
          : std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(grad_.data() + sent_),
                                     count * sizeof(float));
  // The payload is the caller's memory (or bf16_), valid until the Ack or the stream's
  // end, which this client waits for before returning.
  out_ = EncodeGradientChunk(tag_.step, samples_, tag_.generation, sent_, ToProtoDType(dtype_),
                             sent_ + count == size, payload);
  sent_ += count;
  StartWrite(&out_);
}

void ShardStream::OnWriteDone(bool ok) {
  bool hello = false, push = false, release = false;
  {
    absl::MutexLock lock(&mu_);
    if (hello_pending_) {  // this is the Hello's write
      hello = true;
      hello_pending_ = false;
      push = push_waiting_ && ok;
      if (!ok) {
        ended_ = true;
        op_failed_ = push_waiting_;  // OnDone completes the waiting push
        release = push_waiting_;     // ... once the hold is gone
      }
      push_waiting_ = false;
    }
  }
  if (release) ReleaseHold();
  if (hello) {
    if (push) WriteChunk();  // a push was waiting for it
    return;
  }
  if (!ok) {
    Fail();
    return;
  }
  if (sent_ < static_cast<int64_t>(grad_.size())) {
    WriteChunk();
    return;
  }
  StartRead(&in_);  // the verdict
}

void ShardStream::OnReadDone(bool ok) {
  if (!ok) {
    Fail();
    return;
  }
  TrainResponseView msg;
  if (absl::Status s = ParseTrainResponse(in_, &slices_, &msg); !s.ok()) {
    Cancel();
    Complete(absl::DataLossError(s.message()));
    return;
  }
  if (op_ == Op::kPush) {
    if (msg.kind != TrainResponseView::Kind::kAck) {
      Cancel();
      Complete(absl::DataLossError("expected the gradient's Ack, got an evaluation point"));
      return;
    }
    Complete(absl::Status(static_cast<absl::StatusCode>(msg.ack_code), msg.ack_message));
    return;
  }
  if (msg.kind != TrainResponseView::Kind::kEvalPoint) {
    StartRead(&in_);  // a stray Ack carries no point
    return;
  }
  const PointView& p = msg.point;
  const ShardTag tag{p.job_id, p.generation, p.step};
  if (p.chunk.offset == 0) {
    reading_ = tag;  // a (re)start of a point
    next_ = 0;
  }
  // A malformed point breaks the stream: it is reopened.
  auto garbled = [&](absl::string_view what) {
    Cancel();
    Complete(absl::DataLossError(
        absl::StrCat("evaluation point ", what, " at offset ", p.chunk.offset)));
  };
  if (tag != reading_ || p.chunk.offset != next_) return garbled("out of order");
  absl::StatusOr<WireDType> dtype = ToWireDType(p.chunk.dtype);
  absl::StatusOr<int64_t> count = PayloadElements(p.chunk.data.size, p.chunk.dtype);
  if (!dtype.ok() || !count.ok()) return garbled("undecodable");
  if (next_ + *count > static_cast<int64_t>(dst_.size())) return garbled("exceeds the shard");
  DecodePayload(p.chunk.data, *dtype, dst_.subspan(next_, *count));
  slices_.clear();
  next_ += *count;
  if (!p.chunk.last) {
    StartRead(&in_);
    return;
  }
  if (next_ != static_cast<int64_t>(dst_.size())) return garbled("ended early");
  tag_ = tag;
  Complete(absl::OkStatus());
}

void ShardStream::Complete(absl::Status status) {
  status_ = std::move(status);
  op_ = Op::kNone;
  bool broke;
  {
    absl::MutexLock lock(&mu_);
    broke = ended_;
  }
  group_->End(broke || absl::IsDataLoss(status_));
}

void ShardStream::Fail() {
  // OnDone, which gRPC runs after every other reaction once the hold is gone, completes
  // the operation with the stream's final status. The caller starts nothing before that.
  {
    absl::MutexLock lock(&mu_);
    ended_ = true;
    op_failed_ = true;
  }
  ReleaseHold();
}

void ShardStream::OnDone(const grpc::Status& s) {
  bool complete;
  {
    absl::MutexLock lock(&mu_);
    final_ = s;
    ended_ = true;
    done_ = true;
    complete = op_failed_;
    op_failed_ = false;
  }
  if (complete) {
    absl::Status status = FromGrpcStatus(s);
    if (status.ok()) status = absl::UnavailableError("the server closed the Train stream");
    Complete(std::move(status));
  }
  absl::MutexLock lock(&mu_);
  finished_ = true;
}

std::shared_ptr<PullCall> PullCall::Start(grpc::GenericStub* stub,
                                          const ChannelSecurity& security, std::span<float> dst,
                                          absl::Duration timeout, CallGroup* group) {
  std::shared_ptr<PullCall> c(new PullCall(dst, group));
  c->self_ = c;
  c->context_.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  security.Authorize(&c->context_);
  v1::PullRequest req;
  req.set_dtype(v1::FLOAT32);
  const std::string bytes = req.SerializeAsString();
  grpc::Slice slice(bytes.data(), bytes.size());
  c->request_ = grpc::ByteBuffer(&slice, 1);
  stub->PrepareBidiStreamingCall(&c->context_, kPullMethod, grpc::StubOptions(), c.get());
  c->StartWriteLast(&c->request_, grpc::WriteOptions());
  c->StartRead(&c->in_);
  c->StartCall();
  return c;
}

void PullCall::WaitDone() {
  {
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));
  }
  self_.reset();  // as ShardStream::WaitDone
}

void PullCall::OnReadDone(bool ok) {
  if (!ok) return;  // the call ends; OnDone reports
  PointView p;
  absl::Status s = ParsePullResponse(in_, &slices_, &p);
  absl::StatusOr<WireDType> dtype = ToWireDType(p.chunk.dtype);
  absl::StatusOr<int64_t> count = PayloadElements(p.chunk.data.size, p.chunk.dtype);
  if (s.ok() && (!dtype.ok() || !count.ok() || p.chunk.offset != next_ ||
                 next_ + *count > static_cast<int64_t>(dst_.size()))) {
    s = absl::DataLossError("parameter chunks out of order");
  }
  if (!s.ok()) {
    status_ = s;
    context_.TryCancel();
    return;
  }
  DecodePayload(p.chunk.data, *dtype, dst_.subspan(next_, *count));
  slices_.clear();
  next_ += *count;
  tag_ = ShardTag{p.job_id, p.generation, p.step};
  StartRead(&in_);
}

void PullCall::OnDone(const grpc::Status& s) {
  if (status_.ok()) status_ = FromGrpcStatus(s);
  if (status_.ok() && next_ != static_cast<int64_t>(dst_.size())) {
    status_ = absl::DataLossError("parameter pull ended early");
  }
  group_->End(!status_.ok());
  absl::MutexLock lock(&mu_);
  done_ = true;
}

}  // namespace gnc
