// gnc-server: serves one shard of a gnc job over gRPC.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/resource_quota.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/codec.h"
#include "common/command_line.h"
#include "common/process_memory.h"
#include "common/credentials.h"
#include "common/log.h"
#include "prometheus/exposer.h"
#include "prometheus/registry.h"
#include "server/checkpoint.h"
#include "server/device.h"
#include "server/metrics.h"
#include "server/options.h"
#include "server/request_gate.h"
#include "server/service.h"
#include "server/shard_core.h"

ABSL_FLAG(std::string, address, "0.0.0.0", "Address to listen on");
ABSL_FLAG(int, port, 7070, "gRPC port; 0 picks a free one (see --port_file)");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound gRPC port here once listening");
ABSL_FLAG(int, shard_index, 0, "This shard's index in [0, num_shards)");
ABSL_FLAG(int, num_shards, 1, "Number of shards S in the job");
ABSL_FLAG(int, num_workers, 1, "Number of workers K in the job");
ABSL_FLAG(int, min_workers, 0,
          "Quorum: a step may complete on the straggler timeout with this many gradients "
          "(0 = all K, no quorum)");
ABSL_FLAG(absl::Duration, straggler_timeout, absl::Seconds(30),
          "How long a step waits for late workers after its first gradient");
ABSL_FLAG(std::string, mode, "gnc", "Smoothing mode: none, gnc or isotropic");
ABSL_FLAG(std::string, gnc_noise, "previous",
          "Noise timing: previous (perturb with the previous step's gradient noise, one pass "
          "per step) or fresh (a first pass at w forms the noise, a second pass at the "
          "perturbed points makes the update: two passes per step; every step count on the "
          "wire and in metrics then counts passes)");
ABSL_FLAG(double, gnc_scale, 1.0, "rho: scale of the GNC perturbation");
ABSL_FLAG(double, max_perturbation_norm, 0.0, "Cap on ||delta_k|| per shard (0 = none)");
ABSL_FLAG(double, lr, 0.1, "Peak learning rate");
ABSL_FLAG(int64_t, warmup_steps, 0, "Linear warm-up steps");
ABSL_FLAG(std::string, lr_decay, "none", "Decay after warm-up: none, step or cosine");
ABSL_FLAG(int64_t, total_steps, 0, "Job length in steps (needed by cosine decay)");
ABSL_FLAG(double, min_lr, 0.0, "Floor of the cosine decay");
ABSL_FLAG(int64_t, lr_step_every, 0, "Step decay: steps between decays");
ABSL_FLAG(double, lr_step_gamma, 0.1, "Step decay: factor per decay");
ABSL_FLAG(double, momentum, 0.9, "SGD momentum mu");
ABSL_FLAG(bool, nesterov, false, "Nesterov momentum");
ABSL_FLAG(double, weight_decay, 0.0, "L2 weight decay lambda");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the isotropic noise");
ABSL_FLAG(std::string, device, "auto", "Merge device: auto, cpu or cuda");
ABSL_FLAG(int, merge_threads, 0,
          "Threads of the CPU merge (0 = the cores available); results do not depend on it");
ABSL_FLAG(int, metrics_port, 0, "Prometheus /metrics port (0 disables)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0", "Address of the /metrics listener");
ABSL_FLAG(double, noise_ema, 0.9, "EMA factor of the noise-scale estimators, in [0, 1)");
ABSL_FLAG(bool, per_worker_noise_metrics, false,
          "Export gnc_worker_noise_sqnorm{shard,worker}, ||g_k - g_mean||^2 per worker");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(10),
          "On SIGTERM, how long in-flight rpcs may take before they are cancelled");
ABSL_FLAG(bool, exit_when_done, true,
          "Exit once every worker of the job has left (false: keep serving)");
ABSL_FLAG(bool, check_config, false, "Validate the flags, print the config hash and exit");
ABSL_FLAG(std::string, checkpoint_dir, "",
          "Folder for this shard's checkpoints (several shards may share it); at start the "
          "newest valid one is restored. Empty: no checkpoints");
ABSL_FLAG(int64_t, checkpoint_every, 0,
          "Steps between checkpoints (0: only w0 and on SIGTERM); needs --checkpoint_dir");
