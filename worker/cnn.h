// The built-in CNN: conv blocks (5x5 convolution without padding, stride 1, + bias,
// ReLU, 2x2 max-pool of stride 2, floor), then fully connected ReLU layers and a
// softmax cross-entropy over the classes. Activations are NHWC (channels last); an
// input row is one image of height x width pixels (one channel).
//
// Parameters, in flat order: per block b, "conv<b>.weight" [C_b, 5, 5, C_{b-1}]
// (out channel, kernel row, kernel column, in channel; C_{-1} = 1) and "conv<b>.bias"
// [C_b]; then the head, an MLP (worker/mlp.h) of widths {flat, hidden..., classes}
// named "fc<l>.weight" [out, in], "fc<l>.bias" [out], whose input is the last pooled
// map flattened in (row, column, channel) order.
#ifndef GNC_WORKER_CNN_H_
#define GNC_WORKER_CNN_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/layout.h"
#include "worker/mlp.h"
#include "worker/model.h"

namespace gnc {

struct CnnShape {
  static constexpr int64_t kKernel = 5;
  int64_t height = 28;
  int64_t width = 28;
  std::vector<int64_t> channels = {8, 16};  // one conv block per entry
  std::vector<int64_t> hidden = {128};      // fully connected hidden widths
  int64_t classes = 10;

  // ConvGeometry: block b's input map (h, w, c); its convolution outputs
  // (h - 4) x (w - 4) x channels[b], pooled to floor half of that.
  struct Block {
    int64_t in_h, in_w, in_c, out_c;
    int64_t conv_h() const { return in_h - kKernel + 1; }
    int64_t conv_w() const { return in_w - kKernel + 1; }
    int64_t pool_h() const { return conv_h() / 2; }
    int64_t pool_w() const { return conv_w() / 2; }
    int64_t weights() const { return out_c * kKernel * kKernel * in_c; }
  };
  std::vector<Block> ConvBlocks() const {
    std::vector<Block> blocks;
    int64_t h = height, w = width, c = 1;
    for (int64_t out : channels) {
      blocks.push_back({h, w, c, out});
      h = blocks.back().pool_h();
      w = blocks.back().pool_w();
      c = out;
    }
    return blocks;
  }
  // Head: the fully connected part as an MLP shape.
  MlpShape Head() const {
    int64_t flat = height * width;
    if (!channels.empty()) {
      const Block last = ConvBlocks().back();
      flat = last.pool_h() * last.pool_w() * last.out_c;
    }
    MlpShape head{{flat}};
    head.widths.insert(head.widths.end(), hidden.begin(), hidden.end());
    head.widths.push_back(classes);
    return head;
  }
  int64_t NumConvParameters() const {
    int64_t n = 0;
    for (const Block& b : ConvBlocks()) n += b.weights() + b.out_c;
    return n;
  }
  int64_t NumParameters() const { return NumConvParameters() + Head().NumParameters(); }
  std::vector<WeightBlock> Blocks() const {
    std::vector<WeightBlock> blocks;
    for (const Block& b : ConvBlocks()) {
      blocks.push_back({b.weights(), kKernel * kKernel * b.in_c, b.out_c});
    }
    for (const WeightBlock& b : Head().Blocks()) blocks.push_back(b);
    return blocks;
  }
};

// CheckCnnShape: at least one block; every convolution output at least 2 x 2 (so the
// pool is not empty); channels, hidden widths and classes in [1, max_width].
// INVALID_ARGUMENT naming the problem.
absl::Status CheckCnnShape(const CnnShape& shape, int64_t max_width = int64_t{1} << 20);

// CnnName: e.g. "cnn 28x28 c5x5x16-p2-c5x5x32-p2-512-128-10".
std::string CnnName(const CnnShape& shape);

// CnnLayout: the ModelLayout the servers see (names and shapes above).
absl::StatusOr<ModelLayout> CnnLayout(const CnnShape& shape);

// NewCpuCnn: im2col + CBLAS (OpenBLAS) GEMMs. INVALID_ARGUMENT for a bad shape.
absl::StatusOr<std::unique_ptr<Model>> NewCpuCnn(const CnnShape& shape);

// NewCudaCnn: im2col kernels + cuBLAS; FAILED_PRECONDITION without a device or
// without CUDA in the build.
absl::StatusOr<std::unique_ptr<Model>> NewCudaCnn(const CnnShape& shape);

}  // namespace gnc

#endif  // GNC_WORKER_CNN_H_
