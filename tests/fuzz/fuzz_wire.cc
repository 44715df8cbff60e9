// libFuzzer target: the hand-written wire parsers (common/wire.h) and the chunk codec
// (common/codec.h) on arbitrary bytes, split into gRPC slices at arbitrary places.
//
// Input: byte 0 picks what is parsed (TrainRequest, TrainResponse, PullResponse or a
// Chunk through the codec), byte 1 seeds the slice boundaries, the rest is the message.
// Besides no crash, leak or undefined behaviour, it checks:
// - a payload view lies inside the slices it was parsed from and has the size it says;
// - where the generated protobuf code also accepts the bytes, both read the same fields
//   (protobuf refuses some inputs gnc accepts and the reverse: those are not compared);
// - what was parsed, encoded again by gnc's encoders, parses to the same fields;
// - the codec decodes a chunk to as many floats as it counts, and encoding them again
//   gives back the same bytes (float32 always, bfloat16 except NaNs, which it quiets).
#include <google/protobuf/stubs/logging.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "common/codec.h"
#include "common/wire.h"
#include "proto/gnc.pb.h"

namespace gnc {
namespace {

#define FUZZ_CHECK(cond)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                             \
    }                                                                           \
  } while (0)

// Slices: `bytes` cut at places drawn from `seed` (0: one slice); some pieces are
// empty, as gRPC may hand over.
grpc::ByteBuffer Slices(const std::string& bytes, uint8_t seed) {
  std::vector<grpc::Slice> slices;
  if (seed == 0) {
    slices.emplace_back(bytes.data(), bytes.size());
  } else {
    uint32_t state = seed;
    size_t at = 0;
    while (at < bytes.size()) {
      state = state * 1103515245u + 12345u;
      const size_t piece = std::min<size_t>((state >> 16) % (2 * (seed % 16) + 2),
                                            bytes.size() - at);
      slices.emplace_back(bytes.data() + at, piece);
      at += piece;
    }
    if (slices.empty()) slices.emplace_back();
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Bytes(const Payload& p) {
  std::string out;
  for (auto piece : p.pieces) out.append(reinterpret_cast<const char*>(piece.data()), piece.size());
  return out;
}

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  FUZZ_CHECK(b.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// CheckPayload: every piece lies inside one of `slices`, the sizes add up, and a
// payload of whole elements decodes (reading every byte) to finite or non-finite
// floats without complaint.
void CheckPayload(const ChunkView& c, const std::vector<grpc::Slice>& slices) {
  size_t total = 0;
  for (std::span<const uint8_t> piece : c.data.pieces) {
    bool inside = false;
    for (const grpc::Slice& s : slices) {
      inside |= piece.data() >= s.begin() && piece.data() + piece.size() <= s.end();
    }
    FUZZ_CHECK(inside);
    total += piece.size();
  }
  FUZZ_CHECK(total == c.data.size);
  absl::StatusOr<WireDType> dtype = ToWireDType(c.dtype);
  absl::StatusOr<int64_t> count = PayloadElements(c.data.size, c.dtype);
  if (!dtype.ok() || !count.ok()) return;
  std::vector<float> values(*count);
  DecodePayload(c.data, *dtype, values);
  // Independently: the bytes as one string, element by element.
  const std::string bytes = Bytes(c.data);
  for (int64_t i = 0; i < *count; ++i) {
    float expected;
    if (*dtype == WireDType::kFloat32) {
      std::memcpy(&expected, bytes.data() + 4 * i, 4);
    } else {
      uint16_t h;
      std::memcpy(&h, bytes.data() + 2 * i, 2);
      expected = Bf16ToFloat(h);
    }
    FUZZ_CHECK(std::memcmp(&expected, &values[i], 4) == 0);
  }
}

bool SameChunk(const ChunkView& c, const v1::Chunk& p) {
  return c.offset == p.offset() && c.dtype == p.dtype() && c.last == p.last() &&
         Bytes(c.data) == p.data();
}

bool SameChunk(const ChunkView& a, const ChunkView& b) {
  return a.offset == b.offset && a.dtype == b.dtype && a.last == b.last &&
         Bytes(a.data) == Bytes(b.data);
}

std::span<const uint8_t> Span(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

void TrainRequest(const std::string& bytes, uint8_t seed) {
  std::vector<grpc::Slice> slices;
  TrainRequestView view;
  if (!ParseTrainRequest(Slices(bytes, seed), &slices, &view).ok()) return;
  CheckPayload(view.chunk, slices);
  v1::TrainRequest proto;
  if (proto.ParseFromString(bytes)) {
    switch (view.kind) {
      case TrainRequestView::Kind::kNone:
        FUZZ_CHECK(proto.kind_case() == v1::TrainRequest::KIND_NOT_SET);
        break;
      case TrainRequestView::Kind::kHello:
        FUZZ_CHECK(proto.has_hello());
        FUZZ_CHECK(view.rank == proto.hello().rank());
        FUZZ_CHECK(view.wire_dtype == proto.hello().wire_dtype());
        break;
      case TrainRequestView::Kind::kGradient:
        FUZZ_CHECK(proto.has_gradient());
        FUZZ_CHECK(view.step == proto.gradient().step());
        FUZZ_CHECK(view.num_samples == proto.gradient().num_samples());
        FUZZ_CHECK(view.generation == proto.gradient().generation());
        FUZZ_CHECK(SameChunk(view.chunk, proto.gradient().chunk()));
        break;
    }
  }
  // Encoded again by gnc, parsed again by gnc: the same fields.
  std::vector<grpc::Slice> again_slices;
  TrainRequestView again;
  if (view.kind == TrainRequestView::Kind::kHello) {
    FUZZ_CHECK(ParseTrainRequest(EncodeHello(view.rank, view.wire_dtype), &again_slices, &again)
                   .ok());
    FUZZ_CHECK(again.kind == view.kind && again.rank == view.rank &&
               again.wire_dtype == view.wire_dtype);
  } else if (view.kind == TrainRequestView::Kind::kGradient) {
    const std::string payload = Bytes(view.chunk.data);
    const grpc::ByteBuffer msg = EncodeGradientChunk(
        view.step, view.num_samples, view.generation, view.chunk.offset, view.chunk.dtype,
        view.chunk.last, Span(payload));
    FUZZ_CHECK(ParseTrainRequest(msg, &again_slices, &again).ok());
    FUZZ_CHECK(again.kind == view.kind && again.step == view.step &&
               again.num_samples == view.num_samples && again.generation == view.generation &&
               SameChunk(again.chunk, view.chunk));
    v1::TrainRequest reparsed;
    FUZZ_CHECK(reparsed.ParseFromString(Flatten(msg)));
  }
}

void CheckPoint(const PointView& p, const v1::Chunk& chunk, int64_t step, uint64_t job_id,
                int64_t generation) {
  FUZZ_CHECK(p.step == step && p.job_id == job_id && p.generation == generation);
  FUZZ_CHECK(SameChunk(p.chunk, chunk));
}

void TrainResponse(const std::string& bytes, uint8_t seed) {
  std::vector<grpc::Slice> slices;
  TrainResponseView view;
  if (!ParseTrainResponse(Slices(bytes, seed), &slices, &view).ok()) return;
  CheckPayload(view.point.chunk, slices);
  v1::TrainResponse proto;
  if (proto.ParseFromString(bytes)) {
    switch (view.kind) {
      case TrainResponseView::Kind::kNone:
        FUZZ_CHECK(proto.kind_case() == v1::TrainResponse::KIND_NOT_SET);
        break;
      case TrainResponseView::Kind::kEvalPoint: {
        FUZZ_CHECK(proto.has_eval_point());
        const v1::TrainResponse::EvalPoint& e = proto.eval_point();
        CheckPoint(view.point, e.chunk(), e.step(), e.job_id(), e.generation());
        break;
      }
      case TrainResponseView::Kind::kAck:
        FUZZ_CHECK(proto.has_ack());
        FUZZ_CHECK(view.ack_step == proto.ack().step() && view.ack_code == proto.ack().code() &&
                   view.ack_message == proto.ack().message());
        break;
    }
  }
  std::vector<grpc::Slice> again_slices;
  TrainResponseView again;
  if (view.kind == TrainResponseView::Kind::kEvalPoint) {
    const PointView& p = view.point;
    const std::string payload = Bytes(p.chunk.data);
    FUZZ_CHECK(ParseTrainResponse(EncodeEvalPointChunk(p.step, p.job_id, p.generation,
                                                       p.chunk.offset, p.chunk.dtype,
                                                       p.chunk.last, Span(payload)),
                                  &again_slices, &again)
                   .ok());
    FUZZ_CHECK(again.kind == view.kind && again.point.step == p.step &&
               again.point.job_id == p.job_id && again.point.generation == p.generation &&
               SameChunk(again.point.chunk, p.chunk));
  } else if (view.kind == TrainResponseView::Kind::kAck) {
    FUZZ_CHECK(ParseTrainResponse(EncodeAck(view.ack_step, view.ack_code, view.ack_message),
                                  &again_slices, &again)
                   .ok());
    FUZZ_CHECK(again.kind == view.kind && again.ack_step == view.ack_step &&
               again.ack_code == view.ack_code && again.ack_message == view.ack_message);
  }
}

void PullResponse(const std::string& bytes, uint8_t seed) {
  std::vector<grpc::Slice> slices;
  PointView view;
  if (!ParsePullResponse(Slices(bytes, seed), &slices, &view).ok()) return;
  CheckPayload(view.chunk, slices);
  v1::PullResponse proto;
  if (proto.ParseFromString(bytes)) {
    CheckPoint(view, proto.chunk(), proto.step(), proto.job_id(), proto.generation());
  }
  const std::string payload = Bytes(view.chunk.data);
  std::vector<grpc::Slice> again_slices;
  PointView again;
  FUZZ_CHECK(ParsePullResponse(EncodePullChunk(view.step, view.job_id, view.generation,
                                               view.chunk.offset, view.chunk.dtype,
                                               view.chunk.last, Span(payload)),
                               &again_slices, &again)
                 .ok());
  FUZZ_CHECK(again.step == view.step && again.job_id == view.job_id &&
             again.generation == view.generation && SameChunk(again.chunk, view.chunk));
}

// Codec: a Chunk parsed by protobuf, counted, decoded and encoded again.
void Codec(const std::string& bytes) {
  v1::Chunk chunk;
  if (!chunk.ParseFromString(bytes)) return;
  absl::StatusOr<int64_t> count = ChunkElementCount(chunk);
  absl::StatusOr<int64_t> payload_count = PayloadElements(chunk.data().size(), chunk.dtype());
  FUZZ_CHECK(count.ok() == payload_count.ok());
  if (!count.ok()) return;
  FUZZ_CHECK(*count == *payload_count);
  std::vector<float> values(*count);
  FUZZ_CHECK(DecodeChunk(chunk, values).ok());
  if (*count > 0) {
    std::vector<float> wrong(*count - 1);
    FUZZ_CHECK(!DecodeChunk(chunk, wrong).ok());
  }
  std::vector<float> scratch;
  absl::StatusOr<std::span<const float>> view = ChunkValues(chunk, &scratch);
  FUZZ_CHECK(view.ok() && static_cast<int64_t>(view->size()) == *count);
  FUZZ_CHECK(values.empty() ||
             std::memcmp(view->data(), values.data(), values.size() * sizeof(float)) == 0);
  v1::Chunk encoded;
  FUZZ_CHECK(EncodeChunk(values, {}, chunk.dtype(), &encoded).ok());
  const std::string& in = chunk.data();
  const std::string& out = encoded.data();
  FUZZ_CHECK(in.size() == out.size());
  if (chunk.dtype() == v1::BFLOAT16) {
    for (int64_t i = 0; i < *count; ++i) {
      if (std::isnan(values[i])) continue;  // quieted: the payload bit may differ
      FUZZ_CHECK(std::memcmp(in.data() + 2 * i, out.data() + 2 * i, 2) == 0);
    }
  } else {
    FUZZ_CHECK(in == out);
  }
  // a + b with b = a: doubled, as float32 arithmetic says (infinities stay, NaN stays NaN).
  FUZZ_CHECK(EncodeChunk(values, values, v1::FLOAT32, &encoded).ok());
  for (int64_t i = 0; i < *count; ++i) {
    float x;
    std::memcpy(&x, encoded.data().data() + 4 * i, 4);
    const float twice = values[i] + values[i];
    FUZZ_CHECK(std::memcmp(&x, &twice, 4) == 0 || (std::isnan(x) && std::isnan(twice)));
  }
}

}  // namespace
}  // namespace gnc

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  // Protobuf logs every refused string that is not UTF-8: silence, not a finding.
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const std::string bytes(reinterpret_cast<const char*>(data) + 2, size - 2);
  switch (data[0] % 4) {
    case 0:
      gnc::TrainRequest(bytes, data[1]);
      break;
    case 1:
      gnc::TrainResponse(bytes, data[1]);
      break;
    case 2:
      gnc::PullResponse(bytes, data[1]);
      break;
    case 3:
      gnc::Codec(bytes);
      break;
  }
  return 0;
}
