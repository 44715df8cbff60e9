// gnc_outsider: a client that is not part of the job, for the security tests. It
// speaks gnc.v1 with whatever credentials it is given (none, a wrong token, a foreign
// certificate, or the job's) and prints what each call came back with, one line per
// call: "<what> <CODE> <message>". Every call has a deadline.
//
//   gnc_outsider calls --server=ADDR [--rank=0] [--num_workers=K] [--calls=Join,...]
//                      [--join_elements=N] [security flags]
//     Every rpc once, as an outsider would abuse it: Join, OfferParameters, Train (a
//     Hello as --rank, then a gradient with a huge sample count), PullParameters,
//     Leave for every rank, GetStatus, Rewind, server reflection, and the health
//     check. Lines: Join, Offer, TrainHello, TrainGradient, Pull, Leave.<r>, GetStatus,
//     Rewind, Reflection, Health.
//   gnc_outsider flood --server=ADDR --streams=N [--channels=C] [--hold=10s] [--method=M]
//     Opens N Train streams (or streams of method M) that never send anything and holds
//     them for --hold; then
//     prints "opened N", "ended <CODE> <count>" for the streams the server ended, and
//     "open <count>" for those still open, and cancels the rest.
//   gnc_outsider pull --server=ADDR --out=FILE [security flags]
//     Pulls w (float32) into FILE, raw little-endian, and prints "Pull OK <step>".
//
// Security flags: --tls_ca_file, --tls_cert_file, --tls_key_file, --auth_token_file,
// as gnc-worker's.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/codec.h"
#include "common/credentials.h"
#include "proto/gnc.grpc.pb.h"

ABSL_FLAG(std::string, server, "", "host:port of the shard");
ABSL_FLAG(int, rank, 0, "Rank the outsider claims");
ABSL_FLAG(int, num_workers, 2, "K, for Join and for the ranks Leave is sent for");
ABSL_FLAG(int, num_shards, 1, "S, for Join");
ABSL_FLAG(int, shard_index, 0, "The shard's index, for Join");
ABSL_FLAG(int, streams, 100, "flood: Train streams to open");
ABSL_FLAG(int, channels, 8, "flood: channels (connections) to spread them over");
ABSL_FLAG(absl::Duration, hold, absl::Seconds(10), "flood: how long to hold the streams");
ABSL_FLAG(std::string, method, "/gnc.v1.ParameterShard/Train", "flood: the streaming method");
ABSL_FLAG(absl::Duration, timeout, absl::Seconds(5), "Deadline of each call");
ABSL_FLAG(std::string, out, "", "pull: file for w");
ABSL_FLAG(std::string, calls, "",
          "calls: only these, comma-separated (Join,Offer,Train,Pull,Leave,GetStatus,Rewind,"
          "Reflection,Health); empty = all");
ABSL_FLAG(int64_t, join_elements, int64_t{1} << 40, "calls: elements of the layout Join offers");
ABSL_FLAG(std::string, tls_ca_file, "", "PEM CA of the servers (TLS)");
ABSL_FLAG(std::string, tls_cert_file, "", "PEM client certificate (mutual TLS)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM key of --tls_cert_file");
ABSL_FLAG(std::string, auth_token_file, "", "File holding the token to send");

namespace gnc {
namespace {

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {
      "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
      "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
      "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i <= 16 ? kNames[i] : "?";
}

void Print(const std::string& what, const grpc::Status& s) {
  std::string message = s.error_message().substr(0, 300);
  for (char& c : message) {
    if (c == '\n') c = ' ';
  }
  std::printf("%s %s %s\n", what.c_str(), CodeName(s.error_code()), message.c_str());
  std::fflush(stdout);
}

class Outsider {
 public:
  Outsider(std::shared_ptr<const ChannelSecurity> security, std::string address)
      : security_(std::move(security)), address_(std::move(address)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(kMaxMessageBytes);
    channel_ = grpc::CreateCustomChannel(address_, security_->credentials(), args);
    stub_ = v1::ParameterShard::NewStub(channel_);
  }

  // Context: a call's context with its deadline and the token, if any.
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + absl::GetFlag(FLAGS_timeout)));
    security_->Authorize(ctx.get());
    return ctx;
  }

  void Calls();
  int Pull(const std::string& path);

 private:
  grpc::Status GenericUnary(const std::string& method, const std::string& request,
                            std::string* response);
  grpc::Status GenericStream(const std::string& method, const std::string& request);

  std::shared_ptr<const ChannelSecurity> security_;
  std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ParameterShard::Stub> stub_;
};

