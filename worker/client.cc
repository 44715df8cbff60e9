#include "worker/client.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/grpc_status.h"
#include "proto/gnc.grpc.pb.h"

namespace gnc {
namespace {

const char* ModeName(v1::SmoothingMode mode) {
  switch (mode) {
    case v1::NONE:
      return "none";
    case v1::GNC:
      return "gnc";
    case v1::ISOTROPIC:
      return "isotropic";
    default:
      return "unspecified";
  }
}

using TrainStream = grpc::ClientReaderWriter<v1::TrainRequest, v1::TrainResponse>;

// Where a shard's Train stream stands.
enum class StreamState {
  kAwaitEval,  // an evaluation point is on its way (after Hello, OK or ABORTED ack)
  kHaveEval,   // evaluation point received; a gradient is due
};

struct Shard {
  int index = 0;
  std::string address;
  std::unique_ptr<v1::ParameterShard::Stub> stub;
  ShardRange range;
  bool needs_parameters = false;
  std::unique_ptr<grpc::ClientContext> train_ctx;
  std::unique_ptr<TrainStream> train;
  StreamState state = StreamState::kAwaitEval;
  int64_t step = -1;  // step of the evaluation point last received
};

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
  struct JoinInfo {
    uint64_t config_hash = 0;
    uint64_t layout_hash = 0;
    int64_t total_steps = 0;
    v1::SmoothingMode mode = v1::SMOOTHING_MODE_UNSPECIFIED;
  };

  absl::Status JoinShard(Shard& shard, uint64_t config_hash, JoinInfo* info);
  absl::Status OpenStream(Shard& shard);
  absl::Status ReadEvalPoint(Shard& shard, std::span<float> x);
  absl::Status PushToShard(Shard& shard, std::span<const float> g, int64_t num_samples);
  void CloseStreams();
  // ForEachShard: runs fn on every shard concurrently; returns the first error, with
  // the shard named.
  absl::Status ForEachShard(const std::function<absl::Status(Shard&)>& fn);
  absl::Status Named(const Shard& shard, const absl::Status& s) const;

