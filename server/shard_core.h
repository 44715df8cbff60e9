// ShardCore: one shard of a gnc job, free of gRPC and protobuf, as a pipeline of four
// stages (DESIGN section 2):
//   1. Receive: each worker has a slot (its gradient buffer) with a lock of its own; a
//      chunk is checked against the step under the shard's lock, then copied into the
//      slot without it.
//   2. Barrier: membership by rank, sessions, quorum, straggler deadline; once a step's
//      gradients are in, it hands the filled slots over.
//   3. Merge: the MergeBackend runs outside every lock on the step's ShardState (w, v,
//      step, noise EMAs, job identity: what checkpoints save) and writes each
//      contributor's next point in its wire encoding.
//   4. Publish: an immutable Publication of the step's points, which every stream sends
//      without a copy; streams waiting for it are told (PointWaiter), nothing polls.
// The merge runs on whichever thread completes the step (the last gradient, the
// deadline, a departure), one at a time.
//
// Thread-safe: every method may be called from any thread.
//
// Invariants:
// - Bad input never changes w, v, the step or any committed gradient: a chunk is
//   checked before it is copied, into its own worker's slot, which the merge reads only
//   once that gradient is complete; a committed slot is never written.
// - A step whose update would make w or v non-finite is not applied: the shard is then
//   "diverged" and refuses all training with FAILED_PRECONDITION; its state and its
//   checkpoints stay those of the last good step.
// - A gradient a worker completed for the current step is kept when its stream is
//   superseded (a restarted worker): that worker's next point is the next step's.
#ifndef GNC_SERVER_SHARD_CORE_H_
#define GNC_SERVER_SHARD_CORE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "common/payload.h"
#include "server/buffer_pool.h"
#include "server/checkpoint.h"
#include "server/merge_backend.h"
#include "server/options.h"
#include "server/publication.h"
#include "server/shard_state.h"
#include "server/shard_types.h"

namespace gnc {

class ShardCore {
 public:
  using ClockFn = std::function<absl::Time()>;

  // REQUIRES: options.Validate().ok(); backend non-null. observer and checkpoints may
  // be null and must outlive the core. clock defaults to absl::Now.
  ShardCore(ShardOptions options, std::unique_ptr<MergeBackend> backend,
            ShardObserver* observer = nullptr, ClockFn clock = nullptr,
            CheckpointStore* checkpoints = nullptr);
  ~ShardCore();

  const ShardOptions& options() const { return options_; }

  // RestoreNewest: before serving, takes the newest checkpoint that still verifies
  // (older ones when a newer fails) and increments its generation. OK with no
  // checkpoint store or no usable file (the shard starts blank). The first Join may
  // still swap it for an older one if it belongs to another layout or job.
  absl::Status RestoreNewest();

  // Join: registers `args.rank`. Fixes the layout on the first call.
  // Errors: INVALID_ARGUMENT (rank, batch), FAILED_PRECONDITION (K, S, shard index,
  // layout, config hash or job id mismatch), UNAVAILABLE (draining).
  absl::StatusOr<JoinInfo> Join(const JoinArgs& args);

  // ShardSize: elements owned by this shard; FAILED_PRECONDITION before any join.
  absl::StatusOr<int64_t> ShardSize() const;

  // OfferSize: elements an offer from `rank` must carry (the shard's), asked before
  // its buffer is allocated. Errors: NOT_FOUND (rank), FAILED_PRECONDITION (not joined).
  absl::StatusOr<int64_t> OfferSize(int rank) const;

  // OfferParameters: initial w, founding job `job_id` when it initialises the shard.
  // An offer to an initialised shard is size-checked and discarded.
  // Errors: NOT_FOUND / FAILED_PRECONDITION (rank not joined), INVALID_ARGUMENT
  // (size differs from the shard's, non-finite value, job id 0).
  absl::StatusOr<OfferResult> OfferParameters(int rank, uint64_t job_id,
                                              std::vector<float> values);

  // OpenStream: rank's Train stream starts, receiving points in `dtype`; a newer
  // stream supersedes an older one (a restarted worker), whose waits end with
  // CANCELLED. Returns the session id to pass to the calls below.
  // Errors: NOT_FOUND, FAILED_PRECONDITION (not joined, not initialised, diverged),
  // UNAVAILABLE (draining).
  absl::StatusOr<uint64_t> OpenStream(int rank, WireDType dtype = WireDType::kFloat32);
  // CloseStream: the stream ended; its partial gradient is discarded and the barrier
  // stops waiting for the worker (under a quorum). A stale session is ignored.
  void CloseStream(int rank, uint64_t session);

