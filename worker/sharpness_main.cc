// gnc-sharpness: sharpness of a trained w and the gradient noise along its sharpest
// direction (worker/sharpness.h), computed with gnc-worker's models on the first
// --examples Fashion-MNIST training images. Reads w as gnc-worker --save_params
// writes it; prints one JSON object (or writes it to --out).
// Exit codes: 0 done, 1 runtime error, 2 bad flags.
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/log.h"
#include "worker/idx_reader.h"
#include "worker/model_spec.h"
#include "worker/sharpness.h"

ABSL_FLAG(std::string, params, "", "w as raw little-endian float32 (gnc-worker --save_params)");
ABSL_FLAG(std::string, model, "mlp", "Built-in model: mlp or cnn (as gnc-worker)");
ABSL_FLAG(std::string, hidden, "256,128", "MLP hidden widths (as gnc-worker)");
ABSL_FLAG(std::string, cnn_channels, "8,16", "CNN conv channels (as gnc-worker)");
ABSL_FLAG(std::string, cnn_hidden, "128", "CNN fully connected hidden widths (as gnc-worker)");
ABSL_FLAG(std::string, data_dir, "/usr/share/datasets/fashion-mnist",
          "Folder with the Fashion-MNIST IDX gzip files");
ABSL_FLAG(int64_t, examples, 8192, "Use the first N training images (the fixed set)");
ABSL_FLAG(std::string, device, "cpu", "cpu or cuda");
ABSL_FLAG(int, power_iterations, 20, "Power iterations at most");
ABSL_FLAG(double, power_tolerance, 1e-3, "Stop when the eigenvalue moves less, relatively");
ABSL_FLAG(double, fd_step, 5e-3, "Finite-difference step h of the Hessian-vector products");
ABSL_FLAG(double, epsilon, 1e-3, "Box half-width factor of epsilon-sharpness");
ABSL_FLAG(int, ascent_steps, 10, "Sign-gradient ascent steps of epsilon-sharpness");
ABSL_FLAG(int64_t, noise_batch, 64, "Minibatch size of the gradient-noise estimate");
ABSL_FLAG(uint64_t, seed, 1, "Seed of the power iteration's start and the random direction");
ABSL_FLAG(std::string, out, "", "Write the JSON here instead of stdout");

namespace gnc {
namespace {

absl::StatusOr<std::vector<float>> ReadParameters(const std::string& path, int64_t count) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return absl::NotFoundError(absl::StrCat(path, ": cannot open"));
  std::vector<float> w(static_cast<size_t>(count) + 1);
  const size_t got = std::fread(w.data(), sizeof(float), w.size(), f);
  std::fclose(f);
  if (static_cast<int64_t>(got) != count) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds ",
                                                   got == w.size() ? "more than " : "", got,
                                                   " float32, the model has ", count));
  }
  w.pop_back();
  return w;
}

std::string Json(const std::string& model, const SharpnessReport& r) {
  return absl::StrFormat(
      "{\"model\": \"%s\", \"examples\": %d, \"train_loss\": %.6g, \"train_accuracy\": %.6g, "
      "\"grad_norm\": %.6g, \"top_eigenvalue\": %.6g, \"power_iterations\": %d, "
      "\"eigen_residual\": %.4g, \"epsilon_sharpness\": %.6g, \"epsilon_max_loss\": %.6g, "
      "\"noise_batches\": %d, \"noise_var_top\": %.6g, \"noise_var_mean\": %.6g, "
      "\"noise_ratio_top\": %.6g, \"noise_ratio_random\": %.6g}",
      model, r.examples, r.loss, r.accuracy, r.grad_norm, r.top_eigenvalue, r.power_iterations,
      r.eigen_residual, r.epsilon_sharpness, r.epsilon_max_loss, r.noise_batches, r.noise_var_top,
      r.noise_var_mean, r.noise_ratio_top, r.noise_ratio_random);
}

int Run() {
  constexpr int64_t kSide = 28, kClasses = 10;
  absl::StatusOr<ModelSpec> spec = ParseModelSpec(
      absl::GetFlag(FLAGS_model), absl::GetFlag(FLAGS_hidden), absl::GetFlag(FLAGS_cnn_channels),
      absl::GetFlag(FLAGS_cnn_hidden), kSide, kSide, kClasses);
  if (!spec.ok()) {
    LogError("invalid configuration: ", spec.status().message());
    return 2;
  }
  const std::string params_path = absl::GetFlag(FLAGS_params);
  const int64_t examples = absl::GetFlag(FLAGS_examples);
  if (params_path.empty() || examples < 2) {
    LogError("invalid configuration: --params is required and --examples must be >= 2");
    return 2;
  }
  SharpnessOptions o;
  o.power_iterations = absl::GetFlag(FLAGS_power_iterations);
  o.power_tolerance = absl::GetFlag(FLAGS_power_tolerance);
  o.fd_step = absl::GetFlag(FLAGS_fd_step);
  o.epsilon = absl::GetFlag(FLAGS_epsilon);
  o.ascent_steps = absl::GetFlag(FLAGS_ascent_steps);
  o.noise_batch = absl::GetFlag(FLAGS_noise_batch);
  o.seed = absl::GetFlag(FLAGS_seed);

  absl::StatusOr<std::unique_ptr<Model>> model = NewModel(*spec, absl::GetFlag(FLAGS_device));
  if (!model.ok()) {
    LogError("gnc-sharpness: ", model.status().message());
    return 1;
  }
  absl::StatusOr<std::vector<float>> w = ReadParameters(params_path, (*model)->NumParameters());
  if (!w.ok()) {
    LogError("gnc-sharpness: ", w.status().message());
    return 1;
  }
  const IdxPaths paths = FashionMnistPaths(absl::GetFlag(FLAGS_data_dir), /*train=*/true);
  absl::StatusOr<Dataset> data = LoadIdxDataset(paths.images, paths.labels, {0, examples});
  if (!data.ok()) {
    LogError("gnc-sharpness: training data: ", data.status().message());
    return 1;
  }
  absl::StatusOr<SharpnessReport> r = MeasureSharpness(**model, *w, data->images, data->labels, o);
  if (!r.ok()) {
    LogError("gnc-sharpness: ", r.status().ToString());
    return 1;
  }
  const std::string json = Json((*model)->Name(), *r) + "\n";
  const std::string out = absl::GetFlag(FLAGS_out);
  std::FILE* f = out.empty() ? stdout : std::fopen(out.c_str(), "w");
  if (f == nullptr || std::fputs(json.c_str(), f) < 0 || (f != stdout && std::fclose(f) != 0)) {
    LogError("gnc-sharpness: cannot write ", out);
    return 1;
  }
  return 0;
}

}  // namespace
}  // namespace gnc

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "gnc-sharpness --params=W.f32 [--model=cnn ...]: top Hessian eigenvalue, epsilon-sharpness "
      "and gradient noise along the top eigenvector of a trained w, as JSON");
  absl::ParseCommandLine(argc, argv);
  return gnc::Run();
}
