#include "server/train_chunk.h"

#include "absl/status/statusor.h"

namespace gnc {

GradientChunk ChunkFromWire(const TrainRequestView& msg, int rank, uint64_t session) {
  GradientChunk chunk;
  chunk.rank = rank;
  chunk.session = session;
  chunk.generation = msg.generation;
  chunk.step = msg.step;
  chunk.num_samples = msg.num_samples;
  chunk.offset = msg.chunk.offset;
  chunk.last = msg.chunk.last;
  absl::StatusOr<WireDType> dtype = ToWireDType(msg.chunk.dtype);
  absl::StatusOr<int64_t> count = PayloadElements(msg.chunk.data.size, msg.chunk.dtype);
  if (!dtype.ok()) {
    chunk.decode_status = dtype.status();
  } else if (!count.ok()) {
    chunk.decode_status = count.status();
  } else {
    chunk.dtype = *dtype;
    chunk.payload = &msg.chunk.data;
  }
  return chunk;
}

}  // namespace gnc
