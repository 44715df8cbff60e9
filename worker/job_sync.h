// DecideJobSync: what a client does when it sees the S shards of its job — carry on,
// rewind the job to a step every shard holds, or fail — so that no code path ever
// trains on a mixed model (DESIGN section 6). Pure logic, no network: every client
// that sees the same shards decides the same, and the shards' Rewind is idempotent by
// generation, so any number of clients may coordinate at once.
#ifndef GNC_WORKER_JOB_SYNC_H_
#define GNC_WORKER_JOB_SYNC_H_

#include <cstdint>
#include <string>
#include <vector>

namespace gnc {

// ShardJobView: one shard's JobState as it answered a Join.
struct ShardJobView {
  int index = 0;
  std::string address;
  bool initialized = false;
  uint64_t job_id = 0;
  int64_t generation = 0;
  int64_t step = 0;
  std::vector<int64_t> rewind_steps;  // newest first
  bool diverged = false;
};

struct SyncDecision {
  enum class Kind {
    kReady,   // consistent (or a new job that offers will fill in): carry on
    kRewind,  // send Rewind(job_id, step, generation) to `shards`, then look again
    kFail,    // the job cannot go on without a mixed model: `message` says why
  };
  Kind kind = Kind::kReady;
  uint64_t job_id = 0;         // the job's id, 0 when the job is new
  int64_t generation = 0;      // kReady: the job's generation; kRewind: the new one
  int64_t step = 0;            // kRewind: the target step
  std::vector<int> shards;     // kRewind: indices of the shards to rewind
  std::string message;         // kFail
};

// DecideJobSync: `known_job_id` is the job this client already belongs to (0 for a
// client that has not seen one yet).
//   - a diverged shard, shards of different job ids, a job id other than the known
//     one, or a blank shard beside a job past its start: kFail, naming every shard and
//     its step;
//   - one generation and steps at most one apart (a straggler skip): kReady;
//   - shards of a newer generation that agree on a step the others can reach: finish
//     that rewind (same generation);
//   - otherwise: rewind everyone to the newest step every shard holds, in a generation
//     above all; kFail when there is none.
SyncDecision DecideJobSync(const std::vector<ShardJobView>& shards, uint64_t known_job_id);

}  // namespace gnc

#endif  // GNC_WORKER_JOB_SYNC_H_
