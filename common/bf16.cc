#include "common/bf16.h"

#include "common/simd_clones.h"

namespace gnc {

GNC_CLONES void FloatsToBf16(const float* in, size_t n, uint16_t* out) {
  for (size_t i = 0; i < n; ++i) out[i] = FloatToBf16(in[i]);
}

GNC_CLONES void Bf16BytesToFloats(const uint8_t* in, size_t n, float* out) {
  for (size_t i = 0; i < n; ++i) {
    out[i] = Bf16ToFloat(static_cast<uint16_t>(in[2 * i] | (in[2 * i + 1] << 8)));
  }
}

}  // namespace gnc
