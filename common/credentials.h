// Transport security, one factory for both daemons and the client library (DESIGN
// section 7): TLS, optionally mutual, on every channel and listener, and the job's
// bearer token. Everything secret comes from files; an error names the file and never
// holds its contents, and nothing here logs a secret.
//
// The server's listener credentials and the token check that runs on them are in
// server/request_gate.h; this file holds what both sides share and the client's half.
#ifndef GNC_COMMON_CREDENTIALS_H_
#define GNC_COMMON_CREDENTIALS_H_

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace grpc {
class ChannelCredentials;
class ClientContext;
}  // namespace grpc

namespace gnc {

// The metadata key of the token, and what precedes the token in its value.
inline constexpr char kAuthorizationKey[] = "authorization";
inline constexpr char kBearerPrefix[] = "Bearer ";
// Tokens shorter than this are refused: a job token is meant to be random (e.g.
// `openssl rand -hex 32`), not a password.
inline constexpr size_t kMinTokenLength = 16;

// ReadSecretFile: the whole file at `path`; `what` names it in errors ("TLS key").
// Errors: NOT_FOUND, PERMISSION_DENIED, INVALID_ARGUMENT (empty), never the contents.
absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what);

// ReadAuthToken: the job token in `path`, surrounding whitespace removed.
// INVALID_ARGUMENT when shorter than kMinTokenLength or not printable ASCII without
// spaces (it travels as an HTTP/2 header value); otherwise ReadSecretFile's errors.
absl::StatusOr<std::string> ReadAuthToken(const std::string& path);

// ConstantTimeEquals: whether a == b, in a time that depends on b's length only
// (b is the secret; a comes from the network).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

// IsLoopbackAddress: whether "host:port" (or a bare host) names this machine only:
// localhost, 127.0.0.0/8, ::1. A token sent in plaintext elsewhere can be read on
// the way.
bool IsLoopbackAddress(absl::string_view address);

// ChannelSecurityOptions: a client's side. TLS is on when tls_ca_file or
// tls_cert_file is set; an empty tls_ca_file then trusts the system's roots.
struct ChannelSecurityOptions {
  std::string tls_ca_file;      // PEM: CA certificates that sign the servers'
  std::string tls_cert_file;    // PEM: this client's certificate (mutual TLS)
  std::string tls_key_file;     // PEM: its private key
  std::string auth_token_file;  // the job token

  bool tls() const { return !tls_ca_file.empty() || !tls_cert_file.empty(); }
  // Validate: INVALID_ARGUMENT for a certificate without its key or the reverse.
  // Reads no file.
  absl::Status Validate() const;
};

// ChannelSecurity: the credentials of a client's channels and the token its calls
// carry. Immutable once loaded; thread-safe.
class ChannelSecurity {
 public:
  // Load: reads every file of `options`. Errors: as ReadSecretFile / ReadAuthToken,
  // and Validate's.
  static absl::StatusOr<std::shared_ptr<const ChannelSecurity>> Load(
      const ChannelSecurityOptions& options);

  std::shared_ptr<grpc::ChannelCredentials> credentials() const { return credentials_; }
  bool tls() const { return tls_; }
  bool has_token() const { return !authorization_.empty(); }
  // Authorize: adds the token to a call's metadata (nothing without a token).
  void Authorize(grpc::ClientContext* ctx) const;
  // WarnIfExposed: logs once per address when a token would travel in plaintext to
  // another machine.
  void WarnIfExposed(absl::string_view address) const;

 private:
  ChannelSecurity() = default;
  std::shared_ptr<grpc::ChannelCredentials> credentials_;
  bool tls_ = false;
  std::string authorization_;  // "Bearer <token>", or empty
};

}  // namespace gnc

#endif  // GNC_COMMON_CREDENTIALS_H_
