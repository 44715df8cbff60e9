#include "server/service.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/codec.h"
#include "common/grpc_status.h"

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

void JobStateToProto(const JobStateInfo& info, v1::JobState* out) {
  out->set_initialized(info.initialized);
  out->set_job_id(info.job.job_id);
  out->set_generation(info.job.generation);
  out->set_step(info.step);
  for (int64_t s : info.rewind_steps) out->add_rewind_steps(s);
  out->set_diverged(info.diverged);
  out->set_restored(info.restored);
}

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

grpc::Status ParameterShardService::Join(grpc::ServerContext*, const v1::JoinRequest* req,
                                         v1::JoinResponse* resp) {
  absl::StatusOr<ModelLayout> layout = LayoutFromProto(req->layout());
  if (!layout.ok()) return ToGrpcStatus(layout.status());
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
  if (!info.ok()) return ToGrpcStatus(info.status());
  resp->set_shard_begin(info->range.begin);
  resp->set_shard_end(info->range.end);
  resp->set_needs_parameters(info->needs_parameters);
  resp->set_config_hash(info->config_hash);
  resp->set_layout_hash(info->layout_hash);
  resp->set_step(info->job.step);
  JobStateToProto(info->job, resp->mutable_job());
  resp->set_mode(ModeToProto(core_->options().mode));
  resp->set_total_steps(core_->options().lr.total_steps);
  return grpc::Status::OK;
}

grpc::Status ParameterShardService::OfferParameters(
    grpc::ServerContext*, grpc::ServerReader<v1::OfferParametersRequest>* reader,
    v1::OfferParametersResponse* resp) {
  v1::OfferParametersRequest req;
  if (!reader->Read(&req)) return Invalid("offer stream carried no chunk");
  const int rank = req.rank();
  const uint64_t job_id = req.job_id();
  absl::StatusOr<int64_t> size = core_->ShardSize();
  if (!size.ok()) return ToGrpcStatus(size.status());
  std::vector<float> values(*size);
  int64_t next = 0;
  bool done = false;
  do {
    if (done) return Invalid("chunk after the one marked last");
    const v1::Chunk& chunk = req.chunk();
    absl::StatusOr<int64_t> count = ChunkElementCount(chunk);
    if (!count.ok()) return ToGrpcStatus(count.status());
    if (chunk.offset() != next) {
      return Invalid(absl::StrCat("offer chunk at offset ", chunk.offset(), ", expected ", next));
    }
    if (next + *count > *size) {
      return Invalid(absl::StrCat("offer exceeds the shard's ", *size, " elements"));
    }
    absl::Status s = DecodeChunk(chunk, std::span<float>(values.data() + next, *count));
    if (!s.ok()) return ToGrpcStatus(s);
    next += *count;
    done = chunk.last();
  } while (reader->Read(&req));
  if (!done || next != *size) {
    return Invalid(absl::StrCat("offer ended after ", next, " of ", *size,
                                " elements without a chunk marked last"));
  }
  absl::StatusOr<OfferResult> result = core_->OfferParameters(rank, job_id, std::move(values));
  if (!result.ok()) return ToGrpcStatus(result.status());
  resp->set_accepted(result->accepted);
  resp->set_job_id(result->job_id);
  return grpc::Status::OK;
}

absl::StatusOr<PointTag> ParameterShardService::SendEvalPoint(grpc::ServerContext* ctx,
                                                              TrainStream* stream, int rank,
                                                              uint64_t session,
                                                              const PointTag& sent) {
  absl::StatusOr<int64_t> size = core_->ShardSize();
  if (!size.ok()) return size.status();
  v1::TrainResponse resp;
  PointTag last = sent;
  while (true) {
    absl::StatusOr<PointTag> tag =
        core_->WaitForPoint(rank, session, last, absl::Milliseconds(200));
    if (absl::IsDeadlineExceeded(tag.status())) {
      if (ctx->IsCancelled()) return absl::CancelledError("client went away");
      continue;
    }
    if (!tag.ok()) return tag.status();
    bool moved_on = false;
    for (int64_t offset = 0; offset < *size; offset += kDefaultChunkElements) {
      const int64_t count = std::min(kDefaultChunkElements, *size - offset);
      v1::TrainResponse::EvalPoint* point = resp.mutable_eval_point();
      point->set_step(tag->step);
      point->set_job_id(tag->job.job_id);
      point->set_generation(tag->job.generation);
      v1::Chunk* chunk = point->mutable_chunk();
      chunk->set_offset(offset);
      chunk->set_last(offset + count == *size);
      absl::Status s = core_->ReadEvalPoint(
          rank, *tag, offset, count,
          [chunk](std::span<const float> w, std::span<const float> delta) {
            return EncodeChunk(w, delta, v1::FLOAT32, chunk);
          });
      if (absl::IsAborted(s)) {
        moved_on = true;  // the step completed meanwhile: send the new one
        break;
      }
      if (!s.ok()) return s;
      if (!stream->Write(resp)) return absl::CancelledError("client went away");
      CountSent(*chunk);
    }
    if (!moved_on) return *tag;
    last = PointTag();  // whatever is current now
    if (ctx->IsCancelled()) return absl::CancelledError("client went away");
  }
}

