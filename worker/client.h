// GncClient: the worker side of gnc, for any model. It connects to the S shards of
// a job, joins, offers the initial parameters, and then per step receives this
// worker's evaluation point x_k from every shard and pushes the gradient taken there
// to every shard, each concurrently and in ~1 MiB chunks.
//
// Usage:
//   ClientOptions o;  o.servers = {...};  o.rank = r;  o.num_workers = K;
//   o.layout = *ModelLayout::Create({{"w1", {784, 256}}, ...});  o.local_batch_size = 64;
//   auto client = GncClient::Connect(o);            // joins every shard
//   (*client)->OfferParameters(w0);                  // first offer per shard wins
//   std::vector<float> x(n), g(n);
//   while (true) {
//     absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);
//     if (!step.ok() || *step >= total_steps) break;
//     ... g = gradient of the loss at x on the next minibatch ...
//     absl::Status s = (*client)->PushGradient(g, batch);  // ABORTED: late, carry on
//   }
//   (*client)->Leave();
//
// Thread-compatible: one thread drives a client; each call fans out to every shard at
// once on gRPC's callback API (no thread per call). Every server error comes back as a
// Status carrying the server's code and message, prefixed with the shard it came from.
//
// Failures (DESIGN section 6). Every wait ends: a call that sees no progress for
// options.step_timeout returns DEADLINE_EXCEEDED naming the shards and the ranks they
// wait for. When a shard's stream fails, the client cancels its other waits,
// reconnects with exponential backoff for up to options.reconnect_timeout, and looks
// at every shard's job (id, generation, step): it carries on, rewinds the job to the
// newest step every shard holds (a restarted shard restores a checkpoint), or fails
// with FAILED_PRECONDITION naming each shard and its step. It never combines
// evaluation points of different jobs or generations. After a rewind the next
// ReceiveEvalPoint returns the rewound step, which may be lower than the last.
#ifndef GNC_WORKER_CLIENT_H_
#define GNC_WORKER_CLIENT_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/layout.h"
#include "common/payload.h"

namespace gnc {

struct ClientOptions {
  std::vector<std::string> servers;  // "host:port" of shard 0..S-1, in order
  int rank = 0;
  int num_workers = 1;
  ModelLayout layout;
  int64_t local_batch_size = 1;
  uint64_t config_hash = 0;  // 0 = accept shard 0's config (others must match it)
  // How long Connect keeps retrying shards that are not up yet.
  absl::Duration connect_timeout = absl::Seconds(60);
  // How long a broken stream is retried (exponential backoff) before the call fails.
  absl::Duration reconnect_timeout = absl::Minutes(2);
  // The longest any call waits for the job to make progress (a step to complete, a
  // gradient to be acknowledged) before it fails with DEADLINE_EXCEEDED.
  absl::Duration step_timeout = absl::Minutes(10);
  // The wire encoding of gradients sent and points received: kFloat32, or kBfloat16
  // (half the bytes; the shards round to nearest even and keep float32 state).
  WireDType wire_dtype = WireDType::kFloat32;
  // Transport security (README, Security). TLS is on when tls_ca_file or
  // tls_cert_file is set: tls_ca_file holds the PEM CA certificates that sign the
  // shards' (empty: the system's roots); tls_cert_file and tls_key_file, this client's
  // certificate and key for mutual TLS. auth_token_file holds the job token, sent
  // with every call. Files are read by Connect.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string auth_token_file;
};

// JobInfo: what the shards told this worker on join.
struct JobInfo {
  uint64_t job_id = 0;      // 0 until the job's parameters exist
  int64_t generation = 0;   // incremented by every restore and rewind
  uint64_t config_hash = 0;
  uint64_t layout_hash = 0;
  int64_t total_steps = 0;  // 0 = not fixed by the servers
  std::string mode;         // none, gnc, isotropic
  std::vector<ShardRange> ranges;  // per shard, global element ranges
};

class GncClient {
 public:
  virtual ~GncClient() = default;

  // Connect: opens channels and joins every shard. Retries UNAVAILABLE (shard not up)
  // until options.connect_timeout. A running job is joined as it is (rewound first
  // when its shards disagree, e.g. after restores). Errors: the first shard's refusal
  // (INVALID_ARGUMENT, FAILED_PRECONDITION, ...), DEADLINE_EXCEEDED if a shard never
  // answered, FAILED_PRECONDITION if shards disagree on the config or the job cannot
  // go on without a mixed model (a shard came back blank while the job has started),
  // UNAUTHENTICATED (missing or wrong token), UNAVAILABLE naming the shard when TLS
  // fails (a certificate the other side does not trust), and the errors of reading
  // the TLS and token files (NOT_FOUND, INVALID_ARGUMENT, ...).
  static absl::StatusOr<std::unique_ptr<GncClient>> Connect(const ClientOptions& options);

  virtual const JobInfo& job() const = 0;

  // OfferParameters: offers w0 (the full flat vector) to every shard that has none yet:
  // shard 0 first, which fixes the job id, then the others with that id.
  // REQUIRES: params.size() == layout.NumElements().
  virtual absl::Status OfferParameters(std::span<const float> params) = 0;

  // ReceiveEvalPoint: waits for this worker's evaluation point of the next step from
  // every shard and writes it into x (full flat vector). Opens the Train streams on
  // first use. Returns the step (if shards disagree after a straggler skip, the
  // largest; the gradient is tagged per shard).
  virtual absl::StatusOr<int64_t> ReceiveEvalPoint(std::span<float> x) = 0;

  // PushGradient: sends g (full flat vector, taken at the last evaluation point) with
  // its sample count to every shard and waits for each shard's verdict.
  // Returns OK if every shard accepted; ABORTED if some shard had already completed the
  // step without this worker, or the job was rewound meanwhile (carry on: the next
  // ReceiveEvalPoint has the step to work on); otherwise the first shard's error (e.g.
  // INVALID_ARGUMENT for a non-finite value, FAILED_PRECONDITION once a shard
  // diverged, DEADLINE_EXCEEDED after step_timeout).
  virtual absl::Status PushGradient(std::span<const float> g, int64_t num_samples) = 0;

  // Pull: the unperturbed parameters w (full flat vector) into w. Returns the step of
  // the snapshot (the smallest over shards).
  virtual absl::StatusOr<int64_t> Pull(std::span<float> w) = 0;

  // Leave: tells every shard this worker is done and closes the streams. Idempotent.
  virtual absl::Status Leave() = 0;
};

}  // namespace gnc

#endif  // GNC_WORKER_CLIENT_H_
