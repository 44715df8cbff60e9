// Call limits of the gRPC service (README, Security): how many calls of a kind are
// open, and the deadline of a Train stream's Hello. Small, lock-free or with one
// mutex each; thread-safe.
#ifndef GNC_SERVER_CALL_LIMITS_H_
#define GNC_SERVER_CALL_LIMITS_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace gnc {

// Admission: calls open now, against a cap (0: none). Lock-free.
class Admission {
 public:
  using OnChange = std::function<void(int open)>;
  Admission(int cap, OnChange on_change) : cap_(cap), on_change_(std::move(on_change)) {}

  // TryEnter: counts one more call, or returns false (nothing counted) at the cap.
  bool TryEnter() {
    const int open = open_.fetch_add(1, std::memory_order_relaxed) + 1;
    if (cap_ > 0 && open > cap_) {
      open_.fetch_sub(1, std::memory_order_relaxed);
      return false;
    }
    if (on_change_) on_change_(open);
    return true;
  }
  void Leave() {
    const int open = open_.fetch_sub(1, std::memory_order_relaxed) - 1;
    if (on_change_) on_change_(open);
  }
  int cap() const { return cap_; }

 private:
  const int cap_;
  const OnChange on_change_;
  std::atomic<int> open_{0};
};

// HelloWaiter: a Train stream that has not said Hello yet.
class HelloWaiter {
 public:
  virtual ~HelloWaiter() = default;
  // OnHelloDue: its time is up (or the shard drains); it ends unless its Hello came
  // meanwhile.
  virtual void OnHelloDue(bool draining) = 0;
};

// HelloDeadlines: the streams waiting for their Hello, in the order they opened (so in
// deadline order: every stream gets the same timeout).
class HelloDeadlines {
 public:
  explicit HelloDeadlines(absl::Duration timeout) : timeout_(timeout) {}

  absl::Duration timeout() const { return timeout_; }
  void Add(std::weak_ptr<HelloWaiter> waiter) {
    absl::MutexLock lock(&mu_);
    due_.emplace_back(absl::Now() + timeout_, std::move(waiter));
  }
  // TakeDue: the waiters whose deadline has passed and that still exist.
  std::vector<std::shared_ptr<HelloWaiter>> TakeDue(absl::Time now) {
    std::vector<std::shared_ptr<HelloWaiter>> out;
    absl::MutexLock lock(&mu_);
    while (!due_.empty() && due_.front().first <= now) {
      if (auto w = due_.front().second.lock()) out.push_back(std::move(w));
      due_.pop_front();
    }
    return out;
  }

 private:
  const absl::Duration timeout_;
  absl::Mutex mu_;
  std::deque<std::pair<absl::Time, std::weak_ptr<HelloWaiter>>> due_ ABSL_GUARDED_BY(mu_);
};


}  // namespace gnc

#endif  // GNC_SERVER_CALL_LIMITS_H_
