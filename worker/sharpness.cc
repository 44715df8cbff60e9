#include "worker/sharpness.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace gnc {
namespace {

double Dot(std::span<const float> a, std::span<const float> b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += double{a[i]} * b[i];
  return s;
}

double Normalize(std::vector<float>& v) {
  const double norm = std::sqrt(Dot(v, v));
  if (norm > 0) {
    for (float& x : v) x = static_cast<float>(x / norm);
  }
  return norm;
}

std::vector<float> RandomUnit(int64_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<float> v(static_cast<size_t>(d));
  for (float& x : v) x = static_cast<float>(normal(rng));
  Normalize(v);
  return v;
}

// Problem: the model on a fixed set of examples.
class Problem {
 public:
  Problem(Model& model, std::span<const float> inputs, std::span<const int32_t> labels)
      : model_(model), inputs_(inputs), labels_(labels), point_(model.NumParameters()) {}

  // Gradient: mean loss and gradient at w + t u (u may be empty for t = 0) on the
  // examples [begin, begin + count).
  absl::StatusOr<double> Gradient(std::span<const float> w, double t, std::span<const float> u,
                                  int64_t begin, int64_t count, std::span<float> grad) {
    for (size_t i = 0; i < w.size(); ++i) {
      point_[i] = u.empty() ? w[i] : static_cast<float>(w[i] + t * u[i]);
    }
    const int64_t dim = model_.InputSize();
    return model_.LossAndGradient(point_, inputs_.subspan(begin * dim, count * dim),
                                  labels_.subspan(begin, count), grad);
  }
  absl::StatusOr<double> Gradient(std::span<const float> w, double t, std::span<const float> u,
                                  std::span<float> grad) {
    return Gradient(w, t, u, 0, static_cast<int64_t>(labels_.size()), grad);
  }
  absl::StatusOr<double> Loss(std::span<const float> x, int64_t* correct) {
    double sum = 0;
    GNC_RETURN_IF_ERROR(model_.Evaluate(x, inputs_, labels_, &sum, correct));
    return sum / static_cast<double>(labels_.size());
  }

