#include "worker/idx_reader.h"

#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace gnc {
namespace {

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};
using GzFile = std::unique_ptr<gzFile_s, GzCloser>;

// Largest single gzread (its length is an unsigned int, its result an int).
constexpr int64_t kMaxRead = int64_t{1} << 30;

absl::StatusOr<GzFile> Open(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::UnavailableError(absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  gzbuffer(f, 1 << 17);
  return GzFile(f);
}

// ReadExactly: `size` bytes or DATA_LOSS (truncated or corrupt stream).
absl::Status ReadExactly(gzFile f, const std::string& path, void* out, int64_t size,
                         const char* what) {
  auto* p = static_cast<unsigned char*>(out);
  int64_t done = 0;
  while (done < size) {
    const int64_t want = std::min(size - done, kMaxRead);
    const int n = gzread(f, p + done, static_cast<unsigned>(want));
    if (n < 0) {
      int errnum = 0;
      const char* msg = gzerror(f, &errnum);
      return absl::DataLossError(absl::StrCat(path, ": corrupt while reading ", what, ": ",
                                              msg ? msg : "unknown zlib error"));
    }
    if (n == 0) {
      int errnum = 0;
      const char* msg = gzerror(f, &errnum);
      return absl::DataLossError(absl::StrCat(
          path, ": truncated: ", what, " needs ", size, " bytes, only ", done, " present",
          errnum != Z_OK && msg != nullptr && *msg != '\0' ? absl::StrCat(" (", msg, ")") : ""));
    }
    done += n;
  }
  return absl::OkStatus();
}

uint32_t BigEndian32(const unsigned char* b) {
  return (uint32_t{b[0]} << 24) | (uint32_t{b[1]} << 16) | (uint32_t{b[2]} << 8) | b[3];
}

struct Header {
  uint32_t magic = 0;
  int64_t count = 0;
  int64_t rows = 1;  // images only
  int64_t cols = 1;
  int64_t header_bytes = 0;
};

// ReadHeader: magic and dimensions. expected_magic 0 accepts either kind.
absl::StatusOr<Header> ReadHeader(gzFile f, const std::string& path, uint32_t expected_magic) {
  unsigned char b[8];
  if (absl::Status s = ReadExactly(f, path, b, 8, "the header"); !s.ok()) return s;
  Header h;
  h.magic = BigEndian32(b);
  if (h.magic != kIdxImagesMagic && h.magic != kIdxLabelsMagic) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: wrong magic 0x%08x: not an IDX file of unsigned bytes (images %d, labels %d)", path,
        h.magic, kIdxImagesMagic, kIdxLabelsMagic));
  }
  if (expected_magic != 0 && h.magic != expected_magic) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: wrong magic %d: expected %d (%s)", path, h.magic, expected_magic,
                        expected_magic == kIdxImagesMagic ? "IDX images" : "IDX labels"));
  }
  h.count = BigEndian32(b + 4);
  h.header_bytes = 8;
  if (h.magic == kIdxImagesMagic) {
    unsigned char d[8];
    if (absl::Status s = ReadExactly(f, path, d, 8, "the header"); !s.ok()) return s;
    h.rows = BigEndian32(d);
    h.cols = BigEndian32(d + 4);
    h.header_bytes = 16;
    if (h.rows < 1 || h.cols < 1 || h.rows * h.cols > (int64_t{1} << 24)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": bad image size ", h.rows, "x", h.cols));
    }
  }
  return h;
}

// Resolve: the absolute record range, checked against the header.
absl::StatusOr<IdxRange> Resolve(const std::string& path, const Header& h, IdxRange range) {
  if (range.begin < 0 || range.begin > h.count) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": range starts at ", range.begin, ", file has ", h.count, " records"));
  }
  if (range.count < 0) range.count = h.count - range.begin;
  if (range.begin + range.count > h.count) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": records [", range.begin, ", ",
                                                   range.begin + range.count, ") asked, file has ",
                                                   h.count));
  }
  return range;
}

