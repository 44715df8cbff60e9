// Wire codec: the one place where tensor chunks are encoded and decoded. Callers
// never touch Chunk.data directly, so the hot path can later switch to hand-encoded
// grpc::ByteBuffers without changing them.
#ifndef GNC_COMMON_CODEC_H_
#define GNC_COMMON_CODEC_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/finite.h"
#include "proto/gnc.pb.h"

namespace gnc {

// Default chunk: 1 MiB of float32.
inline constexpr int64_t kDefaultChunkElements = int64_t{1} << 18;
// Receive limit for gRPC channels and servers: chunk plus headers, bounded.
inline constexpr int kMaxMessageBytes = 8 << 20;

// ElementSize: bytes per element, or INVALID_ARGUMENT for an unknown dtype.
absl::StatusOr<int> ElementSize(v1::DType dtype);

// ChunkElementCount: elements carried by `chunk`; INVALID_ARGUMENT if the dtype is
// unknown or the payload is not a whole number of elements.
absl::StatusOr<int64_t> ChunkElementCount(const v1::Chunk& chunk);

// EncodeChunk: sets chunk's dtype and data to (a + b) element-wise, or to a when b
// is empty. REQUIRES: b.empty() || b.size() == a.size().
absl::Status EncodeChunk(std::span<const float> a, std::span<const float> b, v1::DType dtype,
                         v1::Chunk* chunk);

// DecodeChunk: writes the chunk's elements to dst as float32.
// REQUIRES: dst.size() == *ChunkElementCount(chunk).
absl::Status DecodeChunk(const v1::Chunk& chunk, std::span<float> dst);

// ChunkValues: the chunk's elements as float32. A float32 payload that is suitably
// aligned is viewed in place (valid while chunk lives and is unchanged); anything else
// is decoded into *scratch and the view points there. Errors as ChunkElementCount.
absl::StatusOr<std::span<const float>> ChunkValues(const v1::Chunk& chunk,
                                                   std::vector<float>* scratch);

}  // namespace gnc

#endif  // GNC_COMMON_CODEC_H_