  const ClientOptions options_;
  std::vector<Shard> shards_;
  JobInfo job_;
  bool left_ = false;
};

absl::Status GrpcGncClient::Named(const Shard& shard, const absl::Status& s) const {
  if (s.ok()) return s;
  return absl::Status(s.code(),
                      absl::StrCat("shard ", shard.index, " (", shard.address, "): ", s.message()));
}

absl::Status GrpcGncClient::ForEachShard(const std::function<absl::Status(Shard&)>& fn) {
  std::vector<absl::Status> results(shards_.size());
  if (shards_.size() == 1) {
    results[0] = fn(shards_[0]);
  } else {
    std::vector<std::thread> threads;
    threads.reserve(shards_.size());
    for (size_t i = 0; i < shards_.size(); ++i) {
      threads.emplace_back([&, i] { results[i] = fn(shards_[i]); });
    }
    for (std::thread& t : threads) t.join();
  }
  // Prefer a real error over ABORTED (late), which callers treat as "carry on".
  absl::Status aborted;
  for (size_t i = 0; i < shards_.size(); ++i) {
    if (results[i].ok()) continue;
    if (absl::IsAborted(results[i])) {
      if (aborted.ok()) aborted = Named(shards_[i], results[i]);
      continue;
    }
    return Named(shards_[i], results[i]);
  }
  return aborted;
}

absl::Status GrpcGncClient::JoinShard(Shard& shard, uint64_t config_hash, JoinInfo* info) {
  v1::JoinRequest req;
  req.set_rank(options_.rank);
  req.set_num_workers(options_.num_workers);
  req.set_num_shards(static_cast<int>(shards_.size()));
  req.set_shard_index(shard.index);
  req.set_local_batch_size(options_.local_batch_size);
  req.set_config_hash(config_hash);
  for (const TensorSpec& t : options_.layout.tensors()) {
    v1::TensorSpec* out = req.mutable_layout()->add_tensors();
    out->set_name(t.name);
    for (int64_t d : t.shape) out->add_shape(d);
  }
  const absl::Time deadline = absl::Now() + options_.connect_timeout;
  while (true) {
    grpc::ClientContext ctx;
    ctx.set_wait_for_ready(true);  // a shard that is still starting is waited for
    ctx.set_deadline(absl::ToChronoTime(std::min(deadline, absl::Now() + absl::Seconds(5))));
    v1::JoinResponse resp;
    grpc::Status s = shard.stub->Join(&ctx, req, &resp);
    if (s.ok()) {
      shard.range = ShardRange{resp.shard_begin(), resp.shard_end()};
      shard.needs_parameters = resp.needs_parameters();
      info->config_hash = resp.config_hash();
      info->layout_hash = resp.layout_hash();
      info->total_steps = resp.total_steps();
      info->mode = resp.mode();
      const ShardRange expected = ShardRangeFor(options_.layout.NumElements(),
                                                static_cast<int>(shards_.size()), shard.index);
      if (expected.begin != shard.range.begin || expected.end != shard.range.end) {
        return absl::FailedPreconditionError("shard range differs from the client's shard map");
      }
      return absl::OkStatus();
    }
    const bool retry = s.error_code() == grpc::StatusCode::UNAVAILABLE ||
                       s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;
    if (!retry) return FromGrpcStatus(s);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat("no answer within ", absl::FormatDuration(options_.connect_timeout),
                       ": ", s.error_message()));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
}

absl::Status GrpcGncClient::Init() {
  if (options_.servers.empty()) return absl::InvalidArgumentError("no servers given");
  if (options_.rank < 0 || options_.rank >= options_.num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options_.rank, " outside [0, ", options_.num_workers, ")"));
  }
  if (options_.layout.NumElements() == 0) {
    return absl::InvalidArgumentError("empty model layout");
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(kMaxMessageBytes);
  args.SetMaxSendMessageSize(kMaxMessageBytes);
  shards_.resize(options_.servers.size());
  for (size_t i = 0; i < shards_.size(); ++i) {
    Shard& shard = shards_[i];
    shard.index = static_cast<int>(i);
    shard.address = options_.servers[i];
    shard.stub = v1::ParameterShard::NewStub(
        grpc::CreateCustomChannel(shard.address, grpc::InsecureChannelCredentials(), args));
  }
  // Shard 0 first: it fixes the config hash that every other shard must have.
  JoinInfo first;
  if (absl::Status s = JoinShard(shards_[0], options_.config_hash, &first); !s.ok()) {
    return Named(shards_[0], s);
  }
  std::vector<JoinInfo> infos(shards_.size());
  infos[0] = first;
  absl::Status s = ForEachShard([&](Shard& shard) {
    if (shard.index == 0) return absl::OkStatus();
    return JoinShard(shard, first.config_hash, &infos[shard.index]);
  });
  if (!s.ok()) return s;
  job_.config_hash = first.config_hash;
  job_.layout_hash = first.layout_hash;
  job_.total_steps = first.total_steps;
  job_.mode = ModeName(first.mode);
  for (const Shard& shard : shards_) job_.ranges.push_back(shard.range);
  return absl::OkStatus();
}

absl::Status GrpcGncClient::OfferParameters(std::span<const float> params) {
  if (static_cast<int64_t>(params.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "offered ", params.size(), " parameters, layout has ", options_.layout.NumElements()));
  }
  return ForEachShard([&](Shard& shard) -> absl::Status {
    if (!shard.needs_parameters) return absl::OkStatus();
    grpc::ClientContext ctx;
    v1::OfferParametersResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::OfferParametersRequest>> writer =
        shard.stub->OfferParameters(&ctx, &resp);
    v1::OfferParametersRequest req;
    req.set_rank(options_.rank);
    const int64_t size = shard.range.size();
    for (int64_t offset = 0; offset < size; offset += kDefaultChunkElements) {
      const int64_t count = std::min(kDefaultChunkElements, size - offset);
      v1::Chunk* chunk = req.mutable_chunk();
      chunk->set_offset(offset);
      chunk->set_last(offset + count == size);
      absl::Status s = EncodeChunk(params.subspan(shard.range.begin + offset, count), {},
                                   v1::FLOAT32, chunk);
      if (!s.ok()) return s;
      if (!writer->Write(req)) break;  // the server ended the call: Finish says why
    }
    writer->WritesDone();
    absl::Status s = FromGrpcStatus(writer->Finish());
    if (s.ok()) shard.needs_parameters = false;
    return s;
  });
}

