// RequestGate: which calls pass the job-token check, what is counted, and the flag
// combinations the server's listeners accept.
#include "server/request_gate.h"

#include "gtest/gtest.h"

namespace gnc {
namespace {

constexpr char kTrain[] = "/gnc.v1.ParameterShard/Train";
constexpr char kHealth[] = "/grpc.health.v1.Health/Check";
constexpr char kReflection[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

TEST(RequestGateTest, TokenModeNeedsTheTokenButForHealth) {
  int refused = 0;
  RequestGate gate(RequestGate::Mode::kToken, "0123456789abcdef", [&] { ++refused; });
  EXPECT_TRUE(gate.Check(kTrain, "Bearer 0123456789abcdef").ok());
  EXPECT_TRUE(gate.Check(kReflection, "Bearer 0123456789abcdef").ok());
  EXPECT_TRUE(gate.Check(kHealth, std::nullopt).ok());
  EXPECT_EQ(refused, 0);
  for (const auto& auth : {std::optional<absl::string_view>(),
                           std::optional<absl::string_view>(""),
                           std::optional<absl::string_view>("0123456789abcdef"),
                           std::optional<absl::string_view>("Bearer 0123456789abcdeF"),
                           std::optional<absl::string_view>("Bearer 0123456789abcdef ")}) {
    const absl::Status s = gate.Check(kTrain, auth);
    EXPECT_EQ(s.code(), absl::StatusCode::kUnauthenticated) << (auth ? *auth : "(none)");
    EXPECT_EQ(s.message().find("0123456789abcdef"), std::string::npos) << s;
  }
  EXPECT_EQ(gate.Check(kReflection, std::nullopt).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(gate.Check("", std::nullopt).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(refused, 7);
}

TEST(RequestGateTest, WithoutATokenEverythingPasses) {
  int refused = 0;
  RequestGate gate(RequestGate::Mode::kToken, "", [&] { ++refused; });
  EXPECT_TRUE(gate.Check(kTrain, std::nullopt).ok());
  EXPECT_TRUE(gate.Check(kTrain, "Bearer whatever").ok());
  EXPECT_EQ(refused, 0);
}

TEST(RequestGateTest, HealthOnlyModeRefusesEverythingElse) {
  int refused = 0;
  RequestGate gate(RequestGate::Mode::kHealthOnly, "", [&] { ++refused; });
  EXPECT_TRUE(gate.Check(kHealth, std::nullopt).ok());
  EXPECT_TRUE(gate.Check("/grpc.health.v1.Health/Watch", std::nullopt).ok());
  EXPECT_EQ(gate.Check(kTrain, std::nullopt).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(gate.Check("/grpc.health.v1.HealthX/Check", std::nullopt).code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(refused, 2);
}

TEST(RequestGateTest, ServerSecurityFlagCombinations) {
  ServerSecurityOptions o;
  EXPECT_TRUE(o.Validate().ok());
  o.tls_cert_file = "server.crt";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o.tls_key_file = "server.key";
  EXPECT_TRUE(o.Validate().ok());
  o.tls_client_ca_file = "ca.crt";
  EXPECT_TRUE(o.Validate().ok());
  o.tls_cert_file = o.tls_key_file = "";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);  // mTLS without TLS
  ServerSecurityOptions missing;
  missing.auth_token_file = "/nonexistent/token";
  EXPECT_EQ(ServerListeners::Load(missing, nullptr).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gnc
