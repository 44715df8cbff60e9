#include "common/credentials.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <grpcpp/client_context.h>
#include <grpcpp/security/credentials.h>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/log.h"

namespace gnc {

absl::StatusOr<std::string> ReadSecretFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int err = errno;
    const std::string why = absl::StrCat("cannot read the ", what, " file ", path, ": ",
                                         std::strerror(err));
    if (err == EACCES || err == EPERM) return absl::PermissionDeniedError(why);
    return absl::NotFoundError(why);
  }
  std::ostringstream bytes;
  bytes << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading the ", what, " file ", path));
  std::string out = std::move(bytes).str();
  if (absl::StripAsciiWhitespace(out).empty()) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " file ", path, " is empty"));
  }
  return out;
}

absl::StatusOr<std::string> ReadAuthToken(const std::string& path) {
  absl::StatusOr<std::string> raw = ReadSecretFile(path, "auth token");
  if (!raw.ok()) return raw.status();
  std::string token(absl::StripAsciiWhitespace(*raw));
  for (char c : token) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the auth token in ", path,
          " must be printable ASCII without spaces (one line, e.g. openssl rand -hex 32)"));
    }
  }
  if (token.size() < kMinTokenLength) {
    return absl::InvalidArgumentError(absl::StrCat("the auth token in ", path, " has ",
                                                   token.size(), " characters; at least ",
                                                   kMinTokenLength, " are required"));
  }
  return token;
}

bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  // Every byte of b is looked at whatever a holds; the accumulator is volatile so that
  // the compiler cannot stop at the first difference.
  volatile unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    diff = diff | (x ^ static_cast<unsigned char>(b[i]));
  }
  return diff == 0;
}

bool IsLoopbackAddress(absl::string_view address) {
  absl::string_view host = address;
  absl::ConsumePrefix(&host, "ipv4:");
  absl::ConsumePrefix(&host, "ipv6:");
  absl::ConsumePrefix(&host, "dns:///");
  if (absl::ConsumePrefix(&host, "[")) {  // [v6]:port
    host = host.substr(0, host.find(']'));
  } else if (host.find(':') == host.rfind(':') && host.find(':') != absl::string_view::npos) {
    host = host.substr(0, host.find(':'));  // host:port
  }
  if (host == "localhost" || host == "::1") return true;
  // 127.0.0.0/8
  if (!absl::ConsumePrefix(&host, "127.")) return false;
  int parts = 1;
  for (absl::string_view rest = host; !rest.empty(); ++parts) {
    const size_t dot = rest.find('.');
    uint32_t octet = 0;
    if (!absl::SimpleAtoi(rest.substr(0, dot), &octet) || octet > 255) return false;
    rest = dot == absl::string_view::npos ? absl::string_view() : rest.substr(dot + 1);
  }
  return parts == 4;
}

absl::Status ChannelSecurityOptions::Validate() const {
  if (tls_cert_file.empty() != tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "--tls_cert_file and --tls_key_file go together (mutual TLS needs both)");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ChannelSecurity>> ChannelSecurity::Load(
    const ChannelSecurityOptions& options) {
  if (absl::Status s = options.Validate(); !s.ok()) return s;
  std::shared_ptr<ChannelSecurity> out(new ChannelSecurity());
  if (options.tls()) {
    grpc::SslCredentialsOptions ssl;
    if (!options.tls_ca_file.empty()) {
      absl::StatusOr<std::string> ca = ReadSecretFile(options.tls_ca_file, "TLS CA");
      if (!ca.ok()) return ca.status();
      ssl.pem_root_certs = *std::move(ca);
    }
    if (!options.tls_cert_file.empty()) {
      absl::StatusOr<std::string> cert = ReadSecretFile(options.tls_cert_file, "TLS certificate");
      if (!cert.ok()) return cert.status();
      absl::StatusOr<std::string> key = ReadSecretFile(options.tls_key_file, "TLS key");
      if (!key.ok()) return key.status();
      ssl.pem_cert_chain = *std::move(cert);
      ssl.pem_private_key = *std::move(key);
    }
    out->credentials_ = grpc::SslCredentials(ssl);
    out->tls_ = true;
  } else {
    out->credentials_ = grpc::InsecureChannelCredentials();
  }
  if (out->credentials_ == nullptr) {
    return absl::InvalidArgumentError("gRPC refused the TLS settings");
  }
  if (!options.auth_token_file.empty()) {
    absl::StatusOr<std::string> token = ReadAuthToken(options.auth_token_file);
    if (!token.ok()) return token.status();
    out->authorization_ = absl::StrCat(kBearerPrefix, *token);
  }
  return std::shared_ptr<const ChannelSecurity>(std::move(out));
}

void ChannelSecurity::Authorize(grpc::ClientContext* ctx) const {
  if (!authorization_.empty()) ctx->AddMetadata(kAuthorizationKey, authorization_);
}

void ChannelSecurity::WarnIfExposed(absl::string_view address) const {
  if (has_token() && !tls_ && !IsLoopbackAddress(address)) {
    LogWarning("the job token travels in plaintext to ", address,
               ": anyone on the network path can read it; use TLS (--tls_ca_file)");
  }
}

}  // namespace gnc
