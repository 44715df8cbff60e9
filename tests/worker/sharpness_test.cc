// MeasureSharpness against cases with a known answer: a quadratic loss with a known
// spectrum and gradient noise built along its top eigenvector, a diagonal quadratic
// whose epsilon-box maximum is a corner, and a tiny MLP whose Hessian is formed in
// full by finite differences and diagonalised by Jacobi rotations.
#include "worker/sharpness.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "worker/mlp.h"
#include "worker/model.h"

namespace gnc {
namespace {

using Matrix = std::vector<std::vector<double>>;

// Quadratic: per-example loss 1/2 w^T A w + x_i . w, so the gradient of example i
// is A w + x_i and its noise is x_i - mean(x). Inputs are the x_i (d floats each);
// labels are all 0 (one class).
class Quadratic final : public Model {
 public:
  explicit Quadratic(Matrix a) : a_(std::move(a)) {}
  std::string Name() const override { return "quadratic"; }
  std::string Device() const override { return "test"; }
  int64_t InputSize() const override { return static_cast<int64_t>(a_.size()); }
  int64_t NumClasses() const override { return 1; }
  int64_t NumParameters() const override { return static_cast<int64_t>(a_.size()); }
  std::vector<float> InitialParameters(uint64_t) const override {
    return std::vector<float>(a_.size(), 0.0f);
  }
  absl::StatusOr<double> LossAndGradient(std::span<const float> w, std::span<const float> x,
                                         std::span<const int32_t> labels,
                                         std::span<float> grad) override {
    const size_t d = a_.size(), n = labels.size();
    double loss = 0;
    for (size_t r = 0; r < d; ++r) {
      double aw = 0, mean_x = 0;
      for (size_t c = 0; c < d; ++c) aw += a_[r][c] * w[c];
      for (size_t i = 0; i < n; ++i) mean_x += x[i * d + r];
      mean_x /= static_cast<double>(n);
      grad[r] = static_cast<float>(aw + mean_x);
      loss += 0.5 * w[r] * aw + mean_x * w[r];
    }
    return loss;
  }
  absl::Status Evaluate(std::span<const float> w, std::span<const float> x,
                        std::span<const int32_t> labels, double* loss_sum,
                        int64_t* correct) override {
    std::vector<float> g(a_.size());
    absl::StatusOr<double> loss = LossAndGradient(w, x, labels, g);
    *loss_sum = *loss * static_cast<double>(labels.size());
    *correct = static_cast<int64_t>(labels.size());
    return absl::OkStatus();
  }