grpc::Status ParameterShardService::Train(grpc::ServerContext* ctx, TrainStream* stream) {
  v1::TrainRequest req;
  if (!stream->Read(&req)) return Invalid("Train stream closed before its Hello");
  if (!req.has_hello()) return Invalid("the first message of a Train stream must be a Hello");
  const int rank = req.hello().rank();
  absl::StatusOr<uint64_t> session = core_->OpenStream(rank);
  if (!session.ok()) return ToGrpcStatus(session.status());
  struct Closer {
    ShardCore* core;
    int rank;
    uint64_t session;
    ~Closer() { core->CloseStream(rank, session); }
  } closer{core_, rank, *session};

  // A restarted worker whose gradient for the current step is already in gets the
  // next step's point: SendEvalPoint waits for it.
  absl::StatusOr<PointTag> sent = SendEvalPoint(ctx, stream, rank, *session, PointTag());
  if (!sent.ok()) return StreamEnd(rank, sent.status());

  std::vector<float> scratch;
  v1::TrainResponse ack_msg;
  // After a late (ABORTED) chunk the next evaluation point waits until the worker
  // has finished writing that gradient: both sides writing at once could fill both
  // flow-control windows and deadlock.
  bool eval_after_attempt = false;
  while (stream->Read(&req)) {
    if (!req.has_gradient()) return Invalid("expected a Gradient message after the Hello");
    const v1::TrainRequest::Gradient& g = req.gradient();
    GradientChunk chunk;
    chunk.rank = rank;
    chunk.session = *session;
    chunk.generation = g.generation();
    chunk.step = g.step();
    chunk.num_samples = g.num_samples();
    chunk.offset = g.chunk().offset();
    chunk.last = g.chunk().last();
    absl::StatusOr<std::span<const float>> values = ChunkValues(g.chunk(), &scratch);
    if (values.ok()) {
      chunk.values = *values;
    } else {
      chunk.decode_status = values.status();
    }
    absl::StatusOr<PushOutcome> outcome = core_->PushGradient(chunk);
    if (outcome.ok() &&
        (*outcome == PushOutcome::kContinue || *outcome == PushOutcome::kDropped)) {
      if (eval_after_attempt && chunk.last) {
        eval_after_attempt = false;
        sent = SendEvalPoint(ctx, stream, rank, *session, *sent);
        if (!sent.ok()) return StreamEnd(rank, sent.status());
      }
      continue;
    }
    if (absl::IsCancelled(outcome.status())) {
      return StreamEnd(rank, outcome.status());
    }
    v1::TrainResponse::Ack* ack = ack_msg.mutable_ack();
    ack->set_step(chunk.step);
    ack->set_code(static_cast<int>(outcome.status().code()));
    ack->set_message(std::string(outcome.status().message()));
    if (!stream->Write(ack_msg)) return grpc::Status::OK;
    if (outcome.ok()) {
      // Accepted: the next evaluation point follows when the step completes.
    } else if (!absl::IsAborted(outcome.status())) {
      eval_after_attempt = false;
      continue;  // a bad gradient: the worker may send the step's gradient again
    } else if (!chunk.last) {
      eval_after_attempt = true;  // late: the point follows the attempt's last chunk
      continue;
    }
    // Accepted, or late: the worker carries on with the next point due.
    sent = SendEvalPoint(ctx, stream, rank, *session, *sent);
    if (!sent.ok()) return StreamEnd(rank, sent.status());
  }
  return grpc::Status::OK;
}

grpc::Status ParameterShardService::PullParameters(grpc::ServerContext*,
                                                   const v1::PullRequest* req,
                                                   grpc::ServerWriter<v1::PullResponse>* writer) {
  if (!ElementSize(req->dtype()).ok()) return ToGrpcStatus(ElementSize(req->dtype()).status());
  std::vector<float> w;
  PointTag tag;
  absl::Status s = core_->Snapshot(&w, &tag);
  if (!s.ok()) return ToGrpcStatus(s);
  const int64_t size = static_cast<int64_t>(w.size());
  v1::PullResponse resp;
  resp.set_job_id(tag.job.job_id);
  resp.set_generation(tag.job.generation);
  for (int64_t offset = 0; offset < size; offset += kDefaultChunkElements) {
    const int64_t count = std::min(kDefaultChunkElements, size - offset);
    resp.set_step(tag.step);
    v1::Chunk* chunk = resp.mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_last(offset + count == size);
    s = EncodeChunk(std::span<const float>(w.data() + offset, count), {}, req->dtype(), chunk);
    if (!s.ok()) return ToGrpcStatus(s);
    if (!writer->Write(resp)) return grpc::Status::OK;
    CountSent(*chunk);
  }
  return grpc::Status::OK;
}

grpc::Status ParameterShardService::Leave(grpc::ServerContext*, const v1::LeaveRequest* req,
                                          v1::LeaveResponse*) {
  return ToGrpcStatus(core_->Leave(req->rank()));
}

grpc::Status ParameterShardService::GetStatus(grpc::ServerContext*, const v1::StatusRequest*,
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
  resp->set_total_steps(o.lr.total_steps);
  resp->set_draining(s.draining);
  JobStateToProto(s.job, resp->mutable_job());
  for (int r : s.waiting_for) resp->add_waiting_for_ranks(r);
  resp->set_waiting_seconds(absl::ToDoubleSeconds(s.waited));
  return grpc::Status::OK;
}

grpc::Status ParameterShardService::Rewind(grpc::ServerContext*, const v1::RewindRequest* req,
                                           v1::JobState* resp) {
  absl::StatusOr<JobStateInfo> info = core_->Rewind(req->job_id(), req->step(), req->generation());
  if (!info.ok()) return ToGrpcStatus(info.status());
  JobStateToProto(*info, resp);
  return grpc::Status::OK;
}

}  // namespace gnc
