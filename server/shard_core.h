// ShardCore: one shard of a gnc job, free of gRPC. Owns the shard's parameters w,
// momentum v, the step's gradients (K slots) and every worker's perturbation; runs
// membership, the step barrier (BSP with a straggler timeout and quorum), the merge
// and the optimizer through a MergeBackend.
//
// Thread-safe: every method may be called from any thread. One internal mutex
// guards all state; the merge runs under it (the step is a barrier anyway).
//
// Bad input never changes w, v, the step or any committed gradient: every refusal
// happens before the state is touched, and a partial gradient lives in its worker's
// slot, which the merge reads only once that gradient is complete.
#ifndef GNC_SERVER_SHARD_CORE_H_
#define GNC_SERVER_SHARD_CORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "server/merge_backend.h"
#include "server/options.h"

namespace gnc {

// StepReport: what one completed step did, for metrics and logs.
struct StepReport {
  int64_t step = 0;             // the step that completed
  int contributors = 0;         // gradients merged
  double total_samples = 0;     // B = sum n_k
  double mean_samples = 0;      // b = mean n_k
  double lr = 0;
  MergeStats stats;
  std::vector<int32_t> ranks;   // contributors' ranks, in the order of stats.noise_sqnorm
  absl::Duration merge_duration;
  absl::Duration step_duration;  // since the previous step completed
};

// ShardObserver: hooks for metrics. Called with the core's lock held: keep them
// cheap and never call back into the core.
class ShardObserver {
 public:
  virtual ~ShardObserver() = default;
  virtual void OnStep(const StepReport& report) {}
  // reason: a short snake_case label (non_finite, bad_chunk, future_step, duplicate,
  // unknown_worker, bad_size).
  virtual void OnRejected(std::string_view reason) {}
  virtual void OnLate() {}
  virtual void OnMembership(int connected, int finished) {}
  virtual void OnGradientBytes(int64_t bytes) {}
  // Parameter payload sent to workers (called by the transport, not the core).
  virtual void OnSentBytes(int64_t bytes) {}
};

struct JoinArgs {
  int rank = 0;
  int num_workers = 0;
  int num_shards = 0;
  int shard_index = 0;
  ModelLayout layout;
  int64_t local_batch_size = 0;
  uint64_t config_hash = 0;  // 0 = not pinned
};

struct JoinInfo {
  ShardRange range;
  bool needs_parameters = false;
  uint64_t config_hash = 0;
  uint64_t layout_hash = 0;
  int64_t step = 0;
};

// GradientChunk: one piece of a worker's gradient, already decoded.
struct GradientChunk {
  int rank = 0;
  uint64_t session = 0;
  int64_t step = 0;
  int64_t num_samples = 0;
  int64_t offset = 0;  // element offset within the shard
  std::span<const float> values;
  bool last = false;
  // Not OK when the transport could not decode the chunk (dtype, payload size); the
  // core refuses it in sequence like any other bad chunk.
  absl::Status decode_status;
};

// PushOutcome: what the stream should tell the worker about a chunk.
enum class PushOutcome {
  kContinue,   // chunk stored; more expected; no reply
  kCommitted,  // gradient complete and accepted for the step; reply OK
  kDropped,    // rest of a refused gradient; no reply
};

struct ShardStatus {
  int64_t step = 0;
  int connected = 0;
  int finished = 0;
  bool initialized = false;
  bool draining = false;
  ShardRange range;
  uint64_t layout_hash = 0;
  double lr = 0;
};

class ShardCore {
 public:
  using ClockFn = std::function<absl::Time()>;

  // REQUIRES: options.Validate().ok(); backend non-null. observer may be null and
  // must outlive the core. clock defaults to absl::Now.
  ShardCore(ShardOptions options, std::unique_ptr<MergeBackend> backend,
            ShardObserver* observer = nullptr, ClockFn clock = nullptr);

  const ShardOptions& options() const { return options_; }

  // Join: registers `args.rank`. Fixes the layout on the first call.
  // Errors: INVALID_ARGUMENT (rank, batch), FAILED_PRECONDITION (K, S, shard index,
  // layout or config hash mismatch), UNAVAILABLE (draining).
  absl::StatusOr<JoinInfo> Join(const JoinArgs& args);

  // ShardSize: elements owned by this shard; FAILED_PRECONDITION before any join.
  absl::StatusOr<int64_t> ShardSize() const;

