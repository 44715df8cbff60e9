#include "server/parallel_for.h"

#include <algorithm>

namespace gnc {

ParallelFor::ParallelFor(int threads) : parts_(std::max(threads, 1)) {
  for (int p = 1; p < parts_; ++p) helpers_.emplace_back([this, p] { Helper(p); });
}

ParallelFor::~ParallelFor() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  for (std::thread& t : helpers_) t.join();
}

void ParallelFor::Run(int64_t n, absl::FunctionRef<void(int64_t begin, int64_t end)> fn) {
  const int parts = threads();
  if (parts == 1 || n < parts) {
    fn(0, n);
    return;
  }
  {
    absl::MutexLock lock(&mu_);
    n_ = n;
    fn_ = &fn;
    pending_ = parts - 1;
    ++generation_;
  }
  fn(0, n / parts);
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return pending_ == 0; };
  mu_.Await(absl::Condition(&done));
  fn_ = nullptr;
}

void ParallelFor::Helper(int part) {
  uint64_t seen = 0;
  while (true) {
    int64_t begin = 0, end = 0;
    absl::FunctionRef<void(int64_t, int64_t)>* fn = nullptr;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || generation_ != seen; };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      seen = generation_;
      const int64_t parts = parts_;
      begin = n_ * part / parts;
      end = n_ * (part + 1) / parts;
      fn = fn_;
    }
    (*fn)(begin, end);
    absl::MutexLock lock(&mu_);
    --pending_;
  }
}

}  // namespace gnc
