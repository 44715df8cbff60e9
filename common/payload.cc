#include "common/payload.h"

#include <cstring>

#include "common/bf16.h"

namespace gnc {

void DecodePayload(const Payload& payload, WireDType dtype, std::span<float> dst) {
  if (dtype == WireDType::kFloat32) {
    auto* out = reinterpret_cast<uint8_t*>(dst.data());
    for (std::span<const uint8_t> piece : payload.pieces) {
      if (piece.empty()) continue;  // out may be null (an empty dst): no memcpy
      std::memcpy(out, piece.data(), piece.size());
      out += piece.size();
    }
    return;
  }
  size_t i = 0;
  uint8_t carry = 0;
  bool have_carry = false;  // an element split across two pieces
  for (std::span<const uint8_t> piece : payload.pieces) {
    size_t j = 0;
    if (have_carry && !piece.empty()) {
      dst[i++] = Bf16ToFloat(static_cast<uint16_t>(carry | (piece[0] << 8)));
      have_carry = false;
      j = 1;
    }
    const size_t whole = (piece.size() - j) / 2;
    Bf16BytesToFloats(piece.data() + j, whole, dst.data() + i);
    i += whole;
    j += 2 * whole;
    if (j < piece.size()) {
      carry = piece[j];
      have_carry = true;
    }
  }
}

}  // namespace gnc
