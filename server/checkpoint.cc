#include "server/checkpoint.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/allocation.h"
#include "common/log.h"

namespace gnc {
namespace {

constexpr char kMagic[8] = {'g', 'n', 'c', 'c', 'k', 'p', 't', '\0'};
constexpr uint32_t kFormatVersion = 1;
constexpr const char* kSuffix = ".ckpt";
constexpr const char* kTempPrefix = ".tmp-";

// Header: the fixed-size part of a checkpoint file, little-endian, no padding.
#pragma pack(push, 1)
struct Header {
  char magic[8];
  uint32_t format_version;
  uint32_t header_bytes;
  uint64_t job_id;
  int64_t generation;
  int64_t step;
  uint64_t config_hash;
  uint64_t layout_hash;
  int32_t shard_index;
  int32_t num_shards;
  int64_t model_elements;
  int64_t shard_elements;
  double ema_g2;
  double ema_trace;
  double ema_weight;
};
#pragma pack(pop)
static_assert(sizeof(Header) == 104);

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", std::strerror(errno)));
}

uint32_t Crc(uint32_t crc, const void* data, size_t size) {
  const auto* p = static_cast<const Bytef*>(data);
  while (size > 0) {
    const uInt n = static_cast<uInt>(std::min<size_t>(size, 1u << 30));
    crc = static_cast<uint32_t>(crc32(crc, p, n));
    p += n;
    size -= n;
  }
  return crc;
}

absl::Status WriteAll(int fd, const void* data, size_t size, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    const ssize_t n = ::write(fd, p, std::min<size_t>(size, 1 << 26));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", path);
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

// ReadExactly: false at end of file before `size` bytes.
absl::StatusOr<bool> ReadExactly(int fd, void* data, size_t size, const std::string& path) {
  char* p = static_cast<char*>(data);
  while (size > 0) {
    const ssize_t n = ::read(fd, p, std::min<size_t>(size, 1 << 26));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read", path);
    }
    if (n == 0) return false;
    p += n;
    size -= static_cast<size_t>(n);
  }
  return true;
}

absl::Status SyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return Errno("cannot open folder", dir);
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) return Errno("cannot fsync folder", dir);
  return absl::OkStatus();
}

absl::Status Refused(const std::string& path, absl::string_view why) {
  return absl::FailedPreconditionError(absl::StrCat("checkpoint ", path, " refused: ", why));
}

bool Newer(const CheckpointInfo& a, const CheckpointInfo& b) {
  if (a.job.generation != b.job.generation) return a.job.generation > b.job.generation;
  return a.step > b.step;
}

}  // namespace

std::string CheckpointStore::FileName(int shard_index, int num_shards, const JobIdentity& job,
                                      int64_t step) {
  return absl::StrCat("shard-", shard_index, "-of-", num_shards, "-gen-", job.generation,
                      "-step-", step, kSuffix);
}

absl::Status CheckpointStore::WriteFile(const std::string& path, const ShardState& state,
                                        int shard_index, int num_shards) {
  if (state.w == nullptr || state.v == nullptr || state.w->size() != state.v->size()) {
    return absl::InvalidArgumentError("checkpoint of a state whose w and v differ in size");
  }
  Header h{};
  std::memcpy(h.magic, kMagic, sizeof(kMagic));
  h.format_version = kFormatVersion;
  h.header_bytes = sizeof(Header);
  h.job_id = state.job.job_id;
  h.generation = state.job.generation;
  h.step = state.step;
  h.config_hash = state.config_hash;
  h.layout_hash = state.layout_hash;
  h.shard_index = shard_index;
  h.num_shards = num_shards;
  h.model_elements = state.model_elements;
  h.shard_elements = static_cast<int64_t>(state.w->size());
  h.ema_g2 = state.noise.g2;
  h.ema_trace = state.noise.trace;
  h.ema_weight = state.noise.weight;
  const size_t bytes = state.w->size() * sizeof(float);
  uint32_t crc = Crc(0, &h, sizeof(h));
  crc = Crc(crc, state.w->data(), bytes);
  crc = Crc(crc, state.v->data(), bytes);

  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Errno("cannot create", path);
  absl::Status s = WriteAll(fd, &h, sizeof(h), path);
  if (s.ok()) s = WriteAll(fd, state.w->data(), bytes, path);
  if (s.ok()) s = WriteAll(fd, state.v->data(), bytes, path);
  if (s.ok()) s = WriteAll(fd, &crc, sizeof(crc), path);
  if (s.ok() && ::fsync(fd) != 0) s = Errno("cannot fsync", path);
  if (::close(fd) != 0 && s.ok()) s = Errno("cannot close", path);
  if (!s.ok()) ::unlink(path.c_str());
  return s;
}

