// Allocation failures as a Status. gnc allocates its big buffers (shards, gradients,
// points) where the size comes from the job; running out of memory there must answer
// RESOURCE_EXHAUSTED, never end the process nor surface as gRPC's UNKNOWN.
#ifndef GNC_COMMON_ALLOCATION_H_
#define GNC_COMMON_ALLOCATION_H_

#include <new>
#include <stdexcept>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace gnc {

// TryAllocate: runs `allocate` (which may throw std::bad_alloc or std::length_error)
// and returns RESOURCE_EXHAUSTED naming `what` when it throws; OK otherwise.
template <typename F>
absl::Status TryAllocate(absl::string_view what, F&& allocate) {
  try {
    std::forward<F>(allocate)();
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat("out of memory allocating ", what));
  } catch (const std::length_error&) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", what, ": too large"));
  }
  return absl::OkStatus();
}

}  // namespace gnc

#endif  // GNC_COMMON_ALLOCATION_H_
