// Counter-based Gaussian noise for the isotropic mode: z(seed, step, worker, i) is a
// pure function, so the CPU and CUDA backends draw the same stream without state,
// and any element can be regenerated. Header-only; usable from device code.
#ifndef GNC_SERVER_NOISE_RNG_H_
#define GNC_SERVER_NOISE_RNG_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GNC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GNC_HOST_DEVICE inline
#endif

namespace gnc {

GNC_HOST_DEVICE uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// NoiseKey: the stream of one (seed, step, worker).
GNC_HOST_DEVICE uint64_t NoiseKey(uint64_t seed, int64_t step, int32_t worker) {
  return SplitMix64(SplitMix64(seed ^ 0x6a09e667f3bcc909ull) ^
                    SplitMix64(static_cast<uint64_t>(step) * 0x100000001b3ull +
                               static_cast<uint64_t>(static_cast<uint32_t>(worker))));
}

// NormalPairPolar: radius and angle of Box-Muller for pair `pair` of stream `key`,
// from one 64-bit draw (two 32-bit uniforms in (0, 1] and [0, 1)).
GNC_HOST_DEVICE void NormalPairPolar(uint64_t key, int64_t pair, double* r, double* theta) {
  const uint64_t bits = SplitMix64(key + static_cast<uint64_t>(pair) * 0xd1b54a32d192ed03ull);
  const double u1 = (static_cast<double>(bits >> 32) + 1.0) * (1.0 / 4294967296.0);
  const double u2 = static_cast<double>(bits & 0xffffffffu) * (1.0 / 4294967296.0);
  *r = sqrt(-2.0 * log(u1));
  *theta = 6.283185307179586 * u2;
}

// StandardNormal: element `index` (global parameter index) of stream `key`.
// Elements 2i and 2i+1 share pair i: even index -> r cos(theta), odd -> r sin(theta).
GNC_HOST_DEVICE float StandardNormal(uint64_t key, int64_t index) {
  double r, theta;
  NormalPairPolar(key, index >> 1, &r, &theta);
  return static_cast<float>((index & 1) ? r * sin(theta) : r * cos(theta));
}

}  // namespace gnc

#endif  // GNC_SERVER_NOISE_RNG_H_