  // NextPoint: the publication this stream should send next, once its step differs
  // from `sent` and this rank has no gradient in for the current step. nullptr when
  // none is due yet: `waiter` is then told once something changes.
  // Errors: CANCELLED (session superseded, or 0: none open), UNAVAILABLE (draining),
  // FAILED_PRECONDITION
  // (diverged).
  absl::StatusOr<std::shared_ptr<const Publication>> NextPoint(
      int rank, uint64_t session, const PointTag& sent, std::weak_ptr<PointWaiter> waiter = {});

  // PushGradient: stores one chunk. Chunks of one gradient come in offset order;
  // offset 0 starts a new attempt. After a refusal the rest of that attempt is
  // dropped silently, so the worker hears exactly one verdict per attempt. A chunk that
  // completes the step runs the merge before it returns.
  // Errors (each counted): CANCELLED (session superseded, or 0: end the stream),
  // ABORTED (step already completed, or an older generation: late), FAILED_PRECONDITION
  // (step not started yet, diverged), ALREADY_EXISTS (gradient already accepted for
  // the step), INVALID_ARGUMENT (gap, duplicate chunk, range, sample count outside
  // [1, the batch declared at Join], non-finite value, early last chunk).
  absl::StatusOr<PushOutcome> PushGradient(const GradientChunk& chunk);

  // Leave: rank is done; the barrier stops waiting for it. Idempotent.
  absl::Status Leave(int rank);

  // Rewind: moves the shard to `step` of its timeline at `generation` (see the
  // proto's Rewind). A generation not above the shard's is a no-op returning the
  // state. Errors: FAILED_PRECONDITION (job id, not initialised, diverged, step not
  // among rewind_steps or its checkpoint no longer verifies), UNAVAILABLE (draining).
  absl::StatusOr<JobStateInfo> Rewind(uint64_t job_id, int64_t step, int64_t generation);

  // CheckDeadline: completes the step if the straggler timeout has passed and the
  // quorum is in; reports (log, observer) a step that waits too long. Call often.
  void CheckDeadline();

  // Current: the current publication (w and its tag); nullptr before w0.
  std::shared_ptr<const Publication> Current() const;

  ShardStatus GetStatus() const;

  // Drain: refuse new joins and streams, tell every waiter (UNAVAILABLE), and hand the
  // current state to the checkpoint store (see CheckpointStore::Flush).
  void Drain();
  // Done: the job needs this shard no more: every worker has left, or some have and
  // the rest are gone (no open stream) with the job at or past its total_steps.
  bool Done() const;

 private:
  struct Worker {
    bool joined = false;
    bool ever_connected = false;
    bool finished = false;
    int64_t local_batch = 0;  // declared at Join: the bound on num_samples
    uint64_t session = 0;     // 0 = no open stream
    WireDType dtype = WireDType::kFloat32;
    absl::Time since;         // connected or disconnected since
    absl::Time last_heard;    // last gradient chunk
    bool committed = false;   // complete gradient for the current step in its slot
    int64_t samples = 0;      // of the committed gradient
    double sqnorm = 0;        // of the committed gradient (when clipping)
    std::weak_ptr<PointWaiter> waiter;
  };
  // Slot: a worker's gradient buffer and the attempt being received into it.
  struct Slot {
    absl::Mutex mu;
    bool poisoned ABSL_GUARDED_BY(mu) = false;  // the attempt was refused: drop the rest
    int64_t expected ABSL_GUARDED_BY(mu) = 0;   // next offset of the attempt
    int64_t samples ABSL_GUARDED_BY(mu) = 0;
    double sqnorm ABSL_GUARDED_BY(mu) = 0;
    // Written under mu while the worker has no committed gradient; read by the merge
    // (without mu) while it has.
    std::vector<float> g;
  };
  using Waiters = std::vector<std::shared_ptr<PointWaiter>>;
  struct MergeJob;

