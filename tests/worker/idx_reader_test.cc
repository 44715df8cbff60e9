#include "worker/idx_reader.h"

#include <zlib.h>

#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace gnc {
namespace {

using Bytes = std::vector<unsigned char>;

void PutBigEndian(Bytes& b, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<unsigned char>(v >> shift));
}

Bytes ImagesFile(uint32_t magic, uint32_t header_count, uint32_t rows, uint32_t cols,
                 const Bytes& pixels) {
  Bytes b;
  PutBigEndian(b, magic);
  PutBigEndian(b, header_count);
  PutBigEndian(b, rows);
  PutBigEndian(b, cols);
  b.insert(b.end(), pixels.begin(), pixels.end());
  return b;
}

Bytes LabelsFile(uint32_t header_count, const Bytes& labels) {
  Bytes b;
  PutBigEndian(b, kIdxLabelsMagic);
  PutBigEndian(b, header_count);
  b.insert(b.end(), labels.begin(), labels.end());
  return b;
}

std::string Path(const std::string& name) { return testing::TempDir() + "/" + name; }

std::string WriteGz(const std::string& name, const Bytes& content) {
  const std::string path = Path(name);
  gzFile f = gzopen(path.c_str(), "wb");
  EXPECT_NE(f, nullptr);
  EXPECT_EQ(gzwrite(f, content.data(), static_cast<unsigned>(content.size())),
            static_cast<int>(content.size()));
  EXPECT_EQ(gzclose(f), Z_OK);
  return path;
}

std::string WriteRaw(const std::string& name, const Bytes& content) {
  const std::string path = Path(name);
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(content.data()),
             static_cast<std::streamsize>(content.size()));
  return path;
}

Bytes ReadRaw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

// Three 2x3 images with pixel values 0, 10, 20, ... and labels 7, 0, 9.
const Bytes kPixels = {0,  10,  20,  30,  40,  50,  60,  70,  80,
                       90, 100, 110, 120, 130, 140, 150, 160, 255};
const Bytes kLabels = {7, 0, 9};

TEST(IdxReaderTest, ReadsImagesAsUnitFloatsAndLabelsAsInts) {
  const std::string images =
      WriteGz("good-images.gz", ImagesFile(kIdxImagesMagic, 3, 2, 3, kPixels));
  const std::string labels = WriteGz("good-labels.gz", LabelsFile(3, kLabels));
  absl::StatusOr<Dataset> d = LoadIdxDataset(images, labels, {});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->count, 3);
  EXPECT_EQ(d->dim, 6);
  ASSERT_EQ(d->images.size(), 18u);
  for (size_t i = 0; i < kPixels.size(); ++i) {
    EXPECT_FLOAT_EQ(d->images[i], kPixels[i] / 255.0f) << i;
  }
  EXPECT_EQ(d->images.back(), 1.0f);
  EXPECT_EQ(d->labels, (std::vector<int32_t>{7, 0, 9}));
  EXPECT_EQ(*ReadIdxCount(images), 3);
}

