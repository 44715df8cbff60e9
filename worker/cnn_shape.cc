// The CNN's shape checks and name (no layout, so the CUDA models link them too).
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "worker/cnn.h"

namespace gnc {

absl::Status CheckCnnShape(const CnnShape& shape, int64_t max_width) {
  if (shape.channels.empty()) return absl::InvalidArgumentError("CNN needs a conv block");
  for (int64_t c : shape.channels) {
    if (c < 1 || c > max_width) {
      return absl::InvalidArgumentError(
          absl::StrCat("CNN channels ", c, " outside [1, ", max_width, "]"));
    }
  }
  for (int64_t w : shape.hidden) {
    if (w < 1 || w > max_width) {
      return absl::InvalidArgumentError(
          absl::StrCat("CNN hidden width ", w, " outside [1, ", max_width, "]"));
    }
  }
  if (shape.classes < 1 || shape.classes > max_width) {
    return absl::InvalidArgumentError(
        absl::StrCat("CNN classes ", shape.classes, " outside [1, ", max_width, "]"));
  }
  if (shape.height < 1 || shape.width < 1 || shape.height > max_width || shape.width > max_width) {
    return absl::InvalidArgumentError("CNN input height and width must be in [1, max_width]");
  }
  for (const CnnShape::Block& b : shape.ConvBlocks()) {
    if (b.conv_h() < 2 || b.conv_w() < 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("CNN input of ", shape.height, "x", shape.width, " is too small for ",
                       shape.channels.size(), " blocks of 5x5 convolution and 2x2 pooling"));
    }
  }
  return absl::OkStatus();
}

std::string CnnName(const CnnShape& shape) {
  std::vector<std::string> parts;
  for (int64_t c : shape.channels) parts.push_back(absl::StrCat("c5x5x", c, "-p2"));
  return absl::StrCat("cnn ", shape.height, "x", shape.width, " ", absl::StrJoin(parts, "-"), "-",
                      absl::StrJoin(shape.Head().widths, "-"));
}

}  // namespace gnc
