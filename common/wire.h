// The hot path's wire format: Train and PullParameters messages encoded and decoded
// by hand as grpc::ByteBuffers, still valid gnc.v1 protobuf (the tensor payload is the
// last field on the wire, which protobuf allows). A message is a small header slice
// followed by a payload slice that points at the tensor, so sending copies nothing;
// a received message is read in place from gRPC's slices, so decoding copies the
// payload once, into its destination. Every other message uses the generated code.
//
// Thread-compatible functions; a view's spans are valid while the slices it was
// parsed from live.
#ifndef GNC_COMMON_WIRE_H_
#define GNC_COMMON_WIRE_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/payload.h"
#include "proto/gnc.pb.h"

namespace gnc {

// ChunkView: a decoded Chunk.
struct ChunkView {
  int64_t offset = 0;
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  bool last = false;
  Payload data;
};

// TrainRequestView: a decoded TrainRequest (client to server).
struct TrainRequestView {
  enum class Kind { kNone, kHello, kGradient } kind = Kind::kNone;
  int32_t rank = 0;                            // kHello
  v1::DType wire_dtype = v1::DTYPE_UNSPECIFIED;  // kHello
  int64_t step = 0, num_samples = 0, generation = 0;  // kGradient
  ChunkView chunk;                                    // kGradient
};

// PointView: a decoded TrainResponse.EvalPoint or PullResponse.
struct PointView {
  int64_t step = 0;
  uint64_t job_id = 0;
  int64_t generation = 0;
  ChunkView chunk;
};

// TrainResponseView: a decoded TrainResponse (server to client).
struct TrainResponseView {
  enum class Kind { kNone, kEvalPoint, kAck } kind = Kind::kNone;
  PointView point;  // kEvalPoint
  int64_t ack_step = 0;
  int32_t ack_code = 0;
  std::string ack_message;
};

// Parse*: the message in `msg`, whose slices are kept in *slices for the view.
// INVALID_ARGUMENT for malformed protobuf; unknown fields are skipped.
absl::Status ParseTrainRequest(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                               TrainRequestView* out);
absl::Status ParseTrainResponse(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                                TrainResponseView* out);
absl::Status ParsePullResponse(const grpc::ByteBuffer& msg, std::vector<grpc::Slice>* slices,
                               PointView* out);

// Encode*: messages whose payload slice points at `payload` without a copy. With an
// `owner`, the slice holds a reference to it until gRPC has written the bytes; without
// one, REQUIRES: payload stays valid and unchanged until the call has ended or the
// peer has answered the message (the client's gradients: it waits for the Ack).
grpc::ByteBuffer EncodeHello(int32_t rank, v1::DType wire_dtype);
grpc::ByteBuffer EncodeGradientChunk(int64_t step, int64_t num_samples, int64_t generation,
                                     int64_t offset, v1::DType dtype, bool last,
                                     std::span<const uint8_t> payload,
                                     std::shared_ptr<const void> owner = nullptr);
grpc::ByteBuffer EncodeEvalPointChunk(int64_t step, uint64_t job_id, int64_t generation,
                                      int64_t offset, v1::DType dtype, bool last,
                                      std::span<const uint8_t> payload,
                                      std::shared_ptr<const void> owner = nullptr);
grpc::ByteBuffer EncodePullChunk(int64_t step, uint64_t job_id, int64_t generation,
                                 int64_t offset, v1::DType dtype, bool last,
                                 std::span<const uint8_t> payload,
                                 std::shared_ptr<const void> owner = nullptr);
grpc::ByteBuffer EncodeAck(int64_t step, int32_t code, const std::string& message);

// ToWireDType: gnc.v1's dtype (UNSPECIFIED = FLOAT32); INVALID_ARGUMENT when unknown.
absl::StatusOr<WireDType> ToWireDType(v1::DType dtype);
v1::DType ToProtoDType(WireDType dtype);

// PayloadElements: elements of `dtype` in `size` bytes; INVALID_ARGUMENT when the size
// is not a whole number of elements or the dtype is unknown.
absl::StatusOr<int64_t> PayloadElements(size_t size, v1::DType dtype);

}  // namespace gnc

#endif  // GNC_COMMON_WIRE_H_
