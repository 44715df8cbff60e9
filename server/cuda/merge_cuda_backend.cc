// CudaMergeBackend: the merge of server/merge_cpu.cc on a CUDA device. Per step, on
// its own stream, it uploads the gradients and, unless the device still holds them
// from the previous step (MergeParams::state_version), w and v; runs the fused pass
// (mean, norms, optimizer, gnc deltas) and reduces its per-block partials in a fixed
// order; once sigma or the norms are known on the host, the isotropic noise and the
// cap; forms the points x_k = w + delta_k in each worker's encoding; and downloads w,
// v and the points. Host buffers the shard core pinned through Pinner() (receive
// slots, pooled w and v, point buffers) are copied by direct DMA; anything else goes
// through a ring of pinned staging chunks.
#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "server/cuda/cuda_memory.h"
#include "common/cuda/cuda_status.h"
#include "common/finite.h"
#include "common/status_macros.h"
#include "server/cuda/merge_kernels.h"
#include "server/cuda/pinned_stager.h"
#include "server/device.h"
#include "server/noise_rng.h"

namespace gnc {
namespace {

using cuda::DeviceArray;
using cuda::PinnedArray;

// Rows are padded to 64 floats: 256-byte aligned rows, whole float4s for the pass.
constexpr int64_t kRowAlign = 64;

template <typename T>
absl::Status Grow(size_t size, DeviceArray<T>* array) {
  if (array->size() >= size) return absl::OkStatus();
  *array = DeviceArray<T>();  // free first: lower peak memory
  absl::StatusOr<DeviceArray<T>> fresh = DeviceArray<T>::Allocate(size);
  if (!fresh.ok()) return fresh.status();
  *array = std::move(*fresh);
  return absl::OkStatus();
}

template <typename T>
absl::Status Grow(size_t size, PinnedArray<T>* array) {
  if (array->size() >= size) return absl::OkStatus();
  *array = PinnedArray<T>();
  absl::StatusOr<PinnedArray<T>> fresh = PinnedArray<T>::Allocate(size);
  if (!fresh.ok()) return fresh.status();
  *array = std::move(*fresh);
  return absl::OkStatus();
}

// CudaHostPinner: cudaHostRegister on `device`, with the ranges it holds. Outlives the
// backend while pinned buffers do (the CUDA runtime stays up until the process ends).
class CudaHostPinner final : public HostPinner {
 public:
  explicit CudaHostPinner(int device) : device_(device) {}
  ~CudaHostPinner() override {
    pinned_.ForEach([](const void* start) { cudaHostUnregister(const_cast<void*>(start)); });
  }

  void Pin(const void* data, size_t bytes) override {
    if (data == nullptr || bytes == 0) return;
    absl::MutexLock lock(&mu_);
    if (pinned_.Holds(data)) return;
    if (cudaSetDevice(device_) != cudaSuccess ||
        cudaHostRegister(const_cast<void*>(data), bytes, cudaHostRegisterDefault) != cudaSuccess) {
      // A hint only (page-locked memory may be limited): this range is staged instead.
      cudaGetLastError();  // clear the error
      return;
    }
    pinned_.Add(data, bytes);
  }

  void Unpin(const void* data) override {
    absl::MutexLock lock(&mu_);
    if (pinned_.Remove(data)) cudaHostUnregister(const_cast<void*>(data));
  }

  bool Contains(const void* data, size_t bytes) {
    absl::MutexLock lock(&mu_);
    return pinned_.Contains(data, bytes);
  }

 private:
  const int device_;
  absl::Mutex mu_;
  PinnedRanges pinned_ ABSL_GUARDED_BY(mu_);
};

class CudaMergeBackend final : public MergeBackend {
 public:
  static absl::StatusOr<std::unique_ptr<MergeBackend>> Create(int device);

  std::string Name() const override { return name_; }

  absl::Status MergeInto(const MergeParams& p, const MergeInputs& in, std::span<const float> w,
                         std::span<const float> v, std::span<float> w_out,
                         std::span<float> v_out, std::span<const PointOut> points,
                         MergeStats* stats) override;