absl::Status GrpcGncClient::OpenStream(Shard& shard) {
  shard.train_ctx = std::make_unique<grpc::ClientContext>();
  shard.train = shard.stub->Train(shard.train_ctx.get());
  v1::TrainRequest hello;
  hello.mutable_hello()->set_rank(options_.rank);
  shard.state = StreamState::kAwaitEval;
  if (!shard.train->Write(hello)) return FromGrpcStatus(shard.train->Finish());
  return absl::OkStatus();
}

absl::Status GrpcGncClient::ReadEvalPoint(Shard& shard, std::span<float> x) {
  if (shard.train == nullptr) {
    if (absl::Status s = OpenStream(shard); !s.ok()) return s;
  }
  if (shard.state != StreamState::kAwaitEval) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no evaluation point is due: the gradient for step ", shard.step,
        " has not been accepted yet (push it again)"));
  }
  const int64_t size = shard.range.size();
  int64_t step = -1;
  int64_t next = 0;
  v1::TrainResponse resp;
  while (shard.train->Read(&resp)) {
    if (!resp.has_eval_point()) continue;  // a stray Ack cannot carry a point
    const v1::TrainResponse::EvalPoint& p = resp.eval_point();
    if (p.chunk().offset() == 0) {
      step = p.step();  // a (re)start: the server moved on to a newer step
      next = 0;
    }
    if (p.step() != step || p.chunk().offset() != next) {
      return absl::DataLossError(absl::StrCat("evaluation point out of order at offset ",
                                              p.chunk().offset()));
    }
    absl::StatusOr<int64_t> count = ChunkElementCount(p.chunk());
    if (!count.ok()) return count.status();
    if (next + *count > size) return absl::DataLossError("evaluation point exceeds the shard");
    absl::Status s = DecodeChunk(p.chunk(), x.subspan(shard.range.begin + next, *count));
    if (!s.ok()) return s;
    next += *count;
    if (p.chunk().last()) {
      if (next != size) return absl::DataLossError("evaluation point ended early");
      shard.step = step;
      shard.state = StreamState::kHaveEval;
      return absl::OkStatus();
    }
  }
  absl::Status s = FromGrpcStatus(shard.train->Finish());
  shard.train.reset();
  if (s.ok()) s = absl::UnavailableError("the server closed the Train stream");
  return s;
}

