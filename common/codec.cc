#include "common/codec.h"

#include <bit>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/bf16.h"

namespace gnc {
namespace {

static_assert(std::endian::native == std::endian::little,
              "gnc's codec assumes a little-endian host");

uint16_t ToBf16(float f) { return FloatToBf16(f); }
float FromBf16(uint16_t h) { return Bf16ToFloat(h); }

}  // namespace

absl::StatusOr<int> ElementSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_UNSPECIFIED:
    case v1::FLOAT32:
      return 4;
    case v1::BFLOAT16:
      return 2;
    default:
      return absl::InvalidArgumentError(absl::StrCat("unsupported dtype ", dtype));
  }
}

absl::StatusOr<int64_t> ChunkElementCount(const v1::Chunk& chunk) {
  absl::StatusOr<int> size = ElementSize(chunk.dtype());
  if (!size.ok()) return size.status();
  if (chunk.data().size() % *size != 0) {
    return absl::InvalidArgumentError(absl::StrCat("chunk payload of ", chunk.data().size(),
                                                   " bytes is not a whole number of ", *size,
                                                   "-byte elements"));
  }
  return static_cast<int64_t>(chunk.data().size() / *size);
}

absl::Status EncodeChunk(std::span<const float> a, std::span<const float> b, v1::DType dtype,
                         v1::Chunk* chunk) {
  absl::StatusOr<int> size = ElementSize(dtype);
  if (!size.ok()) return size.status();
  chunk->set_dtype(dtype == v1::DTYPE_UNSPECIFIED ? v1::FLOAT32 : dtype);
  std::string* data = chunk->mutable_data();
  data->resize(a.size() * *size);
  const size_t n = a.size();
  if (*size == 4) {
    auto* out = reinterpret_cast<float*>(data->data());
    if (b.empty()) {
      if (n > 0) std::memcpy(out, a.data(), n * sizeof(float));  // a.data() may be null
    } else {
      for (size_t i = 0; i < n; ++i) out[i] = a[i] + b[i];
    }
  } else {
    auto* out = reinterpret_cast<uint16_t*>(data->data());
    for (size_t i = 0; i < n; ++i) out[i] = ToBf16(b.empty() ? a[i] : a[i] + b[i]);
  }
  return absl::OkStatus();
}

absl::Status DecodeChunk(const v1::Chunk& chunk, std::span<float> dst) {
  absl::StatusOr<int64_t> count = ChunkElementCount(chunk);
  if (!count.ok()) return count.status();
  if (*count != static_cast<int64_t>(dst.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk has ", *count, " elements, expected ", dst.size()));
  }
  const std::string& data = chunk.data();
  if (chunk.dtype() == v1::BFLOAT16) {
    for (size_t i = 0; i < dst.size(); ++i) {
      uint16_t h;
      std::memcpy(&h, data.data() + 2 * i, 2);
      dst[i] = FromBf16(h);
    }
  } else if (!dst.empty()) {  // an empty span's data() may be null: no memcpy
    std::memcpy(dst.data(), data.data(), dst.size() * sizeof(float));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::span<const float>> ChunkValues(const v1::Chunk& chunk,
                                                   std::vector<float>* scratch) {
  absl::StatusOr<int64_t> count = ChunkElementCount(chunk);
  if (!count.ok()) return count.status();
  const std::string& data = chunk.data();
  if (chunk.dtype() != v1::BFLOAT16 &&
      reinterpret_cast<uintptr_t>(data.data()) % alignof(float) == 0) {
    return std::span<const float>(reinterpret_cast<const float*>(data.data()), *count);
  }
  scratch->resize(*count);
  absl::Status s = DecodeChunk(chunk, std::span<float>(*scratch));
  if (!s.ok()) return s;
  return std::span<const float>(*scratch);
}

}  // namespace gnc
