#include "server/cuda/pinned_stager.h"

#include <algorithm>
#include <cstring>

namespace gnc::cuda {
namespace {

// Piece: one chunk-sized part of a transfer, source and destination.
struct Piece {
  const unsigned char* from;
  unsigned char* to;
  size_t bytes;
};

void Split(const void* from, void* to, size_t bytes, size_t chunk_bytes,
           std::vector<Piece>* pieces) {
  const auto* src = static_cast<const unsigned char*>(from);
  auto* dst = static_cast<unsigned char*>(to);
  for (size_t at = 0; at < bytes; at += chunk_bytes) {
    pieces->push_back({src + at, dst + at, std::min(chunk_bytes, bytes - at)});
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<PinnedStager>> PinnedStager::Create(cudaStream_t stream,
                                                                   size_t chunk_bytes,
                                                                   int num_chunks) {
  if (chunk_bytes == 0 || num_chunks < 2) {
    return absl::InvalidArgumentError("PinnedStager needs >= 2 chunks of >= 1 byte");
  }
  std::unique_ptr<PinnedStager> stager(new PinnedStager(stream, chunk_bytes));
  for (int i = 0; i < num_chunks; ++i) {
    absl::StatusOr<PinnedArray<unsigned char>> buffer =
        PinnedArray<unsigned char>::Allocate(chunk_bytes);
    if (!buffer.ok()) return buffer.status();
    absl::StatusOr<Event> ready = Event::Create();
    if (!ready.ok()) return ready.status();
    stager->chunks_.push_back({std::move(*buffer), std::move(*ready)});
  }
  return stager;
}

absl::Status PinnedStager::Upload(std::span<const HostToDevice> transfers) {
  std::vector<Piece> pieces;
  for (const HostToDevice& t : transfers) Split(t.host, t.device, t.bytes, chunk_bytes_, &pieces);
  for (size_t i = 0; i < pieces.size(); ++i) {
    Chunk& chunk = chunks_[i % chunks_.size()];
    // The chunk's previous DMA must have read it before it is refilled.
    GNC_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(chunk.ready.get()));
    std::memcpy(chunk.buffer.data(), pieces[i].from, pieces[i].bytes);
    GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(pieces[i].to, chunk.buffer.data(), pieces[i].bytes,
                                             cudaMemcpyHostToDevice, stream_));
    GNC_CUDA_RETURN_IF_ERROR(cudaEventRecord(chunk.ready.get(), stream_));
  }
  return absl::OkStatus();
}

absl::Status PinnedStager::Download(std::span<const DeviceToHost> transfers) {
  std::vector<Piece> pieces;
  for (const DeviceToHost& t : transfers) Split(t.device, t.host, t.bytes, chunk_bytes_, &pieces);
  const size_t ring = chunks_.size();
  auto issue = [&](size_t i) -> absl::Status {
    Chunk& chunk = chunks_[i % ring];
    GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(chunk.buffer.data(), pieces[i].from, pieces[i].bytes,
                                             cudaMemcpyDeviceToHost, stream_));
    GNC_CUDA_RETURN_IF_ERROR(cudaEventRecord(chunk.ready.get(), stream_));
    return absl::OkStatus();
  };
  // Keep up to `ring` copies in flight; drain each chunk into host memory in order.
  for (size_t i = 0; i < std::min(ring, pieces.size()); ++i) {
    if (absl::Status s = issue(i); !s.ok()) return s;
  }
  for (size_t i = 0; i < pieces.size(); ++i) {
    Chunk& chunk = chunks_[i % ring];
    GNC_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(chunk.ready.get()));
    std::memcpy(pieces[i].to, chunk.buffer.data(), pieces[i].bytes);
    if (i + ring < pieces.size()) {
      if (absl::Status s = issue(i + ring); !s.ok()) return s;
    }
  }
  return absl::OkStatus();
}

}  // namespace gnc::cuda