grpc::Status Outsider::GenericUnary(const std::string& method, const std::string& request,
                                    std::string* response) {
  grpc::GenericStub stub(channel_);
  auto ctx = Context();
  grpc::CompletionQueue cq;
  grpc::Slice slice(request.data(), request.size());
  grpc::ByteBuffer req(&slice, 1), resp;
  auto call = stub.PrepareUnaryCall(ctx.get(), method, req, &cq);
  call->StartCall();
  grpc::Status status;
  call->Finish(&resp, &status, reinterpret_cast<void*>(1));
  void* tag;
  bool ok;
  cq.Next(&tag, &ok);  // the deadline bounds it
  std::vector<grpc::Slice> slices;
  if (status.ok() && resp.Dump(&slices).ok()) {
    for (const grpc::Slice& s : slices) response->append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  return status;
}

// GenericStream: a bidi call that sends `request`, closes its side and reads every
// response; the call's status.
grpc::Status Outsider::GenericStream(const std::string& method, const std::string& request) {
  grpc::GenericStub stub(channel_);
  auto ctx = Context();
  grpc::CompletionQueue cq;
  auto call = stub.PrepareCall(ctx.get(), method, &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  grpc::Slice slice(request.data(), request.size());
  grpc::ByteBuffer req(&slice, 1), resp;
  if (ok) {
    call->WriteLast(req, grpc::WriteOptions(), reinterpret_cast<void*>(2));
    cq.Next(&tag, &ok);
    while (ok) {
      call->Read(&resp, reinterpret_cast<void*>(3));
      cq.Next(&tag, &ok);
    }
  }
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  return status;
}

// Wanted: whether --calls selects `name`.
bool Wanted(absl::string_view name) {
  const std::string calls = absl::GetFlag(FLAGS_calls);
  if (calls.empty()) return true;
  for (absl::string_view c : absl::StrSplit(calls, ',')) {
    if (c == name) return true;
  }
  return false;
}

void Outsider::Calls() {
  const int rank = absl::GetFlag(FLAGS_rank);
  const int k = absl::GetFlag(FLAGS_num_workers);
  if (Wanted("Join")) {
    v1::JoinRequest req;
    req.set_rank(rank);
    req.set_num_workers(k);
    req.set_num_shards(absl::GetFlag(FLAGS_num_shards));
    req.set_shard_index(absl::GetFlag(FLAGS_shard_index));
    req.set_local_batch_size(1 << 30);
    v1::TensorSpec* t = req.mutable_layout()->add_tensors();
    t->set_name("everything");
    t->add_shape(absl::GetFlag(FLAGS_join_elements));  // by default a shard nobody could hold
    v1::JoinResponse resp;
    auto ctx = Context();
    Print("Join", stub_->Join(ctx.get(), req, &resp));
  }
  if (Wanted("Offer")) {
    auto ctx = Context();
    v1::OfferParametersResponse resp;
    auto writer = stub_->OfferParameters(ctx.get(), &resp);
    v1::OfferParametersRequest req;
    req.set_rank(rank);
    req.set_job_id(0x0bad);
    req.mutable_chunk()->set_offset(0);
    req.mutable_chunk()->set_dtype(v1::FLOAT32);
    req.mutable_chunk()->set_data(std::string(4096, '\x7f'));
    req.mutable_chunk()->set_last(true);
    writer->Write(req);
    writer->WritesDone();
    Print("Offer", writer->Finish());
  }
  if (Wanted("Train")) {
    // A Hello as `rank`: on an open server this supersedes the real worker's stream.
    auto ctx = Context();
    auto stream = stub_->Train(ctx.get());
    v1::TrainRequest hello;
    hello.mutable_hello()->set_rank(rank);
    const bool sent = stream->Write(hello);
    v1::TrainResponse resp;
    int64_t step = 0, generation = 0, elements = 0;
    bool got_point = false;
    while (sent && stream->Read(&resp)) {
      if (!resp.has_eval_point()) continue;
      step = resp.eval_point().step();
      generation = resp.eval_point().generation();
      elements += static_cast<int64_t>(resp.eval_point().chunk().data().size() / 4);
      if (resp.eval_point().chunk().last()) {
        got_point = true;
        break;
      }
    }
    if (got_point) {
      std::printf("TrainHello OK received the point of step %lld (%lld elements)\n",
                  static_cast<long long>(step), static_cast<long long>(elements));
      // A gradient of huge values: moves w anywhere if it is taken.
      v1::TrainRequest grad;
      v1::TrainRequest::Gradient* g = grad.mutable_gradient();
      g->set_step(step);
      g->set_generation(generation);
      g->set_num_samples(1);
      g->mutable_chunk()->set_offset(0);
      g->mutable_chunk()->set_dtype(v1::FLOAT32);
      std::vector<float> values(static_cast<size_t>(elements), 1e30f);
      g->mutable_chunk()->set_data(values.data(), values.size() * sizeof(float));
      g->mutable_chunk()->set_last(true);
      if (stream->Write(grad) && stream->Read(&resp) && resp.has_ack()) {
        Print("TrainGradient", grpc::Status(static_cast<grpc::StatusCode>(resp.ack().code()),
                                            resp.ack().message()));
      }
      ctx->TryCancel();
      stream->Finish();
    } else {
      stream->WritesDone();
      const grpc::Status s = stream->Finish();
      Print("TrainHello", s);
      Print("TrainGradient", s);
    }
  }
  if (Wanted("Pull")) {
    auto ctx = Context();
    v1::PullRequest req;
    auto reader = stub_->PullParameters(ctx.get(), req);
    v1::PullResponse resp;
    int64_t elements = 0;
    while (reader->Read(&resp)) elements += static_cast<int64_t>(resp.chunk().data().size() / 4);
    grpc::Status s = reader->Finish();
    if (s.ok()) s = grpc::Status(grpc::StatusCode::OK, absl::StrCat("pulled ", elements, " elements"));
    Print("Pull", s);
  }
  for (int r = 0; r < k && Wanted("Leave"); ++r) {
    auto ctx = Context();
    v1::LeaveRequest req;
    req.set_rank(r);
    v1::LeaveResponse resp;
    Print(absl::StrCat("Leave.", r), stub_->Leave(ctx.get(), req, &resp));
  }
  if (Wanted("GetStatus")) {
    auto ctx = Context();
    v1::StatusResponse resp;
    Print("GetStatus", stub_->GetStatus(ctx.get(), v1::StatusRequest(), &resp));
  }
  if (Wanted("Rewind")) {
    auto ctx = Context();
    v1::RewindRequest req;
    req.set_job_id(1);
    req.set_step(0);
    req.set_generation(1 << 20);
    v1::JobState resp;
    Print("Rewind", stub_->Rewind(ctx.get(), req, &resp));
  }
  // ServerReflectionRequest{list_services: ""} (field 7).
  if (Wanted("Reflection")) {
    Print("Reflection",
          GenericStream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                        std::string("\x3a\x00", 2)));
  }
  if (!Wanted("Health")) return;
  std::string health;
  grpc::Status s = GenericUnary("/grpc.health.v1.Health/Check", "", &health);
  if (s.ok()) s = grpc::Status(grpc::StatusCode::OK, health == "\x08\x01" ? "SERVING" : "not serving");
  Print("Health", s);
}

int Outsider::Pull(const std::string& path) {
  auto ctx = Context();
  v1::PullRequest req;
  req.set_dtype(v1::FLOAT32);
  auto reader = stub_->PullParameters(ctx.get(), req);
  v1::PullResponse resp;
  std::string bytes;
  int64_t step = -1;
  while (reader->Read(&resp)) {
    bytes += resp.chunk().data();
    step = resp.step();
  }
  const grpc::Status s = reader->Finish();
  if (!s.ok()) {
    Print("Pull", s);
    return 1;
  }
  std::ofstream(path, std::ios::binary) << bytes;
  std::printf("Pull OK %lld\n", static_cast<long long>(step));
  return 0;
}

// Flood: --streams Train streams that never speak, over --channels connections.
int Flood(const ChannelSecurity& security, const std::string& address) {
  const int n = absl::GetFlag(FLAGS_streams);
  const int c = std::max(1, absl::GetFlag(FLAGS_channels));
  struct Stream {
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call;
    grpc::ByteBuffer in;
    grpc::Status status;
    bool ended = false;
  };
  std::vector<std::unique_ptr<grpc::GenericStub>> stubs;
  for (int i = 0; i < c; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct channels, distinct connections
    stubs.push_back(std::make_unique<grpc::GenericStub>(
        grpc::CreateCustomChannel(address, security.credentials(), args)));
  }
  grpc::CompletionQueue cq;
  std::vector<std::unique_ptr<Stream>> streams(n);
  // Tags: 2i = started, 2i+1 = read done, then finished (status known).
  enum : intptr_t { kStart = 0, kRead = 1, kFinish = 2 };
  auto tag = [](int i, intptr_t what) { return reinterpret_cast<void*>(intptr_t{i} * 4 + what); };
  const absl::Time end = absl::Now() + absl::GetFlag(FLAGS_hold);
  for (int i = 0; i < n; ++i) {
    streams[i] = std::make_unique<Stream>();
    Stream& s = *streams[i];
    security.Authorize(&s.ctx);
    s.ctx.set_deadline(absl::ToChronoTime(end + absl::Seconds(30)));
    s.call = stubs[i % c]->PrepareCall(&s.ctx, absl::GetFlag(FLAGS_method), &cq);
    s.call->StartCall(tag(i, kStart));
  }
  std::printf("opened %d\n", n);
  std::fflush(stdout);
  int ended = 0;
  std::map<std::string, int> codes;
  auto handle = [&](void* t, bool ok) {
    const intptr_t v = reinterpret_cast<intptr_t>(t);
    const int i = static_cast<int>(v / 4);
    Stream& s = *streams[i];
    switch (v % 4) {
      case kStart:
        if (ok) {
          s.call->Read(&s.in, tag(i, kRead));
        } else {
          s.call->Finish(&s.status, tag(i, kFinish));
        }
        break;
      case kRead:  // the server ended the stream (or sent something: read on)
        if (ok) {
          s.call->Read(&s.in, tag(i, kRead));
        } else {
          s.call->Finish(&s.status, tag(i, kFinish));
        }
        break;
      case kFinish:
        s.ended = true;
        ++ended;
        ++codes[CodeName(s.status.error_code())];
        break;
    }
  };
  void* t;
  bool ok;
  while (absl::Now() < end) {
    const auto r = cq.AsyncNext(&t, &ok, absl::ToChronoTime(end));
    if (r == grpc::CompletionQueue::GOT_EVENT) handle(t, ok);
  }
  for (const auto& [code, count] : codes) std::printf("ended %s %d\n", code.c_str(), count);
  std::printf("open %d\n", n - ended);
  std::fflush(stdout);
  for (auto& s : streams) {
    if (!s->ended) s->ctx.TryCancel();
  }
  const absl::Time drain = absl::Now() + absl::Seconds(20);
  while (ended < n && absl::Now() < drain) {
    const auto r = cq.AsyncNext(&t, &ok, absl::ToChronoTime(drain));
    if (r == grpc::CompletionQueue::GOT_EVENT) handle(t, ok);
  }
  cq.Shutdown();
  while (cq.Next(&t, &ok)) {
  }
  return 0;
}

}  // namespace
}  // namespace gnc

int main(int argc, char** argv) {
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2 || absl::GetFlag(FLAGS_server).empty()) {
    std::fprintf(stderr, "usage: gnc_outsider calls|flood|pull --server=ADDR [flags]\n");
    return 2;
  }
  gnc::ChannelSecurityOptions o;
  o.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  absl::StatusOr<std::shared_ptr<const gnc::ChannelSecurity>> security =
      gnc::ChannelSecurity::Load(o);
  if (!security.ok()) {
    std::fprintf(stderr, "gnc_outsider: %s\n", security.status().ToString().c_str());
    return 2;
  }
  const std::string mode = args[1];
  const std::string server = absl::GetFlag(FLAGS_server);
  if (mode == "flood") return gnc::Flood(**security, server);
  gnc::Outsider outsider(*security, server);
  if (mode == "calls") {
    outsider.Calls();
    return 0;
  }
  if (mode == "pull") return outsider.Pull(absl::GetFlag(FLAGS_out));
  std::fprintf(stderr, "gnc_outsider: unknown mode %s\n", mode.c_str());
  return 2;
}