 private:
  Model& model_;
  std::span<const float> inputs_;
  std::span<const int32_t> labels_;
  std::vector<float> point_;
};

absl::Status CheckOptions(const SharpnessOptions& o, int64_t examples) {
  if (o.power_iterations < 1 || o.fd_step <= 0 || o.epsilon < 0 || o.ascent_steps < 0 ||
      o.noise_batch < 1 || !(o.power_tolerance >= 0)) {
    return absl::InvalidArgumentError(
        "sharpness options: power_iterations and noise_batch >= 1, fd_step > 0, epsilon, "
        "ascent_steps and power_tolerance >= 0");
  }
  if (examples / o.noise_batch < 2) {
    return absl::InvalidArgumentError(absl::StrCat("sharpness needs two minibatches of ",
                                                   o.noise_batch, " examples, got ", examples));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<SharpnessReport> MeasureSharpness(Model& model, std::span<const float> w,
                                                 std::span<const float> inputs,
                                                 std::span<const int32_t> labels,
                                                 const SharpnessOptions& options) {
  const int64_t n = static_cast<int64_t>(labels.size());
  const int64_t d = model.NumParameters();
  GNC_RETURN_IF_ERROR(CheckOptions(options, n));
  GNC_RETURN_IF_ERROR(
      CheckBatchArguments(d, model.InputSize(), model.NumClasses(), w, inputs, labels));
  Problem problem(model, inputs, labels);
  SharpnessReport r;
  r.examples = n;
  std::vector<float> g(d), plus(d), minus(d);

  // L(w) and g(w).
  int64_t correct = 0;
  absl::StatusOr<double> loss = problem.Loss(w, &correct);
  if (!loss.ok()) return loss.status();
  r.loss = *loss;
  r.accuracy = static_cast<double>(correct) / static_cast<double>(n);
  GNC_RETURN_IF_ERROR(problem.Gradient(w, 0, {}, g).status());
  r.grad_norm = std::sqrt(Dot(g, g));

  // Power iteration on Hv by central differences.
  std::vector<float> v = RandomUnit(d, options.seed), hv(d);
  const double h = options.fd_step;
  double lambda = 0;
  for (int it = 1; it <= options.power_iterations; ++it) {
    GNC_RETURN_IF_ERROR(problem.Gradient(w, h, v, plus).status());
    GNC_RETURN_IF_ERROR(problem.Gradient(w, -h, v, minus).status());
    for (int64_t i = 0; i < d; ++i) hv[i] = static_cast<float>((plus[i] - minus[i]) / (2 * h));
    const double next = Dot(v, hv);  // Rayleigh quotient of the unit v
    double residual = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double e = hv[i] - next * v[i];
      residual += e * e;
    }
    r.eigen_residual = std::sqrt(residual) / std::max(std::abs(next), 1e-30);
    r.power_iterations = it;
    const bool converged =
        it > 1 && std::abs(next - lambda) <= options.power_tolerance * std::abs(next);
    lambda = next;
    if (converged || it == options.power_iterations) break;
    v = hv;
    if (Normalize(v) == 0) break;
  }
  r.top_eigenvalue = lambda;

  // Epsilon-sharpness: projected sign-gradient ascent in the box, from z = 0, with
  // steps of half the box; the largest loss seen counts.
  r.epsilon_max_loss = r.loss;
  if (options.epsilon > 0 && options.ascent_steps > 0) {
    std::vector<float> z(d, 0.0f), x(d), grad = g;
    for (int step = 0; step < options.ascent_steps; ++step) {
      for (int64_t i = 0; i < d; ++i) {
        const double bound = options.epsilon * (std::abs(w[i]) + 1.0);
        const double sign = grad[i] > 0 ? 1.0 : (grad[i] < 0 ? -1.0 : 0.0);
        z[i] = static_cast<float>(std::clamp(z[i] + 0.5 * bound * sign, -bound, bound));
        x[i] = w[i] + z[i];
      }
      absl::StatusOr<double> at = problem.Gradient(x, 0, {}, grad);
      if (!at.ok()) return at.status();
      r.epsilon_max_loss = std::max(r.epsilon_max_loss, *at);
    }
  }
  r.epsilon_sharpness = 100.0 * (r.epsilon_max_loss - r.loss) / (1.0 + r.loss);

  // Gradient noise from disjoint minibatches of b examples.
  const int64_t b = options.noise_batch, m = n / b;
  r.noise_batches = m;
  const std::vector<float> u = RandomUnit(d, options.seed + 0x9e3779b9);
  std::vector<std::vector<float>> grads(m, std::vector<float>(d));
  std::vector<double> mean(d, 0.0);
  for (int64_t j = 0; j < m; ++j) {
    GNC_RETURN_IF_ERROR(problem.Gradient(w, 0, {}, j * b, b, grads[j]).status());
    for (int64_t i = 0; i < d; ++i) mean[i] += grads[j][i];
  }
  for (double& x : mean) x /= static_cast<double>(m);
  double trace = 0, along_v = 0, along_u = 0;
  for (int64_t j = 0; j < m; ++j) {
    double pv = 0, pu = 0;
    for (int64_t i = 0; i < d; ++i) {
      const double e = grads[j][i] - mean[i];
      trace += e * e;
      pv += e * v[i];
      pu += e * u[i];
    }
    along_v += pv * pv;
    along_u += pu * pu;
  }
  // Unbiased minibatch covariance, scaled by b to the per-example one.
  const double scale = static_cast<double>(b) / static_cast<double>(m - 1);
  r.noise_var_top = along_v * scale;
  r.noise_var_mean = trace * scale / static_cast<double>(d);
  r.noise_ratio_top = r.noise_var_mean > 0 ? r.noise_var_top / r.noise_var_mean : 0;
  r.noise_ratio_random = r.noise_var_mean > 0 ? along_u * scale / r.noise_var_mean : 0;
  return r;
}

}  // namespace gnc
