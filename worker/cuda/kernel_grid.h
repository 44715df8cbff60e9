// Launch geometry shared by the worker's element-wise kernels: 256 threads per block,
// a grid-stride loop over at most 4096 blocks.
#ifndef GNC_WORKER_CUDA_KERNEL_GRID_H_
#define GNC_WORKER_CUDA_KERNEL_GRID_H_

#include <cstdint>

namespace gnc::cuda {

constexpr int kThreadsPerBlock = 256;

inline int GridBlocks(int64_t n) {
  const int64_t blocks = (n + kThreadsPerBlock - 1) / kThreadsPerBlock;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace gnc::cuda

#endif  // GNC_WORKER_CUDA_KERNEL_GRID_H_
