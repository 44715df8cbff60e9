#include "server/service.h"

#include <algorithm>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/allocation.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "common/wire.h"
#include "server/call_limits.h"
#include "server/train_reactor.h"

namespace gnc {
namespace {

v1::SmoothingMode ModeToProto(SmoothingMode mode) {
  switch (mode) {
    case SmoothingMode::kNone:
      return v1::NONE;
    case SmoothingMode::kGnc:
      return v1::GNC;
    case SmoothingMode::kIsotropic:
      return v1::ISOTROPIC;
  }
  return v1::SMOOTHING_MODE_UNSPECIFIED;
}

grpc::Status Invalid(std::string message) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, std::move(message));
}

void JobStateToProto(const JobStateInfo& info, v1::JobState* out) {
  out->set_initialized(info.initialized);
  out->set_job_id(info.job.job_id);
  out->set_generation(info.job.generation);
  out->set_step(info.step);
  for (int64_t s : info.rewind_steps) out->add_rewind_steps(s);
  out->set_diverged(info.diverged);
  out->set_restored(info.restored);
}

grpc::ServerUnaryReactor* Done(grpc::CallbackServerContext* ctx, const grpc::Status& s) {
  grpc::ServerUnaryReactor* reactor = ctx->DefaultReactor();
  reactor->Finish(s);
  return reactor;
}

// Refused: a streaming call ended at once (over a limit), before anything is
// allocated for it.
template <typename Reactor>
class Refused final : public Reactor {
 public:
  explicit Refused(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

grpc::Status Exhausted(std::string message) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, std::move(message));
}

// ChunkElements: elements per message of a pull: 1 MiB of float32.
constexpr int64_t kChunkElements = kDefaultChunkElements;

// OfferReactor: the chunks of w0, decoded into one vector, then offered to the core.
class OfferReactor final : public grpc::ServerReadReactor<v1::OfferParametersRequest> {
 public:
  // REQUIRES: the caller has entered `calls` for this call; OnDone leaves it.
  OfferReactor(ShardCore* core, ShardObserver* observer, Admission* calls,
               v1::OfferParametersResponse* resp)
      : core_(core), observer_(observer), calls_(calls), resp_(resp) {
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Complete();
      return;
    }
    if (first_) {
      first_ = false;
      rank_ = req_.rank();
      job_id_ = req_.job_id();
      absl::StatusOr<int64_t> size = core_->OfferSize(rank_);
      if (!size.ok()) {
        Finish(ToGrpcStatus(size.status()));
        return;
      }
      if (absl::Status s = TryAllocate("the offer's buffer", [&] { values_.resize(*size); });
          !s.ok()) {
        if (observer_ != nullptr) observer_->OnLimited("allocation");
        Finish(ToGrpcStatus(s));
        return;
      }
    }
    if (done_) {
      Finish(Invalid("chunk after the one marked last"));
      return;
    }
    const v1::Chunk& chunk = req_.chunk();
    absl::StatusOr<int64_t> count = ChunkElementCount(chunk);
    if (!count.ok()) {
      Finish(ToGrpcStatus(count.status()));
      return;
    }
    const int64_t size = static_cast<int64_t>(values_.size());
    if (chunk.offset() != next_) {
      Finish(Invalid(absl::StrCat("offer chunk at offset ", chunk.offset(), ", expected ", next_)));
      return;
    }
    if (next_ + *count > size) {
      Finish(Invalid(absl::StrCat("offer exceeds the shard's ", size, " elements")));
      return;
    }
    if (absl::Status s = DecodeChunk(chunk, std::span<float>(values_.data() + next_, *count));
        !s.ok()) {
      Finish(ToGrpcStatus(s));
      return;
    }
    next_ += *count;
    done_ = chunk.last();
    StartRead(&req_);
  }

  void OnDone() override {
    calls_->Leave();
    delete this;
  }

 private:
  void Complete() {
    if (first_) {
      Finish(Invalid("offer stream carried no chunk"));
      return;
    }
    if (!done_ || next_ != static_cast<int64_t>(values_.size())) {
      Finish(Invalid(absl::StrCat("offer ended after ", next_, " of ", values_.size(),
                                  " elements without a chunk marked last")));
      return;
    }
    absl::StatusOr<OfferResult> result =
        core_->OfferParameters(rank_, job_id_, std::move(values_));
    if (!result.ok()) {
      Finish(ToGrpcStatus(result.status()));
      return;
    }
    resp_->set_accepted(result->accepted);
    resp_->set_job_id(result->job_id);
    Finish(grpc::Status::OK);
  }

  ShardCore* const core_;
  ShardObserver* const observer_;
  Admission* const calls_;
  v1::OfferParametersResponse* const resp_;
  v1::OfferParametersRequest req_;
  std::vector<float> values_;
  int rank_ = 0;
  uint64_t job_id_ = 0;
  int64_t next_ = 0;
  bool first_ = true;
  bool done_ = false;
};

