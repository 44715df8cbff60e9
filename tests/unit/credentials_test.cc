// The shared half of transport security: secret files, the token's form, the
// constant-time comparison and what counts as loopback.
#include "common/credentials.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/temp_dir.h"

namespace gnc {
namespace {

std::string Write(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path) << text;
  return path;
}

TEST(CredentialsTest, TokenFileIsTrimmedAndChecked) {
  testing::TempDir dir;
  const std::string good = "0123456789abcdef0123";
  EXPECT_EQ(*ReadAuthToken(Write(dir.path(), "t1", "  " + good + "\n")), good);
  absl::StatusOr<std::string> s = ReadAuthToken(Write(dir.path(), "t2", "short-secret\n"));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message().find("short-secret"), std::string::npos) << s.status();
  s = ReadAuthToken(Write(dir.path(), "t3", "0123456789 abcdef0123"));
  EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.status().message().find("abcdef"), std::string::npos) << s.status();
  EXPECT_EQ(ReadAuthToken(Write(dir.path(), "t4", "\n")).status().code(),
            absl::StatusCode::kInvalidArgument);
  s = ReadAuthToken(dir.path() + "/missing");
  EXPECT_EQ(s.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(s.status().message().find("missing"), std::string::npos);
}

TEST(CredentialsTest, ConstantTimeEqualsIsEquality) {
  EXPECT_TRUE(ConstantTimeEquals("Bearer abc", "Bearer abc"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer abd", "Bearer abc"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer ab", "Bearer abc"));
  EXPECT_FALSE(ConstantTimeEquals("Bearer abcd", "Bearer abc"));
  EXPECT_FALSE(ConstantTimeEquals("", "Bearer abc"));
  EXPECT_FALSE(ConstantTimeEquals(absl::string_view("Bearer ab\0", 10), "Bearer ab"));
  EXPECT_TRUE(ConstantTimeEquals("", ""));
}

TEST(CredentialsTest, LoopbackAddresses) {
  for (const char* a : {"127.0.0.1:7070", "127.1.2.3:1", "localhost:7070", "[::1]:7070", "::1",
                        "localhost", "ipv4:127.0.0.1:5"}) {
    EXPECT_TRUE(IsLoopbackAddress(a)) << a;
  }
  for (const char* a : {"0.0.0.0:7070", "10.0.0.1:7070", "gnc-server-0.gnc-server:7070",
                        "[::]:7070", "128.0.0.1:1", "127.0.0.256:1", "127.0.0:1", "localhost.evil:1"}) {
    EXPECT_FALSE(IsLoopbackAddress(a)) << a;
  }
}

TEST(CredentialsTest, ChannelSecurityLoadsWhatItIsGiven) {
  testing::TempDir dir;
  ChannelSecurityOptions o;
  o.tls_cert_file = "client.crt";
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);  // no key
  EXPECT_EQ(ChannelSecurity::Load(o).status().code(), absl::StatusCode::kInvalidArgument);
  ChannelSecurityOptions plain;
  plain.auth_token_file = Write(dir.path(), "token", "0123456789abcdef0123\n");
  absl::StatusOr<std::shared_ptr<const ChannelSecurity>> s = ChannelSecurity::Load(plain);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_FALSE((*s)->tls());
  EXPECT_TRUE((*s)->has_token());
  ChannelSecurityOptions tls;
  tls.tls_ca_file = dir.path() + "/no-such-ca.crt";
  EXPECT_EQ(ChannelSecurity::Load(tls).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gnc
