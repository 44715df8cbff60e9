// ModelSpec: which built-in model a worker trains (gnc-worker --model, --hidden,
// --cnn_channels, --cnn_hidden), its layout for the servers, and the Model for a
// device. gnc-worker and gnc-sharpness build their models here, so both read the
// same flags the same way.
#ifndef GNC_WORKER_MODEL_SPEC_H_
#define GNC_WORKER_MODEL_SPEC_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/layout.h"
#include "worker/cnn.h"
#include "worker/mlp.h"
#include "worker/model.h"

namespace gnc {

struct ModelSpec {
  enum class Kind { kMlp, kCnn };
  Kind kind = Kind::kMlp;
  MlpShape mlp;  // valid for kMlp
  CnnShape cnn;  // valid for kCnn
};

// ParseModelSpec: `model` "mlp" or "cnn"; `hidden` the MLP's hidden widths, and
// `cnn_channels` / `cnn_hidden` the CNN's conv channels and fully connected widths,
// comma-separated ("" = none); images of height x width, `classes` classes.
// INVALID_ARGUMENT naming the flag at fault.
absl::StatusOr<ModelSpec> ParseModelSpec(absl::string_view model, absl::string_view hidden,
                                         absl::string_view cnn_channels,
                                         absl::string_view cnn_hidden, int64_t height,
                                         int64_t width, int64_t classes);

// ModelName: e.g. "mlp 784-256-128-10".
std::string ModelName(const ModelSpec& spec);

// LayoutOf: the tensors the servers see.
absl::StatusOr<ModelLayout> LayoutOf(const ModelSpec& spec);

// NewModel: the model on `device`, "cpu" or "cuda" (FAILED_PRECONDITION when CUDA is
// unavailable).
absl::StatusOr<std::unique_ptr<Model>> NewModel(const ModelSpec& spec, absl::string_view device);

}  // namespace gnc

#endif  // GNC_WORKER_MODEL_SPEC_H_
