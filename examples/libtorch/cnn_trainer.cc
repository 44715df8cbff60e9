// gnc_cnn_trainer: one worker of a gnc job training a small CNN on Fashion-MNIST with
// libtorch. What any libtorch model needs to train through gnc:
//   1. the layout from the module's named parameters (names and shapes, in order);
//   2. every step, the worker's evaluation point x_k loaded into the parameters
//      before the forward pass;
//   3. the parameters' gradients pushed as one flat vector.
// Rank k of K trains on the k-th contiguous slice of the training set, reshuffled
// every epoch; the evaluating worker (rank 0) tests the unperturbed parameters w at
// the end. Exit status: 0 done, 1 error, 2 bad flags.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "fashion_mnist.h"
#include "worker/client.h"

ABSL_FLAG(std::string, servers, "", "Comma-separated host:port of the job's shards, in order");
ABSL_FLAG(int, rank, 0, "This worker's rank in [0, num_workers)");
ABSL_FLAG(int, num_workers, 1, "Number of workers K");
ABSL_FLAG(int64_t, batch_size, 64, "Samples per step on this worker");
ABSL_FLAG(int64_t, epochs, 1, "Passes over this worker's slice");
ABSL_FLAG(int64_t, steps, 0, "Total steps; overrides --epochs when > 0");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist", "Fashion-MNIST IDX files");
ABSL_FLAG(int64_t, train_limit, 0, "Use the first N training images (0 = all)");
ABSL_FLAG(int64_t, test_limit, 0, "Use the first N test images (0 = all)");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the initial parameters (same on every rank) and shuffles");
ABSL_FLAG(int, threads, 1, "libtorch intra-op threads");

namespace {

// Net: conv(1->16, 5x5) + ReLU + 2x2 max-pool, conv(16->32, 5x5) + ReLU + max-pool,
// linear 32*7*7 -> 10. About 29 000 parameters.
struct NetImpl : torch::nn::Module {
  NetImpl()
      : conv1(register_module("conv1",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(1, 16, 5).padding(2)))),
        conv2(register_module("conv2",
                              torch::nn::Conv2d(torch::nn::Conv2dOptions(16, 32, 5).padding(2)))),
        fc(register_module("fc", torch::nn::Linear(32 * 7 * 7, 10))) {}

  torch::Tensor forward(torch::Tensor x) {
    x = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    x = torch::max_pool2d(torch::relu(conv2->forward(x)), 2);
    return fc->forward(x.flatten(1));
  }

  torch::nn::Conv2d conv1;
  torch::nn::Conv2d conv2;
  torch::nn::Linear fc;
};
TORCH_MODULE(Net);

// LayoutOf: gnc's model layout from the module's named parameters, in their order.
absl::StatusOr<gnc::ModelLayout> LayoutOf(Net& net) {
  std::vector<gnc::TensorSpec> specs;
  for (const auto& p : net->named_parameters()) {
    specs.push_back({p.key(), p.value().sizes().vec()});
  }
  return gnc::ModelLayout::Create(std::move(specs));
}

// LoadFlat: copies the flat vector (the layout's order) into the parameters.
void LoadFlat(std::span<const float> flat, Net& net) {
  torch::NoGradGuard no_grad;
  size_t offset = 0;
  for (auto& p : net->parameters()) {
    const auto n = static_cast<size_t>(p.numel());
    p.copy_(torch::from_blob(const_cast<float*>(flat.data() + offset), p.sizes(), torch::kFloat32));
    offset += n;
  }
}

// Flatten: the parameters' values, or their gradients, concatenated in the layout's
// order into `flat`.
enum class Part { kValues, kGradients };
void Flatten(Net& net, Part part, std::span<float> flat) {
  size_t offset = 0;
  for (auto& p : net->parameters()) {
    const torch::Tensor t = (part == Part::kGradients ? p.grad() : p.detach()).contiguous();
    std::memcpy(flat.data() + offset, t.data_ptr<float>(), t.numel() * sizeof(float));
    offset += static_cast<size_t>(t.numel());
  }
}

struct Accuracy {
  double accuracy = 0;
  double loss = 0;
};