ABSL_FLAG(int, checkpoint_keep, 2, "Newest checkpoints kept per shard (>= 2 recommended)");
ABSL_FLAG(bool, resume_with_new_config, false,
          "Restore checkpoints written under other settings (e.g. a lower --lr after a "
          "divergence); give every shard the same new flags");
ABSL_FLAG(double, max_gradient_norm, 0.0,
          "Scale each worker's gradient on this shard down to this L2 norm when longer "
          "(0 = no clipping)");
ABSL_FLAG(absl::Duration, stall_report_after, absl::Seconds(30),
          "A step waiting longer than this for its workers is logged (every as long) and "
          "exported (gnc_step_wait_seconds, gnc_waiting_workers)");
ABSL_FLAG(std::string, tls_cert_file, "",
          "PEM certificate chain of this server: serve gRPC over TLS (with --tls_key_file)");
ABSL_FLAG(std::string, tls_key_file, "", "PEM private key of --tls_cert_file");
ABSL_FLAG(std::string, tls_client_ca_file, "",
          "PEM CA certificates: mutual TLS, every client must present a certificate signed "
          "by one of them (needs --tls_cert_file)");
ABSL_FLAG(std::string, auth_token_file, "",
          "File holding the job token: every call but health checks must carry "
          "'authorization: Bearer <token>' (UNAUTHENTICATED otherwise)");
ABSL_FLAG(int, health_port, 0,
          "Also serve grpc.health.v1, and nothing else, in plaintext on this port (for "
          "Kubernetes probes when TLS is on); 0 = off");
ABSL_FLAG(int64_t, max_shard_bytes, 0,
          "Refuse (RESOURCE_EXHAUSTED) a first Join whose model would need more memory on "
          "this shard than this many bytes: (2K + 4) x 4 bytes per element in modes gnc "
          "and isotropic, (K + 4) x 4 in none. 0 = half the memory this process may use "
          "(the machine's, or its cgroup's limit)");
ABSL_FLAG(absl::Duration, hello_timeout, absl::Seconds(10),
          "A Train stream must send its Hello within this time of opening "
          "(DEADLINE_EXCEEDED otherwise)");
ABSL_FLAG(int, max_train_streams, 0,
          "Train streams open at once, Hello or not; more are refused (RESOURCE_EXHAUSTED). "
          "0 = 2K + 8 (room for every worker to reconnect)");
ABSL_FLAG(int, max_concurrent_rpcs, 0,
          "OfferParameters and PullParameters calls in progress at once; more are refused "
          "(RESOURCE_EXHAUSTED). 0 = 2K + 16");

