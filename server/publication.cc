#include "server/publication.h"

#include <utility>

#include "common/bf16.h"

namespace gnc {
namespace {

std::shared_ptr<const PointBuffer> Convert(std::span<const float> f32,
                                           std::span<const uint16_t> bf16, WireDType to) {
  auto out = std::make_shared<PointBuffer>();
  out->dtype = to;
  if (to == WireDType::kBfloat16) {
    out->bf16.resize(f32.size());
    FloatsToBf16(f32.data(), f32.size(), out->bf16.data());
  } else {
    out->f32.resize(bf16.size());
    Bf16BytesToFloats(reinterpret_cast<const uint8_t*>(bf16.data()), bf16.size(),
                      out->f32.data());
  }
  return out;
}

}  // namespace

std::span<const uint8_t> PointBuffer::Bytes() const {
  if (dtype == WireDType::kBfloat16) {
    return {reinterpret_cast<const uint8_t*>(bf16.data()), bf16.size() * sizeof(uint16_t)};
  }
  return {reinterpret_cast<const uint8_t*>(f32.data()), f32.size() * sizeof(float)};
}

Publication::Publication(PointTag tag, SharedFloats w,
                         std::vector<std::shared_ptr<const PointBuffer>> points)
    : tag_(tag), w_(std::move(w)), points_(std::move(points)) {}

bool Publication::Perturbed(int rank) const {
  return rank >= 0 && rank < static_cast<int>(points_.size()) && points_[rank] != nullptr;
}

PointBytes Publication::For(int rank, WireDType dtype) const {
  if (!Perturbed(rank)) {
    if (dtype == WireDType::kFloat32) {
      return {w_, {reinterpret_cast<const uint8_t*>(w_->data()), w_->size() * sizeof(float)}};
    }
    absl::MutexLock lock(&mu_);
    if (w_bf16_ == nullptr) w_bf16_ = Convert(*w_, {}, WireDType::kBfloat16);
    return {w_bf16_, w_bf16_->Bytes()};
  }
  const std::shared_ptr<const PointBuffer>& p = points_[rank];
  if (p->dtype == dtype) return {p, p->Bytes()};
  absl::MutexLock lock(&mu_);
  if (converted_.empty()) converted_.resize(points_.size());
  if (converted_[rank] == nullptr) converted_[rank] = Convert(p->f32, p->bf16, dtype);
  return {converted_[rank], converted_[rank]->Bytes()};
}

}  // namespace gnc
