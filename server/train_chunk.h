// ChunkFromWire: the shard core's view of one parsed Train message, shared by the
// service (server/service.cc) and the shard fuzz target, so both drive the core with
// the same conversion.
#ifndef GNC_SERVER_TRAIN_CHUNK_H_
#define GNC_SERVER_TRAIN_CHUNK_H_

#include <cstdint>

#include "common/wire.h"
#include "server/shard_core.h"

namespace gnc {

// The chunk `msg` carries for (rank, session). A dtype or payload size the wire does
// not allow becomes chunk.decode_status, which PushGradient refuses with nothing changed.
// The chunk points into msg's payload: msg must outlive it.
GradientChunk ChunkFromWire(const TrainRequestView& msg, int rank, uint64_t session);

}  // namespace gnc

#endif  // GNC_SERVER_TRAIN_CHUNK_H_
