// IDX reader for MNIST-style data sets (Fashion-MNIST): gzip-compressed or plain IDX
// files, read through zlib's gz* API.
//
// Images (magic 2051, unsigned bytes, [count, rows, cols]) become float32 in [0, 1],
// row-major, one image after another; labels (magic 2049, unsigned bytes, [count])
// become int32. Every error is a Status whose message names the file: NOT_FOUND for a
// missing file, DATA_LOSS for a truncated or corrupt one, INVALID_ARGUMENT for a wrong
// magic or header, FAILED_PRECONDITION when images and labels disagree on the count.
//
// Free functions; thread-safe.
#ifndef GNC_WORKER_IDX_READER_H_
#define GNC_WORKER_IDX_READER_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace gnc {

inline constexpr uint32_t kIdxImagesMagic = 2051;  // 0x00000803
inline constexpr uint32_t kIdxLabelsMagic = 2049;  // 0x00000801

// IdxRange: which records to read. Records [begin, begin + count); count < 0 means to
// the end of the file. A range past the end is INVALID_ARGUMENT.
struct IdxRange {
  int64_t begin = 0;
  int64_t count = -1;
};

// Dataset: `count` examples of `dim` features each, with their labels.
struct Dataset {
  int64_t count = 0;
  int64_t dim = 0;
  std::vector<float> images;    // count * dim, in [0, 1]
  std::vector<int32_t> labels;  // count
};

// ReadIdxCount: the record count in the header of an IDX images or labels file.
absl::StatusOr<int64_t> ReadIdxCount(const std::string& path);

// ReadIdxImages: the images of `range`. *dim receives rows * cols.
absl::StatusOr<std::vector<float>> ReadIdxImages(const std::string& path, IdxRange range,
                                                 int64_t* dim);

// ReadIdxLabels: the labels of `range`.
absl::StatusOr<std::vector<int32_t>> ReadIdxLabels(const std::string& path, IdxRange range);

// LoadIdxDataset: images and labels of `range` from a pair of files whose headers
// must agree on the count (FAILED_PRECONDITION naming both files otherwise).
absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path, IdxRange range);

// FashionMnistPaths: the standard file names under `dir`, for the training (60 000)
// or the test (10 000) set.
struct IdxPaths {
  std::string images;
  std::string labels;
};
IdxPaths FashionMnistPaths(const std::string& dir, bool train);

}  // namespace gnc

#endif  // GNC_WORKER_IDX_READER_H_
