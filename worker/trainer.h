// Trainer: the built-in gnc-worker training loop (a built-in model on an IDX data
// set) as a library, driven through the GncClient and Model interfaces so that tests
// can run it against fakes.
//
// One step: ReceiveEvalPoint(x) -> stop once step >= total -> gradient at x on the
// step's minibatch -> PushGradient (ABORTED = late or rewound: counted, training goes
// on). The minibatch of step t is batch t % steps_per_epoch of epoch
// t / steps_per_epoch (the epoch's order derived from the seed, the epoch and the
// rank), so a worker that was skipped stays aligned with the job and a job rewound to
// step t resumes exactly where step t first ran. The evaluating worker pulls the
// unperturbed w at every epoch boundary and at the end and tests it, printing the mean
// training loss of its steps in that epoch (taken at its evaluation points) beside the
// test figures.
//
// Thread-compatible: one thread runs a Trainer.
#ifndef GNC_WORKER_TRAINER_H_
#define GNC_WORKER_TRAINER_H_

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "worker/client.h"
#include "worker/idx_reader.h"
#include "worker/model.h"

namespace gnc {

class WorkerMetrics;

// TrainerOptions: one worker's view of the job. Defaults match gnc-worker's flags.
struct TrainerOptions {
  int rank = 0;
  int num_workers = 1;
  int64_t batch_size = 64;  // samples per worker per step
  int64_t epochs = 1;
  int64_t steps = 0;      // > 0: total steps, overriding epochs
  uint64_t seed = 1;      // w0 and the per-epoch shuffles
  bool evaluate = false;  // this worker tests w at epoch boundaries and at the end
  absl::Duration progress_interval = absl::Seconds(5);
  // Non-empty: after training, write the unperturbed w pulled from the servers here
  // as raw little-endian float32 in layout order (temporary file, then rename).
  std::string save_params;
};

// TrainPlan: this rank's slice of the training set and the job length.
struct TrainPlan {
  int64_t slice_begin = 0;  // first training example of this rank
  int64_t slice_size = 0;   // floor(train_count / num_workers), the same on every rank
  int64_t steps_per_epoch = 0;
  int64_t total_steps = 0;
};

// PlanTraining: the rank-disjoint contiguous split of `train_count` examples.
// INVALID_ARGUMENT when options are out of range or the slice holds fewer than
// batch_size examples.
absl::StatusOr<TrainPlan> PlanTraining(const TrainerOptions& options, int64_t train_count);

// TrainSummary: what a finished Run did.
struct TrainSummary {
  int64_t final_step = 0;    // the job's step when this worker stopped
  int64_t pushed_steps = 0;  // gradients accepted
  int64_t late_steps = 0;    // gradients refused as late
  double seconds = 0;        // training time, after the parameters were offered
  double last_loss = 0;      // mean training loss over the last progress interval
  bool evaluated = false;
  double test_accuracy = 0;  // valid iff evaluated
  double test_loss = 0;      // mean cross-entropy, valid iff evaluated
};

// TestResult: accuracy and mean loss of parameters on a data set.
struct TestResult {
  double accuracy = 0;
  double loss = 0;
};
absl::StatusOr<TestResult> TestParameters(Model& model, std::span<const float> params,
                                          const Dataset& data);

// WriteParameters: `params` as raw little-endian float32 to `path`, through a
// temporary file renamed into place. INTERNAL naming the path on an I/O error.
absl::Status WriteParameters(const std::string& path, std::span<const float> params);

class Trainer {
 public:
  // Output lines (progress, evaluations, summaries), without the newline.
  using PrintFn = std::function<void(std::string_view line)>;

  // REQUIRES: every pointer outlives the Trainer; train holds this rank's slice
  // (plan.slice_size examples of model->InputSize() features); test is non-null when
  // options.evaluate; metrics may be null; print null = stdout, flushed per line.
  Trainer(TrainerOptions options, TrainPlan plan, Model* model, const Dataset* train,
          const Dataset* test, WorkerMetrics* metrics, PrintFn print = nullptr);

  // Run: trains until the job's step reaches plan.total_steps, then leaves.
  // Errors: FAILED_PRECONDITION when the servers fix a different total_steps;
  // otherwise the first error of the client (other than a late push) or backend,
  // with what the trainer was doing prefixed. The worker does not leave on error.
  absl::StatusOr<TrainSummary> Run(GncClient& client);

 private:
  void Shuffle(int64_t epoch);
  absl::StatusOr<TestResult> PullAndTest(GncClient& client, int64_t* step);

  const TrainerOptions options_;
  const TrainPlan plan_;
  Model* const model_;
  const Dataset* const train_;
  const Dataset* const test_;
  WorkerMetrics* const metrics_;
  const PrintFn print_;

  std::vector<int64_t> order_;  // this epoch's permutation of the slice
  int64_t shuffled_epoch_ = -1;
  std::vector<float> w_;  // scratch for evaluations
};

}  // namespace gnc

#endif  // GNC_WORKER_TRAINER_H_
