// Counter-based Gaussian noise for the isotropic mode: z(seed, step, worker, i) is a
// pure function, so the CPU and CUDA backends draw the same stream without state,
// and any element can be regenerated. Header-only; usable from device code.
//
// Everything is float arithmetic with an explicit order of operations: every
// multiply-add is an fmaf, every other product and sum is rounded on its own
// (__fmul_rn / __fadd_rn on the device, where nvcc would otherwise contract them), and
// the square root is the correctly rounded one. So the host and the device produce the
// same bits, and the host loop vectorises (32-bit integer hashing, polynomials).
#ifndef GNC_SERVER_NOISE_RNG_H_
#define GNC_SERVER_NOISE_RNG_H_

#include <bit>
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GNC_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define GNC_HOST_DEVICE inline
#endif

namespace gnc {
namespace noise_internal {

GNC_HOST_DEVICE float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
GNC_HOST_DEVICE float Add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
GNC_HOST_DEVICE float Fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
GNC_HOST_DEVICE float Sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
GNC_HOST_DEVICE float BitsToFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);  // std::bit_cast; the CUDA build is C++17
#endif
}
GNC_HOST_DEVICE uint32_t FloatToBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  return __builtin_bit_cast(uint32_t, f);
#endif
}

// Mix32: a 32-bit integer hash with full avalanche (C. Wellons' "lowbias32").
GNC_HOST_DEVICE uint32_t Mix32(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// LogUnit: ln(u) for u in (0, 1]. u = m 2^e with m in [sqrt(1/2), sqrt(2));
// ln(m) = t - t^2/2 + t^3 P(t), t = m - 1, P of degree 7 (least-squares fit; the
// error is well below float's rounding).
GNC_HOST_DEVICE float LogUnit(float u) {
  const uint32_t shifted = FloatToBits(u) - 0x3f3504f3u;  // 0x3f3504f3 = sqrt(1/2)
  const int32_t e = static_cast<int32_t>(shifted) >> 23;
  const float m = BitsToFloat((shifted & 0x007fffffu) + 0x3f3504f3u);
  const float t = Add(m, -1.0f);
  float p = -0.0810227171f;
  p = Fma(p, t, 0.127126798f);
  p = Fma(p, t, -0.129721448f);
  p = Fma(p, t, 0.142021134f);
  p = Fma(p, t, -0.166422501f);
  p = Fma(p, t, 0.200014710f);
  p = Fma(p, t, -0.250002950f);
  p = Fma(p, t, 0.333333284f);
  const float t2 = Mul(t, t);
  const float q = Fma(t, p, -0.5f);  // (ln(1 + t) - t) / t^2
  return Fma(static_cast<float>(e), 0.693147182f, Fma(t2, q, t));
}

// SinCos: a sine and a cosine (returned by value: the host loop then vectorises).
struct SinCos {
  float s, c;
};

// SinCosTurn: sin and cos of 2 pi u for u in [0, 1): the quadrant from 4u, then
// polynomials of the angle a in [-pi/4, pi/4) around the quadrant's middle.
GNC_HOST_DEVICE SinCos SinCosTurn(float u) {
  const float four_u = Mul(u, 4.0f);                            // exact
  const int quadrant = static_cast<int>(four_u);                // 0..3
  const float f = Add(four_u, -static_cast<float>(quadrant));  // exact, in [0, 1)
  const float a = Mul(Add(f, -0.5f), 1.57079637f);  // angle from the quadrant's middle
  const float a2 = Mul(a, a);
  float sp = -1.95982750e-4f;
  sp = Fma(sp, a2, 8.33277404e-3f);
  sp = Fma(sp, a2, -0.166666642f);
  const float sa = Fma(Mul(a, a2), sp, a);  // sin(a)
  float cp = 2.72597499e-5f;
  cp = Fma(cp, a2, -1.39154133e-3f);
  cp = Fma(cp, a2, 4.16674279e-2f);
  cp = Fma(cp, a2, -0.500000060f);
  const float ca = Fma(a2, cp, 1.0f);  // cos(a)
  // The angle is quadrant * pi/2 + pi/4 + a: rotate (cos a, sin a) by pi/4, then by
  // whole quadrants.
  const float h = 0.707106769f;
  const float cb = Mul(Add(ca, -sa), h);  // cos(pi/4 + a)
  const float sb = Mul(Add(ca, sa), h);   // sin(pi/4 + a)
  const bool odd = quadrant & 1, neg = quadrant & 2;
  const float cq = odd ? -sb : cb;
  const float sq = odd ? cb : sb;
  return SinCos{neg ? -sq : sq, neg ? -cq : cq};
}

// Uniforms: u1 in (0, 1] and u2 in [0, 1).
struct Uniforms {
  float u1, u2;
};

// PairUniforms: the two 24-bit uniforms of pair `pair` of stream `key`, from 32-bit
// hashes of the key and the pair index; both are exact floats.
GNC_HOST_DEVICE Uniforms PairUniforms(uint64_t key, int64_t pair) {
  const uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  const uint32_t h = Mix32(Mix32(static_cast<uint32_t>(pair) ^ k0) ^
                           static_cast<uint32_t>(static_cast<uint64_t>(pair) >> 32) ^ k1);
  const uint32_t a = Mix32(h ^ 0x85ebca6bu);
  const uint32_t b = Mix32(h ^ 0xc2b2ae35u);
  // 24-bit integers convert exactly (through int32: vectorisable without AVX-512).
  return Uniforms{Mul(static_cast<float>(static_cast<int32_t>((a >> 8) + 1u)), 5.96046448e-8f),
                  Mul(static_cast<float>(static_cast<int32_t>(b >> 8)), 5.96046448e-8f)};
}

}  // namespace noise_internal

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

// NormalPairOf: the two standard normal draws of pair `pair` of stream `key`
// (Box-Muller on the pair's two uniforms).
// NormalPair: z0 = r cos(theta), z1 = r sin(theta).
struct NormalPair {
  float z0, z1;
};

GNC_HOST_DEVICE NormalPair NormalPairOf(uint64_t key, int64_t pair) {
  using namespace noise_internal;
  const Uniforms u = PairUniforms(key, pair);
  const float r = Sqrt(Mul(-2.0f, LogUnit(u.u1)));
  const SinCos t = SinCosTurn(u.u2);
  return NormalPair{Mul(r, t.c), Mul(r, t.s)};
}

// StandardNormal: element `index` (global parameter index) of stream `key`.
// Elements 2i and 2i+1 share pair i: even index -> r cos(theta), odd -> r sin(theta).
GNC_HOST_DEVICE float StandardNormal(uint64_t key, int64_t index) {
  const NormalPair z = NormalPairOf(key, index >> 1);
  return (index & 1) ? z.z1 : z.z0;
}

}  // namespace gnc

#endif  // GNC_SERVER_NOISE_RNG_H_
