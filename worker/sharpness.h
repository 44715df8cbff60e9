// Sharpness of a trained w and the gradient noise along its sharpest direction, the
// quantities behind GNC's claim (gradient noise spreads along sharp directions, so
// convolving the loss with it smooths sharp minima):
// - the top eigenvalue of the Hessian of the mean training loss on a fixed set of
//   examples, by power iteration with Hessian-vector products taken as central finite
//   differences of gradients, Hv ~ (g(w + h v) - g(w - h v)) / (2h);
// - epsilon-sharpness (Keskar et al. 2017): 100 (max_z L(w + z) - L(w)) / (1 + L(w))
//   over the box |z_i| <= epsilon (|w_i| + 1), maximised approximately by projected
//   sign-gradient ascent (so it is a lower bound of the true maximum);
// - the per-example gradient covariance Sigma, estimated from the gradients of
//   disjoint minibatches of the set (Sigma = b Cov(minibatch gradient)): its variance
//   along the top eigenvector v, v^T Sigma v, against the mean variance tr(Sigma) / d,
//   and the same ratio for a random unit direction (about 1 when noise is isotropic).
// All losses are the model's cross-entropy without weight decay (the servers' decay
// adds lambda to every Hessian eigenvalue).
#ifndef GNC_WORKER_SHARPNESS_H_
#define GNC_WORKER_SHARPNESS_H_

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "worker/model.h"

namespace gnc {

struct SharpnessOptions {
  int power_iterations = 20;      // at most
  double power_tolerance = 1e-3;  // stop when the eigenvalue moves less, relatively
  double fd_step = 5e-3;          // h, along a unit vector
  double epsilon = 1e-3;
  int ascent_steps = 10;
  int64_t noise_batch = 64;  // b: the set splits into floor(n / b) minibatches
  uint64_t seed = 1;         // power iteration's start and the random direction
};

struct SharpnessReport {
  int64_t examples = 0;
  double loss = 0;  // L(w), mean over the examples
  double accuracy = 0;
  double grad_norm = 0;  // |g(w)|
  double top_eigenvalue = 0;
  int power_iterations = 0;      // run
  double eigen_residual = 0;     // |Hv - lambda v| / |lambda| at the last iterate
  double epsilon_sharpness = 0;  // percent, as Keskar et al.
  double epsilon_max_loss = 0;   // the largest L(w + z) found
  int64_t noise_batches = 0;
  double noise_var_top = 0;       // v^T Sigma v, per example
  double noise_var_mean = 0;      // tr(Sigma) / d, per example
  double noise_ratio_top = 0;     // noise_var_top / noise_var_mean
  double noise_ratio_random = 0;  // the same along a random unit direction
};

// MeasureSharpness: all of the above at `w` on the examples (inputs, labels).
// INVALID_ARGUMENT for bad options or fewer than two minibatches of noise_batch;
// otherwise the model's errors.
absl::StatusOr<SharpnessReport> MeasureSharpness(Model& model, std::span<const float> w,
                                                 std::span<const float> inputs,
                                                 std::span<const int32_t> labels,
                                                 const SharpnessOptions& options);

}  // namespace gnc

#endif  // GNC_WORKER_SHARPNESS_H_
