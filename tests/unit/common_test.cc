// Layout, shard map and wire codec.
#include <bit>
#include <cmath>
#include <limits>

#include "common/bf16.h"
#include "common/codec.h"
#include "common/layout.h"
#include "gtest/gtest.h"

namespace gnc {
namespace {

TEST(LayoutTest, OffsetsHashAndValidation) {
  absl::StatusOr<ModelLayout> l =
      ModelLayout::Create({{"w", {3, 4}}, {"b", {4}}, {"s", {}}});
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->NumElements(), 17);
  EXPECT_EQ(l->Offset(1), 12);
  EXPECT_EQ(l->Offset(2), 16);
  absl::StatusOr<ModelLayout> other = ModelLayout::Create({{"w", {4, 3}}, {"b", {4}}, {"s", {}}});
  EXPECT_NE(l->Hash(), other->Hash());
  EXPECT_EQ(l->Hash(), ModelLayout::Create({{"w", {3, 4}}, {"b", {4}}, {"s", {}}})->Hash());
  EXPECT_FALSE(ModelLayout::Create({}).ok());
  EXPECT_FALSE(ModelLayout::Create({{"w", {3, 0}}}).ok());
  EXPECT_FALSE(ModelLayout::Create({{"w", {3}}, {"w", {2}}}).ok());
  EXPECT_FALSE(ModelLayout::Create({{"", {3}}}).ok());
  EXPECT_FALSE(ModelLayout::Create({{"huge", {1 << 30, 1 << 30}}}).ok());
}

TEST(ShardMapTest, ContiguousBalancedCover) {
  for (int64_t n : {1, 7, 100, 1001}) {
    for (int s = 1; s <= 5; ++s) {
      int64_t next = 0;
      for (int i = 0; i < s; ++i) {
        ShardRange r = ShardRangeFor(n, s, i);
        EXPECT_EQ(r.begin, next);
        EXPECT_LE(std::abs(r.size() - n / s), 1);
        next = r.end;
      }
      EXPECT_EQ(next, n);
    }
  }
}

TEST(CodecTest, Float32RoundTripAndSum) {
  std::vector<float> a = {1.5f, -2.0f, 3.25f}, b = {0.5f, 0.5f, 0.5f}, out(3);
  v1::Chunk chunk;
  ASSERT_TRUE(EncodeChunk(a, b, v1::FLOAT32, &chunk).ok());
  EXPECT_EQ(chunk.data().size(), 12u);
  EXPECT_EQ(*ChunkElementCount(chunk), 3);
  ASSERT_TRUE(DecodeChunk(chunk, std::span<float>(out)).ok());
  EXPECT_EQ(out, (std::vector<float>{2.0f, -1.5f, 3.75f}));
  // Little-endian on the wire: 2.0f = 0x40000000.
  EXPECT_EQ(static_cast<unsigned char>(chunk.data()[3]), 0x40);
}

TEST(CodecTest, Bfloat16RoundsToNearest) {
  std::vector<float> a = {1.0f, 3.14159f, -1e-3f}, out(3);
  v1::Chunk chunk;
  ASSERT_TRUE(EncodeChunk(a, {}, v1::BFLOAT16, &chunk).ok());
  EXPECT_EQ(chunk.data().size(), 6u);
  ASSERT_TRUE(DecodeChunk(chunk, std::span<float>(out)).ok());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_NEAR(out[1], 3.140625f, 1e-6);  // nearest bf16
  EXPECT_NEAR(out[2], -1e-3f, 1e-5);
}

TEST(CodecTest, RejectsBadPayloads) {
  v1::Chunk chunk;
  chunk.set_dtype(v1::FLOAT32);
  chunk.set_data(std::string(7, '\0'));
  EXPECT_EQ(ChunkElementCount(chunk).status().code(), absl::StatusCode::kInvalidArgument);
  chunk.set_dtype(static_cast<v1::DType>(9));
  chunk.set_data(std::string(8, '\0'));
  EXPECT_EQ(ChunkElementCount(chunk).status().code(), absl::StatusCode::kInvalidArgument);
  chunk.set_dtype(v1::FLOAT32);
  std::vector<float> out(3);
  EXPECT_EQ(DecodeChunk(chunk, std::span<float>(out)).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CodecTest, ChunkValuesViewsFloat32AndDecodesBfloat16) {
  std::vector<float> a = {1.0f, -2.5f, 3.0f}, scratch;
  v1::Chunk f32, bf16;
  ASSERT_TRUE(EncodeChunk(a, {}, v1::FLOAT32, &f32).ok());
  ASSERT_TRUE(EncodeChunk(a, {}, v1::BFLOAT16, &bf16).ok());
  absl::StatusOr<std::span<const float>> v = ChunkValues(f32, &scratch);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(std::vector<float>(v->begin(), v->end()), a);
  EXPECT_EQ(static_cast<const void*>(v->data()), static_cast<const void*>(f32.data().data()));
  v = ChunkValues(bf16, &scratch);
  ASSERT_TRUE(v.ok());
  EXPECT_EQ(std::vector<float>(v->begin(), v->end()), a);  // exact in bf16
  EXPECT_EQ(v->data(), scratch.data());
  f32.mutable_data()->push_back('x');
  EXPECT_EQ(ChunkValues(f32, &scratch).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(CodecTest, FindNonFinite) {
  std::vector<float> v(5000, 1.0f);
  EXPECT_EQ(FindNonFinite(v), -1);
  v[4321] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FindNonFinite(v), 4321);
  v[17] = std::nanf("");
  EXPECT_EQ(FindNonFinite(v), 17);
}

// Against std::isfinite, element by element, for the bit patterns next to the
// boundary: each value alone in an all-finite vector, at a position in a later block.
TEST(CodecTest, FindNonFiniteAgreesWithIsFiniteOnEdgeValues) {
  const float lim = std::numeric_limits<float>::max();
  const std::vector<uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x00800000u, 0x7f7fffffu,
      0xff7fffffu, 0x7f800000u, 0xff800000u, 0x7f800001u, 0xffc00000u, 0x7fffffffu,
      0xffffffffu, 0x3f800000u, 0x7f000000u, 0x40000000u};
  std::vector<float> v(3000, lim);
  for (uint32_t b : bits) {
    const float x = std::bit_cast<float>(b);
    v[2049] = x;
    EXPECT_EQ(FindNonFinite(v), std::isfinite(x) ? -1 : 2049) << std::hex << b;
    v[2049] = lim;
  }
}

// The whole-array conversions (built for AVX-512 and AVX2 as well) against the scalar
// ones, element by element: every rounding case (ties to even, carries into the
// exponent, to infinity), NaNs, infinities, subnormals and random bits, at every
// length up to a few vectors and from unaligned bytes.
TEST(CodecTest, ArrayConversionsMatchTheScalarOnes) {
  std::vector<uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x00000001u, 0x00008000u, 0x00018000u, 0x3f808000u,
      0x3f818000u, 0x3f807fffu, 0x3f808001u, 0x7f7f8000u, 0x7f7fffffu, 0xff7fffffu,
      0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffc00001u, 0x7fffffffu,
      0x807fffffu, 0x00800000u, 0x3effffffu, 0x4049ffffu};
  uint32_t x = 12345;
  while (bits.size() < 300) {
    x = x * 1664525u + 1013904223u;
    bits.push_back(x);
  }
  for (size_t n = 0; n <= bits.size(); n += (n < 70 ? 1 : 23)) {
    std::vector<float> in(n);
    for (size_t i = 0; i < n; ++i) in[i] = std::bit_cast<float>(bits[i]);
    std::vector<uint16_t> got(n + 1, 0xabcd);
    FloatsToBf16(in.data(), n, got.data());
    for (size_t i = 0; i < n; ++i) {
      ASSERT_EQ(got[i], FloatToBf16(in[i])) << "n " << n << ", bits " << std::hex << bits[i];
    }
    EXPECT_EQ(got[n], 0xabcd) << "wrote past n = " << n;
    // From bytes at an odd address, little-endian.
    std::vector<uint8_t> bytes(2 * n + 1);
    for (size_t i = 0; i < n; ++i) {
      bytes[1 + 2 * i] = static_cast<uint8_t>(bits[i] >> 16);
      bytes[2 + 2 * i] = static_cast<uint8_t>(bits[i] >> 24);
    }
    std::vector<float> back(n + 1, -3.0f);
    Bf16BytesToFloats(bytes.data() + 1, n, back.data());
    for (size_t i = 0; i < n; ++i) {
      const uint16_t h = static_cast<uint16_t>(bits[i] >> 16);
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(Bf16ToFloat(h)))
          << "n " << n << ", half " << std::hex << h;
    }
    EXPECT_EQ(back[n], -3.0f) << "wrote past n = " << n;
  }
}

}  // namespace
}  // namespace gnc
