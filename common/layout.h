// Model layout and shard map: how the flat float32 parameter vector is named and
// split across S shards. Every process derives the same map from the same layout.
#ifndef GNC_COMMON_LAYOUT_H_
#define GNC_COMMON_LAYOUT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gnc {

// TensorSpec: one named tensor, flattened row-major into the parameter vector.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // empty = scalar

  int64_t NumElements() const;
};

// ModelLayout: the ordered list of a model's tensors. Value type, thread-compatible.
class ModelLayout {
 public:
  ModelLayout() = default;

  // Validate: non-empty, unique non-empty names, every dimension >= 1, total below
  // 2^40 elements. Returns INVALID_ARGUMENT naming the offending tensor otherwise.
  static absl::StatusOr<ModelLayout> Create(std::vector<TensorSpec> tensors);

  const std::vector<TensorSpec>& tensors() const { return tensors_; }
  int64_t NumElements() const { return num_elements_; }
  // Offset of tensor `i` in the flat vector. REQUIRES: 0 <= i < tensors().size().
  int64_t Offset(size_t i) const { return offsets_[i]; }

  // Hash: a stable 64-bit FNV-1a hash of names and shapes (same on every platform).
  uint64_t Hash() const;

 private:
  std::vector<TensorSpec> tensors_;
  std::vector<int64_t> offsets_;
  int64_t num_elements_ = 0;
};

// ShardRange: the global element range [begin, end) owned by one shard.
struct ShardRange {
  int64_t begin = 0;
  int64_t end = 0;
  int64_t size() const { return end - begin; }
};

// ShardRangeFor: contiguous, element-balanced split of `num_elements` into
// `num_shards` ranges; the first (num_elements % num_shards) shards get one extra.
// REQUIRES: num_shards >= 1, 0 <= shard_index < num_shards, num_elements >= 0.
ShardRange ShardRangeFor(int64_t num_elements, int num_shards, int shard_index);

// Fnv1a64: incremental FNV-1a, used for layout and config hashes.
class Fnv1a64 {
 public:
  void Add(const void* data, size_t size);
  void AddString(const std::string& s);  // length-prefixed
  void AddInt(int64_t v);
  void AddDouble(double v);
  uint64_t value() const { return h_; }

 private:
  uint64_t h_ = 0xcbf29ce484222325ull;
};

}  // namespace gnc

#endif  // GNC_COMMON_LAYOUT_H_