absl::StatusOr<ShardState> CheckpointStore::ReadFile(const std::string& path, int shard_index,
                                                     int num_shards,
                                                     std::optional<uint64_t> config_hash) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Errno("cannot open", path);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st;
  if (::fstat(fd, &st) != 0) return Errno("cannot stat", path);
  const int64_t size = st.st_size;
  Header h;
  absl::StatusOr<bool> got = ReadExactly(fd, &h, sizeof(h), path);
  if (!got.ok()) return got.status();
  if (!*got) return Refused(path, absl::StrCat("truncated: ", size, " bytes, no whole header"));
  if (std::memcmp(h.magic, kMagic, sizeof(kMagic)) != 0) {
    return Refused(path, "not a gnc checkpoint (bad magic)");
  }
  if (h.format_version != kFormatVersion || h.header_bytes != sizeof(Header)) {
    return Refused(path, absl::StrCat("format version ", h.format_version,
                                      " is not the supported ", kFormatVersion));
  }
  if (h.shard_elements < 0 || h.shard_elements > (int64_t{1} << 40)) {
    return Refused(path, absl::StrCat("implausible shard size ", h.shard_elements));
  }
  const int64_t expected = static_cast<int64_t>(sizeof(Header)) +
                           2 * h.shard_elements * static_cast<int64_t>(sizeof(float)) +
                           static_cast<int64_t>(sizeof(uint32_t));
  if (size != expected) {
    return Refused(path, absl::StrCat(size < expected ? "truncated: " : "too long: ", size,
                                      " bytes, the header promises ", expected));
  }
  ShardState state;
  std::shared_ptr<Floats> w, v;
  if (absl::Status s = TryAllocate("a checkpoint's w and v", [&] {
        w = std::make_shared<Floats>(static_cast<size_t>(h.shard_elements));
        v = std::make_shared<Floats>(static_cast<size_t>(h.shard_elements));
      });
      !s.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(path, ": ", s.message()));
  }
  const size_t bytes = w->size() * sizeof(float);
  uint32_t stored = 0;
  for (auto [ptr, n] : {std::pair<void*, size_t>{w->data(), bytes},
                        {v->data(), bytes},
                        {&stored, sizeof(stored)}}) {
    got = ReadExactly(fd, ptr, n, path);
    if (!got.ok()) return got.status();
    if (!*got) return Refused(path, "truncated while reading");
  }
  uint32_t crc = Crc(0, &h, sizeof(h));
  crc = Crc(crc, w->data(), bytes);
  crc = Crc(crc, v->data(), bytes);
  if (crc != stored) {
    return Refused(path, absl::StrCat("checksum mismatch (stored ", absl::Hex(stored),
                                      ", computed ", absl::Hex(crc), ")"));
  }
  if (h.shard_index != shard_index || h.num_shards != num_shards) {
    return Refused(path, absl::StrCat("belongs to shard ", h.shard_index, " of ", h.num_shards,
                                      ", this is shard ", shard_index, " of ", num_shards));
  }
  if (config_hash.has_value() && h.config_hash != *config_hash) {
    return Refused(path, absl::StrCat("written under config hash ", absl::Hex(h.config_hash),
                                      ", this shard's is ", absl::Hex(*config_hash),
                                      " (--resume_with_new_config accepts it)"));
  }
  if (h.job_id == 0 || h.step < 0 || h.generation < 0) {
    return Refused(path, "header names no job");
  }
  state.job = JobIdentity{h.job_id, h.generation};
  state.step = h.step;
  state.config_hash = h.config_hash;
  state.layout_hash = h.layout_hash;
  state.model_elements = h.model_elements;
  state.noise = NoiseEma{h.ema_g2, h.ema_trace, h.ema_weight};
  state.w = std::move(w);
  state.v = std::move(v);
  return state;
}

