// round_bench: K scripted clients against S real gnc-server processes on loopback.
// One round = every worker receives its N-float evaluation point and pushes an
// N-float gradient. Prints the median round time and payload GB/s, next to a raw TCP
// loopback transfer of the same bytes measured in the same run (the yardstick), and
// the shards' peak resident memory.
//   round_bench [--servers=S] [--workers=K] [--mfloats=N in Mi] [--rounds=R]
//               [--mode=none|gnc|isotropic] [--wire_dtype=float32|bfloat16]
//               [--merge_threads=T] [--no_tcp] [--tls_dir=DIR] [--auth_token_file=F]
// --tls_dir: mutual TLS with the files deploy/local/make-certs.sh writes in DIR;
// --auth_token_file: the job token on every call (both measure what security costs).
// The last line is machine-readable: "round_ms=... shard_rss_mib=...".
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/process_memory.h"
#include "tests/integration/server_process.h"
#include "worker/client.h"

namespace {

using Clock = std::chrono::steady_clock;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int IntFlag(int argc, char** argv, const std::string& name, int fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    int v;
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0 &&
        absl::SimpleAtoi(argv[i] + prefix.size(), &v)) {
      return v;
    }
  }
  return fallback;
}

std::string StringFlag(int argc, char** argv, const std::string& name, std::string fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) == 0) return argv[i] + prefix.size();
  }
  return fallback;
}

// TcpLoopbackSeconds: time to push `bytes` through one TCP connection on 127.0.0.1.
double TcpLoopbackSeconds(size_t bytes) {
  int listener = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof addr;
  if (bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      listen(listener, 1) != 0 ||
      getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return -1;
  }
  std::thread receiver([&] {
    int fd = accept(listener, nullptr, nullptr);
    std::vector<char> buf(1 << 20);
    size_t got = 0;
    while (got < bytes) {
      ssize_t n = read(fd, buf.data(), buf.size());
      if (n <= 0) break;
      got += n;
    }
    close(fd);
  });
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  std::vector<char> buf(1 << 20, 7);
  auto t0 = Clock::now();
  size_t sent = 0;
  while (sent < bytes) {
    ssize_t n = write(fd, buf.data(), std::min(buf.size(), bytes - sent));
    if (n <= 0) break;
    sent += n;
  }
  close(fd);
  receiver.join();
  auto t1 = Clock::now();
  close(listener);
  return std::chrono::duration<double>(t1 - t0).count();
}

// PeakRssMib: the peak resident set (VmHWM) of a live process, in MiB (0 if unknown).
double PeakRssMib(pid_t pid) {
  FILE* f = std::fopen(absl::StrCat("/proc/", pid, "/status").c_str(), "r");
  if (f == nullptr) return 0;
  char line[256];
  double kib = 0;
  while (std::fgets(line, sizeof line, f) != nullptr) {
    if (std::sscanf(line, "VmHWM: %lf kB", &kib) == 1) break;
  }
  std::fclose(f);
  return kib / 1024;
}

}  // namespace

