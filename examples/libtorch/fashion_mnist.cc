#include "fashion_mnist.h"

#include <zlib.h>

#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace {

// ReadIdx: an IDX file's dimensions and bytes (unsigned 8-bit data only).
absl::Status ReadIdx(const std::string& path, uint8_t want_dims, std::vector<int64_t>* dims,
                     std::vector<uint8_t>* data) {
  gzFile f = gzopen(path.c_str(), "rb");  // reads plain files too
  if (f == nullptr) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  auto fail = [&](absl::string_view why) {
    gzclose(f);
    return absl::DataLossError(absl::StrCat(path, ": ", why));
  };
  uint8_t magic[4];
  if (gzread(f, magic, 4) != 4 || magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 ||
      magic[3] != want_dims) {
    return fail("not an IDX file of unsigned bytes with the expected dimensions");
  }
  int64_t total = 1;
  dims->clear();
  for (int i = 0; i < want_dims; ++i) {
    uint8_t b[4];
    if (gzread(f, b, 4) != 4) return fail("truncated header");
    dims->push_back((int64_t{b[0]} << 24) | (b[1] << 16) | (b[2] << 8) | b[3]);
    total *= dims->back();
  }
  data->resize(static_cast<size_t>(total));
  if (gzread(f, data->data(), static_cast<unsigned>(total)) != total) return fail("truncated data");
  gzclose(f);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<FashionMnist> LoadFashionMnist(const std::string& dir, bool train, int64_t limit) {
  const std::string prefix = absl::StrCat(dir, "/", train ? "train" : "t10k");
  std::vector<int64_t> image_dims, label_dims;
  std::vector<uint8_t> pixels, labels;
  if (absl::Status s = ReadIdx(prefix + "-images-idx3-ubyte.gz", 3, &image_dims, &pixels);
      !s.ok()) {
    return s;
  }
  if (absl::Status s = ReadIdx(prefix + "-labels-idx1-ubyte.gz", 1, &label_dims, &labels);
      !s.ok()) {
    return s;
  }
  if (image_dims[0] != label_dims[0] || image_dims[1] != 28 || image_dims[2] != 28) {
    return absl::DataLossError(absl::StrCat(prefix, "-*: ", image_dims[0], " images of ",
                                            image_dims[1], "x", image_dims[2], ", ", label_dims[0],
                                            " labels"));
  }
  const int64_t n = limit > 0 ? std::min(limit, image_dims[0]) : image_dims[0];
  FashionMnist out;
  out.images = torch::from_blob(pixels.data(), {n, 1, 28, 28}, torch::kUInt8)
                   .to(torch::kFloat32)
                   .div_(255.0f);
  out.labels = torch::from_blob(labels.data(), {n}, torch::kUInt8).to(torch::kInt64);
  return out;
}
