// RequestGate: the one check every call to gnc-server passes before it reaches any
// service: the job token (DESIGN section 7). It runs inside gRPC, as the auth metadata
// processor of the listener's credentials, on the call's initial metadata; a refused
// call never reaches a handler or a reactor (so nothing is allocated for it and
// nothing changes), whatever the service: gnc.v1, reflection, or one added later.
// Health checks (grpc.health.v1) pass without a token, for probes that cannot carry
// one.
//
// The same gate, in health-only mode, serves the plaintext health port: it lets
// grpc.health.v1 through and refuses everything else.
//
// ServerListeners makes the credentials of both ports from the flags: TLS or
// plaintext, a client CA for mutual TLS, the token file.
//
// Thread-safe.
#ifndef GNC_SERVER_REQUEST_GATE_H_
#define GNC_SERVER_REQUEST_GATE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace grpc {
class ServerCredentials;
}  // namespace grpc

namespace gnc {

class RequestGate {
 public:
  enum class Mode {
    kToken,       // every call but health needs the token (none configured: all pass)
    kHealthOnly,  // only health calls pass (the plaintext health port)
  };
  // OnRefused: told of every refused call (the metric); cheap, any thread.
  using OnRefused = std::function<void()>;

  // token: the job token; empty admits every call in kToken mode.
  RequestGate(Mode mode, std::string token, OnRefused on_refused);

  // Check: whether a call to `path` (":path", e.g. "/gnc.v1.ParameterShard/Train")
  // whose "authorization" metadata is `authorization` (nullopt: absent; a call that
  // carries it twice passes an empty one) may proceed. UNAUTHENTICATED otherwise,
  // counted and logged (at most one line per kLogInterval, with the count).
  absl::Status Check(absl::string_view path, std::optional<absl::string_view> authorization);

  static constexpr absl::Duration kLogInterval = absl::Seconds(10);

 private:
  void Refuse(absl::string_view path, absl::string_view why);

  const Mode mode_;
  const std::string expected_;  // "Bearer <token>", or empty
  const OnRefused on_refused_;
  absl::Mutex mu_;
  int64_t unlogged_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Time last_log_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
};

// ServerSecurityOptions: gnc-server's flags.
struct ServerSecurityOptions {
  std::string tls_cert_file;       // PEM: the server's certificate chain
  std::string tls_key_file;        // PEM: its private key
  std::string tls_client_ca_file;  // PEM: clients must present a certificate from it
  std::string auth_token_file;     // the job token

  bool tls() const { return !tls_cert_file.empty(); }
  // Validate: INVALID_ARGUMENT for an incomplete combination. Reads no file.
  absl::Status Validate() const;
};

// ServerListeners: the credentials of the gRPC port and of the health port, with
// their gates. Must outlive the grpc::Server that uses them.
class ServerListeners {
 public:
  // Load: reads every file. Errors: ReadSecretFile's and ReadAuthToken's, Validate's.
  static absl::StatusOr<std::unique_ptr<ServerListeners>> Load(
      const ServerSecurityOptions& options, RequestGate::OnRefused on_refused);

  // The gRPC port: TLS (mutual with a client CA) or plaintext, behind the token gate.
  std::shared_ptr<grpc::ServerCredentials> main() const { return main_; }
  // The health port: plaintext, health calls only.
  std::shared_ptr<grpc::ServerCredentials> health() const { return health_; }
  bool tls() const { return tls_; }
  bool mutual_tls() const { return mutual_tls_; }
  bool has_token() const { return has_token_; }

 private:
  ServerListeners() = default;
  std::shared_ptr<grpc::ServerCredentials> main_, health_;
  bool tls_ = false, mutual_tls_ = false, has_token_ = false;
};

}  // namespace gnc

#endif  // GNC_SERVER_REQUEST_GATE_H_
