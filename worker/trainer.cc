#include "worker/trainer.h"

#include <algorithm>
#include <bit>
#include <cstdio>
#include <random>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "common/log.h"
#include "worker/worker_metrics.h"

namespace gnc {
namespace {

void PrintToStdout(std::string_view line) {
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

absl::Status Annotate(const absl::Status& s, absl::string_view what) {
  return absl::Status(s.code(), absl::StrCat(what, ": ", s.message()));
}

// Mix: a SplitMix64 step, to derive independent shuffle seeds from (seed, rank, epoch).
uint64_t Mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

absl::StatusOr<TrainPlan> PlanTraining(const TrainerOptions& options, int64_t train_count) {
  if (options.num_workers < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_workers must be >= 1, got ", options.num_workers));
  }
  if (options.rank < 0 || options.rank >= options.num_workers) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank must be in [0, ", options.num_workers, "), got ", options.rank));
  }
  if (options.batch_size < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size must be >= 1, got ", options.batch_size));
  }
  if (options.epochs < 1) {
    return absl::InvalidArgumentError(absl::StrCat("epochs must be >= 1, got ", options.epochs));
  }
  if (options.steps < 0) {
    return absl::InvalidArgumentError(absl::StrCat("steps must be >= 0, got ", options.steps));
  }
  TrainPlan plan;
  plan.slice_size = train_count / options.num_workers;
  plan.slice_begin = options.rank * plan.slice_size;
  plan.steps_per_epoch = plan.slice_size / options.batch_size;
  if (plan.steps_per_epoch < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("batch_size ", options.batch_size, " exceeds the ", plan.slice_size,
                     " training examples of each worker (", train_count, " split over ",
                     options.num_workers, " workers)"));
  }
  plan.total_steps = options.steps > 0 ? options.steps : options.epochs * plan.steps_per_epoch;
  return plan;
}

absl::StatusOr<TestResult> TestParameters(Model& model, std::span<const float> params,
                                          const Dataset& data) {
  if (data.count < 1) return absl::InvalidArgumentError("empty test set");
  double loss_sum = 0;
  int64_t correct = 0;
  if (absl::Status s = model.Evaluate(params, data.images, data.labels, &loss_sum, &correct);
      !s.ok()) {
    return s;
  }
  TestResult r;
  r.accuracy = static_cast<double>(correct) / static_cast<double>(data.count);
  r.loss = loss_sum / static_cast<double>(data.count);
  return r;
}

absl::Status WriteParameters(const std::string& path, std::span<const float> params) {
  static_assert(std::endian::native == std::endian::little, "float32 files are little-endian");
  const std::string tmp = absl::StrCat(path, ".tmp");
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (f == nullptr) return absl::InternalError(absl::StrCat("cannot create ", tmp));
  const bool written = std::fwrite(params.data(), sizeof(float), params.size(), f) == params.size();
  if (std::fclose(f) != 0 || !written || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    return absl::InternalError(absl::StrCat("cannot write ", path));
  }
  return absl::OkStatus();
}

Trainer::Trainer(TrainerOptions options, TrainPlan plan, Model* model, const Dataset* train,
                 const Dataset* test, WorkerMetrics* metrics, PrintFn print)
    : options_(std::move(options)),
      plan_(plan),
      model_(model),
      train_(train),
      test_(test),
      metrics_(metrics),
      print_(print ? std::move(print) : PrintFn(PrintToStdout)) {}

void Trainer::Shuffle(int64_t epoch) {
  order_.resize(static_cast<size_t>(plan_.slice_size));
  for (size_t i = 0; i < order_.size(); ++i) order_[i] = static_cast<int64_t>(i);
  // Fisher-Yates with mt19937_64 (fully specified), unlike std::shuffle.
  std::mt19937_64 rng(Mix(options_.seed + static_cast<uint64_t>(epoch)) ^
                      Mix(static_cast<uint64_t>(options_.rank) + 0x5eed));
  for (size_t i = order_.size(); i > 1; --i) {
    std::swap(order_[i - 1], order_[rng() % i]);
  }
  shuffled_epoch_ = epoch;
}

absl::StatusOr<TestResult> Trainer::PullAndTest(GncClient& client, int64_t* step) {
  w_.resize(static_cast<size_t>(model_->NumParameters()));
  absl::StatusOr<int64_t> pulled = client.Pull(w_);
  if (!pulled.ok()) return Annotate(pulled.status(), "pull");
  *step = *pulled;
  absl::StatusOr<TestResult> r = TestParameters(*model_, w_, *test_);
  if (!r.ok()) return Annotate(r.status(), "evaluate");
  if (metrics_ != nullptr) metrics_->SetEvaluation(r->accuracy, r->loss);
  return r;
}

absl::StatusOr<TrainSummary> Trainer::Run(GncClient& client) {
  const int64_t total = plan_.total_steps;
  const int64_t spe = plan_.steps_per_epoch;
  const int64_t num_epochs = (total + spe - 1) / spe;
  if (const int64_t theirs = client.job().total_steps; theirs > 0 && theirs != total) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the servers run ", theirs, " steps (--total_steps), this worker ", total,
        options_.steps > 0
            ? " (--steps)"
            : absl::StrCat(" (", options_.epochs, " epochs x ", spe, " steps per epoch)")));
  }
  if (options_.evaluate && test_ == nullptr) {
    return absl::InvalidArgumentError("evaluating worker without a test set");
  }
  if (train_->count < plan_.slice_size || train_->dim != model_->InputSize() ||
      static_cast<int64_t>(train_->images.size()) != train_->count * train_->dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("training slice holds ", train_->count, " examples of ", train_->dim,
                     " features, the plan ", plan_.slice_size, " of ", model_->InputSize()));
  }
  const int64_t n = model_->NumParameters();
  const int64_t dim = model_->InputSize();
  {
    std::vector<float> w0 = model_->InitialParameters(options_.seed);
    if (absl::Status s = client.OfferParameters(w0); !s.ok()) return Annotate(s, "offer w0");
  }
  std::vector<float> x(n), g(n);
  std::vector<float> batch_x(static_cast<size_t>(options_.batch_size * dim));
  std::vector<int32_t> batch_y(static_cast<size_t>(options_.batch_size));
  const std::string who = absl::StrCat("worker ", options_.rank);

  TrainSummary summary;
  const absl::Time start = absl::Now();
  absl::Time last_report = start;
  double interval_loss = 0;
  int64_t interval_steps = 0, interval_samples = 0;
  int64_t evaluated_epochs = 0;
  double epoch_loss = 0;  // this worker's training loss in the epoch being evaluated
  int64_t epoch_steps = 0;
  int64_t step = 0;
  int64_t generation = 0;
  bool received_any = false;
  while (true) {
    const absl::Time t0 = absl::Now();
    absl::StatusOr<int64_t> received = client.ReceiveEvalPoint(x);
    if (!received.ok()) return Annotate(received.status(), "receive evaluation point");
    // A rewind starts a new generation; it may go back to the very step this worker
    // just pushed for, so the step alone does not show it.
    const int64_t now_generation = client.job().generation;
    if (received_any && (now_generation != generation || *received < step)) {
      print_(absl::StrFormat("%s: the job was rewound to step %d (generation %d)", who,
                             *received, now_generation));
    }
    received_any = true;
    generation = now_generation;
    step = *received;
    const absl::Time t1 = absl::Now();
    if (metrics_ != nullptr) {
      metrics_->ObservePhase(StepPhase::kReceive, t1 - t0);
      metrics_->SetStep(step);
    }
    if (step >= total) break;

    const int64_t epoch = step / spe;
    if (options_.evaluate && epoch > evaluated_epochs) {
      // Step `step` has not completed: this worker has not pushed for it yet, so w
      // is still w_step, the parameters at the end of the previous epoch.
      int64_t at = 0;
      absl::StatusOr<TestResult> r = PullAndTest(client, &at);
      if (!r.ok()) return r.status();
      evaluated_epochs = epoch;
      print_(absl::StrFormat("epoch %d/%d test accuracy %.4f loss %.4f at step %d train loss %.4f",
                             epoch, num_epochs, r->accuracy, r->loss, at,
                             epoch_loss / static_cast<double>(std::max<int64_t>(epoch_steps, 1))));
      epoch_loss = 0;
      epoch_steps = 0;
    }
    if (epoch != shuffled_epoch_) Shuffle(epoch);
    const int64_t first = (step % spe) * options_.batch_size;
    for (int64_t i = 0; i < options_.batch_size; ++i) {
      const int64_t row = order_[first + i];
      std::copy_n(train_->images.data() + row * dim, dim, batch_x.data() + i * dim);
      batch_y[i] = train_->labels[row];
    }
    const absl::Time t2 = absl::Now();
    absl::StatusOr<double> loss = model_->LossAndGradient(x, batch_x, batch_y, g);
    if (!loss.ok()) return Annotate(loss.status(), absl::StrCat("gradient at step ", step));
    const absl::Time t3 = absl::Now();
    absl::Status pushed = client.PushGradient(g, options_.batch_size);
    const absl::Time t4 = absl::Now();
    if (metrics_ != nullptr) {
      metrics_->ObservePhase(StepPhase::kCompute, t3 - t2);
      metrics_->ObservePhase(StepPhase::kPush, t4 - t3);
      metrics_->SetLoss(*loss);
    }
    if (absl::IsAborted(pushed)) {
      ++summary.late_steps;
      if (metrics_ != nullptr) metrics_->AddLate();
      LogWarning(who, ": gradient for step ", step, " was late: ", pushed.message());
    } else if (!pushed.ok()) {
      return Annotate(pushed, absl::StrCat("push gradient of step ", step));
    } else {
      ++summary.pushed_steps;
      if (metrics_ != nullptr) metrics_->AddSamples(options_.batch_size);
      interval_samples += options_.batch_size;
    }
    interval_loss += *loss;
    ++interval_steps;
    epoch_loss += *loss;
    ++epoch_steps;
    summary.last_loss = interval_loss / static_cast<double>(interval_steps);
    if (t4 - last_report >= options_.progress_interval) {
      print_(absl::StrFormat("%s step %d/%d epoch %d/%d loss %.4f samples/s %.1f late %d", who,
                             step + 1, total, epoch + 1, num_epochs, summary.last_loss,
                             interval_samples / absl::ToDoubleSeconds(t4 - last_report),
                             summary.late_steps));
      last_report = t4;
      interval_loss = 0;
      interval_steps = interval_samples = 0;
    }
  }
  summary.final_step = step;
  if (options_.evaluate) {
    int64_t at = 0;
    absl::StatusOr<TestResult> r = PullAndTest(client, &at);
    if (!r.ok()) return r.status();
    summary.evaluated = true;
    summary.test_accuracy = r->accuracy;
    summary.test_loss = r->loss;
    summary.final_step = at;
  }
  if (!options_.save_params.empty()) {
    if (!summary.evaluated) {
      w_.resize(static_cast<size_t>(n));
      if (absl::StatusOr<int64_t> pulled = client.Pull(w_); !pulled.ok()) {
        return Annotate(pulled.status(), "pull for --save_params");
      }
    }
    if (absl::Status s = WriteParameters(options_.save_params, w_); !s.ok()) return s;
  }
  summary.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  print_(absl::StrFormat(
      "%s done: %d steps pushed, %d late, in %.1f s, %.1f samples/s, last loss %.4f", who,
      summary.pushed_steps, summary.late_steps, summary.seconds,
      summary.pushed_steps * options_.batch_size / std::max(summary.seconds, 1e-9),
      summary.last_loss));
  if (summary.evaluated) {
    print_(absl::StrFormat("final test accuracy %.4f loss %.4f after %d steps in %.1f s",
                           summary.test_accuracy, summary.test_loss, summary.final_step,
                           summary.seconds));
    print_(absl::StrFormat("final epoch train loss %.4f",
                           epoch_loss / static_cast<double>(std::max<int64_t>(epoch_steps, 1))));
  }
  if (absl::Status s = client.Leave(); !s.ok()) return Annotate(s, "leave");
  return summary;
}

}  // namespace gnc