  // OfferParameters: initial w. Returns true if it initialised the shard, false if
  // the shard already was (the offer is discarded).
  // Errors: NOT_FOUND / FAILED_PRECONDITION (rank not joined), INVALID_ARGUMENT
  // (size differs from the shard's, non-finite value).
  absl::StatusOr<bool> OfferParameters(int rank, std::vector<float> values);

  // OpenStream: rank's Train stream starts; a newer stream supersedes an older one
  // (a restarted worker). Returns the session id to pass to the calls below.
  // Errors: NOT_FOUND, FAILED_PRECONDITION (not joined, not initialised), UNAVAILABLE.
  absl::StatusOr<uint64_t> OpenStream(int rank);
  // CloseStream: the stream ended; its partial gradient is discarded and the barrier
  // stops waiting for the worker. A stale session is ignored.
  void CloseStream(int rank, uint64_t session);

  // WaitForStep: blocks until the shard's step is > after_step, up to max_wait.
  // Returns the current step. Errors: DEADLINE_EXCEEDED (max_wait passed; call again),
  // CANCELLED (session superseded), UNAVAILABLE (draining).
  absl::StatusOr<int64_t> WaitForStep(int rank, uint64_t session, int64_t after_step,
                                      absl::Duration max_wait);

  // EvalPointSink: receives w and delta for a range (delta empty when x = w); it
  // runs under the core's reader lock, so it should only encode.
  using EvalPointSink =
      absl::FunctionRef<absl::Status(std::span<const float> w, std::span<const float> delta)>;
  // ReadEvalPoint: elements [offset, offset+count) of x_rank at `step`, passed to sink.
  // Errors: ABORTED (step is no longer current: start over with the new one),
  // INVALID_ARGUMENT (range), and whatever sink returns.
  absl::Status ReadEvalPoint(int rank, int64_t step, int64_t offset, int64_t count,
                             EvalPointSink sink) const;

  // PushGradient: stores one chunk. Chunks of one gradient come in offset order;
  // offset 0 starts a new attempt. After a refusal the rest of that attempt is
  // dropped silently, so the worker hears exactly one verdict per attempt.
  // Errors (each counted): CANCELLED (session superseded: end the stream),
  // ABORTED (step already completed: late), FAILED_PRECONDITION
  // (step not started yet), ALREADY_EXISTS (gradient already accepted for the step),
  // INVALID_ARGUMENT (gap, duplicate chunk, range, sample count, non-finite value,
  // early last chunk).
  absl::StatusOr<PushOutcome> PushGradient(const GradientChunk& chunk);

  // Leave: rank is done; the barrier stops waiting for it. Idempotent.
  absl::Status Leave(int rank);

  // CheckDeadline: completes the step if the straggler timeout has passed and the
  // quorum is in. Call periodically.
  void CheckDeadline();

  // Snapshot: copy of w and its step. FAILED_PRECONDITION if not initialised.
  absl::Status Snapshot(std::vector<float>* w, int64_t* step) const;

  ShardStatus GetStatus() const;

  // Drain: refuse new joins and streams, wake every waiter with UNAVAILABLE.
  void Drain();
  // AllFinished: every worker has called Leave.
  bool AllFinished() const;

 private:
  struct Worker {
    bool joined = false;
    bool ever_connected = false;
    bool finished = false;
    uint64_t session = 0;  // 0 = no open stream
    // The gradient being received.
    std::vector<float> grad;
    int64_t expected_offset = 0;
    int64_t attempt_samples = 0;
    bool poisoned = false;
    bool committed = false;  // complete gradient for the current step
    // delta for the current step's evaluation point; valid iff has_delta.
    std::vector<float> delta;
    bool has_delta = false;
  };

  absl::Status CheckRank(int rank) const;
  absl::Status Refuse(Worker& w, std::string_view reason, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int Quorum() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TryCompleteStep(bool deadline_passed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CompleteStep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void ReportMembership() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ShardOptions options_;
  const std::unique_ptr<MergeBackend> backend_;
  ShardObserver* const observer_;
  const ClockFn clock_;

  mutable absl::Mutex mu_;
  bool has_layout_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t layout_hash_ ABSL_GUARDED_BY(mu_) = 0;
  ShardRange range_ ABSL_GUARDED_BY(mu_);
  bool initialized_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<float> w_ ABSL_GUARDED_BY(mu_);
  std::vector<float> v_ ABSL_GUARDED_BY(mu_);
  int64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Time deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time last_step_time_ ABSL_GUARDED_BY(mu_);
  absl::CondVar step_cv_;
};

}  // namespace gnc

#endif  // GNC_SERVER_SHARD_CORE_H_
