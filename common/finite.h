// FindNonFinite: the NaN/infinity scan that every refusal of bad values uses. Free of
// gRPC and protobuf, so the shard core and the merge backends can use it.
#ifndef GNC_COMMON_FINITE_H_
#define GNC_COMMON_FINITE_H_

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <span>

namespace gnc {

// FindNonFinite: index of the first NaN or infinity in v, or -1.
inline int64_t FindNonFinite(std::span<const float> v) {
  // Branch-free scan in blocks so the common all-finite case vectorises (integer
  // and, add and or only, which even the x86-64 baseline has for 4 lanes): adding
  // 2^23 to the exponent bits sets bit 31 exactly when they are all ones.
  constexpr size_t kBlock = 1024;
  for (size_t base = 0; base < v.size(); base += kBlock) {
    const size_t end = std::min(v.size(), base + kBlock);
    uint32_t any = 0;
    for (size_t i = base; i < end; ++i) {
      any |= (std::bit_cast<uint32_t>(v[i]) & 0x7f800000u) + 0x00800000u;
    }
    if (any & 0x80000000u) {
      for (size_t i = base; i < end; ++i) {
        if (!std::isfinite(v[i])) return static_cast<int64_t>(i);
      }
    }
  }
  return -1;
}

}  // namespace gnc

#endif  // GNC_COMMON_FINITE_H_
