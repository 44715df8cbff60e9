#include "server/request_gate.h"

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpcpp/security/server_credentials.h>

#include <functional>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/credentials.h"
#include "common/log.h"

namespace gnc {
namespace {

constexpr absl::string_view kHealthPrefix = "/grpc.health.v1.Health/";

// What a refused caller is told; no secret in any of them.
constexpr char kMissingToken[] =
    "this call needs the job token (metadata \"authorization: Bearer <token>\")";
constexpr char kWrongToken[] = "the job token is wrong";
constexpr char kHealthOnly[] =
    "this port serves only grpc.health.v1 (plaintext probes); use the gRPC port";

absl::string_view View(const grpc_slice& s) {
  return absl::string_view(reinterpret_cast<const char*>(GRPC_SLICE_START_PTR(s)),
                          GRPC_SLICE_LENGTH(s));
}

// Printable: an outsider's path, cut short and with odd bytes replaced, for a log.
std::string Printable(absl::string_view s) {
  std::string out;
  for (char c : s.substr(0, 96)) out.push_back(c >= 0x20 && c < 0x7f ? c : '?');
  if (s.size() > 96) out.append("...");
  return out;
}

// ProcessMetadata: gRPC's auth metadata processor (C core API, so that the same gate
// runs on plaintext listeners: the C++ InsecureServerCredentials cannot take one). It
// runs inline, on the thread that read the call's headers, before the call is matched
// to any method. On success the token is consumed: handlers never see it.
void ProcessMetadata(void* state, grpc_auth_context* /*context*/, const grpc_metadata* md,
                     size_t num_md, grpc_process_auth_metadata_done_cb done, void* user_data) {
  RequestGate& gate = **static_cast<std::shared_ptr<RequestGate>*>(state);
  absl::string_view path;
  const grpc_metadata* auth = nullptr;
  int auth_count = 0;
  for (size_t i = 0; i < num_md; ++i) {
    const absl::string_view key = View(md[i].key);
    if (key == ":path") {
      path = View(md[i].value);
    } else if (key == kAuthorizationKey) {
      auth = &md[i];
      ++auth_count;
    }
  }
  std::optional<absl::string_view> token;
  if (auth != nullptr) token = View(auth->value);
  if (auth_count > 1) token = absl::string_view();  // two tokens: as wrong as a wrong one
  const absl::Status s = gate.Check(path, token);
  if (s.ok()) {
    done(user_data, auth, auth != nullptr ? 1 : 0, nullptr, 0, GRPC_STATUS_OK, nullptr);
    return;
  }
  // gRPC copies the message before done() returns.
  const std::string message(s.message());
  done(user_data, nullptr, 0, nullptr, 0, GRPC_STATUS_UNAUTHENTICATED, message.c_str());
}

void DestroyState(void* state) { delete static_cast<std::shared_ptr<RequestGate>*>(state); }

// CoreServerCredentials: a C core server credentials object as grpc::ServerCredentials.
// gRPC 1.51's C++ API has no public way to wrap one; AddPortToServer is the virtual
// that grpc::Server calls to bind a port with these credentials.
class CoreServerCredentials final : public grpc::ServerCredentials {
 public:
  // `make` runs once the base class has initialised gRPC; the credentials are unusable
  // (ok() false) when it returns null.
  CoreServerCredentials(const std::function<grpc_server_credentials*()>& make,
                        std::shared_ptr<RequestGate> gate)
      : creds_(make()) {
    if (creds_ == nullptr) return;
    grpc_server_credentials_set_auth_metadata_processor(
        creds_, grpc_auth_metadata_processor{ProcessMetadata, DestroyState,
                                             new std::shared_ptr<RequestGate>(std::move(gate))});
  }
  ~CoreServerCredentials() override {
    if (creds_ != nullptr) grpc_server_credentials_release(creds_);
  }
  CoreServerCredentials(const CoreServerCredentials&) = delete;
  CoreServerCredentials& operator=(const CoreServerCredentials&) = delete;

  bool ok() const { return creds_ != nullptr; }
  // The gate is fixed at construction; gnc never installs another processor.
  void SetAuthMetadataProcessor(const std::shared_ptr<grpc::AuthMetadataProcessor>&) override {}