 private:
  const Matrix a_;
};

// RandomRotation: an orthogonal matrix by Gram-Schmidt on Gaussian columns; column j
// is q[.][j].
Matrix RandomRotation(size_t d, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal;
  Matrix q(d, std::vector<double>(d));
  for (size_t j = 0; j < d; ++j) {
    std::vector<double> col(d);
    for (double& v : col) v = normal(rng);
    for (size_t k = 0; k < j; ++k) {
      double dot = 0;
      for (size_t i = 0; i < d; ++i) dot += col[i] * q[i][k];
      for (size_t i = 0; i < d; ++i) col[i] -= dot * q[i][k];
    }
    double norm = 0;
    for (double v : col) norm += v * v;
    for (size_t i = 0; i < d; ++i) q[i][j] = col[i] / std::sqrt(norm);
  }
  return q;
}

TEST(SharpnessTest, QuadraticTopEigenvalueAndNoiseAlongItsEigenvector) {
  const size_t d = 10;
  const std::vector<double> spectrum = {5, 3, 2, 1.5, 1, 0.7, 0.5, 0.3, 0.2, 0.1};
  const Matrix q = RandomRotation(d, 1);
  Matrix a(d, std::vector<double>(d, 0.0));
  for (size_t r = 0; r < d; ++r) {
    for (size_t c = 0; c < d; ++c) {
      for (size_t k = 0; k < d; ++k) a[r][c] += q[r][k] * spectrum[k] * q[c][k];
    }
  }
  // Noise: 3 along the top eigenvector q[.][0], 0.5 in every direction.
  const int64_t n = 64 * 40;
  std::mt19937_64 rng(2);
  std::normal_distribution<double> normal;
  std::vector<float> x(n * d);
  for (int64_t i = 0; i < n; ++i) {
    const double along = 3.0 * normal(rng);
    for (size_t r = 0; r < d; ++r)
      x[i * d + r] = static_cast<float>(along * q[r][0] + 0.5 * normal(rng));
  }
  const std::vector<int32_t> labels(n, 0);
  const std::vector<float> w = {0.3f, -0.2f, 0.1f, 0.5f, -0.4f, 0.2f, 0.0f, 0.1f, -0.1f, 0.3f};
  Quadratic model(a);
  SharpnessOptions o;
  o.power_iterations = 200;
  o.power_tolerance = 1e-7;
  o.ascent_steps = 0;
  o.noise_batch = 64;
  absl::StatusOr<SharpnessReport> r = MeasureSharpness(model, w, x, labels, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->top_eigenvalue, 5.0, 5e-3);
  EXPECT_LT(r->eigen_residual, 1e-2);
  EXPECT_EQ(r->noise_batches, 40);

  // The same estimate with plain loops along the exact eigenvector: minibatch means
  // of x, their unbiased covariance, scaled by b.
  std::vector<std::vector<double>> means(40, std::vector<double>(d, 0.0));
  std::vector<double> grand(d, 0.0);
  for (int64_t j = 0; j < 40; ++j) {
    for (int64_t i = j * 64; i < (j + 1) * 64; ++i) {
      for (size_t c = 0; c < d; ++c) means[j][c] += x[i * d + c] / 64.0;
    }
    for (size_t c = 0; c < d; ++c) grand[c] += means[j][c] / 40.0;
  }
  double along = 0, trace = 0;
  for (int64_t j = 0; j < 40; ++j) {
    double p = 0;
    for (size_t c = 0; c < d; ++c) {
      const double e = means[j][c] - grand[c];
      p += e * q[c][0];
      trace += e * e;
    }
    along += p * p;
  }
  const double var_top = along * 64 / 39, var_mean = trace * 64 / 39 / d;
  EXPECT_NEAR(r->noise_var_top, var_top, 1e-3 * var_top);
  EXPECT_NEAR(r->noise_var_mean, var_mean, 1e-3 * var_mean);
  EXPECT_NEAR(r->noise_ratio_top, var_top / var_mean, 1e-3 * var_top / var_mean);
  // 9 + 0.25 along q0 against (9 + 10 * 0.25) / 10 on average: about 8.
  EXPECT_GT(r->noise_ratio_top, 5.0);
  EXPECT_LT(r->noise_ratio_random, r->noise_ratio_top / 2);
}

TEST(SharpnessTest, EpsilonSharpnessOfADiagonalQuadraticIsItsBoxCorner) {
  const std::vector<double> diag = {4, 1, 0.25, 2};
  Matrix a(4, std::vector<double>(4, 0.0));
  for (size_t i = 0; i < 4; ++i) a[i][i] = diag[i];
  const std::vector<float> w = {0.5f, -1.0f, 2.0f, -0.1f};
  const std::vector<float> x(4 * 128, 0.0f);  // no linear term, no noise
  const std::vector<int32_t> labels(128, 0);
  Quadratic model(a);
  SharpnessOptions o;
  o.epsilon = 0.05;
  o.ascent_steps = 4;
  absl::StatusOr<SharpnessReport> r = MeasureSharpness(model, w, x, labels, o);
  ASSERT_TRUE(r.ok()) << r.status();
  double l0 = 0, lmax = 0;
  for (size_t i = 0; i < 4; ++i) {
    const double wi = std::abs(double{w[i]});
    l0 += 0.5 * diag[i] * wi * wi;
    const double far = wi + 0.05 * (wi + 1.0);  // the corner away from 0
    lmax += 0.5 * diag[i] * far * far;
  }
  EXPECT_NEAR(r->loss, l0, 1e-6);
  EXPECT_NEAR(r->epsilon_max_loss, lmax, 1e-5);
  EXPECT_NEAR(r->epsilon_sharpness, 100 * (lmax - l0) / (1 + l0), 1e-3);
  EXPECT_NEAR(r->top_eigenvalue, 4.0, 4e-3);
}

// JacobiEigenvalues: all eigenvalues of a symmetric matrix by cyclic Jacobi rotations.
std::vector<double> JacobiEigenvalues(Matrix m) {
  const size_t n = m.size();
  for (int sweep = 0; sweep < 100; ++sweep) {
    double off = 0;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) off += m[p][q] * m[p][q];
    }
    if (off < 1e-22) break;
    for (size_t p = 0; p < n; ++p) {
      for (size_t q = p + 1; q < n; ++q) {
        if (std::abs(m[p][q]) < 1e-300) continue;
        const double theta = (m[q][q] - m[p][p]) / (2 * m[p][q]);
        const double t =
            (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1));
        const double c = 1 / std::sqrt(t * t + 1), s = t * c;
        for (size_t k = 0; k < n; ++k) {  // columns p, q
          const double kp = m[k][p], kq = m[k][q];
          m[k][p] = c * kp - s * kq;
          m[k][q] = s * kp + c * kq;
        }
        for (size_t k = 0; k < n; ++k) {  // rows p, q
          const double pk = m[p][k], qk = m[q][k];
          m[p][k] = c * pk - s * qk;
          m[q][k] = s * pk + c * qk;
        }
      }
    }
  }
  std::vector<double> eig(n);
  for (size_t i = 0; i < n; ++i) eig[i] = m[i][i];
  return eig;
}

