// The reactor of a Train stream (gRPC's callback API), one per worker's stream: it reads
// the worker's gradient chunks into the shard core's slot, acknowledges them, and sends
// the worker's next point from the core's publication without a copy.
#ifndef GNC_SERVER_TRAIN_REACTOR_H_
#define GNC_SERVER_TRAIN_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include "server/call_limits.h"
#include "server/shard_core.h"

namespace gnc {

// NewTrainReactor: the reactor of one Train stream; it deletes itself when the call is
// done. REQUIRES: the caller has entered `streams` for this stream; the reactor leaves
// it when done. `hellos` holds the stream's Hello deadline.
grpc::ServerBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer>* NewTrainReactor(
    ShardCore* core, ShardObserver* observer, Admission* streams, HelloDeadlines* hellos);

}  // namespace gnc

#endif  // GNC_SERVER_TRAIN_REACTOR_H_