absl::StatusOr<int64_t> GrpcGncClient::ReceiveEvalPoint(std::span<float> x) {
  if (left_) return absl::FailedPreconditionError("the client has left the job");
  if (static_cast<int64_t>(x.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError("evaluation point buffer has the wrong size");
  }
  absl::Status s = ForEachShard([&](Shard& shard) { return ReadEvalPoint(shard, x); });
  if (!s.ok()) return s;
  int64_t step = 0;
  for (const Shard& shard : shards_) step = std::max(step, shard.step);
  return step;
}

absl::Status GrpcGncClient::PushToShard(Shard& shard, std::span<const float> g,
                                        int64_t num_samples) {
  if (shard.state != StreamState::kHaveEval) return absl::OkStatus();  // already accepted
  const int64_t size = shard.range.size();
  v1::TrainRequest req;
  v1::TrainRequest::Gradient* grad = req.mutable_gradient();
  grad->set_step(shard.step);
  grad->set_num_samples(num_samples);
  for (int64_t offset = 0; offset < size; offset += kDefaultChunkElements) {
    const int64_t count = std::min(kDefaultChunkElements, size - offset);
    v1::Chunk* chunk = grad->mutable_chunk();
    chunk->set_offset(offset);
    chunk->set_last(offset + count == size);
    absl::Status s =
        EncodeChunk(g.subspan(shard.range.begin + offset, count), {}, v1::FLOAT32, chunk);
    if (!s.ok()) return s;
    if (!shard.train->Write(req)) break;  // the stream ended; Read/Finish say why
  }
  v1::TrainResponse resp;
  while (shard.train->Read(&resp)) {
    if (!resp.has_ack()) continue;
    const v1::TrainResponse::Ack& ack = resp.ack();
    const absl::Status verdict(static_cast<absl::StatusCode>(ack.code()), ack.message());
    if (verdict.ok() || absl::IsAborted(verdict)) shard.state = StreamState::kAwaitEval;
    return verdict;
  }
  absl::Status s = FromGrpcStatus(shard.train->Finish());
  shard.train.reset();
  if (s.ok()) s = absl::UnavailableError("the server closed the Train stream");
  return s;
}

absl::Status GrpcGncClient::PushGradient(std::span<const float> g, int64_t num_samples) {
  if (left_) return absl::FailedPreconditionError("the client has left the job");
  if (static_cast<int64_t>(g.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError(absl::StrCat("gradient has ", g.size(),
                                                   " elements, layout has ",
                                                   options_.layout.NumElements()));
  }
  for (const Shard& shard : shards_) {
    if (shard.train == nullptr) {
      return absl::FailedPreconditionError("no evaluation point received yet");
    }
  }
  return ForEachShard([&](Shard& shard) { return PushToShard(shard, g, num_samples); });
}

absl::StatusOr<int64_t> GrpcGncClient::Pull(std::span<float> w) {
  if (static_cast<int64_t>(w.size()) != options_.layout.NumElements()) {
    return absl::InvalidArgumentError("parameter buffer has the wrong size");
  }
  std::vector<int64_t> steps(shards_.size(), 0);
  absl::Status s = ForEachShard([&](Shard& shard) -> absl::Status {
    grpc::ClientContext ctx;
    v1::PullRequest req;
    req.set_dtype(v1::FLOAT32);
    std::unique_ptr<grpc::ClientReader<v1::PullResponse>> reader =
        shard.stub->PullParameters(&ctx, req);
    v1::PullResponse resp;
    int64_t next = 0;
    while (reader->Read(&resp)) {
      absl::StatusOr<int64_t> count = ChunkElementCount(resp.chunk());
      if (!count.ok()) return count.status();
      if (resp.chunk().offset() != next || next + *count > shard.range.size()) {
        return absl::DataLossError("parameter chunks out of order");
      }
      absl::Status d = DecodeChunk(resp.chunk(), w.subspan(shard.range.begin + next, *count));
      if (!d.ok()) return d;
      next += *count;
      steps[shard.index] = resp.step();
    }
    absl::Status f = FromGrpcStatus(reader->Finish());
    if (!f.ok()) return f;
    if (next != shard.range.size()) return absl::DataLossError("parameter pull ended early");
    return absl::OkStatus();
  });
  if (!s.ok()) return s;
  return *std::min_element(steps.begin(), steps.end());
}

void GrpcGncClient::CloseStreams() {
  for (Shard& shard : shards_) {
    if (shard.train == nullptr) continue;
    shard.train_ctx->TryCancel();
    shard.train->Finish();
    shard.train.reset();
  }
}

absl::Status GrpcGncClient::Leave() {
  if (left_) return absl::OkStatus();
  absl::Status s = ForEachShard([&](Shard& shard) -> absl::Status {
    grpc::ClientContext ctx;
    ctx.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    v1::LeaveRequest req;
    req.set_rank(options_.rank);
    v1::LeaveResponse resp;
    return FromGrpcStatus(shard.stub->Leave(&ctx, req, &resp));
  });
  CloseStreams();
  left_ = true;
  return s;
}

}  // namespace

absl::StatusOr<std::unique_ptr<GncClient>> GncClient::Connect(const ClientOptions& options) {
  auto client = std::make_unique<GrpcGncClient>(options);
  if (absl::Status s = client->Init(); !s.ok()) return s;
  return client;
}

}  // namespace gnc
