// gnc-worker: one rank of a gnc job running the built-in trainer (an MLP or a CNN on
// Fashion-MNIST, CPU or CUDA). Exit codes: 0 done, 1 runtime error, 2 bad flags.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/command_line.h"
#include "common/process_memory.h"
#include "common/credentials.h"
#include "common/log.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "worker/client.h"
#include "worker/idx_reader.h"
#include "worker/model.h"
#include "worker/model_spec.h"
#include "worker/trainer.h"
#include "worker/worker_metrics.h"

ABSL_FLAG(std::string, servers, "",
          "Comma-separated host:port of the job's shards, shard 0 first (required)");
ABSL_FLAG(int, rank, 0, "This worker's rank in [0, num_workers)");
ABSL_FLAG(int, num_workers, 1, "Number of workers K in the job");
ABSL_FLAG(int64_t, batch_size, 64, "Samples per step on this worker");
ABSL_FLAG(int64_t, epochs, 1, "Passes over this worker's slice of the training set");
ABSL_FLAG(int64_t, steps, 0, "Total steps; overrides --epochs when > 0");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder with the Fashion-MNIST IDX gzip files");
ABSL_FLAG(uint64_t, seed, 1, "Seed of w0 (the same on every rank) and of the shuffles");
ABSL_FLAG(std::string, model, "mlp", "Built-in model: mlp or cnn");
ABSL_FLAG(std::string, hidden, "256,128",
          "MLP (--model=mlp): hidden layer widths, comma-separated (\"\" = none)");
ABSL_FLAG(std::string, cnn_channels, "8,16",
          "CNN (--model=cnn): channels of each 5x5 conv + ReLU + 2x2 max-pool block");
ABSL_FLAG(std::string, cnn_hidden, "128",
          "CNN (--model=cnn): fully connected hidden widths after the conv blocks");
ABSL_FLAG(std::string, save_params, "",
          "After training, write the unperturbed w pulled from the servers to this file as "
          "raw little-endian float32 in layout order");
ABSL_FLAG(std::string, device, "auto", "Compute device: auto (CUDA if present), cpu or cuda");
ABSL_FLAG(std::optional<bool>, evaluate, std::nullopt,
          "true|false: test the unperturbed w at every epoch boundary and at the end "
          "(unset: rank 0 does)");
ABSL_FLAG(absl::Duration, progress_interval, absl::Seconds(5), "Time between progress lines");
ABSL_FLAG(int, metrics_port, 0,
          "Prometheus /metrics port (0 disables); a listener that cannot start is logged "
          "and training goes on without it");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0", "Address of the /metrics listener");
ABSL_FLAG(std::string, config_hash, "0",
          "Server config hash to insist on, in hex as gnc-server prints it (0 = not pinned)");
ABSL_FLAG(absl::Duration, connect_timeout, absl::Seconds(60),
          "How long to keep retrying shards that are not up yet");
ABSL_FLAG(int64_t, train_limit, 0, "Use only the first N training images (0 = all)");
ABSL_FLAG(int64_t, test_limit, 0, "Use only the first N test images (0 = all)");
ABSL_FLAG(absl::Duration, step_timeout, absl::Minutes(10),
          "Exit 1, naming the missing shards or ranks, when the job makes no progress "
          "for this long");
ABSL_FLAG(std::string, wire_dtype, "float32",
          "Encoding of gradients sent and points received: float32 or bfloat16 (half the "
          "bytes; the shards keep float32 state)");
ABSL_FLAG(absl::Duration, reconnect_timeout, absl::Minutes(2),
          "How long to keep reconnecting to a shard whose stream failed (a restarting "
          "shard) before giving up");
ABSL_FLAG(bool, check_config, false,
          "Validate the flags and exit (0 if valid) without connecting or reading data");
ABSL_FLAG(std::string, tls_ca_file, "",
          "PEM CA certificates that sign the shards' certificates: connect over TLS");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate of this worker, for shards that require mutual TLS (with "
          "--tls_key_file; turns TLS on, trusting the system's roots without --tls_ca_file)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the job token, sent with every call (the shards' --auth_token_file)");