std::optional<uint64_t> CheckpointStore::ConfigCheck() const {
  if (options_.accept_other_config) return std::nullopt;
  return options_.config_hash;
}

CheckpointStore::CheckpointStore(CheckpointOptions options, CheckpointObserver* observer)
    : options_(std::move(options)), observer_(observer) {}

absl::StatusOr<std::unique_ptr<CheckpointStore>> CheckpointStore::Open(
    const CheckpointOptions& options, CheckpointObserver* observer) {
  if (options.dir.empty()) return absl::InvalidArgumentError("checkpoint folder is empty");
  if (options.keep < 1) return absl::InvalidArgumentError("checkpoints to keep must be >= 1");
  if (::mkdir(options.dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return Errno("cannot create checkpoint folder", options.dir);
  }
  struct stat st;
  if (::stat(options.dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("checkpoint folder ", options.dir, " is not a folder"));
  }
  if (::access(options.dir.c_str(), W_OK) != 0) {
    return Errno("cannot write to checkpoint folder", options.dir);
  }
  std::unique_ptr<CheckpointStore> store(new CheckpointStore(options, observer));
  store->Scan();
  store->writer_ = std::thread([s = store.get()] { s->WriterLoop(); });
  return store;
}

CheckpointStore::~CheckpointStore() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    pending_.reset();
  }
  if (writer_.joinable()) writer_.join();
}

void CheckpointStore::Scan() {
  const std::string prefix = absl::StrCat("shard-", options_.shard_index, "-of-");
  std::vector<std::string> names;
  if (DIR* d = ::opendir(options_.dir.c_str())) {
    while (dirent* e = ::readdir(d)) names.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::vector<CheckpointInfo> found;
  for (const std::string& name : names) {
    const std::string path = absl::StrCat(options_.dir, "/", name);
    if (absl::StartsWith(name, kTempPrefix)) {
      LogInfo("checkpoints: removing unfinished ", path);
      ::unlink(path.c_str());
      continue;
    }
    if (!absl::StartsWith(name, prefix) || !absl::EndsWith(name, kSuffix)) continue;
    absl::StatusOr<ShardState> state =
        ReadFile(path, options_.shard_index, options_.num_shards, ConfigCheck());
    if (!state.ok()) {
      LogWarning(state.status().message());
      continue;
    }
    found.push_back(CheckpointInfo{path, state->job, state->step, state->layout_hash,
                                   state->model_elements,
                                   static_cast<int64_t>(state->size())});
  }
  std::sort(found.begin(), found.end(), Newer);
  absl::MutexLock lock(&mu_);
  files_ = std::move(found);
  LogInfo("checkpoints: ", files_.size(), " verified file(s) of shard ", options_.shard_index,
          " in ", options_.dir);
}

std::vector<CheckpointInfo> CheckpointStore::Candidates() const {
  absl::MutexLock lock(&mu_);
  return files_;
}

absl::StatusOr<ShardState> CheckpointStore::Load(const CheckpointInfo& info) const {
  absl::StatusOr<ShardState> state =
      ReadFile(info.path, options_.shard_index, options_.num_shards, ConfigCheck());
  if (!state.ok()) {
    LogWarning(state.status().message());
    return absl::FailedPreconditionError(state.status().message());
  }
  return state;
}

void CheckpointStore::WriteAsync(std::shared_ptr<const ShardState> state) {
  absl::MutexLock lock(&mu_);
  if (stop_ || state == nullptr || state->job.generation < min_generation_) return;
  pending_ = std::move(state);
}

absl::Status CheckpointStore::Flush(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !writing_ && pending_ == nullptr; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&idle), timeout)) {
    return absl::DeadlineExceededError(absl::StrCat(
        "checkpoint of step ", writing_step_, " still being written after ",
        absl::FormatDuration(timeout)));
  }
  return last_status_;
}