Accuracy Test(Net& net, const FashionMnist& test) {
  torch::NoGradGuard no_grad;
  int64_t correct = 0;
  double loss = 0;
  const int64_t n = test.images.size(0);
  for (int64_t i = 0; i < n; i += 1000) {
    const int64_t end = std::min(n, i + 1000);
    const torch::Tensor out = net->forward(test.images.slice(0, i, end));
    const torch::Tensor y = test.labels.slice(0, i, end);
    loss += torch::nn::functional::cross_entropy(
                out, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                .item<double>();
    correct += out.argmax(1).eq(y).sum().item<int64_t>();
  }
  return {static_cast<double>(correct) / n, loss / n};
}

absl::Status Train() {
  const int rank = absl::GetFlag(FLAGS_rank);
  const int num_workers = absl::GetFlag(FLAGS_num_workers);
  const int64_t batch = absl::GetFlag(FLAGS_batch_size);
  const uint64_t seed = absl::GetFlag(FLAGS_seed);
  torch::set_num_threads(absl::GetFlag(FLAGS_threads));

  absl::StatusOr<FashionMnist> train =
      LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), true, absl::GetFlag(FLAGS_train_limit));
  if (!train.ok()) return train.status();
  const int64_t slice = train->images.size(0) / num_workers;
  const int64_t steps_per_epoch = slice / batch;
  if (steps_per_epoch < 1) {
    return absl::InvalidArgumentError(absl::StrCat("batch ", batch, " exceeds the slice of ", slice,
                                                   " training images per worker"));
  }
  const torch::Tensor images = train->images.slice(0, rank * slice, (rank + 1) * slice);
  const torch::Tensor labels = train->labels.slice(0, rank * slice, (rank + 1) * slice);
  const int64_t total_steps = absl::GetFlag(FLAGS_steps) > 0
                                  ? absl::GetFlag(FLAGS_steps)
                                  : absl::GetFlag(FLAGS_epochs) * steps_per_epoch;

  torch::manual_seed(seed);  // the same w0 on every rank; the first offer wins anyway
  Net net;
  absl::StatusOr<gnc::ModelLayout> layout = LayoutOf(net);
  if (!layout.ok()) return layout.status();

  gnc::ClientOptions options;
  options.servers = absl::StrSplit(absl::GetFlag(FLAGS_servers), ',', absl::SkipEmpty());
  options.rank = rank;
  options.num_workers = num_workers;
  options.layout = *layout;
  options.local_batch_size = batch;
  absl::StatusOr<std::unique_ptr<gnc::GncClient>> client = gnc::GncClient::Connect(options);
  if (!client.ok()) return client.status();
  if (const int64_t theirs = (*client)->job().total_steps; theirs > 0 && theirs != total_steps) {
    return absl::FailedPreconditionError(
        absl::StrCat("the servers run ", theirs, " steps, this worker ", total_steps));
  }

  const size_t n = static_cast<size_t>(layout->NumElements());
  std::vector<float> x(n), g(n);
  Flatten(net, Part::kValues, x);
  if (absl::Status s = (*client)->OfferParameters(x); !s.ok()) return s;
  std::printf("worker %d/%d: %zu parameters in %zu tensors, %lld steps of batch %lld, mode %s\n",
              rank, num_workers, n, layout->tensors().size(), static_cast<long long>(total_steps),
              static_cast<long long>(batch), (*client)->job().mode.c_str());

  const auto start = std::chrono::steady_clock::now();
  torch::Tensor order;
  int64_t shuffled_epoch = -1;
  double loss_sum = 0;
  int64_t loss_count = 0;
  while (true) {
    absl::StatusOr<int64_t> step = (*client)->ReceiveEvalPoint(x);  // x_k = w + delta_k
    if (!step.ok()) return step.status();
    if (*step >= total_steps) break;
    const int64_t epoch = *step / steps_per_epoch;
    if (epoch != shuffled_epoch) {  // the batch follows from (seed, rank, epoch, step)
      order = torch::randperm(
          slice, at::make_generator<at::CPUGeneratorImpl>(seed * 1000003 + rank * 7919 + epoch),
          torch::TensorOptions().dtype(torch::kInt64));
      shuffled_epoch = epoch;
    }
    const torch::Tensor idx =
        order.slice(0, (*step % steps_per_epoch) * batch, (*step % steps_per_epoch + 1) * batch);
    LoadFlat(x, net);  // the gradient is taken at this worker's evaluation point
    net->zero_grad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        net->forward(images.index_select(0, idx)), labels.index_select(0, idx));
    loss.backward();
    Flatten(net, Part::kGradients, g);
    absl::Status pushed = (*client)->PushGradient(g, batch);
    if (!pushed.ok() && !absl::IsAborted(pushed)) return pushed;  // ABORTED: late, carry on
    loss_sum += loss.item<double>();
    ++loss_count;
    if ((*step + 1) % steps_per_epoch == 0 || *step + 1 == total_steps) {
      std::printf("worker %d step %lld/%lld epoch %lld loss %.4f\n", rank,
                  static_cast<long long>(*step + 1), static_cast<long long>(total_steps),
                  static_cast<long long>(epoch + 1), loss_sum / loss_count);
      std::fflush(stdout);
      loss_sum = 0;
      loss_count = 0;
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  if (rank == 0) {
    absl::StatusOr<FashionMnist> test =
        LoadFashionMnist(absl::GetFlag(FLAGS_data_dir), false, absl::GetFlag(FLAGS_test_limit));
    if (!test.ok()) return test.status();
    absl::StatusOr<int64_t> at = (*client)->Pull(x);  // the unperturbed w
    if (!at.ok()) return at.status();
    LoadFlat(x, net);
    const Accuracy r = Test(net, *test);
    std::printf("final test accuracy %.4f loss %.4f after %lld steps in %.1f s\n", r.accuracy,
                r.loss, static_cast<long long>(*at), seconds);
  }
  return (*client)->Leave();
}

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  if (absl::GetFlag(FLAGS_servers).empty()) {
    std::fprintf(stderr, "gnc_cnn_trainer: --servers is required\n");
    return 2;
  }
  if (absl::Status s = Train(); !s.ok()) {
    std::fprintf(stderr, "gnc_cnn_trainer: %s\n", s.ToString().c_str());
    return absl::IsInvalidArgument(s) ? 2 : 1;
  }
  return 0;
}