  absl::Status CheckRank(int rank) const;
  // StreamStatus: OK when `session` is the rank's open stream `open`.
  static absl::Status StreamStatus(uint64_t open, uint64_t session);
  absl::Status Refuse(Slot& slot, std::string_view reason, absl::Status status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(slot.mu);
  PointTag Tag() const ABSL_SHARED_LOCKS_REQUIRED(mu_) { return {state_.job, state_.step}; }
  // With fresh noise a step has two passes (state_.step counts passes): the noise pass
  // (even) forms the perturbations from gradients at w and leaves w, v and the noise
  // EMAs alone; the update pass (odd) merges the gradients taken at the perturbed
  // points. StepStart: the pass at which the current optimizer step began, whose
  // state (w, v, EMAs) is the current one.
  bool NoisePass() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return options_.noise_timing == NoiseTiming::kFresh && state_.step % 2 == 0;
  }
  int64_t StepStart() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return state_.step - state_.step % options_.PassesPerStep();
  }
  double Rate() const ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return options_.lr.Rate(state_.step / options_.PassesPerStep());
  }
  JobStateInfo JobInfo() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status DivergedError() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  int Quorum() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  std::vector<int> WaitingFor() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // StepReady: the step's gradients are in (or the deadline passed with a quorum).
  bool StepReady() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // MaybeMerge: runs the step's merge if it is ready and none runs; then tells the
  // waiting streams. REQUIRES: no lock held.
  void MaybeMerge() ABSL_LOCKS_EXCLUDED(mu_);
  std::unique_ptr<MergeJob> PrepareMerge() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishMerge(MergeJob& job, const absl::Status& status, Waiters* wake)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Publish: a publication of w alone (after init, restore, rewind); wakes everyone.
  void Publish(Waiters* wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TakeWaiters(Waiters* wake) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  static void Wake(const Waiters& wake);
  void ReportMembership() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adopt: makes `state` (loaded from a checkpoint) the shard's; false (logged) when
  // it does not fit this shard.
  bool Adopt(ShardState state, const std::string& from) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Rebind: the first Join found the restored state of another layout or job: take
  // the newest older checkpoint that matches, or start blank.
  void Rebind(uint64_t layout_hash, uint64_t job_id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // NewPointBuffer: a point buffer of d elements in `dtype`, pinned while it lives.
  std::shared_ptr<PointBuffer> NewPointBuffer(WireDType dtype, size_t d) const;
  // ResetStep: forget the current step's gradients and every perturbation.
  void ResetStep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Checkpoint() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const ShardOptions options_;
  const std::unique_ptr<MergeBackend> backend_;
  // The backend's page-locking service (null for the CPU backend): receive slots,
  // pooled w and v and point buffers are pinned through it.
  const std::shared_ptr<HostPinner> pinner_;
  ShardObserver* const observer_;
  const ClockFn clock_;
  CheckpointStore* const checkpoints_;
  std::vector<std::unique_ptr<Slot>> slots_;  // one per rank, made by the constructor

  mutable absl::Mutex mu_;
  bool has_layout_ ABSL_GUARDED_BY(mu_) = false;
  bool bound_ ABSL_GUARDED_BY(mu_) = false;  // a Join has accepted the layout
  ShardRange range_ ABSL_GUARDED_BY(mu_);
  bool initialized_ ABSL_GUARDED_BY(mu_) = false;
  bool restored_ ABSL_GUARDED_BY(mu_) = false;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
  bool diverged_ ABSL_GUARDED_BY(mu_) = false;
  bool merging_ ABSL_GUARDED_BY(mu_) = false;
  ShardState state_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<const Publication> publication_ ABSL_GUARDED_BY(mu_);
  // Each rank's point buffer, rewritten by the merge once nobody reads it any more.
  std::vector<std::shared_ptr<PointBuffer>> points_ ABSL_GUARDED_BY(mu_);
  // The w and v the last applied merge wrote, and the version it was told
  // (MergeParams::state_version): held, so that identity means "unchanged since".
  SharedFloats merged_w_ ABSL_GUARDED_BY(mu_);
  SharedFloats merged_v_ ABSL_GUARDED_BY(mu_);
  uint64_t merged_version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t next_version_ ABSL_GUARDED_BY(mu_) = 0;
  BufferPool w_pool_ ABSL_GUARDED_BY(mu_);
  BufferPool v_pool_ ABSL_GUARDED_BY(mu_);
  int64_t checkpointed_step_ ABSL_GUARDED_BY(mu_) = -1;
  std::vector<Worker> workers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_session_ ABSL_GUARDED_BY(mu_) = 1;
  absl::Time deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  absl::Time retry_after_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();  // a failed merge
  absl::Time last_step_time_ ABSL_GUARDED_BY(mu_);
  absl::Time step_began_ ABSL_GUARDED_BY(mu_);
  absl::Time last_stall_report_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

}  // namespace gnc

#endif  // GNC_SERVER_SHARD_CORE_H_