// PullReactor: the current w, in chunks straight from the publication.
class PullReactor final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  // REQUIRES: the caller has entered `calls` for this call; OnDone leaves it.
  PullReactor(ShardCore* core, ShardObserver* observer, Admission* calls,
              const grpc::ByteBuffer* request)
      : observer_(observer), calls_(calls) {
    v1::PullRequest req;
    std::vector<grpc::Slice> slices;
    std::string bytes;
    if (request->Dump(&slices).ok()) {
      for (const grpc::Slice& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    if (!req.ParseFromString(bytes)) {
      Finish(Invalid("malformed PullRequest"));
      return;
    }
    absl::StatusOr<WireDType> dtype = ToWireDType(req.dtype());
    if (!dtype.ok()) {
      Finish(ToGrpcStatus(dtype.status()));
      return;
    }
    std::shared_ptr<const Publication> pub = core->Current();
    if (pub == nullptr) {
      Finish(grpc::Status(grpc::StatusCode::FAILED_PRECONDITION,
                          "parameters have not been offered yet"));
      return;
    }
    dtype_ = *dtype;
    tag_ = pub->tag();
    if (absl::Status s = TryAllocate("the parameters in the pull's encoding",
                                     [&] { point_ = pub->For(-1, dtype_); });
        !s.ok()) {
      if (observer_ != nullptr) observer_->OnLimited("allocation");
      Finish(ToGrpcStatus(s));
      return;
    }
    elements_ = static_cast<int64_t>(point_.bytes.size() / ElementBytes(dtype_));
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the client went away"));
      return;
    }
    if (next_ >= elements_) {
      Finish(grpc::Status::OK);
      return;
    }
    Next();
  }

  void OnDone() override {
    calls_->Leave();
    delete this;
  }

 private:
  void Next() {
    const int64_t count = std::min(kChunkElements, elements_ - next_);
    const size_t width = ElementBytes(dtype_);
    out_ = EncodePullChunk(tag_.step, tag_.job.job_id, tag_.job.generation, next_,
                           ToProtoDType(dtype_), next_ + count == elements_,
                           point_.bytes.subspan(static_cast<size_t>(next_) * width, count * width),
                           point_.owner);
    next_ += count;
    if (observer_ != nullptr) observer_->OnSentBytes(count * static_cast<int64_t>(width));
    StartWrite(&out_);
  }

  ShardObserver* const observer_;
  Admission* const calls_;
  WireDType dtype_ = WireDType::kFloat32;
  PointTag tag_;
  PointBytes point_;
  int64_t elements_ = 0;
  int64_t next_ = 0;
  grpc::ByteBuffer out_;
};

}  // namespace

absl::StatusOr<ModelLayout> LayoutFromProto(const v1::ModelLayout& proto) {
  std::vector<TensorSpec> tensors;
  tensors.reserve(proto.tensors_size());
  for (const v1::TensorSpec& t : proto.tensors()) {
    tensors.push_back(TensorSpec{t.name(), {t.shape().begin(), t.shape().end()}});
  }
  return ModelLayout::Create(std::move(tensors));
}

void LayoutToProto(const ModelLayout& layout, v1::ModelLayout* proto) {
  for (const TensorSpec& t : layout.tensors()) {
    v1::TensorSpec* out = proto->add_tensors();
    out->set_name(t.name);
    for (int64_t d : t.shape) out->add_shape(d);
  }
}

ParameterShardService::ParameterShardService(ShardCore* core, ShardObserver* observer,
                                             ServiceLimits limits)
    : core_(core),
      observer_(observer),
      limits_(limits),
      train_streams_(std::make_unique<Admission>(
          limits.max_train_streams,
          [observer](int open) {
            if (observer != nullptr) observer->OnTrainStreams(open);
          })),
      calls_(std::make_unique<Admission>(limits.max_concurrent_rpcs, nullptr)),
      hellos_(std::make_unique<HelloDeadlines>(limits.hello_timeout)) {}

ParameterShardService::~ParameterShardService() = default;

void ParameterShardService::CheckDeadlines() {
  for (const auto& waiter : hellos_->TakeDue(absl::Now())) waiter->OnHelloDue(false);
}

void ParameterShardService::Drain() {
  for (const auto& waiter : hellos_->TakeDue(absl::InfiniteFuture())) waiter->OnHelloDue(true);
}

