// PinnedStager: moves data between pageable host memory (the shard core's buffers)
// and device memory through a ring of pinned chunks, so that the host copy into one
// chunk overlaps the DMA of the others. Copies are queued on the stager's stream.
//
// Thread-compatible: one caller at a time (the merge backend serialises its calls).
#ifndef GNC_SERVER_CUDA_PINNED_STAGER_H_
#define GNC_SERVER_CUDA_PINNED_STAGER_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/cuda/cuda_memory.h"

namespace gnc::cuda {

// HostToDevice, DeviceToHost: one contiguous copy.
struct HostToDevice {
  const void* host = nullptr;
  void* device = nullptr;
  size_t bytes = 0;
};
struct DeviceToHost {
  const void* device = nullptr;
  void* host = nullptr;
  size_t bytes = 0;
};

class PinnedStager {
 public:
  // Create: `num_chunks` (>= 2) pinned chunks of `chunk_bytes` each, used on `stream`
  // (not owned; must outlive the stager). INTERNAL when pinned memory is unavailable.
  static absl::StatusOr<std::unique_ptr<PinnedStager>> Create(cudaStream_t stream,
                                                              size_t chunk_bytes = 4 << 20,
                                                              int num_chunks = 3);

  // Upload: queues host -> device copies of every transfer in order. Returns once
  // every host byte has been read (the host buffers may then change); the device
  // side completes in stream order, before any work queued after this call.
  absl::Status Upload(std::span<const HostToDevice> transfers);

  // Download: device -> host for every transfer, after all work queued so far on the
  // stream. Returns once every byte is in host memory.
  absl::Status Download(std::span<const DeviceToHost> transfers);

 private:
  struct Chunk {
    PinnedArray<unsigned char> buffer;
    Event ready;  // recorded after the copy that uses the buffer
  };
  PinnedStager(cudaStream_t stream, size_t chunk_bytes)
      : stream_(stream), chunk_bytes_(chunk_bytes) {}

  cudaStream_t stream_;
  size_t chunk_bytes_;
  std::vector<Chunk> chunks_;
};

}  // namespace gnc::cuda

#endif  // GNC_SERVER_CUDA_PINNED_STAGER_H_