void CheckpointStore::Truncate(int64_t step, int64_t generation) {
  absl::MutexLock lock(&mu_);
  min_generation_ = std::max(min_generation_, generation);
  if (pending_ != nullptr && pending_->job.generation < min_generation_) pending_.reset();
  std::vector<CheckpointInfo> kept;
  for (CheckpointInfo& f : files_) {
    if (f.step > step) {
      LogInfo("checkpoints: removing ", f.path, " (past step ", step, ", rewound)");
      ::unlink(f.path.c_str());
    } else {
      kept.push_back(std::move(f));
    }
  }
  files_ = std::move(kept);
}

void CheckpointStore::WriterLoop() {
  while (true) {
    std::shared_ptr<const ShardState> state;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || pending_ != nullptr; };
      mu_.Await(absl::Condition(&ready));
      if (stop_) return;
      state = std::move(pending_);
      pending_.reset();
      writing_ = true;
      writing_step_ = state->step;
    }
    const absl::Time start = absl::Now();
    absl::Status s = WriteOne(*state);
    const absl::Duration took = absl::Now() - start;
    if (observer_ != nullptr) {
      if (s.ok()) {
        observer_->OnCheckpointWritten(
            state->step, static_cast<int64_t>(2 * state->size() * sizeof(float)), took);
      } else {
        observer_->OnCheckpointFailed(s);
      }
    }
    if (!s.ok()) LogError("checkpoint of step ", state->step, " failed: ", s.message());
    absl::MutexLock lock(&mu_);
    writing_ = false;
    last_status_ = s;
  }
}

absl::Status CheckpointStore::WriteOne(const ShardState& state) {
  const std::string name =
      FileName(options_.shard_index, options_.num_shards, state.job, state.step);
  const std::string path = absl::StrCat(options_.dir, "/", name);
  const std::string temp = absl::StrCat(options_.dir, "/", kTempPrefix, name);
  absl::Status s = WriteFile(temp, state, options_.shard_index, options_.num_shards);
  if (!s.ok()) return s;
  {
    // The generation check, the rename and the listing change together, so that a
    // concurrent Truncate either drops this write or sees (and deletes) its file.
    absl::MutexLock lock(&mu_);
    if (state.job.generation < min_generation_) {
      ::unlink(temp.c_str());  // the job was rewound past this state meanwhile
      return absl::OkStatus();
    }
    if (::rename(temp.c_str(), path.c_str()) != 0) {
      absl::Status e = Errno("cannot rename to", path);
      ::unlink(temp.c_str());
      return e;
    }
    files_.erase(std::remove_if(files_.begin(), files_.end(),
                                [&](const CheckpointInfo& f) { return f.path == path; }),
                 files_.end());
    files_.push_back(CheckpointInfo{path, state.job, state.step, state.layout_hash,
                                    state.model_elements,
                                    static_cast<int64_t>(state.size())});
    std::sort(files_.begin(), files_.end(), Newer);
    Prune();
  }
  return SyncDir(options_.dir);
}

void CheckpointStore::Prune() {
  while (files_.size() > static_cast<size_t>(options_.keep)) {
    ::unlink(files_.back().path.c_str());
    files_.pop_back();
  }
  // Unlinks are made durable with the next write's folder fsync.
}

}  // namespace gnc
