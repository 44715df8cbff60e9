// ParallelFor: a fixed set of threads that run one function over the index range
// [0, n), split into `threads` contiguous parts in order (part p gets
// [p n / T, (p + 1) n / T)). The caller's thread runs part 0. A caller that combines
// per-index results in index order gets the same answer for any thread count.
//
// Thread-compatible: one Run at a time (the shard core runs one merge at a time).
#ifndef GNC_SERVER_PARALLEL_FOR_H_
#define GNC_SERVER_PARALLEL_FOR_H_

#include <cstdint>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace gnc {

class ParallelFor {
 public:
  // REQUIRES: threads >= 1 (threads - 1 helpers are started).
  explicit ParallelFor(int threads);
  ~ParallelFor();
  ParallelFor(const ParallelFor&) = delete;
  ParallelFor& operator=(const ParallelFor&) = delete;

  int threads() const { return parts_; }

  // Run: fn(begin, end) for every part; returns once all have returned.
  void Run(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

 private:
  void Helper(int part);

  const int parts_;
  std::vector<std::thread> helpers_;
  absl::Mutex mu_;
  uint64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int64_t n_ ABSL_GUARDED_BY(mu_) = 0;
  absl::FunctionRef<void(int64_t, int64_t)>* fn_ ABSL_GUARDED_BY(mu_) = nullptr;
};

}  // namespace gnc

#endif  // GNC_SERVER_PARALLEL_FOR_H_