int main(int argc, char** argv) {
  gnc::RetainFreedMemory();  // as gnc-worker and gnc-server do
  const int num_shards = IntFlag(argc, argv, "servers", 2);
  const int num_workers = IntFlag(argc, argv, "workers", 2);
  const int64_t n = static_cast<int64_t>(IntFlag(argc, argv, "mfloats", 4)) << 20;
  const int rounds = IntFlag(argc, argv, "rounds", 10);
  const std::string mode = StringFlag(argc, argv, "mode", "none");
  const std::string dtype_name = StringFlag(argc, argv, "wire_dtype", "float32");
  const int merge_threads = IntFlag(argc, argv, "merge_threads", 0);
  const std::string tls_dir = StringFlag(argc, argv, "tls_dir", "");
  const std::string token_file = StringFlag(argc, argv, "auth_token_file", "");
  bool tcp_yardstick = true;
  for (int i = 1; i < argc; ++i) tcp_yardstick &= std::strcmp(argv[i], "--no_tcp") != 0;
  if (dtype_name != "float32" && dtype_name != "bfloat16") {
    std::fprintf(stderr, "round_bench: --wire_dtype must be float32 or bfloat16\n");
    return 2;
  }
  const gnc::WireDType dtype =
      dtype_name == "bfloat16" ? gnc::WireDType::kBfloat16 : gnc::WireDType::kFloat32;

  std::vector<std::unique_ptr<gnc::testing::ServerProcess>> servers;
  std::vector<std::string> addresses;
  std::vector<std::string> security;
  if (!tls_dir.empty()) {
    security = {"--tls_cert_file=" + tls_dir + "/server.crt",
                "--tls_key_file=" + tls_dir + "/server.key",
                "--tls_client_ca_file=" + tls_dir + "/ca.crt"};
  }
  if (!token_file.empty()) security.push_back("--auth_token_file=" + token_file);
  for (int s = 0; s < num_shards; ++s) {
    std::vector<std::string> flags = {
        absl::StrCat("--shard_index=", s), absl::StrCat("--num_shards=", num_shards),
        absl::StrCat("--num_workers=", num_workers), "--mode=" + mode, "--lr=1e-6",
        absl::StrCat("--merge_threads=", merge_threads), "--exit_when_done=false"};
    flags.insert(flags.end(), security.begin(), security.end());
    auto p = gnc::testing::ServerProcess::Start(GNC_SERVER_BINARY, flags);
    if (!p.ok()) {
      std::fprintf(stderr, "round_bench: %s\n", p.status().ToString().c_str());
      return 1;
    }
    addresses.push_back((*p)->address());
    servers.push_back(*std::move(p));
  }
  gnc::ModelLayout layout = *gnc::ModelLayout::Create({gnc::TensorSpec{"params", {n}}});
  std::vector<std::vector<double>> round_times(num_workers);
  std::vector<std::thread> threads;
  std::atomic<bool> failed = false;
  for (int k = 0; k < num_workers; ++k) {
    threads.emplace_back([&, k] {
      gnc::ClientOptions o;
      o.servers = addresses;
      o.rank = k;
      o.num_workers = num_workers;
      o.layout = layout;
      o.local_batch_size = 64;
      o.wire_dtype = dtype;
      if (!tls_dir.empty()) {
        o.tls_ca_file = tls_dir + "/ca.crt";
        o.tls_cert_file = tls_dir + "/client.crt";
        o.tls_key_file = tls_dir + "/client.key";
      }
      o.auth_token_file = token_file;
      auto client = gnc::GncClient::Connect(o);
      if (!client.ok()) {
        std::fprintf(stderr, "rank %d: %s\n", k, client.status().ToString().c_str());
        failed = true;
        return;
      }
      std::vector<float> x(n, 0.0f), g(n, 1e-3f);
      if (!(*client)->OfferParameters(x).ok()) failed = true;
      // Round r: push the gradient of step r-1 (none before the first), receive x_r.
      for (int r = 0; r <= rounds && !failed; ++r) {
        auto t0 = Clock::now();
        if (r > 0 && !(*client)->PushGradient(g, 64).ok()) failed = true;
        if (!(*client)->ReceiveEvalPoint(x).ok()) failed = true;
        if (r > 0) {
          round_times[k].push_back(std::chrono::duration<double>(Clock::now() - t0).count());
        }
      }
      if (!(*client)->Leave().ok()) failed = true;
    });
  }
  for (std::thread& t : threads) t.join();
  if (failed) {
    std::fprintf(stderr, "round_bench: a client failed\n");
    return 1;
  }
  std::vector<double> all;
  for (auto& v : round_times) all.insert(all.end(), v.begin(), v.end());
  const double round = Median(all);
  double rss_mib = 0;  // the largest shard's peak resident set
  for (auto& s : servers) rss_mib = std::max(rss_mib, PeakRssMib(s->pid()));
  const double element = dtype == gnc::WireDType::kBfloat16 ? 2.0 : 4.0;
  const double payload = 2.0 * num_workers * n * element;  // push + receive
  const double bw = payload / round / 1e9;
  std::printf("round_bench: S=%d K=%d N=%lld floats mode=%s wire=%s rounds=%d security=%s%s\n",
              num_shards, num_workers, static_cast<long long>(n), mode.c_str(),
              dtype_name.c_str(), rounds, tls_dir.empty() ? "plaintext" : "mutual-TLS",
              token_file.empty() ? "" : "+token");
  if (tcp_yardstick) {
    std::vector<double> tcp;
    for (int i = 0; i < 3; ++i) tcp.push_back(TcpLoopbackSeconds(static_cast<size_t>(payload)));
    const double tcp_bw = payload / Median(tcp) / 1e9;
    std::printf("median round %.1f ms, payload %.2f GB/s; TCP loopback (same bytes, one "
                "stream) %.2f GB/s; ratio %.0f%%\n",
                round * 1e3, bw, tcp_bw, 100.0 * bw / tcp_bw);
  }
  std::printf("round_ms=%.2f shard_rss_mib=%.0f\n", round * 1e3, rss_mib);
  return 0;
}
