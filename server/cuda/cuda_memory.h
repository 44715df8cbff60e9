// Owning handles for CUDA resources: device arrays (cudaMalloc), pinned host arrays
// (cudaHostAlloc), streams and events. Move-only; each frees what it holds.
// Creation returns INTERNAL with the failing call on error.
#ifndef GNC_SERVER_CUDA_CUDA_MEMORY_H_
#define GNC_SERVER_CUDA_CUDA_MEMORY_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>

#include "absl/status/statusor.h"
#include "common/cuda/cuda_status.h"

namespace gnc::cuda {

// DeviceArray<T>: `size` elements of device memory (contents undefined on creation).
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  static absl::StatusOr<DeviceArray> Allocate(size_t size) {
    DeviceArray a;
    if (size == 0) return a;
    GNC_CUDA_RETURN_IF_ERROR(cudaMalloc(reinterpret_cast<void**>(&a.data_), size * sizeof(T)));
    a.size_ = size;
    return a;
  }
  DeviceArray(DeviceArray&& o) noexcept { *this = std::move(o); }
  DeviceArray& operator=(DeviceArray&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() {
    if (data_ != nullptr) cudaFree(data_);
  }

  T* data() const { return data_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// PinnedArray<T>: `size` elements of page-locked host memory, the only host memory
// an async copy overlaps with.
template <typename T>
class PinnedArray {
 public:
  PinnedArray() = default;
  static absl::StatusOr<PinnedArray> Allocate(size_t size) {
    PinnedArray a;
    if (size == 0) return a;
    GNC_CUDA_RETURN_IF_ERROR(
        cudaHostAlloc(reinterpret_cast<void**>(&a.data_), size * sizeof(T), cudaHostAllocDefault));
    a.size_ = size;
    return a;
  }
  PinnedArray(PinnedArray&& o) noexcept { *this = std::move(o); }
  PinnedArray& operator=(PinnedArray&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() {
    if (data_ != nullptr) cudaFreeHost(data_);
  }

  T* data() const { return data_; }
  size_t size() const { return size_; }
  T& operator[](size_t i) const { return data_[i]; }

 private:
  T* data_ = nullptr;
  size_t size_ = 0;
};

// Stream: a non-blocking stream (no implicit sync with the legacy default stream).
class Stream {
 public:
  Stream() = default;
  static absl::StatusOr<Stream> Create() {
    Stream s;
    GNC_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&s.stream_, cudaStreamNonBlocking));
    return s;
  }
  Stream(Stream&& o) noexcept { std::swap(stream_, o.stream_); }
  Stream& operator=(Stream&& o) noexcept {
    std::swap(stream_, o.stream_);
    return *this;
  }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  ~Stream() {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

// Event: an event without timing, for ordering host work against a stream.
class Event {
 public:
  Event() = default;
  static absl::StatusOr<Event> Create() {
    Event e;
    GNC_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&e.event_, cudaEventDisableTiming));
    return e;
  }
  Event(Event&& o) noexcept { std::swap(event_, o.event_); }
  Event& operator=(Event&& o) noexcept {
    std::swap(event_, o.event_);
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace gnc::cuda

#endif  // GNC_SERVER_CUDA_CUDA_MEMORY_H_