// ReadRecords: the raw bytes of `range`, each record `record_bytes` long.
absl::StatusOr<std::vector<unsigned char>> ReadRecords(gzFile f, const std::string& path,
                                                       const Header& h, IdxRange range,
                                                       int64_t record_bytes, const char* what) {
  if (range.begin > 0) {
    const int64_t skip = range.begin * record_bytes;
    // gzseek on a file opened for reading decompresses up to the target.
    if (gzseek(f, static_cast<z_off_t>(h.header_bytes + skip), SEEK_SET) < 0) {
      return absl::DataLossError(absl::StrCat(path, ": cannot skip to record ", range.begin));
    }
  }
  std::vector<unsigned char> raw(static_cast<size_t>(range.count * record_bytes));
  if (absl::Status s = ReadExactly(f, path, raw.data(), static_cast<int64_t>(raw.size()), what);
      !s.ok()) {
    return s;
  }
  return raw;
}

}  // namespace

absl::StatusOr<int64_t> ReadIdxCount(const std::string& path) {
  absl::StatusOr<GzFile> f = Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<Header> h = ReadHeader(f->get(), path, 0);
  if (!h.ok()) return h.status();
  return h->count;
}

absl::StatusOr<std::vector<float>> ReadIdxImages(const std::string& path, IdxRange range,
                                                 int64_t* dim) {
  absl::StatusOr<GzFile> f = Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<Header> h = ReadHeader(f->get(), path, kIdxImagesMagic);
  if (!h.ok()) return h.status();
  absl::StatusOr<IdxRange> r = Resolve(path, *h, range);
  if (!r.ok()) return r.status();
  const int64_t record = h->rows * h->cols;
  absl::StatusOr<std::vector<unsigned char>> raw =
      ReadRecords(f->get(), path, *h, *r, record, "the images");
  if (!raw.ok()) return raw.status();
  std::vector<float> out(raw->size());
  constexpr float kScale = 1.0f / 255.0f;
  for (size_t i = 0; i < out.size(); ++i) out[i] = static_cast<float>((*raw)[i]) * kScale;
  if (dim != nullptr) *dim = record;
  return out;
}

absl::StatusOr<std::vector<int32_t>> ReadIdxLabels(const std::string& path, IdxRange range) {
  absl::StatusOr<GzFile> f = Open(path);
  if (!f.ok()) return f.status();
  absl::StatusOr<Header> h = ReadHeader(f->get(), path, kIdxLabelsMagic);
  if (!h.ok()) return h.status();
  absl::StatusOr<IdxRange> r = Resolve(path, *h, range);
  if (!r.ok()) return r.status();
  absl::StatusOr<std::vector<unsigned char>> raw =
      ReadRecords(f->get(), path, *h, *r, 1, "the labels");
  if (!raw.ok()) return raw.status();
  return std::vector<int32_t>(raw->begin(), raw->end());
}

absl::StatusOr<Dataset> LoadIdxDataset(const std::string& images_path,
                                       const std::string& labels_path, IdxRange range) {
  absl::StatusOr<int64_t> num_images = ReadIdxCount(images_path);
  if (!num_images.ok()) return num_images.status();
  absl::StatusOr<int64_t> num_labels = ReadIdxCount(labels_path);
  if (!num_labels.ok()) return num_labels.status();
  if (*num_images != *num_labels) {
    return absl::FailedPreconditionError(absl::StrCat("count mismatch: ", images_path, " has ",
                                                      *num_images, " images, ", labels_path,
                                                      " has ", *num_labels, " labels"));
  }
  Dataset d;
  absl::StatusOr<std::vector<float>> images = ReadIdxImages(images_path, range, &d.dim);
  if (!images.ok()) return images.status();
  absl::StatusOr<std::vector<int32_t>> labels = ReadIdxLabels(labels_path, range);
  if (!labels.ok()) return labels.status();
  d.images = *std::move(images);
  d.labels = *std::move(labels);
  d.count = static_cast<int64_t>(d.labels.size());
  return d;
}

IdxPaths FashionMnistPaths(const std::string& dir, bool train) {
  const std::string prefix = dir.empty() || dir.back() == '/' ? dir : dir + "/";
  const char* stem = train ? "train" : "t10k";
  return {absl::StrCat(prefix, stem, "-images-idx3-ubyte.gz"),
          absl::StrCat(prefix, stem, "-labels-idx1-ubyte.gz")};
}

}  // namespace gnc