namespace gnc {
namespace {

// Threads for gRPC's synchronous services (reflection); see RunServer.
constexpr int kMaxSyncThreads = 16;
// HTTP/2 streams per connection; see RunServer.
constexpr int kMaxStreamsPerConnection = 64;

ServerSecurityOptions SecurityFromFlags() {
  ServerSecurityOptions o;
  o.tls_cert_file = absl::GetFlag(FLAGS_tls_cert_file);
  o.tls_key_file = absl::GetFlag(FLAGS_tls_key_file);
  o.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca_file);
  o.auth_token_file = absl::GetFlag(FLAGS_auth_token_file);
  return o;
}

// MemoryLimitBytes: the memory this process may use: the machine's, or less when its
// cgroup (v2 memory.max, v1 memory.limit_in_bytes) says so.
int64_t MemoryLimitBytes() {
  int64_t limit = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  for (const char* path :
       {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    std::ifstream in(path);
    int64_t cgroup = 0;
    if (in >> cgroup && cgroup > 0 && cgroup < limit) limit = cgroup;  // "max" fails >>
  }
  return limit;
}

absl::StatusOr<ShardOptions> OptionsFromFlags() {
  ShardOptions o;
  o.num_workers = absl::GetFlag(FLAGS_num_workers);
  o.min_workers = absl::GetFlag(FLAGS_min_workers);
  o.num_shards = absl::GetFlag(FLAGS_num_shards);
  o.shard_index = absl::GetFlag(FLAGS_shard_index);
  if (absl::Status s = ParseSmoothingMode(absl::GetFlag(FLAGS_mode), &o.mode); !s.ok()) return s;
  if (absl::Status s = ParseNoiseTiming(absl::GetFlag(FLAGS_gnc_noise), &o.noise_timing);
      !s.ok()) {
    return s;
  }
  o.gnc_scale = absl::GetFlag(FLAGS_gnc_scale);
  o.max_perturbation_norm = absl::GetFlag(FLAGS_max_perturbation_norm);
  o.momentum = absl::GetFlag(FLAGS_momentum);
  o.nesterov = absl::GetFlag(FLAGS_nesterov);
  o.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  o.lr.peak = absl::GetFlag(FLAGS_lr);
  o.lr.warmup_steps = absl::GetFlag(FLAGS_warmup_steps);
  if (absl::Status s = ParseLrDecay(absl::GetFlag(FLAGS_lr_decay), &o.lr.decay); !s.ok()) {
    return s;
  }
  o.lr.total_steps = absl::GetFlag(FLAGS_total_steps);
  o.lr.min_lr = absl::GetFlag(FLAGS_min_lr);
  o.lr.step_every = absl::GetFlag(FLAGS_lr_step_every);
  o.lr.step_gamma = absl::GetFlag(FLAGS_lr_step_gamma);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.straggler_timeout = absl::GetFlag(FLAGS_straggler_timeout);
  o.max_gradient_norm = absl::GetFlag(FLAGS_max_gradient_norm);
  o.noise_ema = absl::GetFlag(FLAGS_noise_ema);
  o.checkpoint_every = absl::GetFlag(FLAGS_checkpoint_every);
  o.stall_report_after = absl::GetFlag(FLAGS_stall_report_after);
  if (absl::Status s = o.Validate(); !s.ok()) return s;
  if (o.checkpoint_every > 0 && absl::GetFlag(FLAGS_checkpoint_dir).empty()) {
    return absl::InvalidArgumentError("--checkpoint_every needs --checkpoint_dir");
  }
  if (absl::GetFlag(FLAGS_checkpoint_keep) < 1) {
    return absl::InvalidArgumentError("--checkpoint_keep must be >= 1");
  }
  if (absl::GetFlag(FLAGS_merge_threads) < 0) {
    return absl::InvalidArgumentError("--merge_threads must be >= 0");
  }
  const int port = absl::GetFlag(FLAGS_port);
  const int metrics_port = absl::GetFlag(FLAGS_metrics_port);
  const int health_port = absl::GetFlag(FLAGS_health_port);
  if (port < 0 || port > 65535 || metrics_port < 0 || metrics_port > 65535 || health_port < 0 ||
      health_port > 65535) {
    return absl::InvalidArgumentError("ports must be in [0, 65535]");
  }
  if (absl::Status s = SecurityFromFlags().Validate(); !s.ok()) return s;
  o.max_shard_bytes = absl::GetFlag(FLAGS_max_shard_bytes);
  if (o.max_shard_bytes < 0) return absl::InvalidArgumentError("--max_shard_bytes must be >= 0");
  if (o.max_shard_bytes == 0) o.max_shard_bytes = MemoryLimitBytes() / 2;
  if (absl::GetFlag(FLAGS_hello_timeout) <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("--hello_timeout must be positive");
  }
  if (absl::GetFlag(FLAGS_max_train_streams) < 0 || absl::GetFlag(FLAGS_max_concurrent_rpcs) < 0) {
    return absl::InvalidArgumentError("--max_train_streams and --max_concurrent_rpcs must be >= 0");
  }
  return o;
}

ServiceLimits LimitsFromFlags(const ShardOptions& o) {
  ServiceLimits limits;
  limits.max_train_streams = absl::GetFlag(FLAGS_max_train_streams);
  if (limits.max_train_streams == 0) limits.max_train_streams = 2 * o.num_workers + 8;
  limits.max_concurrent_rpcs = absl::GetFlag(FLAGS_max_concurrent_rpcs);
  if (limits.max_concurrent_rpcs == 0) limits.max_concurrent_rpcs = 2 * o.num_workers + 16;
  limits.hello_timeout = absl::GetFlag(FLAGS_hello_timeout);
  return limits;
}

// RunServer: serves until SIGTERM/SIGINT (drain) or, with --exit_when_done, until
// every worker has left. REQUIRES: SIGTERM and SIGINT blocked in every thread.
absl::Status RunServer(const ShardOptions& options) {
  absl::StatusOr<DeviceChoice> device = ParseDeviceChoice(absl::GetFlag(FLAGS_device));
  if (!device.ok()) return device.status();
  int threads = absl::GetFlag(FLAGS_merge_threads);
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  absl::StatusOr<std::unique_ptr<MergeBackend>> backend = NewMergeBackend(*device, threads);
  if (!backend.ok()) return backend.status();
  const std::string device_name = (*backend)->Name();

  auto registry = std::make_shared<prometheus::Registry>();
  ShardMetricsOptions metrics_options;
  metrics_options.shard_index = options.shard_index;
  metrics_options.mode = SmoothingModeName(options.mode);
  metrics_options.device = device_name;
  metrics_options.per_worker_noise = absl::GetFlag(FLAGS_per_worker_noise_metrics);
  metrics_options.num_workers = options.num_workers;
  metrics_options.min_workers = options.EffectiveMinWorkers();
  ShardMetrics metrics(*registry, metrics_options);
  std::unique_ptr<prometheus::Exposer> exposer;
  if (const int mport = absl::GetFlag(FLAGS_metrics_port); mport > 0) {
    const std::string where = absl::StrCat(absl::GetFlag(FLAGS_metrics_address), ":", mport);
    try {
      exposer = std::make_unique<prometheus::Exposer>(where);
    } catch (const std::exception& e) {
      return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", where, ": ", e.what()));
    }
    exposer->RegisterCollectable(registry);
    LogInfo("metrics on http://", where, "/metrics");
  }

  std::unique_ptr<CheckpointStore> checkpoints;
  if (const std::string dir = absl::GetFlag(FLAGS_checkpoint_dir); !dir.empty()) {
    CheckpointOptions co;
    co.dir = dir;
    co.shard_index = options.shard_index;
    co.num_shards = options.num_shards;
    co.config_hash = options.ConfigHash();
    co.keep = absl::GetFlag(FLAGS_checkpoint_keep);
    co.accept_other_config = absl::GetFlag(FLAGS_resume_with_new_config);
    absl::StatusOr<std::unique_ptr<CheckpointStore>> store = CheckpointStore::Open(co, &metrics);
    if (!store.ok()) return store.status();
    checkpoints = *std::move(store);
  }
  absl::StatusOr<std::unique_ptr<ServerListeners>> listeners =
      ServerListeners::Load(SecurityFromFlags(), [&metrics] { metrics.OnUnauthenticated(); });
  if (!listeners.ok()) return listeners.status();
  ShardCore core(options, *std::move(backend), &metrics, nullptr, checkpoints.get());
  if (absl::Status s = core.RestoreNewest(); !s.ok()) return s;
  ParameterShardService service(&core, &metrics, LimitsFromFlags(options));
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int bound_port = 0, bound_health_port = 0;
  const std::string address =
      absl::StrCat(absl::GetFlag(FLAGS_address), ":", absl::GetFlag(FLAGS_port));
  builder.AddListeningPort(address, (*listeners)->main(), &bound_port);
  const int health_port = absl::GetFlag(FLAGS_health_port);
  const std::string health_address = absl::StrCat(absl::GetFlag(FLAGS_address), ":", health_port);
  if (health_port > 0) {
    builder.AddListeningPort(health_address, (*listeners)->health(), &bound_health_port);
  }
  builder.SetMaxReceiveMessageSize(kMaxMessageBytes);
  builder.SetMaxSendMessageSize(kMaxMessageBytes);
  // gnc's own service runs on gRPC's callback API (no thread per call); server
  // reflection is a synchronous service, a thread per call in progress. Bound those
  // threads: calls beyond them are answered RESOURCE_EXHAUSTED.
  grpc::ResourceQuota quota("gnc-server");
  quota.SetMaxThreads(kMaxSyncThreads);
  builder.SetResourceQuota(quota);
  // Streams one connection may open at once (a worker needs a few); more wait on the
  // client's side, so one connection cannot fill the server with calls.
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, kMaxStreamsPerConnection);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || bound_port == 0) {
    return absl::UnavailableError(absl::StrCat(
        "cannot listen on ", address,
        (*listeners)->tls() ? " (or gRPC refused the TLS certificate and key: gRPC's log "
                              "above says which)"
                            : ""));
  }
  if (health_port > 0 && bound_health_port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", health_address));
  }
  if (const std::string path = absl::GetFlag(FLAGS_port_file); !path.empty()) {
    const std::string tmp = path + ".tmp";
    std::ofstream(tmp) << bound_port << "\n";
    std::rename(tmp.c_str(), path.c_str());
  }
  LogInfo("gnc-server shard ", options.shard_index, "/", options.num_shards, " listening on ",
          absl::GetFlag(FLAGS_address), ":", bound_port, " (K=", options.num_workers,
          ", mode=", SmoothingModeName(options.mode),
          options.noise_timing == NoiseTiming::kFresh ? " with fresh noise" : "",
          ", device=", device_name, ", config hash ", absl::Hex(options.ConfigHash()), ")");
  const ServerListeners& security = **listeners;
  LogInfo("security: ",
          security.tls() ? (security.mutual_tls() ? "mutual TLS" : "TLS") : "plaintext",
          security.has_token() ? ", job token required" : ", no job token",
          health_port > 0 ? absl::StrCat(", plaintext health port ", bound_health_port) : "",
          "; limits: ", options.max_shard_bytes >> 20, " MiB of shard state, ",
          LimitsFromFlags(options).max_train_streams, " Train streams, ",
          LimitsFromFlags(options).max_concurrent_rpcs, " offers and pulls, Hello within ",
          absl::FormatDuration(absl::GetFlag(FLAGS_hello_timeout)));
  if (security.has_token() && !security.tls() && !IsLoopbackAddress(address)) {
    LogWarning("the job token is accepted in plaintext on ", address,
               ": anyone on the network path can read it; serve TLS (--tls_cert_file)");
  }

  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  const timespec tick{0, 50'000'000};
  const bool exit_when_done = absl::GetFlag(FLAGS_exit_when_done);
  while (true) {
    const int sig = sigtimedwait(&signals, nullptr, &tick);
    if (sig == SIGTERM || sig == SIGINT) {
      LogInfo("signal ", sig, ": draining");
      break;
    }
    core.CheckDeadline();
    service.CheckDeadlines();
    if (exit_when_done && core.Done()) {
      LogInfo("the job is done (every live worker has left): shutting down");
      break;
    }
  }
  server->GetHealthCheckService()->SetServingStatus(false);
  core.Drain();
  service.Drain();
  const absl::Time drain_deadline = absl::Now() + absl::GetFlag(FLAGS_drain_timeout);
  server->Shutdown(absl::ToChronoTime(drain_deadline));
  server->Wait();
  if (checkpoints != nullptr) {
    absl::Status s = checkpoints->Flush(std::max(drain_deadline - absl::Now(), absl::Seconds(1)));
    if (!s.ok()) LogError("last checkpoint: ", s.message());
  }
  LogInfo("gnc-server stopped at step ", core.GetStatus().job.step);
  return absl::OkStatus();
}

}  // namespace
}  // namespace gnc

