#include "tests/integration/server_process.h"

#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace gnc::testing {

absl::StatusOr<std::unique_ptr<ServerProcess>> ServerProcess::Start(
    const std::string& binary, std::vector<std::string> flags) {
  char tmpl[] = "/tmp/gnc-test-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return absl::InternalError("mkdtemp failed");
  const std::string dir = tmpl;
  const std::string port_file = dir + "/port";
  flags.insert(flags.begin(), {"--address=127.0.0.1", "--port=0", "--port_file=" + port_file});
  std::vector<char*> argv;
  std::string bin = binary;
  argv.push_back(bin.data());
  for (std::string& f : flags) argv.push_back(f.data());
  argv.push_back(nullptr);
  // posix_spawn, not fork: fork runs gRPC's fork handlers, which wait for this
  // process's gRPC threads to go idle (the clients of a test are live).
  pid_t pid = 0;
  if (const int err = posix_spawn(&pid, binary.c_str(), nullptr, nullptr, argv.data(), environ);
      err != 0) {
    return absl::InternalError(absl::StrCat("cannot start ", binary, ": ", strerror(err)));
  }
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (absl::Now() < deadline) {
    std::ifstream in(port_file);
    int port = 0;
    if (in >> port && port > 0) {
      return std::unique_ptr<ServerProcess>(new ServerProcess(pid, port, dir));
    }
    int status;
    if (waitpid(pid, &status, WNOHANG) == pid) {
      return absl::InternalError(absl::StrCat(binary, " exited before listening (status ",
                                              status, ")"));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return absl::DeadlineExceededError("gnc-server did not start listening within 20 s");
}

int ServerProcess::Stop() {
  if (stopped_) return status_;
  stopped_ = true;
  kill(pid_, SIGTERM);
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  int status = 0;
  while (absl::Now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      return status_;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  return status_;
}

ServerProcess::~ServerProcess() {
  Stop();
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

}  // namespace gnc::testing
