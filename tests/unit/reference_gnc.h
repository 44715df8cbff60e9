// A deliberately naive GNC reference for tests: double precision, one loop per
// formula of DESIGN section 1, no blocking, no shared code with the server.
#ifndef GNC_TESTS_UNIT_REFERENCE_GNC_H_
#define GNC_TESTS_UNIT_REFERENCE_GNC_H_

#include <cmath>
#include <map>
#include <vector>

namespace gnc::testing {

enum class RefMode { kNone, kGnc };

struct RefConfig {
  RefMode mode = RefMode::kGnc;
  double rho = 1.0;
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  double max_norm = 0.0;  // 0 = no cap
};

// RefShard: w, v and the per-worker deltas of one shard.
struct RefShard {
  std::vector<double> w, v;
  std::map<int, std::vector<double>> delta;  // absent = zero

  explicit RefShard(const std::vector<double>& w0) : w(w0), v(w0.size(), 0.0) {}

  // EvalPoint: x_k = w + delta_k.
  std::vector<double> EvalPoint(int rank) const {
    std::vector<double> x = w;
    auto it = delta.find(rank);
    if (it != delta.end()) {
      for (size_t i = 0; i < x.size(); ++i) x[i] += it->second[i];
    }
    return x;
  }

  // Step: one merge with learning rate lr. grads/samples keyed by rank.
  void Step(const RefConfig& c, double lr, const std::map<int, std::vector<double>>& grads,
            const std::map<int, double>& samples) {
    const size_t d = w.size();
    double total = 0;
    for (const auto& [rank, n] : samples) total += n;
    std::vector<double> gbar(d, 0.0);
    for (const auto& [rank, g] : grads) {
      for (size_t i = 0; i < d; ++i) gbar[i] += samples.at(rank) * g[i] / total;
    }
    for (size_t i = 0; i < d; ++i) {
      const double ge = gbar[i] + c.weight_decay * w[i];
      v[i] = c.momentum * v[i] + ge;
      w[i] -= lr * (c.nesterov ? ge + c.momentum * v[i] : v[i]);
    }
    delta.clear();
    if (c.mode == RefMode::kNone) return;
    for (const auto& [rank, g] : grads) {
      std::vector<double> dk(d);
      double norm2 = 0;
      for (size_t i = 0; i < d; ++i) {
        dk[i] = -c.rho * lr * (g[i] - gbar[i]);
        norm2 += dk[i] * dk[i];
      }
      if (c.max_norm > 0 && std::sqrt(norm2) > c.max_norm) {
        const double s = c.max_norm / std::sqrt(norm2);
        for (double& x : dk) x *= s;
      }
      delta[rank] = dk;
    }
  }
};

}  // namespace gnc::testing

#endif  // GNC_TESTS_UNIT_REFERENCE_GNC_H_