 private:
  int AddPortToServer(const std::string& addr, grpc_server* server) override {
    return grpc_server_add_http2_port(server, addr.c_str(), creds_);
  }

  grpc_server_credentials* const creds_;
};

}  // namespace

RequestGate::RequestGate(Mode mode, std::string token, OnRefused on_refused)
    : mode_(mode),
      expected_(token.empty() ? std::string() : absl::StrCat(kBearerPrefix, token)),
      on_refused_(std::move(on_refused)) {}

absl::Status RequestGate::Check(absl::string_view path,
                                std::optional<absl::string_view> authorization) {
  const bool health = absl::StartsWith(path, kHealthPrefix);
  if (mode_ == Mode::kHealthOnly) {
    if (health) return absl::OkStatus();
    Refuse(path, "not a health check on the health port");
    return absl::UnauthenticatedError(kHealthOnly);
  }
  if (health || expected_.empty()) return absl::OkStatus();
  if (!authorization.has_value()) {
    Refuse(path, "no token");
    return absl::UnauthenticatedError(kMissingToken);
  }
  if (!ConstantTimeEquals(*authorization, expected_)) {
    Refuse(path, "wrong token");
    return absl::UnauthenticatedError(kWrongToken);
  }
  return absl::OkStatus();
}

void RequestGate::Refuse(absl::string_view path, absl::string_view why) {
  if (on_refused_) on_refused_();
  int64_t count = 0;
  {
    absl::MutexLock lock(&mu_);
    ++unlogged_;
    const absl::Time now = absl::Now();
    if (now - last_log_ < kLogInterval) return;
    last_log_ = now;
    count = unlogged_;
    unlogged_ = 0;
  }
  LogWarning("refused ", count, " unauthenticated call(s) since the last such line; this one: ",
             why, ", method ", Printable(path));
}

absl::Status ServerSecurityOptions::Validate() const {
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError("--tls_cert_file and --tls_key_file go together");
  }
  if (!tls_client_ca_file.empty() && tls_cert_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_client_ca_file (mutual TLS) needs TLS: --tls_cert_file and --tls_key_file");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerListeners>> ServerListeners::Load(
    const ServerSecurityOptions& options, RequestGate::OnRefused on_refused) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::string token;
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> t = ReadAuthToken(options.auth_token_file);
    if (!t.ok()) return t.status();
    token = *std::move(t);
  }
  std::unique_ptr<ServerListeners> out(new ServerListeners());
  out->has_token_ = !token.empty();
  std::string cert, key, client_ca;
  if (options.tls()) {
    absl::StatusOr<std::string> c = ReadSecretFile(options.tls_cert_file, "TLS certificate");
    if (!c.ok()) return c.status();
    absl::StatusOr<std::string> k = ReadSecretFile(options.tls_key_file, "TLS key");
    if (!k.ok()) return k.status();
    if (!options.tls_client_ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadSecretFile(options.tls_client_ca_file, "TLS client CA");
      if (!ca.ok()) return ca.status();
      client_ca = *std::move(ca);
    }
    cert = *std::move(c);
    key = *std::move(k);
    out->tls_ = true;
    out->mutual_tls_ = !client_ca.empty();
  }
  auto main = std::make_shared<CoreServerCredentials>(
      [&]() -> grpc_server_credentials* {
        if (!options.tls()) return grpc_insecure_server_credentials_create();
        grpc_ssl_pem_key_cert_pair pair{key.c_str(), cert.c_str()};
        return grpc_ssl_server_credentials_create_ex(
            client_ca.empty() ? nullptr : client_ca.c_str(), &pair, 1,
            client_ca.empty() ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                              : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY,
            nullptr);
      },
      std::make_shared<RequestGate>(RequestGate::Mode::kToken, token, on_refused));
  if (!main->ok()) return absl::InvalidArgumentError("gRPC refused the TLS settings");
  auto health = std::make_shared<CoreServerCredentials>(
      [] { return grpc_insecure_server_credentials_create(); },
      std::make_shared<RequestGate>(RequestGate::Mode::kHealthOnly, std::string(),
                                    std::move(on_refused)));
  if (!health->ok()) return absl::InternalError("gRPC made no plaintext credentials");
  out->main_ = std::move(main);
  out->health_ = std::move(health);
  return out;
}

}  // namespace gnc