TEST(IdxReaderTest, ReadsARange) {
  const std::string images =
      WriteGz("range-images.gz", ImagesFile(kIdxImagesMagic, 3, 2, 3, kPixels));
  const std::string labels = WriteGz("range-labels.gz", LabelsFile(3, kLabels));
  absl::StatusOr<Dataset> d = LoadIdxDataset(images, labels, {1, 2});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->count, 2);
  EXPECT_FLOAT_EQ(d->images[0], 60 / 255.0f);
  EXPECT_EQ(d->labels, (std::vector<int32_t>{0, 9}));
  absl::StatusOr<std::vector<int32_t>> past = ReadIdxLabels(labels, {2, 2});
  EXPECT_EQ(past.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(IdxReaderTest, ReadsUncompressedFiles) {
  const std::string labels = WriteRaw("plain-labels", LabelsFile(3, kLabels));
  absl::StatusOr<std::vector<int32_t>> l = ReadIdxLabels(labels, {});
  ASSERT_TRUE(l.ok()) << l.status();
  EXPECT_EQ(*l, (std::vector<int32_t>{7, 0, 9}));
}

TEST(IdxReaderTest, MissingFileIsNotFoundAndNamesTheFile) {
  const std::string path = Path("does-not-exist-images.gz");
  absl::StatusOr<std::vector<float>> r = ReadIdxImages(path, {}, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status();
}

TEST(IdxReaderTest, FileShorterThanItsHeaderIsDataLoss) {
  // The header promises 5 images, the file holds 3.
  const std::string path =
      WriteGz("short-images.gz", ImagesFile(kIdxImagesMagic, 5, 2, 3, kPixels));
  absl::StatusOr<std::vector<float>> r = ReadIdxImages(path, {}, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find(path), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status();
  // The records that are there can still be read.
  EXPECT_TRUE(ReadIdxImages(path, {0, 3}, nullptr).ok());
}

TEST(IdxReaderTest, CutGzipStreamIsDataLoss) {
  Bytes pixels(6000);
  for (size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<unsigned char>(i * 7919 % 251);
  const std::string whole =
      WriteGz("whole-images.gz", ImagesFile(kIdxImagesMagic, 1000, 2, 3, pixels));
  Bytes gz = ReadRaw(whole);
  ASSERT_GT(gz.size(), 100u);
  gz.resize(gz.size() / 2);
  const std::string cut = WriteRaw("cut-images.gz", gz);
  absl::StatusOr<std::vector<float>> r = ReadIdxImages(cut, {}, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << r.status();
  EXPECT_NE(r.status().message().find(cut), std::string::npos) << r.status();
}

TEST(IdxReaderTest, TruncatedHeaderIsDataLoss) {
  const std::string path = WriteGz("tiny.gz", Bytes{0, 0, 8});
  EXPECT_EQ(ReadIdxCount(path).status().code(), absl::StatusCode::kDataLoss);
}

TEST(IdxReaderTest, WrongMagicIsInvalidArgument) {
  const std::string labels = WriteGz("magic-labels.gz", LabelsFile(3, kLabels));
  absl::StatusOr<std::vector<float>> r = ReadIdxImages(labels, {}, nullptr);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find(labels), std::string::npos) << r.status();
  EXPECT_NE(r.status().message().find("magic"), std::string::npos) << r.status();

  const std::string junk = WriteGz("magic-junk.gz", ImagesFile(0x12345678, 3, 2, 3, kPixels));
  absl::StatusOr<std::vector<int32_t>> l = ReadIdxLabels(junk, {});
  EXPECT_EQ(l.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(l.status().message().find("0x12345678"), std::string::npos) << l.status();
}

TEST(IdxReaderTest, CountMismatchIsFailedPreconditionNamingBothFiles) {
  const std::string images = WriteGz("mm-images.gz", ImagesFile(kIdxImagesMagic, 3, 2, 3, kPixels));
  const std::string labels = WriteGz("mm-labels.gz", LabelsFile(4, {1, 2, 3, 4}));
  absl::StatusOr<Dataset> d = LoadIdxDataset(images, labels, {});
  EXPECT_EQ(d.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(d.status().message().find(images), std::string::npos) << d.status();
  EXPECT_NE(d.status().message().find(labels), std::string::npos) << d.status();
}

TEST(IdxReaderTest, FashionMnistIfInstalled) {
  const IdxPaths test = FashionMnistPaths("/usr/share/datasets/fashion-mnist", false);
  if (!std::ifstream(test.images).good()) GTEST_SKIP() << "no Fashion-MNIST under /usr/share";
  absl::StatusOr<Dataset> d = LoadIdxDataset(test.images, test.labels, {0, 100});
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->dim, 784);
  EXPECT_EQ(*ReadIdxCount(test.labels), 10000);
  EXPECT_EQ(*ReadIdxCount(FashionMnistPaths("/usr/share/datasets/fashion-mnist/", true).images),
            60000);
  EXPECT_EQ(d->labels[0], 9);  // the first test image is an ankle boot
  for (int32_t y : d->labels) EXPECT_TRUE(y >= 0 && y < 10);
}

}  // namespace
}  // namespace gnc
