// The hand-encoded wire format against the generated protobuf code: what gnc encodes,
// protobuf parses to the same fields; what protobuf serializes (also split across
// slices at every boundary, and merged from several messages), gnc parses the same.
#include "common/wire.h"

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/bf16.h"
#include "gtest/gtest.h"

namespace gnc {
namespace {

std::string Flatten(const grpc::ByteBuffer& b) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(b.Dump(&slices).ok());
  std::string out;
  for (const grpc::Slice& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return out;
}

// Split: bytes as a ByteBuffer of slices of `piece` bytes (the last may be shorter).
grpc::ByteBuffer Split(const std::string& bytes, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t i = 0; i < bytes.size(); i += piece) {
    slices.emplace_back(bytes.data() + i, std::min(piece, bytes.size() - i));
  }
  if (slices.empty()) slices.emplace_back();
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Bytes(const Payload& p) {
  std::string out;
  for (auto piece : p.pieces) out.append(reinterpret_cast<const char*>(piece.data()), piece.size());
  return out;
}

std::vector<uint8_t> Pattern(size_t n) {
  std::vector<uint8_t> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<uint8_t>(i * 131 + 7);
  return v;
}

TEST(WireTest, EncodedGradientChunkIsValidProtobuf) {
  const std::vector<uint8_t> payload = Pattern(4096);
  const grpc::ByteBuffer msg =
      EncodeGradientChunk(1234567, 64, 3, 1 << 20, v1::BFLOAT16, true, payload);
  v1::TrainRequest req;
  ASSERT_TRUE(req.ParseFromString(Flatten(msg)));
  ASSERT_TRUE(req.has_gradient());
  EXPECT_EQ(req.gradient().step(), 1234567);
  EXPECT_EQ(req.gradient().num_samples(), 64);
  EXPECT_EQ(req.gradient().generation(), 3);
  EXPECT_EQ(req.gradient().chunk().offset(), 1 << 20);
  EXPECT_EQ(req.gradient().chunk().dtype(), v1::BFLOAT16);
  EXPECT_TRUE(req.gradient().chunk().last());
  EXPECT_EQ(req.gradient().chunk().data(), std::string(payload.begin(), payload.end()));
}

TEST(WireTest, EncodedPointsHelloAndAckAreValidProtobuf) {
  const std::vector<uint8_t> payload = Pattern(1000);
  v1::TrainResponse resp;
  ASSERT_TRUE(resp.ParseFromString(
      Flatten(EncodeEvalPointChunk(77, 0xfedcba9876543210ull, 5, 262144, v1::FLOAT32, false,
                                   payload))));
  ASSERT_TRUE(resp.has_eval_point());
  EXPECT_EQ(resp.eval_point().step(), 77);
  EXPECT_EQ(resp.eval_point().job_id(), 0xfedcba9876543210ull);
  EXPECT_EQ(resp.eval_point().generation(), 5);
  EXPECT_EQ(resp.eval_point().chunk().offset(), 262144);
  EXPECT_FALSE(resp.eval_point().chunk().last());
  EXPECT_EQ(resp.eval_point().chunk().data().size(), 1000u);

  v1::PullResponse pull;
  ASSERT_TRUE(pull.ParseFromString(
      Flatten(EncodePullChunk(9, 42, 1, 0, v1::FLOAT32, true, payload))));
  EXPECT_EQ(pull.step(), 9);
  EXPECT_EQ(pull.job_id(), 42u);
  EXPECT_EQ(pull.chunk().data(), std::string(payload.begin(), payload.end()));

  v1::TrainRequest hello;
  ASSERT_TRUE(hello.ParseFromString(Flatten(EncodeHello(3, v1::BFLOAT16))));
  EXPECT_EQ(hello.hello().rank(), 3);
  EXPECT_EQ(hello.hello().wire_dtype(), v1::BFLOAT16);

  v1::TrainResponse ack;
  ASSERT_TRUE(ack.ParseFromString(Flatten(EncodeAck(8, 10, "late"))));
  EXPECT_EQ(ack.ack().code(), 10);
  EXPECT_EQ(ack.ack().message(), "late");
}

TEST(WireTest, ParsesProtobufSplitAnywhereAndMergedAcrossMessages) {
  v1::TrainRequest req;
  v1::TrainRequest::Gradient* g = req.mutable_gradient();
  g->set_step(31);
  g->set_num_samples(8);
  g->set_generation(2);
  g->mutable_chunk()->set_offset(512);
  g->mutable_chunk()->set_dtype(v1::FLOAT32);
  g->mutable_chunk()->set_last(true);
  const std::vector<uint8_t> payload = Pattern(300);
  g->mutable_chunk()->set_data(payload.data(), payload.size());
  const std::string bytes = req.SerializeAsString();
  for (size_t piece : {size_t{1}, size_t{3}, size_t{7}, size_t{64}, bytes.size()}) {
    std::vector<grpc::Slice> keep;
    TrainRequestView view;
    ASSERT_TRUE(ParseTrainRequest(Split(bytes, piece), &keep, &view).ok()) << piece;
    EXPECT_EQ(view.kind, TrainRequestView::Kind::kGradient);
    EXPECT_EQ(view.step, 31);
    EXPECT_EQ(view.num_samples, 8);
    EXPECT_EQ(view.generation, 2);
    EXPECT_EQ(view.chunk.offset, 512);
    EXPECT_TRUE(view.chunk.last);
    EXPECT_EQ(Bytes(view.chunk.data), std::string(payload.begin(), payload.end())) << piece;
  }
  // A sender may put the payload in a second message that protobuf merges into the
  // first: the header fields from one, the data from the other.
  v1::TrainRequest head = req, tail;
  head.mutable_gradient()->mutable_chunk()->clear_data();
  tail.mutable_gradient()->mutable_chunk()->set_data(payload.data(), payload.size());
  const std::string merged = head.SerializeAsString() + tail.SerializeAsString();
  v1::TrainRequest reference;
  ASSERT_TRUE(reference.ParseFromString(merged));
  std::vector<grpc::Slice> keep;
  TrainRequestView view;
  ASSERT_TRUE(ParseTrainRequest(Split(merged, 5), &keep, &view).ok());
  EXPECT_EQ(view.step, reference.gradient().step());
  EXPECT_EQ(view.chunk.offset, reference.gradient().chunk().offset());
  EXPECT_EQ(view.chunk.last, reference.gradient().chunk().last());
  EXPECT_EQ(Bytes(view.chunk.data), reference.gradient().chunk().data());
  // Unknown fields are skipped, as protobuf does.
  std::string with_unknown = bytes + std::string("\xf8\x07\x05", 3);  // field 127, varint 5
  ASSERT_TRUE(ParseTrainRequest(Split(with_unknown, 2), &keep, &view).ok());
  EXPECT_EQ(view.step, 31);
}

TEST(WireTest, OneofMemberAfterTheOtherStartsFromDefaults) {
  // Gradient(step 8), Hello, Gradient(): protobuf clears the gradient when the hello
  // replaces it, so the last gradient has step 0; gnc must read the same.
  v1::TrainRequest gradient, hello, empty_gradient, empty_hello;
  gradient.mutable_gradient()->set_step(8);
  gradient.mutable_gradient()->mutable_chunk()->set_offset(3);
  hello.mutable_hello()->set_rank(2);
  empty_gradient.mutable_gradient();
  empty_hello.mutable_hello();
  const std::string bytes = gradient.SerializeAsString() + hello.SerializeAsString() +
                            empty_gradient.SerializeAsString();
  v1::TrainRequest reference;
  ASSERT_TRUE(reference.ParseFromString(bytes));
  ASSERT_TRUE(reference.has_gradient());
  std::vector<grpc::Slice> keep;
  TrainRequestView view;
  ASSERT_TRUE(ParseTrainRequest(Split(bytes, 3), &keep, &view).ok());
  EXPECT_EQ(view.kind, TrainRequestView::Kind::kGradient);
  EXPECT_EQ(view.step, reference.gradient().step());
  EXPECT_EQ(view.chunk.offset, reference.gradient().chunk().offset());
  // Hello, Gradient, Hello(): the rank is the default again.
  const std::string hellos = hello.SerializeAsString() + gradient.SerializeAsString() +
                             empty_hello.SerializeAsString();
  ASSERT_TRUE(reference.ParseFromString(hellos));
  ASSERT_TRUE(ParseTrainRequest(Split(hellos, 2), &keep, &view).ok());
  EXPECT_EQ(view.kind, TrainRequestView::Kind::kHello);
  EXPECT_EQ(view.rank, reference.hello().rank());
  EXPECT_EQ(view.rank, 0);
  // Ack after an EvalPoint: the point's fields are gone (step 0, no payload).
  v1::TrainResponse point, ack;
  point.mutable_eval_point()->set_step(5);
  point.mutable_eval_point()->mutable_chunk()->set_data("abcd");
  ack.mutable_ack()->set_code(3);
  TrainResponseView response;
  ASSERT_TRUE(ParseTrainResponse(Split(point.SerializeAsString() + ack.SerializeAsString(), 4),
                                 &keep, &response)
                  .ok());
  EXPECT_EQ(response.kind, TrainResponseView::Kind::kAck);
  EXPECT_EQ(response.ack_code, 3);
  EXPECT_EQ(response.point.step, 0);
  EXPECT_EQ(response.point.chunk.data.size, 0u);
}

TEST(WireTest, MalformedMessagesAreRefused) {
  v1::TrainResponse resp;
  resp.mutable_eval_point()->set_step(4);
  resp.mutable_eval_point()->mutable_chunk()->set_data(std::string(100, 'x'));
  const std::string bytes = resp.SerializeAsString();
  std::vector<grpc::Slice> keep;
  TrainResponseView view;
  for (size_t cut : {size_t{1}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_FALSE(ParseTrainResponse(Split(bytes.substr(0, cut), 3), &keep, &view).ok()) << cut;
  }
  ASSERT_TRUE(ParseTrainResponse(Split(bytes, 3), &keep, &view).ok());
  EXPECT_EQ(view.kind, TrainResponseView::Kind::kEvalPoint);
  EXPECT_EQ(view.point.step, 4);
  EXPECT_FALSE(ParseTrainResponse(Split(std::string("\x0f"), 1), &keep, &view).ok());
}

TEST(WireTest, DecodesPayloadsSplitInsideAnElement) {
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> values(1001);
  for (float& x : values) x = normal(rng);
  std::vector<uint16_t> bf(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf[i] = FloatToBf16(values[i]);
  const std::string f32(reinterpret_cast<const char*>(values.data()), values.size() * 4);
  const std::string b16(reinterpret_cast<const char*>(bf.data()), bf.size() * 2);
  for (size_t piece : {size_t{1}, size_t{3}, size_t{5}, size_t{4096}}) {
    for (const auto& [bytes, dtype] : {std::pair{f32, v1::FLOAT32}, std::pair{b16, v1::BFLOAT16}}) {
      grpc::ByteBuffer buf = Split(bytes, piece);
      std::vector<grpc::Slice> slices;
      ASSERT_TRUE(buf.Dump(&slices).ok());
      Payload p;
      for (const grpc::Slice& s : slices) {
        p.pieces.emplace_back(s.begin(), s.size());
        p.size += s.size();
      }
      ASSERT_EQ(*PayloadElements(p.size, dtype), 1001);
      std::vector<float> out(1001);
      DecodePayload(p, *ToWireDType(dtype), out);
      for (size_t i = 0; i < values.size(); ++i) {
        const float want = dtype == v1::FLOAT32 ? values[i] : Bf16ToFloat(bf[i]);
        ASSERT_EQ(std::memcmp(&out[i], &want, 4), 0) << piece << " " << i;
      }
    }
  }
  EXPECT_FALSE(PayloadElements(7, v1::FLOAT32).ok());
  EXPECT_FALSE(PayloadElements(8, static_cast<v1::DType>(9)).ok());
}

}  // namespace
}  // namespace gnc