  std::shared_ptr<HostPinner> Pinner() override { return pinner_; }

 private:
  CudaMergeBackend() = default;

  // Up, Down: one copy, direct when the host side is pinned, else queued for the
  // stager (which runs `staged` in order).
  absl::Status Up(const void* host, void* device, size_t bytes,
                  std::vector<cuda::HostToDevice>* staged);
  absl::Status Down(const void* device, void* host, size_t bytes,
                    std::vector<cuda::DeviceToHost>* staged);

  // Layout: device buffers for `num` rows of `d` elements, with zero padding. A new d
  // clears everything (old values in what is now padding would enter the norms).
  absl::Status Layout(int num, size_t d);
  // Sums: reduces `rows` x `cols` partials into host memory (waits for the stream).
  absl::Status Sums(int rows, int cols);

  int device_ = 0;
  int sm_count_ = 1;
  size_t max_shared_bytes_ = 48 * 1024;
  std::string name_;
  cuda::Stream stream_;
  std::unique_ptr<cuda::PinnedStager> stager_;

  size_t d_ = 0;         // elements per row of the current layout
  int64_t stride_ = 0;   // floats per row
  int rows_ = 0;         // rows allocated in grads_ and deltas_
  int pass_blocks_ = 1;  // grid of the merge pass for this layout
  int row_blocks_ = 1;   // grid (per row) of the noise and scale kernels
  DeviceArray<float> grads_, deltas_, w_, v_, weights_, scales_;
  DeviceArray<uint16_t> points16_;  // rows of bfloat16 points
  DeviceArray<uint8_t> bf16_;       // per row: 1 = the point goes out in bfloat16
  DeviceArray<uint64_t> keys_;
  DeviceArray<double> partials_, sums_;
  PinnedArray<float> weights_host_, scales_host_;
  PinnedArray<uint64_t> keys_host_;
  PinnedArray<uint8_t> bf16_host_;
  PinnedArray<double> sums_host_;
  // The out_version of the last call whose updated w and v are still in w_ and v_
  // (0: none; a noise pass, a failure or a new layout leaves none).
  uint64_t resident_version_ = 0;

  std::shared_ptr<CudaHostPinner> pinner_;
};

absl::Status CudaMergeBackend::Up(const void* host, void* device, size_t bytes,
                                  std::vector<cuda::HostToDevice>* staged) {
  if (!pinner_->Contains(host, bytes)) {
    staged->push_back({host, device, bytes});
    return absl::OkStatus();
  }
  GNC_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, stream_.get()));
  return absl::OkStatus();
}

absl::Status CudaMergeBackend::Down(const void* device, void* host, size_t bytes,
                                    std::vector<cuda::DeviceToHost>* staged) {
  if (!pinner_->Contains(host, bytes)) {
    staged->push_back({device, host, bytes});
    return absl::OkStatus();
  }
  GNC_CUDA_RETURN_IF_ERROR(
      cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, stream_.get()));
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<MergeBackend>> CudaMergeBackend::Create(int device) {
  std::unique_ptr<CudaMergeBackend> b(new CudaMergeBackend());
  b->device_ = device;
  b->pinner_ = std::make_shared<CudaHostPinner>(device);
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device));
  cudaDeviceProp prop;
  GNC_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device));
  b->sm_count_ = prop.multiProcessorCount;
  b->max_shared_bytes_ = prop.sharedMemPerBlockOptin;
  b->name_ = absl::StrCat("cuda:", device, " (", prop.name, ")");
  absl::StatusOr<cuda::Stream> stream = cuda::Stream::Create();
  if (!stream.ok()) return stream.status();
  b->stream_ = std::move(*stream);
  absl::StatusOr<std::unique_ptr<cuda::PinnedStager>> stager =
      cuda::PinnedStager::Create(b->stream_.get());
  if (!stager.ok()) return stager.status();
  b->stager_ = std::move(*stager);
  return std::unique_ptr<MergeBackend>(std::move(b));
}

