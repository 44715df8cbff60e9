#include "worker/model.h"

#include <cmath>
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace gnc {

std::vector<float> HeInitialParameters(std::span<const WeightBlock> blocks, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const double kTwoPi = 6.283185307179586;
  auto uniform = [&rng] {  // in (0, 1]
    return (static_cast<double>(rng() >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  };
  int64_t total = 0;
  for (const WeightBlock& b : blocks) total += b.weights + b.biases;
  std::vector<float> params(static_cast<size_t>(total), 0.0f);
  size_t at = 0;
  for (const WeightBlock& b : blocks) {
    const double stddev = std::sqrt(2.0 / static_cast<double>(b.fan_in));
    for (int64_t i = 0; i < b.weights; i += 2) {
      const double r = std::sqrt(-2.0 * std::log(uniform()));
      const double theta = kTwoPi * uniform();
      params[at + i] = static_cast<float>(stddev * r * std::cos(theta));
      if (i + 1 < b.weights) params[at + i + 1] = static_cast<float>(stddev * r * std::sin(theta));
    }
    at += b.weights + b.biases;  // biases stay 0
  }
  return params;
}

}  // namespace gnc
