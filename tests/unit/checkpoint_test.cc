// Checkpoint files: a round trip, and every kind of damage refused with the file and
// the reason named; the store's pruning, truncation after a rewind and background
// writes.
#include "server/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"
#include "tests/unit/temp_dir.h"

namespace gnc {
namespace {

namespace fs = std::filesystem;

using testing::TempDir;

ShardState MakeState(int64_t step, int64_t generation = 0, int64_t d = 1000) {
  ShardState s;
  s.job = JobIdentity{0xabc, generation};
  s.step = step;
  s.config_hash = 0x1234;
  s.layout_hash = 0x5678;
  s.model_elements = 2 * d;
  auto w = std::make_shared<Floats>(d);
  auto v = std::make_shared<Floats>(d);
  for (int64_t i = 0; i < d; ++i) {
    (*w)[i] = 0.001f * static_cast<float>(i) + static_cast<float>(step);
    (*v)[i] = -0.5f * static_cast<float>(i);
  }
  s.w = std::move(w);
  s.v = std::move(v);
  s.noise = NoiseEma{1.5, 2.5, 0.75};
  return s;
}

bool SameState(const ShardState& a, const ShardState& b) {
  return a.job == b.job && a.step == b.step && a.config_hash == b.config_hash &&
         a.layout_hash == b.layout_hash && a.model_elements == b.model_elements &&
         *a.w == *b.w && *a.v == *b.v && a.noise.g2 == b.noise.g2 &&
         a.noise.trace == b.noise.trace && a.noise.weight == b.noise.weight;
}

TEST(CheckpointFileTest, RoundTripIsBitExact) {
  TempDir dir;
  const std::string path = dir.path() + "/a.ckpt";
  const ShardState s = MakeState(42, 3);
  ASSERT_TRUE(CheckpointStore::WriteFile(path, s, 1, 2).ok());
  absl::StatusOr<ShardState> back = CheckpointStore::ReadFile(path, 1, 2, 0x1234);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_TRUE(SameState(*back, s));
}

TEST(CheckpointFileTest, DamageAndMismatchesAreRefusedNamingFileAndReason) {
  TempDir dir;
  const std::string path = dir.path() + "/a.ckpt";
  const ShardState s = MakeState(42);
  ASSERT_TRUE(CheckpointStore::WriteFile(path, s, 1, 2).ok());
  const auto size = fs::file_size(path);

  auto refusal = [&](const std::string& p, int shard, int shards, uint64_t config) {
    absl::StatusOr<ShardState> r = CheckpointStore::ReadFile(p, shard, shards, config);
    EXPECT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
    EXPECT_NE(r.status().message().find(p), std::string::npos) << r.status();
    return std::string(r.status().message());
  };
  EXPECT_NE(refusal(path, 0, 2, 0x1234).find("belongs to shard 1 of 2"), std::string::npos);
  EXPECT_NE(refusal(path, 1, 3, 0x1234).find("belongs to shard 1 of 2"), std::string::npos);
  EXPECT_NE(refusal(path, 1, 2, 0x9999).find("config hash"), std::string::npos);

  // Truncated by one byte, and in the middle of w.
  for (uintmax_t keep : {size - 1, size / 3, uintmax_t{50}}) {
    const std::string cut = dir.path() + "/cut.ckpt";
    fs::copy_file(path, cut, fs::copy_options::overwrite_existing);
    fs::resize_file(cut, keep);
    EXPECT_NE(refusal(cut, 1, 2, 0x1234).find("truncated"), std::string::npos) << keep;
  }
  // One bit flipped: in the header's job id, in w, in v, in the checksum itself.
  for (uintmax_t at : {uintmax_t{20}, uintmax_t{200}, size / 2 + 3, size - 2}) {
    const std::string flipped = dir.path() + "/flip.ckpt";
    fs::copy_file(path, flipped, fs::copy_options::overwrite_existing);
    std::fstream f(flipped, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(at));
    char c = 0;
    f.read(&c, 1);
    c ^= 0x10;
    f.seekp(static_cast<std::streamoff>(at));
    f.write(&c, 1);
    f.close();
    EXPECT_NE(refusal(flipped, 1, 2, 0x1234).find("checksum mismatch"), std::string::npos)
        << at;
  }
  // Not a checkpoint at all.
  const std::string junk = dir.path() + "/junk.ckpt";
  std::ofstream(junk) << std::string(200, 'x');
  EXPECT_NE(refusal(junk, 1, 2, 0x1234).find("bad magic"), std::string::npos);
}

CheckpointOptions Options(const std::string& dir, int keep = 2) {
  CheckpointOptions o;
  o.dir = dir;
  o.shard_index = 0;
  o.num_shards = 1;
  o.config_hash = 0x1234;
  o.keep = keep;
  return o;
}

std::vector<int64_t> Steps(const CheckpointStore& store) {
  std::vector<int64_t> steps;
  for (const CheckpointInfo& c : store.Candidates()) steps.push_back(c.step);
  return steps;
}

TEST(CheckpointStoreTest, KeepsTheNewestAndRefusesDamagedFilesAtOpen) {
  TempDir dir;
  {
    auto store = CheckpointStore::Open(Options(dir.path()));
    ASSERT_TRUE(store.ok()) << store.status();
    for (int64_t step : {10, 20, 30}) {
      (*store)->WriteAsync(std::make_shared<const ShardState>(MakeState(step)));
      ASSERT_TRUE((*store)->Flush(absl::Seconds(30)).ok());
    }
    EXPECT_EQ(Steps(**store), (std::vector<int64_t>{30, 20}));
    int files = 0;
    for (const auto& e : fs::directory_iterator(dir.path())) files += e.is_regular_file();
    EXPECT_EQ(files, 2);
  }
  // Damage the newest: a new store refuses it and offers the older one, which loads.
  const std::string newest =
      dir.path() + "/" + CheckpointStore::FileName(0, 1, JobIdentity{0xabc, 0}, 30);
  fs::resize_file(newest, fs::file_size(newest) - 4);
  // A temporary file left by a crash mid-write is removed.
  std::ofstream(dir.path() + "/.tmp-" + CheckpointStore::FileName(0, 1, {0xabc, 0}, 40)) << "x";
  auto store = CheckpointStore::Open(Options(dir.path()));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(Steps(**store), (std::vector<int64_t>{20}));
  absl::StatusOr<ShardState> loaded = (*store)->Load((*store)->Candidates()[0]);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_TRUE(SameState(*loaded, MakeState(20)));
  EXPECT_FALSE(fs::exists(dir.path() + "/.tmp-" +
                          CheckpointStore::FileName(0, 1, {0xabc, 0}, 40)));
}

TEST(CheckpointStoreTest, NewerGenerationsComeFirstAndTruncateDropsTheAbandonedTimeline) {
  TempDir dir;
  auto store = CheckpointStore::Open(Options(dir.path(), 5));
  ASSERT_TRUE(store.ok());
  for (int64_t step : {10, 20, 30}) {
    (*store)->WriteAsync(std::make_shared<const ShardState>(MakeState(step, 0)));
    ASSERT_TRUE((*store)->Flush(absl::Seconds(30)).ok());
  }
  // Rewound to step 20 at generation 1: step 30 goes, and a late write of the old
  // generation is dropped.
  (*store)->Truncate(20, 1);
  EXPECT_EQ(Steps(**store), (std::vector<int64_t>{20, 10}));
  (*store)->WriteAsync(std::make_shared<const ShardState>(MakeState(40, 0)));
  ASSERT_TRUE((*store)->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(Steps(**store), (std::vector<int64_t>{20, 10}));
  (*store)->WriteAsync(std::make_shared<const ShardState>(MakeState(25, 1)));
  ASSERT_TRUE((*store)->Flush(absl::Seconds(30)).ok());
  EXPECT_EQ(Steps(**store), (std::vector<int64_t>{25, 20, 10}));
}

TEST(CheckpointStoreTest, FolderThatCannotBeCreatedIsAnErrorNamingIt) {
  // Nobody, not even root, creates folders in /proc.
  auto store = CheckpointStore::Open(Options("/proc/self/gnc-checkpoints"));
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("/proc/self/gnc-checkpoints"), std::string::npos)
      << store.status();
}

TEST(CheckpointStoreTest, FolderThatIsAFileIsAnError) {
  TempDir dir;
  const std::string file = dir.path() + "/file";
  std::ofstream(file) << "x";
  auto store = CheckpointStore::Open(Options(file));
  EXPECT_FALSE(store.ok());
}

}  // namespace
}  // namespace gnc