absl::Status CudaMergeBackend::Layout(int num, size_t d) {
  const int64_t stride = (static_cast<int64_t>(d) + kRowAlign - 1) / kRowAlign * kRowAlign;
  if (d == d_ && num <= rows_) return absl::OkStatus();
  const int rows = d == d_ ? std::max(num, rows_) : num;
  const size_t row_floats = static_cast<size_t>(rows) * stride;
  GNC_RETURN_IF_ERROR(Grow(row_floats, &grads_));
  GNC_RETURN_IF_ERROR(Grow(row_floats, &deltas_));
  GNC_RETURN_IF_ERROR(Grow(row_floats, &points16_));
  GNC_RETURN_IF_ERROR(Grow(rows, &bf16_));
  GNC_RETURN_IF_ERROR(Grow(rows, &bf16_host_));
  GNC_RETURN_IF_ERROR(Grow(stride, &w_));
  GNC_RETURN_IF_ERROR(Grow(stride, &v_));
  GNC_RETURN_IF_ERROR(Grow(rows, &weights_));
  GNC_RETURN_IF_ERROR(Grow(rows, &scales_));
  GNC_RETURN_IF_ERROR(Grow(rows, &keys_));
  GNC_RETURN_IF_ERROR(Grow(rows, &weights_host_));
  GNC_RETURN_IF_ERROR(Grow(rows, &scales_host_));
  GNC_RETURN_IF_ERROR(Grow(rows, &keys_host_));
  pass_blocks_ = cuda::PersistentBlocks(stride / 4, sm_count_, cuda::kMergeBlocksPerSm);
  row_blocks_ = cuda::PersistentBlocks(static_cast<int64_t>(d), sm_count_, 2);
  const size_t partial_count = std::max(static_cast<size_t>(2 * rows + 1) * pass_blocks_,
                                        static_cast<size_t>(rows) * row_blocks_);
  GNC_RETURN_IF_ERROR(Grow(partial_count, &partials_));
  GNC_RETURN_IF_ERROR(Grow(2 * rows + 1, &sums_));
  GNC_RETURN_IF_ERROR(Grow(2 * rows + 1, &sums_host_));
  cudaStream_t s = stream_.get();
  resident_version_ = 0;  // w_ and v_ are cleared
  GNC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(grads_.data(), 0, grads_.bytes(), s));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(deltas_.data(), 0, deltas_.bytes(), s));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(w_.data(), 0, w_.bytes(), s));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(v_.data(), 0, v_.bytes(), s));
  d_ = d;
  stride_ = stride;
  rows_ = rows;
  return absl::OkStatus();
}

absl::Status CudaMergeBackend::Sums(int rows, int cols) {
  cudaStream_t s = stream_.get();
  GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchReduceRows(partials_.data(), rows, cols, sums_.data(), s));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(sums_host_.data(), sums_.data(), rows * sizeof(double),
                                           cudaMemcpyDeviceToHost, s));
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));
  return absl::OkStatus();
}

