// Payload: the bytes of one tensor chunk as they arrived, in pieces (gRPC's slices), and
// their decoding into float32. Free of gRPC and protobuf, so the shard core can copy a
// received chunk straight into a worker's slot.
#ifndef GNC_COMMON_PAYLOAD_H_
#define GNC_COMMON_PAYLOAD_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace gnc {

// WireDType: the element encoding of a payload (gnc.v1.DType's FLOAT32 and BFLOAT16).
enum class WireDType { kFloat32, kBfloat16 };

inline size_t ElementBytes(WireDType dtype) { return dtype == WireDType::kBfloat16 ? 2 : 4; }

struct Payload {
  std::vector<std::span<const uint8_t>> pieces;
  size_t size = 0;  // bytes, the sum of the pieces' sizes
};

// DecodePayload: the payload's elements into dst as float32; elements may straddle
// pieces. REQUIRES: dst.size() * ElementBytes(dtype) == payload.size.
void DecodePayload(const Payload& payload, WireDType dtype, std::span<float> dst);

}  // namespace gnc

#endif  // GNC_COMMON_PAYLOAD_H_