grpc::ServerUnaryReactor* ParameterShardService::Join(grpc::CallbackServerContext* ctx,
                                                      const v1::JoinRequest* req,
                                                      v1::JoinResponse* resp) {
  absl::StatusOr<ModelLayout> layout = LayoutFromProto(req->layout());
  if (!layout.ok()) return Done(ctx, ToGrpcStatus(layout.status()));
  JoinArgs args;
  args.rank = req->rank();
  args.num_workers = req->num_workers();
  args.num_shards = req->num_shards();
  args.shard_index = req->shard_index();
  args.layout = *std::move(layout);
  args.local_batch_size = req->local_batch_size();
  args.config_hash = req->config_hash();
  args.job_id = req->job_id();
  absl::StatusOr<JoinInfo> info = core_->Join(args);
  if (!info.ok()) return Done(ctx, ToGrpcStatus(info.status()));
  resp->set_shard_begin(info->range.begin);
  resp->set_shard_end(info->range.end);
  resp->set_needs_parameters(info->needs_parameters);
  resp->set_config_hash(info->config_hash);
  resp->set_layout_hash(info->layout_hash);
  resp->set_step(info->job.step);
  JobStateToProto(info->job, resp->mutable_job());
  resp->set_mode(ModeToProto(core_->options().mode));
  resp->set_total_steps(core_->options().TotalPasses());
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerReadReactor<v1::OfferParametersRequest>* ParameterShardService::OfferParameters(
    grpc::CallbackServerContext*, v1::OfferParametersResponse* resp) {
  if (!calls_->TryEnter()) {
    if (observer_ != nullptr) observer_->OnLimited("concurrent_calls");
    return new Refused<grpc::ServerReadReactor<v1::OfferParametersRequest>>(
        Exhausted(absl::StrCat("this shard already serves ", calls_->cap(),
                               " offers and pulls (--max_concurrent_rpcs); retry later")));
  }
  return new OfferReactor(core_, observer_, calls_.get(), resp);
}

grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* ParameterShardService::Train(
    grpc::CallbackServerContext*) {
  if (!train_streams_->TryEnter()) {
    if (observer_ != nullptr) observer_->OnLimited("train_streams");
    return new Refused<grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>>(
        Exhausted(absl::StrCat("this shard already has ", train_streams_->cap(),
                               " Train streams open (--max_train_streams); retry later")));
  }
  return NewTrainReactor(core_, observer_, train_streams_.get(), hellos_.get());
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* ParameterShardService::PullParameters(
    grpc::CallbackServerContext*, const grpc::ByteBuffer* req) {
  if (!calls_->TryEnter()) {
    if (observer_ != nullptr) observer_->OnLimited("concurrent_calls");
    return new Refused<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        Exhausted(absl::StrCat("this shard already serves ", calls_->cap(),
                               " offers and pulls (--max_concurrent_rpcs); retry later")));
  }
  return new PullReactor(core_, observer_, calls_.get(), req);
}

grpc::ServerUnaryReactor* ParameterShardService::Leave(grpc::CallbackServerContext* ctx,
                                                       const v1::LeaveRequest* req,
                                                       v1::LeaveResponse*) {
  return Done(ctx, ToGrpcStatus(core_->Leave(req->rank())));
}

grpc::ServerUnaryReactor* ParameterShardService::GetStatus(grpc::CallbackServerContext* ctx,
                                                           const v1::StatusRequest*,
                                                           v1::StatusResponse* resp) {
  const ShardOptions& o = core_->options();
  const ShardStatus s = core_->GetStatus();
  resp->set_shard_index(o.shard_index);
  resp->set_num_shards(o.num_shards);
  resp->set_num_workers(o.num_workers);
  resp->set_min_workers(o.EffectiveMinWorkers());
  resp->set_connected_workers(s.connected);
  resp->set_finished_workers(s.finished);
  resp->set_step(s.job.step);
  resp->set_mode(ModeToProto(o.mode));
  resp->set_shard_begin(s.range.begin);
  resp->set_shard_end(s.range.end);
  resp->set_initialized(s.job.initialized);
  resp->set_config_hash(o.ConfigHash());
  resp->set_layout_hash(s.layout_hash);
  resp->set_learning_rate(s.lr);
  resp->set_total_steps(o.TotalPasses());
  resp->set_draining(s.draining);
  JobStateToProto(s.job, resp->mutable_job());
  for (int r : s.waiting_for) resp->add_waiting_for_ranks(r);
  resp->set_waiting_seconds(absl::ToDoubleSeconds(s.waited));
  return Done(ctx, grpc::Status::OK);
}

grpc::ServerUnaryReactor* ParameterShardService::Rewind(grpc::CallbackServerContext* ctx,
                                                        const v1::RewindRequest* req,
                                                        v1::JobState* resp) {
  absl::StatusOr<JobStateInfo> info =
      core_->Rewind(req->job_id(), req->step(), req->generation());
  if (!info.ok()) return Done(ctx, ToGrpcStatus(info.status()));
  JobStateToProto(*info, resp);
  return Done(ctx, grpc::Status::OK);
}

}  // namespace gnc
