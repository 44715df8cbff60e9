// Publication: the evaluation points of one step, immutable once published and shared
// by every stream that sends them: the unperturbed w, and each contributor's own point
// x_k, already in its wire encoding (the merge wrote it there). A stream sends its
// rank's bytes as they are, so no point is copied per worker; a worker that gets w in
// bfloat16 shares one encoding of w made on first use.
//
// Thread-safe.
#ifndef GNC_SERVER_PUBLICATION_H_
#define GNC_SERVER_PUBLICATION_H_

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/payload.h"
#include "server/shard_state.h"

namespace gnc {

// PointTag: which evaluation point a message belongs to.
struct PointTag {
  JobIdentity job;
  int64_t step = -1;  // -1: none

  bool operator==(const PointTag&) const = default;
};

// PointBuffer: one worker's point in its wire encoding (one of the two vectors).
struct PointBuffer {
  WireDType dtype = WireDType::kFloat32;
  std::vector<float> f32;
  std::vector<uint16_t> bf16;

  std::span<const uint8_t> Bytes() const;
  size_t Elements() const { return dtype == WireDType::kBfloat16 ? bf16.size() : f32.size(); }
};

// PointBytes: what a stream sends for one point, and what keeps those bytes alive.
struct PointBytes {
  std::shared_ptr<const void> owner;
  std::span<const uint8_t> bytes;
};

class Publication {
 public:
  // points[rank]: that worker's perturbed point, or null when it gets w.
  Publication(PointTag tag, SharedFloats w,
              std::vector<std::shared_ptr<const PointBuffer>> points = {});

  const PointTag& tag() const { return tag_; }
  const SharedFloats& w() const { return w_; }
  bool Perturbed(int rank) const;

  // For: the bytes of rank's point in `dtype` (rank -1: the unperturbed w). A point
  // that the merge wrote in the other encoding is converted once (a worker that came
  // back with another dtype).
  PointBytes For(int rank, WireDType dtype) const;

 private:
  const PointTag tag_;
  const SharedFloats w_;
  const std::vector<std::shared_ptr<const PointBuffer>> points_;
  mutable absl::Mutex mu_;
  mutable std::shared_ptr<const PointBuffer> w_bf16_ ABSL_GUARDED_BY(mu_);
  // Points asked for in the encoding the merge did not write, by rank.
  mutable std::vector<std::shared_ptr<const PointBuffer>> converted_ ABSL_GUARDED_BY(mu_);
};

}  // namespace gnc

#endif  // GNC_SERVER_PUBLICATION_H_
