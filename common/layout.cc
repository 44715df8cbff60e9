#include "common/layout.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace gnc {
namespace {
constexpr int64_t kMaxElements = int64_t{1} << 40;
}  // namespace

int64_t TensorSpec::NumElements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::StatusOr<ModelLayout> ModelLayout::Create(std::vector<TensorSpec> tensors) {
  if (tensors.empty()) return absl::InvalidArgumentError("model layout has no tensors");
  ModelLayout layout;
  std::set<std::string> names;
  int64_t offset = 0;
  for (const TensorSpec& t : tensors) {
    if (t.name.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", layout.offsets_.size(), " has an empty name"));
    }
    if (!names.insert(t.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("duplicate tensor name '", t.name, "'"));
    }
    int64_t n = 1;
    for (int64_t d : t.shape) {
      if (d < 1) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "' has dimension ", d, " (must be >= 1)"));
      }
      if (n > kMaxElements / d) {
        return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name, "' is too large"));
      }
      n *= d;
    }
    layout.offsets_.push_back(offset);
    offset += n;
    if (offset > kMaxElements) {
      return absl::InvalidArgumentError("model layout exceeds 2^40 elements");
    }
  }
  layout.tensors_ = std::move(tensors);
  layout.num_elements_ = offset;
  return layout;
}

uint64_t ModelLayout::Hash() const {
  Fnv1a64 h;
  h.AddInt(static_cast<int64_t>(tensors_.size()));
  for (const TensorSpec& t : tensors_) {
    h.AddString(t.name);
    h.AddInt(static_cast<int64_t>(t.shape.size()));
    for (int64_t d : t.shape) h.AddInt(d);
  }
  return h.value();
}

ShardRange ShardRangeFor(int64_t num_elements, int num_shards, int shard_index) {
  const int64_t base = num_elements / num_shards;
  const int64_t extra = num_elements % num_shards;
  const int64_t begin = shard_index * base + std::min<int64_t>(shard_index, extra);
  const int64_t size = base + (shard_index < extra ? 1 : 0);
  return ShardRange{begin, begin + size};
}

void Fnv1a64::Add(const void* data, size_t size) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size; ++i) {
    h_ ^= p[i];
    h_ *= 0x100000001b3ull;
  }
}

void Fnv1a64::AddString(const std::string& s) {
  AddInt(static_cast<int64_t>(s.size()));
  Add(s.data(), s.size());
}

void Fnv1a64::AddInt(int64_t v) {
  unsigned char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(static_cast<uint64_t>(v) >> (8 * i));
  Add(b, 8);
}

void Fnv1a64::AddDouble(double v) {
  int64_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  AddInt(bits);
}

}  // namespace gnc