TEST(SharpnessTest, TinyMlpTopEigenvalueMatchesTheFullFiniteDifferenceHessian) {
  const MlpShape shape{{4, 3, 3}};
  absl::StatusOr<std::unique_ptr<Model>> made = NewCpuMlp(shape);
  ASSERT_TRUE(made.ok());
  Model& model = **made;
  const int64_t n = 256, d = shape.NumParameters();
  std::mt19937_64 rng(3);
  std::normal_distribution<float> normal;
  std::vector<float> x(n * 4);
  std::vector<int32_t> labels(n);
  for (int64_t i = 0; i < n; ++i) {
    labels[i] = static_cast<int32_t>(rng() % 3);
    for (int k = 0; k < 4; ++k) x[i * 4 + k] = normal(rng) + (k == labels[i] ? 1.5f : 0.0f);
  }
  std::vector<float> w = HeInitialParameters(shape, 5);
  for (float& v : w) v += 0.1f * normal(rng);

  const double h = 1e-3;
  Matrix hess(d, std::vector<double>(d));
  std::vector<float> plus(d), minus(d), wp(d), wm(d);
  for (int64_t j = 0; j < d; ++j) {
    wp = w;
    wm = w;
    wp[j] += static_cast<float>(h);
    wm[j] -= static_cast<float>(h);
    const double step = (double{wp[j]} - double{wm[j]}) / 2;  // as float rounds it
    ASSERT_TRUE(model.LossAndGradient(wp, x, labels, plus).ok());
    ASSERT_TRUE(model.LossAndGradient(wm, x, labels, minus).ok());
    for (int64_t i = 0; i < d; ++i) hess[i][j] = (double{plus[i]} - minus[i]) / (2 * step);
  }
  for (int64_t i = 0; i < d; ++i) {
    for (int64_t j = i + 1; j < d; ++j) hess[i][j] = hess[j][i] = (hess[i][j] + hess[j][i]) / 2;
  }
  std::vector<double> eig = JacobiEigenvalues(hess);
  std::sort(eig.begin(), eig.end(), [](double a, double b) { return std::abs(a) > std::abs(b); });
  ASSERT_GT(std::abs(eig[0]), 1.2 * std::abs(eig[1])) << "no spectral gap for power iteration";

  SharpnessOptions o;
  o.power_iterations = 1000;
  o.power_tolerance = 1e-8;
  o.fd_step = h;
  o.ascent_steps = 0;
  absl::StatusOr<SharpnessReport> r = MeasureSharpness(model, w, x, labels, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_NEAR(r->top_eigenvalue, eig[0], 2e-3 * std::abs(eig[0])) << "next eigenvalue " << eig[1];
}

TEST(SharpnessTest, RefusesTooFewExamplesForTheNoiseEstimate) {
  Matrix a = {{1.0}};
  Quadratic model(a);
  const std::vector<float> w = {1.0f}, x(100, 0.0f);
  const std::vector<int32_t> labels(100, 0);
  SharpnessOptions o;
  o.noise_batch = 64;  // one minibatch only
  EXPECT_EQ(MeasureSharpness(model, w, x, labels, o).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace gnc