namespace gnc {
namespace {

// The standard Fashion-MNIST sizes; --check_config plans with these as it reads no data.
constexpr int64_t kTrainImages = 60000;
constexpr int64_t kImageSide = 28;
constexpr int64_t kInputWidth = kImageSide * kImageSide;
constexpr int64_t kClasses = 10;

struct WorkerConfig {
  std::vector<std::string> servers;
  TrainerOptions trainer;
  ModelSpec model;
  std::string device;
  uint64_t config_hash = 0;
  int64_t train_limit = 0;
  int64_t test_limit = 0;
  WireDType wire_dtype = WireDType::kFloat32;
  ChannelSecurityOptions security;
};

absl::Status CheckServers(const std::vector<std::string>& servers) {
  if (servers.empty()) return absl::InvalidArgumentError("--servers is required");
  for (const std::string& s : servers) {
    const size_t colon = s.rfind(':');
    int port = 0;
    if (colon == std::string::npos || colon == 0 || !absl::SimpleAtoi(s.substr(colon + 1), &port) ||
        port < 1 || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("--servers entry '", s, "' is not host:port"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<WorkerConfig> ConfigFromFlags() {
  WorkerConfig c;
  for (absl::string_view s : absl::StrSplit(absl::GetFlag(FLAGS_servers), ',')) {
    s = absl::StripAsciiWhitespace(s);
    if (!s.empty()) c.servers.emplace_back(s);
  }
  if (absl::Status s = CheckServers(c.servers); !s.ok()) return s;

  TrainerOptions& t = c.trainer;
  t.rank = absl::GetFlag(FLAGS_rank);
  t.num_workers = absl::GetFlag(FLAGS_num_workers);
  t.batch_size = absl::GetFlag(FLAGS_batch_size);
  t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  t.seed = absl::GetFlag(FLAGS_seed);
  t.evaluate = absl::GetFlag(FLAGS_evaluate).value_or(t.rank == 0);
  t.progress_interval = absl::GetFlag(FLAGS_progress_interval);
  if (t.progress_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--progress_interval must be positive");
  }

  t.save_params = absl::GetFlag(FLAGS_save_params);
  absl::StatusOr<ModelSpec> model = ParseModelSpec(
      absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_cnn_channels),
      absl::GetFlag(FLAGS_cnn_hidden), kImageSide, kImageSide, kClasses);
  if (!model.ok()) return model.status();
  c.model = *std::move(model);

  c.device = absl::GetFlag(FLAGS_device);
  if (c.device != "auto" && c.device != "cpu" && c.device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("--device: unknown device '", c.device, "' (auto, cpu, cuda)"));
  }
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  if (metrics_port < 0 || metrics_port > 65535) {
    return absl::InvalidArgumentError("--metrics_port must be in [0, 65535]");
  }
  absl::string_view hash = absl::StripAsciiWhitespace(absl::GetFlag(FLAGS_config_hash));
  absl::ConsumePrefix(&hash, "0x");
  if (!absl::SimpleHexAtoi(hash, &c.config_hash)) {
    return absl::InvalidArgumentError(
        absl::StrCat("--config_hash: '", absl::GetFlag(FLAGS_config_hash), "' is not hex"));
  }
  if (absl::GetFlag(FLAGS_connect_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--connect_timeout must be positive");
  }
  if (absl::GetFlag(FLAGS_step_timeout) <= absl::ZeroDuration() ||
      absl::GetFlag(FLAGS_reconnect_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--step_timeout and --reconnect_timeout must be positive");
  }
  const std::string dtype = absl::GetFlag(FLAGS_wire_dtype);
  if (dtype == "float32") {
    c.wire_dtype = WireDType::kFloat32;
  } else if (dtype == "bfloat16") {
    c.wire_dtype = WireDType::kBfloat16;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--wire_dtype: unknown encoding '", dtype, "' (float32, bfloat16)"));
  }
  c.security.tls_ca_file = absl::GetFlag(FLAGS_tls_ca_file);
  c.security.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  c.security.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  c.security.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  if (absl::Status s = c.security.Validate(); !s.ok()) return s;
  c.train_limit = absl::GetFlag(FLAGS_train_limit);
  c.test_limit = absl::GetFlag(FLAGS_test_limit);
  if (c.train_limit < 0 || c.test_limit < 0) {
    return absl::InvalidArgumentError("--train_limit and --test_limit must be >= 0");
  }
  return c;
}

// CheckArgv: what absl::ParseCommandLine would refuse (unknown flag, bad value),
// found first so that a bad flag exits 2 rather than ParseCommandLine's 1.
absl::Status CheckArgv(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;  // positional
    absl::ConsumePrefix(&arg, "-");
    const size_t eq = arg.find('=');
    const absl::string_view name = arg.substr(0, eq);
    // Abseil's own flags (usage, flag files) are left to ParseCommandLine.
    if (absl::StartsWith(name, "help") || name == "version" || name == "only_check_args" ||
        name == "flagfile" || name == "fromenv" || name == "tryfromenv" || name == "undefok") {
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no") && eq == absl::string_view::npos) {
      flag = absl::FindCommandLineFlag(name.substr(2));
      if (flag != nullptr && flag->IsOfType<bool>()) continue;  // --noflag
      flag = nullptr;
    }
    if (flag == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    std::string value;
    if (eq != absl::string_view::npos) {
      value = std::string(arg.substr(eq + 1));
    } else if (flag->IsOfType<bool>()) {
      continue;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
    }
    std::string error;
    if (!flag->ParseFrom(value, &error)) {
      return absl::InvalidArgumentError(absl::StrCat("--", name, "=", value, ": ", error));
    }
  }
  return absl::OkStatus();
}

int64_t Limit(int64_t count, int64_t limit) { return limit > 0 ? std::min(count, limit) : count; }

absl::StatusOr<std::unique_ptr<Model>> MakeModel(const ModelSpec& spec, const std::string& device) {
  if (device == "cpu") {
    LogInfo("compute backend: cpu (--device=cpu)");
    return NewModel(spec, "cpu");
  }
  absl::StatusOr<std::unique_ptr<Model>> cuda = NewModel(spec, "cuda");
  if (cuda.ok()) {
    LogInfo("compute backend: ", (*cuda)->Device());
    return cuda;
  }
  if (device == "cuda") {
    return absl::FailedPreconditionError(
        absl::StrCat("--device=cuda but CUDA is unavailable: ", cuda.status().message()));
  }
  LogInfo("compute backend: cpu (--device=auto, no CUDA: ", cuda.status().message(), ")");
  return NewModel(spec, "cpu");
}

// Run: everything after flag validation. Exit code 1 on any error; a bad plan for
// the data actually found (slice smaller than the batch) is a flag error (2).
int Run(const WorkerConfig& config) {
  const TrainerOptions& t = config.trainer;
  absl::StatusOr<std::unique_ptr<Model>> model = MakeModel(config.model, config.device);
  if (!model.ok()) {
    LogError("gnc-worker: ", model.status().message());
    return 1;
  }

  const std::string data_dir = absl::GetFlag(FLAGS_data_dir);
  const IdxPaths train_paths = FashionMnistPaths(data_dir, /*train=*/true);
  absl::StatusOr<int64_t> train_count = ReadIdxCount(train_paths.images);
  if (!train_count.ok()) {
    LogError("gnc-worker: training data: ", train_count.status().message());
    return 1;
  }
  absl::StatusOr<TrainPlan> plan = PlanTraining(t, Limit(*train_count, config.train_limit));
  if (!plan.ok()) {
    LogError("invalid configuration: ", plan.status().message());
    return 2;
  }
  absl::StatusOr<Dataset> train =
      LoadIdxDataset(train_paths.images, train_paths.labels, {plan->slice_begin, plan->slice_size});
  if (!train.ok()) {
    LogError("gnc-worker: training data: ", train.status().message());
    return 1;
  }
  Dataset test;
  if (t.evaluate) {
    const IdxPaths test_paths = FashionMnistPaths(data_dir, /*train=*/false);
    absl::StatusOr<int64_t> test_count = ReadIdxCount(test_paths.images);
    absl::StatusOr<Dataset> loaded =
        test_count.ok() ? LoadIdxDataset(test_paths.images, test_paths.labels,
                                         {0, Limit(*test_count, config.test_limit)})
                        : absl::StatusOr<Dataset>(test_count.status());
    if (!loaded.ok()) {
      LogError("gnc-worker: test data: ", loaded.status().message());
      return 1;
    }
    test = *std::move(loaded);
  }
  for (const Dataset* d : {&*train, &test}) {
    if (d->count > 0 && d->dim != kInputWidth) {
      LogError("gnc-worker: images under ", data_dir, " have ", d->dim, " pixels, expected ",
               kInputWidth);
      return 1;
    }
    for (int32_t y : d->labels) {
      if (y < 0 || y >= kClasses) {
        LogError("gnc-worker: label ", y, " under ", data_dir, " is outside [0, ", kClasses, ")");
        return 1;
      }
    }
  }
  LogInfo("worker ", t.rank, "/", t.num_workers, ": training examples [", plan->slice_begin, ", ",
          plan->slice_begin + plan->slice_size, "), ", plan->steps_per_epoch, " steps per epoch, ",
          plan->total_steps, " steps, batch ", t.batch_size, ", model ", (*model)->Name(),
          t.evaluate ? absl::StrCat(", evaluating on ", test.count, " test images") : "");

  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(*registry, t.rank, t.evaluate);
  std::unique_ptr<prometheus::Exposer> exposer;
  if (const int port = absl::GetFlag(FLAGS_metrics_port); port > 0) {
    const std::string where = absl::StrCat(absl::GetFlag(FLAGS_metrics_address), ":", port);
    // A worker that exits stalls every other worker of the job (until the straggler
    // timeout, and for good without a quorum), so a metrics listener that cannot
    // start is reported and training goes on without it.
    try {
      exposer = std::make_unique<prometheus::Exposer>(where);
    } catch (const std::exception& e) {
      LogError("gnc-worker: cannot serve metrics on ", where, ": ", e.what(),
               "; training continues without /metrics");
    }
    if (exposer != nullptr) {
      exposer->RegisterCollectable(registry);
      LogInfo("metrics on http://", where, "/metrics");
    }
  }

  absl::StatusOr<ModelLayout> layout = LayoutOf(config.model);
  if (!layout.ok()) {
    LogError("gnc-worker: ", layout.status().message());
    return 2;
  }
  ClientOptions co;
  co.servers = config.servers;
  co.rank = t.rank;
  co.num_workers = t.num_workers;
  co.layout = *layout;
  co.local_batch_size = t.batch_size;
  co.config_hash = config.config_hash;
  co.connect_timeout = absl::GetFlag(FLAGS_connect_timeout);
  co.step_timeout = absl::GetFlag(FLAGS_step_timeout);
  co.reconnect_timeout = absl::GetFlag(FLAGS_reconnect_timeout);
  co.wire_dtype = config.wire_dtype;
  co.tls_ca_file = config.security.tls_ca_file;
  co.tls_cert_file = config.security.tls_cert_file;
  co.tls_key_file = config.security.tls_key_file;
  co.auth_token_file = config.security.auth_token_file;
  absl::StatusOr<std::unique_ptr<GncClient>> client = GncClient::Connect(co);
  if (!client.ok()) {
    LogError("gnc-worker: connect to ", absl::StrJoin(config.servers, ","), ": ",
             client.status().ToString());
    return 1;
  }
  LogInfo("worker ", t.rank, " joined ", config.servers.size(), " shard(s), mode ",
          (*client)->job().mode);

  Trainer trainer(t, *plan, model->get(), &*train, t.evaluate ? &test : nullptr, &metrics);
  absl::StatusOr<TrainSummary> summary = trainer.Run(**client);
  if (!summary.ok()) {
    LogError("gnc-worker: ", summary.status().ToString());
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace gnc

int main(int argc, char** argv) {
  if (std::optional<int> done = gnc::HandleHelpAndVersion(
          argc, argv, "gnc-worker",
          "gnc-worker: one worker of a gnc job, training the built-in MLP or CNN on "
          "Fashion-MNIST")) {
    return *done;
  }
  if (absl::Status s = gnc::CheckArgv(argc, argv); !s.ok()) {
    gnc::LogError("invalid configuration: ", s.message());
    return 2;
  }
  absl::ParseCommandLine(argc, argv);
  gnc::RetainFreedMemory();
  absl::StatusOr<gnc::WorkerConfig> config = gnc::ConfigFromFlags();
  if (!config.ok()) {
    gnc::LogError("invalid configuration: ", config.status().message());
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    const int64_t limit = absl::GetFlag(FLAGS_train_limit);
    absl::StatusOr<gnc::TrainPlan> plan = gnc::PlanTraining(
        config->trainer, limit > 0 ? std::min(limit, gnc::kTrainImages) : gnc::kTrainImages);
    if (!plan.ok()) {
      gnc::LogError("invalid configuration: ", plan.status().message());
      return 2;
    }
    std::printf(
        "config ok: worker %d/%d, %zu shard(s), batch %lld, %lld steps "
        "(%lld per epoch, assuming %lld training images), evaluate=%s\n",
        config->trainer.rank, config->trainer.num_workers, config->servers.size(),
        static_cast<long long>(config->trainer.batch_size),
        static_cast<long long>(plan->total_steps), static_cast<long long>(plan->steps_per_epoch),
        static_cast<long long>(limit > 0 ? std::min(limit, gnc::kTrainImages) : gnc::kTrainImages),
        config->trainer.evaluate ? "true" : "false");
    return 0;
  }
  return gnc::Run(*config);
}
