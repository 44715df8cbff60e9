// ServerProcess: a real gnc-server child process on 127.0.0.1 with a free port, for
// integration tests and benchmarks. Stopped (SIGTERM, then SIGKILL) on destruction.
#ifndef GNC_TESTS_INTEGRATION_SERVER_PROCESS_H_
#define GNC_TESTS_INTEGRATION_SERVER_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gnc::testing {

class ServerProcess {
 public:
  // Start: runs `binary` with `flags` plus --address=127.0.0.1 --port=0 --port_file=...
  // and waits until it listens (up to 20 s).
  static absl::StatusOr<std::unique_ptr<ServerProcess>> Start(const std::string& binary,
                                                             std::vector<std::string> flags);
  ~ServerProcess();

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  pid_t pid() const { return pid_; }
  // Stop: SIGTERM, wait up to 10 s, then SIGKILL. Returns the exit status (or -1).
  int Stop();

 private:
  ServerProcess(pid_t pid, int port, std::string dir) : pid_(pid), port_(port), dir_(dir) {}
  pid_t pid_;
  int port_;
  std::string dir_;
  bool stopped_ = false;
  int status_ = -1;
};

}  // namespace gnc::testing

#endif  // GNC_TESTS_INTEGRATION_SERVER_PROCESS_H_
