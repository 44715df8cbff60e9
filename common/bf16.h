// bfloat16 conversions: the upper 16 bits of an IEEE-754 binary32, rounded to nearest
// even (NaN stays a quiet NaN). Header-only and branch-free on finite values, so the
// loops that call it vectorise; used by the wire codec and by the merge, which writes
// evaluation points straight in a worker's wire dtype.
#ifndef GNC_COMMON_BF16_H_
#define GNC_COMMON_BF16_H_

#include <bit>
#include <cstddef>
#include <cstdint>

namespace gnc {

inline uint16_t FloatToBf16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const bool nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return static_cast<uint16_t>(nan ? ((bits >> 16) | 0x40u) : rounded);
}

inline float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// FloatsToBf16: out[i] = FloatToBf16(in[i]) for i < n.
void FloatsToBf16(const float* in, size_t n, uint16_t* out);
// Bf16BytesToFloats: n elements of two little-endian bytes each (any alignment) to
// float32. Both are built for AVX-512 and AVX2 as well (common/bf16.cc): a round in
// bfloat16 converts every gradient and every point once on each side.
void Bf16BytesToFloats(const uint8_t* in, size_t n, float* out);

}  // namespace gnc

#endif  // GNC_COMMON_BF16_H_