int main(int argc, char** argv) {
  if (std::optional<int> done = gnc::HandleHelpAndVersion(
          argc, argv, "gnc-server", "gnc-server: one shard of a gnc parameter-server job")) {
    return *done;
  }
  absl::ParseCommandLine(argc, argv);
  gnc::RetainFreedMemory();
  // Signals are taken synchronously by the main loop; block them before any thread
  // starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  absl::StatusOr<gnc::ShardOptions> options = gnc::OptionsFromFlags();
  if (!options.ok()) {
    gnc::LogError("invalid configuration: ", options.status().message());
    return 2;
  }
  if (absl::GetFlag(FLAGS_check_config)) {
    absl::StatusOr<gnc::DeviceChoice> device =
        gnc::ParseDeviceChoice(absl::GetFlag(FLAGS_device));
    if (!device.ok()) {
      gnc::LogError("invalid configuration: ", device.status().message());
      return 2;
    }
    std::printf("config ok: shard %d/%d, K=%d, mode=%s, config hash %016llx\n",
                options->shard_index, options->num_shards, options->num_workers,
                gnc::SmoothingModeName(options->mode),
                static_cast<unsigned long long>(options->ConfigHash()));
    return 0;
  }
  absl::Status s = gnc::RunServer(*options);
  if (!s.ok()) {
    gnc::LogError("gnc-server: ", s.message());
    return 1;
  }
  return 0;
}
