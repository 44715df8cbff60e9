// trajectory_client: K C++ clients (worker/client.h), one thread each, push scripted
// gradients read from a file and record every evaluation point they receive and the
// final w. The Python client tests run it as the reference the Python client must
// match bit for bit.
//
//   trajectory_client --servers=A,B --num_workers=K --num_elements=N --steps=T
//     --num_samples=n0,n1,... --w0=FILE --grads=FILE --points=FILE --w=FILE
//     [--wire_dtype=float32|bfloat16]
// Files are raw little-endian float32: w0 [N], grads [T][K][N] (rank k's gradient of
// step t), points [T+1][K][N] (written: x_k of steps 0..T), w [N] (written: pulled
// after step T). Exit status 0, 1 on any client error (message on stderr), 2 on bad
// flags.
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "worker/client.h"

ABSL_FLAG(std::string, servers, "", "host:port of the shards, in order");
ABSL_FLAG(int, num_workers, 2, "K");
ABSL_FLAG(int64_t, num_elements, 0, "N, one tensor \"w\"");
ABSL_FLAG(int64_t, steps, 1, "T");
ABSL_FLAG(std::string, num_samples, "", "n_k per rank, comma-separated");
ABSL_FLAG(std::string, w0, "", "initial parameters [N]");
ABSL_FLAG(std::string, grads, "", "gradients [T][K][N]");
ABSL_FLAG(std::string, points, "", "output: evaluation points [T+1][K][N]");
ABSL_FLAG(std::string, w, "", "output: w after step T [N]");
ABSL_FLAG(std::string, wire_dtype, "float32",
          "float32 or bfloat16: what the clients push and receive (ClientOptions::wire_dtype)");

namespace {

using gnc::GncClient;

absl::Status ReadFloats(const std::string& path, size_t offset, std::span<float> out) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset * sizeof(float)));
  f.read(reinterpret_cast<char*>(out.data()), static_cast<std::streamsize>(out.size_bytes()));
  if (!f) return absl::DataLossError(absl::StrCat(path, ": too short"));
  return absl::OkStatus();
}

absl::Status WriteFloats(const std::string& path, size_t offset, std::span<const float> in) {
  std::fstream f(path, std::ios::binary | std::ios::in | std::ios::out);
  f.seekp(static_cast<std::streamoff>(offset * sizeof(float)));
  f.write(reinterpret_cast<const char*>(in.data()), static_cast<std::streamsize>(in.size_bytes()));
  if (!f) return absl::DataLossError(absl::StrCat(path, ": cannot write"));
  return absl::OkStatus();
}

absl::Status RunRank(const gnc::ClientOptions& options, int64_t steps) {
  const int64_t n = options.layout.NumElements();
  const size_t k = static_cast<size_t>(options.num_workers);
  const size_t rank = static_cast<size_t>(options.rank);
  absl::StatusOr<std::unique_ptr<GncClient>> client = GncClient::Connect(options);
  if (!client.ok()) return client.status();
  std::vector<float> x(n), g(n);
  if (absl::Status s = ReadFloats(absl::GetFlag(FLAGS_w0), 0, x); !s.ok()) return s;
  if (absl::Status s = (*client)->OfferParameters(x); !s.ok()) return s;
  for (int64_t t = 0; t <= steps; ++t) {
    absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);
    if (!step.ok()) return step.status();
    if (*step != t) return absl::InternalError(absl::StrCat("got step ", *step, ", expected ", t));
    const size_t row = static_cast<size_t>(t) * k + rank;
    if (absl::Status s = WriteFloats(absl::GetFlag(FLAGS_points), row * n, x); !s.ok()) return s;
    if (t == steps) break;
    if (absl::Status s = ReadFloats(absl::GetFlag(FLAGS_grads), row * n, g); !s.ok()) return s;
    if (absl::Status s = (*client)->PushGradient(g, options.local_batch_size); !s.ok()) return s;
  }
  if (rank == 0) {
    absl::StatusOr<int64_t> step = (*client)->Pull(x);
    if (!step.ok()) return step.status();
    if (absl::Status s = WriteFloats(absl::GetFlag(FLAGS_w), 0, x); !s.ok()) return s;
  }
  return (*client)->Leave();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  const int num_workers = absl::GetFlag(FLAGS_num_workers);
  const int64_t n = absl::GetFlag(FLAGS_num_elements);
  const int64_t steps = absl::GetFlag(FLAGS_steps);
  std::vector<int64_t> samples;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_num_samples), ',')) {
    int64_t v;
    if (absl::SimpleAtoi(part, &v)) samples.push_back(v);
  }
  const std::string dtype = absl::GetFlag(FLAGS_wire_dtype);
  if (dtype != "float32" && dtype != "bfloat16") {
    std::fprintf(stderr, "trajectory_client: --wire_dtype=%s: float32 or bfloat16\n",
                 dtype.c_str());
    return 2;
  }
  if (n < 1 || steps < 1 || static_cast<int>(samples.size()) != num_workers) {
    std::fprintf(stderr,
                 "trajectory_client: need --num_elements, --steps >= 1 and one "
                 "--num_samples entry per worker\n");
    return 2;
  }
  // Size the output files once, so that the ranks can write their rows concurrently.
  for (const auto& [path, count] :
       {std::pair{absl::GetFlag(FLAGS_points), (steps + 1) * num_workers * n},
        std::pair{absl::GetFlag(FLAGS_w), n}}) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.seekp(static_cast<std::streamoff>(count * sizeof(float) - 1));
    f.put(0);
    if (!f) {
      std::fprintf(stderr, "trajectory_client: cannot create %s\n", path.c_str());
      return 1;
    }
  }
  gnc::ClientOptions base;
  base.wire_dtype = dtype == "bfloat16" ? gnc::WireDType::kBfloat16 : gnc::WireDType::kFloat32;
  base.servers = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',');
  base.num_workers = num_workers;
  base.layout = *gnc::ModelLayout::Create({gnc::TensorSpec{"w", {n}}});
  base.connect_timeout = absl::Seconds(30);
  std::vector<absl::Status> results(num_workers);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < num_workers; ++rank) {
    threads.emplace_back([&, rank] {
      gnc::ClientOptions o = base;
      o.rank = rank;
      o.local_batch_size = samples[rank];
      results[rank] = RunRank(o, steps);
    });
  }
  for (std::thread& t : threads) t.join();
  int status = 0;
  for (int rank = 0; rank < num_workers; ++rank) {
    if (!results[rank].ok()) {
      std::fprintf(stderr, "trajectory_client: rank %d: %s\n", rank,
                   results[rank].ToString().c_str());
      status = 1;
    }
  }
  return status;
}
