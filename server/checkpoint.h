// CheckpointStore: one shard's checkpoint folder. Files are written atomically (a
// temporary file, fsync, rename, fsync of the folder), carry a header (format
// version, job id and generation, step, config and layout hashes, shard identity)
// and a CRC-32 of everything before it, and are verified before they are trusted:
// a file that fails any check is refused with a log line naming it and why.
//
// Writes run on a background thread from a snapshot the caller hands over, so a
// step is held up only by the copy of the state. One write is in flight at a time;
// a newer snapshot handed over meanwhile replaces an older one that has not started.
// After each write only the newest `keep` files stay.
//
// Thread-safe.
#ifndef GNC_SERVER_CHECKPOINT_H_
#define GNC_SERVER_CHECKPOINT_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/shard_state.h"

namespace gnc {

// CheckpointInfo: a verified checkpoint file, described by its header.
struct CheckpointInfo {
  std::string path;
  JobIdentity job;
  int64_t step = 0;
  uint64_t layout_hash = 0;
  int64_t model_elements = 0;
  int64_t shard_elements = 0;
};

struct CheckpointOptions {
  std::string dir;       // created if missing
  int shard_index = 0;
  int num_shards = 1;
  uint64_t config_hash = 0;  // files of another config are refused...
  // ...unless this is set: an operator resumes a job under changed settings (a lower
  // learning rate after a divergence). Every shard must then get the same flags.
  bool accept_other_config = false;
  int keep = 2;              // newest files kept after each write (>= 1)
};

// CheckpointObserver: told about each write, for metrics and logs. Called on the
// writer thread.
class CheckpointObserver {
 public:
  virtual ~CheckpointObserver() = default;
  virtual void OnCheckpointWritten(int64_t step, int64_t bytes, absl::Duration took) {}
  virtual void OnCheckpointFailed(const absl::Status& status) {}
};

class CheckpointStore {
 public:
  // Open: creates the folder, removes stale temporary files and verifies every
  // checkpoint file of this shard in it (reading each whole). Errors: whatever the
  // file system says about the folder (INTERNAL, PERMISSION_DENIED, ...).
  static absl::StatusOr<std::unique_ptr<CheckpointStore>> Open(
      const CheckpointOptions& options, CheckpointObserver* observer = nullptr);
  ~CheckpointStore();  // finishes the write in flight, drops a pending one

  // Candidates: verified files, newest first (by generation, then step).
  std::vector<CheckpointInfo> Candidates() const;

  // Load: reads and verifies `info.path` again. FAILED_PRECONDITION naming the file
  // and the reason when it no longer passes (also logged).
  absl::StatusOr<ShardState> Load(const CheckpointInfo& info) const;

  // WriteAsync: hands a snapshot to the writer thread.
  void WriteAsync(std::shared_ptr<const ShardState> state);
  // Flush: waits until no write is in flight or pending, up to `timeout`; returns
  // the last write's status. DEADLINE_EXCEEDED names the step still being written.
  absl::Status Flush(absl::Duration timeout);

  // Truncate: the job was rewound to `step` at `generation`. Deletes files past
  // `step`, and a write in flight or pending from an older generation is dropped.
  void Truncate(int64_t step, int64_t generation);

  // WriteFile / VerifyFile: the file format itself (tests use them directly).
  static absl::Status WriteFile(const std::string& path, const ShardState& state,
                                int shard_index, int num_shards);
  // ReadFile: config_hash nullopt accepts any config.
  static absl::StatusOr<ShardState> ReadFile(const std::string& path, int shard_index,
                                             int num_shards,
                                             std::optional<uint64_t> config_hash);
  // FileName: "shard-<i>-of-<S>-gen-<g>-step-<t>.ckpt".
  static std::string FileName(int shard_index, int num_shards, const JobIdentity& job,
                              int64_t step);

 private:
  CheckpointStore(CheckpointOptions options, CheckpointObserver* observer);
  void Scan();
  std::optional<uint64_t> ConfigCheck() const;
  void WriterLoop();
  absl::Status WriteOne(const ShardState& state);
  void Prune() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CheckpointOptions options_;
  CheckpointObserver* const observer_;

  mutable absl::Mutex mu_;
  std::vector<CheckpointInfo> files_ ABSL_GUARDED_BY(mu_);  // newest first
  std::shared_ptr<const ShardState> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  int64_t writing_step_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t min_generation_ ABSL_GUARDED_BY(mu_) = 0;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status last_status_ ABSL_GUARDED_BY(mu_);
  std::thread writer_;
};

}  // namespace gnc

#endif  // GNC_SERVER_CHECKPOINT_H_
