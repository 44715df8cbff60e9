// HostPinner: page-locks host memory for a device backend (MergeBackend::Pinner), and
// PinWhileAlive, which ties a pinned range to the lifetime of the object holding it.
#ifndef GNC_SERVER_HOST_PINNER_H_
#define GNC_SERVER_HOST_PINNER_H_

#include <cstddef>
#include <iterator>
#include <map>
#include <memory>
#include <utility>

namespace gnc {

// HostPinner: shared by the backend and every buffer pinned through it: a buffer may
// outlive the backend (a publication that a stream is still sending), and whoever
// frees it last releases its range.
//
// Pin is a hint: a backend that cannot pin (page-locked memory is limited) still
// works, it stages those bytes. Every pinned range must be released with Unpin(data)
// before it is freed or moved. Thread-safe (buffers are freed on any thread, receive
// slots change while a merge runs).
class HostPinner {
 public:
  virtual ~HostPinner() = default;
  virtual void Pin(const void* data, size_t bytes) = 0;
  virtual void Unpin(const void* data) = 0;
};

// PinnedRanges: the ranges a pinner holds, by start address. Thread-compatible (a
// pinner locks around it).
class PinnedRanges {
 public:
  // Add: false (nothing added) when [data, data + bytes) overlaps a held range.
  bool Add(const void* data, size_t bytes) {
    const auto* start = Start(data);
    auto next = ranges_.lower_bound(start);
    if (next != ranges_.end() && next->first < start + bytes) return false;
    if (next != ranges_.begin() && std::prev(next)->first + std::prev(next)->second > start) {
      return false;
    }
    ranges_.emplace_hint(next, start, bytes);
    return true;
  }
  // Remove: whether a range started at data (it is no longer held).
  bool Remove(const void* data) { return ranges_.erase(Start(data)) != 0; }
  bool Holds(const void* data) const { return ranges_.count(Start(data)) != 0; }
  // Contains: whether [data, data + bytes) lies within one held range.
  bool Contains(const void* data, size_t bytes) const {
    const auto* start = Start(data);
    auto it = ranges_.upper_bound(start);
    if (it == ranges_.begin()) return false;
    --it;
    return start + bytes <= it->first + it->second;
  }
  size_t size() const { return ranges_.size(); }
  // ForEach: fn(start) for every held range.
  template <typename Fn>
  void ForEach(Fn fn) const {
    for (const auto& [start, bytes] : ranges_) fn(static_cast<const void*>(start));
  }

 private:
  static const unsigned char* Start(const void* data) {
    return static_cast<const unsigned char*>(data);
  }
  std::map<const unsigned char*, size_t> ranges_;  // start -> bytes
};

// PinWhileAlive: shares `object`; [data, data + bytes) (memory the object owns and
// never reallocates) is pinned through `pinner` until the last holder lets go. With a
// null pinner it is a plain shared pointer.
template <typename T>
std::shared_ptr<T> PinWhileAlive(std::unique_ptr<T> object, const void* data, size_t bytes,
                                 std::shared_ptr<HostPinner> pinner) {
  if (pinner == nullptr || data == nullptr || bytes == 0) {
    return std::shared_ptr<T>(std::move(object));
  }
  // (Should the control block's allocation throw, the deleter runs: Unpin of a range
  // not pinned yet is a no-op.)
  std::shared_ptr<T> shared(object.release(), [pinner, data](T* p) {
    pinner->Unpin(data);
    delete p;
  });
  pinner->Pin(data, bytes);
  return shared;
}

}  // namespace gnc

#endif  // GNC_SERVER_HOST_PINNER_H_