absl::Status CudaMergeBackend::MergeInto(const MergeParams& p, const MergeInputs& in,
                                         std::span<const float> w, std::span<const float> v,
                                         std::span<float> w_out, std::span<float> v_out,
                                         std::span<const PointOut> points, MergeStats* stats) {
  const size_t num = in.grads.size();
  const size_t d = w.size();
  // Whatever happens below, w_ and v_ hold this call's state only if it succeeds.
  const uint64_t held_version = resident_version_;
  resident_version_ = 0;
  GNC_RETURN_IF_ERROR(ValidateMergeInputs(p, in, w, v, points, w_out.size(), v_out.size()));
  double total = 0;
  for (double n : in.num_samples) total += n;
  if (!(total > 0)) return absl::InvalidArgumentError("merge with no samples");
  if (num > 65535 || cuda::MergePassSharedBytes(static_cast<int>(num)) > max_shared_bytes_) {
    return absl::InvalidArgumentError(
        absl::StrCat(num, " contributors exceed what the CUDA merge handles on ", name_));
  }
  *stats = MergeStats();
  stats->noise_sqnorm.assign(num, 0.0);
  if (d == 0) return absl::OkStatus();

  const int k_num = static_cast<int>(num);
  cudaStream_t s = stream_.get();
  GNC_CUDA_RETURN_IF_ERROR(cudaSetDevice(device_));
  resident_version_ = held_version;  // Layout clears it when it clears w_ and v_
  GNC_RETURN_IF_ERROR(Layout(k_num, d));
  const bool resident = p.state_version != 0 && p.state_version == resident_version_;
  resident_version_ = 0;

  for (size_t k = 0; k < num; ++k) {
    weights_host_[k] = static_cast<float>(in.num_samples[k] / total);
    keys_host_[k] = NoiseKey(p.seed, p.noise_step, in.ranks[k]);
  }
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(weights_.data(), weights_host_.data(),
                                           num * sizeof(float), cudaMemcpyHostToDevice, s));
  GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(keys_.data(), keys_host_.data(), num * sizeof(uint64_t),
                                           cudaMemcpyHostToDevice, s));
  // Gradients in pinned receive slots go straight to the device (the slots stay
  // unchanged until this call returns, after the stream has been synchronised); the
  // rest through the stager. w and v only when the device does not hold them.
  std::vector<cuda::HostToDevice> up;
  for (size_t k = 0; k < num; ++k) {
    GNC_RETURN_IF_ERROR(
        Up(in.grads[k].data(), grads_.data() + k * stride_, d * sizeof(float), &up));
  }
  if (!resident) {
    GNC_RETURN_IF_ERROR(Up(w.data(), w_.data(), d * sizeof(float), &up));
    GNC_RETURN_IF_ERROR(Up(v.data(), v_.data(), d * sizeof(float), &up));
  }
  GNC_RETURN_IF_ERROR(stager_->Upload(up));

  cuda::MergePassArgs a;
  a.grads = grads_.data();
  a.deltas = deltas_.data();
  a.w = w_.data();
  a.v = v_.data();
  a.weights = weights_.data();
  a.partials = partials_.data();
  a.stride = stride_;
  a.num = k_num;
  a.num_blocks = pass_blocks_;
  a.lr = static_cast<float>(p.lr);
  a.momentum = static_cast<float>(p.momentum);
  a.weight_decay = static_cast<float>(p.weight_decay);
  a.delta_coef = static_cast<float>(-p.gnc_scale * p.lr);
  a.nesterov = p.nesterov;
  a.write_deltas = p.mode == SmoothingMode::kGnc;
  // A noise pass leaves w_ and v_ as they are: the points are formed from them, and
  // the device still holds the state the call was given.
  a.write_state = p.apply_update;
  GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchMergePass(a, s));
  GNC_RETURN_IF_ERROR(Sums(2 * k_num + 1, pass_blocks_));

  double grad_sq_sum = 0, noise_sq_sum = 0;
  for (size_t k = 0; k < num; ++k) {
    grad_sq_sum += sums_host_[k];
    noise_sq_sum += sums_host_[num + k];
    stats->noise_sqnorm[k] = sums_host_[num + k];
  }
  stats->mean_grad_sqnorm = sums_host_[2 * num];
  stats->grad_sqnorm_mean = grad_sq_sum / num;
  stats->noise_sqnorm_mean = noise_sq_sum / num;

  // Squared norm of each delta before any cap, as the CPU reference forms it.
  std::vector<double> delta_sq(num, 0.0);
  const double coef2 = p.gnc_scale * p.gnc_scale * p.lr * p.lr;
  if (p.mode == SmoothingMode::kGnc) {
    for (size_t k = 0; k < num; ++k) delta_sq[k] = coef2 * stats->noise_sqnorm[k];
  } else if (p.mode == SmoothingMode::kIsotropic) {
    cuda::IsotropicNoiseArgs n;
    n.deltas = deltas_.data();
    n.keys = keys_.data();
    n.partials = partials_.data();
    n.stride = stride_;
    n.d = static_cast<int64_t>(d);
    n.global_offset = p.global_offset;
    n.sigma = static_cast<float>(std::sqrt(coef2 * stats->noise_sqnorm_mean / d));
    n.num = k_num;
    n.num_blocks = row_blocks_;
    GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchIsotropicNoise(n, s));
    GNC_RETURN_IF_ERROR(Sums(k_num, row_blocks_));
    for (size_t k = 0; k < num; ++k) delta_sq[k] = sums_host_[k];
  }

  double pert = 0;
  bool any_capped = false;
  for (size_t k = 0; k < num; ++k) {
    scales_host_[k] = 1.0f;
    const double norm = std::sqrt(delta_sq[k]);
    if (p.mode != SmoothingMode::kNone && p.max_perturbation_norm > 0 &&
        norm > p.max_perturbation_norm) {
      scales_host_[k] = static_cast<float>(p.max_perturbation_norm / norm);
      delta_sq[k] = p.max_perturbation_norm * p.max_perturbation_norm;
      any_capped = true;
    }
    pert += delta_sq[k];
  }
  stats->perturbation_sqnorm = p.mode == SmoothingMode::kNone ? 0.0 : pert / num;
  if (any_capped) {
    GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(scales_.data(), scales_host_.data(),
                                             num * sizeof(float), cudaMemcpyHostToDevice, s));
    GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchScaleRows(
        deltas_.data(), stride_, k_num, static_cast<int64_t>(d), scales_.data(), row_blocks_, s));
  }

  // The points, formed from w_ (the updated w, or w itself in a noise pass), each in
  // its encoding; then every download, straight into pinned buffers where the shard
  // core pinned them (its pooled w and v, its point buffers).
  const bool write_points = p.mode != SmoothingMode::kNone && !points.empty();
  if (write_points) {
    for (size_t k = 0; k < num; ++k) bf16_host_[k] = points[k].f32.empty() ? 1 : 0;
    GNC_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(bf16_.data(), bf16_host_.data(), num,
                                             cudaMemcpyHostToDevice, s));
    cuda::FormPointsArgs f;
    f.deltas = deltas_.data();
    f.bf16_points = points16_.data();
    f.w = w_.data();
    f.bf16 = bf16_.data();
    f.stride = stride_;
    f.d = static_cast<int64_t>(d);
    f.num = k_num;
    f.num_blocks = row_blocks_;
    GNC_CUDA_RETURN_IF_ERROR(cuda::LaunchFormPoints(f, s));
  }
  std::vector<cuda::DeviceToHost> down;
  if (p.apply_update) {
    GNC_RETURN_IF_ERROR(Down(w_.data(), w_out.data(), d * sizeof(float), &down));
    GNC_RETURN_IF_ERROR(Down(v_.data(), v_out.data(), d * sizeof(float), &down));
  }
  if (write_points) {
    for (size_t k = 0; k < num; ++k) {
      if (!points[k].f32.empty()) {
        GNC_RETURN_IF_ERROR(Down(deltas_.data() + k * stride_, points[k].f32.data(),
                                 d * sizeof(float), &down));
      } else {
        GNC_RETURN_IF_ERROR(Down(points16_.data() + k * stride_, points[k].bf16.data(),
                                 d * sizeof(uint16_t), &down));
      }
    }
  }
  GNC_RETURN_IF_ERROR(stager_->Download(down));
  GNC_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(s));  // the direct copies
  if (!p.apply_update) {
    // A noise pass: w_out and v_out are w and v.
    if (w_out.data() != w.data()) std::copy(w.begin(), w.end(), w_out.begin());
    if (v_out.data() != v.data()) std::copy(v.begin(), v.end(), v_out.begin());
  }
  stats->finite = FindNonFinite(w_out) < 0 && FindNonFinite(v_out) < 0;
  // w_ and v_ now hold the updated state, or, after a noise pass, the state the call
  // was given (whose version the caller named, 0 if none).
  resident_version_ = p.apply_update ? p.out_version : p.state_version;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<MergeBackend>> NewCudaMergeBackend() {
  if (absl::Status s = cuda::RequireCudaDevice(); !s.ok()) return s;
  absl::StatusOr<std::unique_ptr<MergeBackend>> backend = CudaMergeBackend::Create(0);
  if (!backend.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CUDA device 0 is unusable: ", backend.status().message()));
  }
  return backend;
}

}  // namespace gnc
