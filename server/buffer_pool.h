// BufferPool: shard-sized float buffers reused from step to step. A buffer is handed
// out again only once nobody else holds it (a stream still sending it, the checkpoint
// writer still writing it), so published parameters never change under a reader.
// With a pinner (a device backend's) every buffer is page-locked from its allocation
// until the last holder frees it.
// Thread-compatible (the shard core holds its lock around every call).
#ifndef GNC_SERVER_BUFFER_POOL_H_
#define GNC_SERVER_BUFFER_POOL_H_

#include <cstddef>
#include <memory>
#include <utility>
#include <vector>

#include "server/host_pinner.h"

namespace gnc {

class BufferPool {
 public:
  explicit BufferPool(std::shared_ptr<HostPinner> pinner = nullptr) : pinner_(std::move(pinner)) {}

  // Acquire: a buffer of n floats that nobody else holds; its contents are whatever
  // it held before.
  std::shared_ptr<std::vector<float>> Acquire(size_t n) {
    std::shared_ptr<std::vector<float>> found;
    size_t free = 0;
    for (auto it = buffers_.begin(); it != buffers_.end();) {
      if (it->use_count() == 1) {  // only the pool holds it
        if (found == nullptr && (*it)->size() == n) {
          found = *it;
        } else if (++free > kKeepFree || (*it)->size() != n) {
          it = buffers_.erase(it);  // more spares than a step needs, or a stale size
          continue;
        }
      }
      ++it;
    }
    if (found == nullptr) {
      auto fresh = std::make_unique<std::vector<float>>(n);
      const float* data = fresh->data();
      found = PinWhileAlive(std::move(fresh), data, n * sizeof(float), pinner_);
      buffers_.push_back(found);
    }
    return found;
  }

  size_t size() const { return buffers_.size(); }

 private:
  static constexpr size_t kKeepFree = 1;
  std::shared_ptr<HostPinner> pinner_;
  std::vector<std::shared_ptr<std::vector<float>>> buffers_;
};

}  // namespace gnc

#endif  // GNC_SERVER_BUFFER_POOL_H_
