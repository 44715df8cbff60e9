// Host launchers of the merge kernels (merge_pass.cu, reduce_rows.cu,
// isotropic_noise.cu, scale_rows.cu). Declares no device code, so plain C++ includes
// it. Each launcher checks its arguments (cudaErrorInvalidValue), queues the kernel on
// `stream` and returns the launch error.
//
// Data layout shared by all of them: a "row" is one contributor's vector of the
// shard's d elements, padded to `stride` floats (a multiple of 4, rows 16-byte
// aligned); K rows lie back to back. The padding is zero and the merge pass keeps it
// zero, so it can run over whole float4s without bounds per element.
#ifndef GNC_SERVER_CUDA_MERGE_KERNELS_H_
#define GNC_SERVER_CUDA_MERGE_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace gnc::cuda {

inline constexpr int kMergeThreads = 256;
// kMergeBlocksPerSm: resident blocks per multiprocessor of the merge pass. Few on
// purpose: with more than 16 contributors the pass re-reads each tile's gradients, and
// a small grid keeps the tiles in flight within L1/L2 (16 contributors x 512 threads x
// 16 B = 128 KiB per multiprocessor). The benchmark takes other values to compare.
inline constexpr int kMergeBlocksPerSm = 2;

// PersistentBlocks: grid size for a grid-stride kernel over `items` items of
// kMergeThreads each: enough blocks for `blocks_per_sm` per multiprocessor, fewer when
// there is less work. A fixed grid fixes the reduction order, so results repeat.
int PersistentBlocks(int64_t items, int sm_count, int blocks_per_sm);

// MergePassArgs: the fused pass. Per element: gbar = sum_k weights[k] g_k; the
// optimizer (v <- mu v + gbar + wd w; w <- w - lr (nesterov ? gbar + wd w + mu v : v));
// with write_deltas, delta_k = delta_coef (g_k - gbar). Per block it writes partial
// sums in double: partials[r * num_blocks + block] for row r = k (||g_k||^2),
// num + k (||g_k - gbar||^2) and 2 num (||gbar||^2).
struct MergePassArgs {
  const float* grads = nullptr;    // num rows
  float* deltas = nullptr;         // num rows; written only when write_deltas
  float* w = nullptr;              // one row
  float* v = nullptr;              // one row
  const float* weights = nullptr;  // num, device memory
  double* partials = nullptr;      // (2 num + 1) * num_blocks
  int64_t stride = 0;
  int num = 0;
  int num_blocks = 0;
  float lr = 0, momentum = 0, weight_decay = 0, delta_coef = 0;
  bool nesterov = false;
  bool write_deltas = false;
  // False: w and v are read, never written (a noise pass: the state stays as it was).
  bool write_state = true;
};

// MergePassSharedBytes: dynamic shared memory of the pass for `num` contributors;
// the caller checks it against the device's per-block limit.
size_t MergePassSharedBytes(int num);
cudaError_t LaunchMergePass(const MergePassArgs& args, cudaStream_t stream);

// LaunchReduceRows: out[r] = sum_c in[r * cols + c] for r < rows, in a fixed order
// (one block per row), so the result does not depend on scheduling.
cudaError_t LaunchReduceRows(const double* in, int rows, int cols, double* out,
                             cudaStream_t stream);

// IsotropicNoiseArgs: delta_k[j] = sigma * StandardNormal(keys[k], global_offset + j)
// in float, rounded as the CPU does, for j < d (server/noise_rng.h: the same draws and
// the same bits as the CPU), and
// per block partials[k * num_blocks + block] = sum_j delta_k[j]^2 in double.
struct IsotropicNoiseArgs {
  float* deltas = nullptr;         // num rows
  const uint64_t* keys = nullptr;  // num, device memory (NoiseKey per contributor)
  double* partials = nullptr;      // num * num_blocks
  int64_t stride = 0;
  int64_t d = 0;
  int64_t global_offset = 0;
  float sigma = 0;
  int num = 0;
  int num_blocks = 0;
};
cudaError_t LaunchIsotropicNoise(const IsotropicNoiseArgs& args, cudaStream_t stream);

// LaunchScaleRows: rows[k][j] *= scales[k] for j < len, rows whose scale is 1 skipped.
cudaError_t LaunchScaleRows(float* rows, int64_t stride, int num, int64_t len, const float* scales,
                            int num_blocks, cudaStream_t stream);

// FormPointsArgs: the points x_k = w + delta_k (one float addition, as on the CPU),
// for j < d: in place in deltas' row k, or, where bf16[k] != 0, rounded to bfloat16
// (nearest even, common/bf16.h) in bf16_points' row k (rows of `stride` elements).
struct FormPointsArgs {
  float* deltas = nullptr;        // num rows, already scaled by any cap
  uint16_t* bf16_points = nullptr;  // num rows
  const float* w = nullptr;       // one row
  const uint8_t* bf16 = nullptr;  // num, device memory
  int64_t stride = 0;
  int64_t d = 0;
  int num = 0;
  int num_blocks = 0;
};
cudaError_t LaunchFormPoints(const FormPointsArgs& args, cudaStream_t stream);

}  // namespace gnc::cuda

#endif  // GNC_SERVER_CUDA_MERGE_KERNELS_H_
