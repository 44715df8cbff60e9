// Fashion-MNIST as libtorch tensors, read from the IDX files (gzip or plain) that
// Debian's dataset-fashion-mnist installs under /usr/share/datasets/fashion-mnist.
#ifndef GNC_EXAMPLES_LIBTORCH_FASHION_MNIST_H_
#define GNC_EXAMPLES_LIBTORCH_FASHION_MNIST_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

struct FashionMnist {
  torch::Tensor images;  // N x 1 x 28 x 28, float32 in [0, 1]
  torch::Tensor labels;  // N, int64 in [0, 10)
};

// LoadFashionMnist: the training (60 000) or test (10 000) set under `dir`, its first
// `limit` examples when limit > 0. NOT_FOUND or DATA_LOSS naming the file otherwise.
absl::StatusOr<FashionMnist> LoadFashionMnist(const std::string& dir, bool train, int64_t limit);

#endif  // GNC_EXAMPLES_LIBTORCH_FASHION_MNIST_H_
