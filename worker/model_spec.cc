#include "worker/model_spec.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace gnc {
namespace {

absl::StatusOr<std::vector<int64_t>> ParseWidths(absl::string_view flag, absl::string_view list) {
  std::vector<int64_t> widths;
  for (absl::string_view s : absl::StrSplit(list, ',', absl::SkipWhitespace())) {
    int64_t width = 0;
    if (!absl::SimpleAtoi(s, &width) || width < 1 || width > (1 << 16)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, ": '", s, "' is not a width in [1, 65536]"));
    }
    widths.push_back(width);
  }
  return widths;
}

}  // namespace

absl::StatusOr<ModelSpec> ParseModelSpec(absl::string_view model, absl::string_view hidden,
                                         absl::string_view cnn_channels,
                                         absl::string_view cnn_hidden, int64_t height,
                                         int64_t width, int64_t classes) {
  ModelSpec spec;
  if (model == "mlp") {
    absl::StatusOr<std::vector<int64_t>> h = ParseWidths("hidden", hidden);
    if (!h.ok()) return h.status();
    spec.kind = ModelSpec::Kind::kMlp;
    spec.mlp.widths = {height * width};
    spec.mlp.widths.insert(spec.mlp.widths.end(), h->begin(), h->end());
    spec.mlp.widths.push_back(classes);
    return spec;
  }
  if (model == "cnn") {
    absl::StatusOr<std::vector<int64_t>> c = ParseWidths("cnn_channels", cnn_channels);
    if (!c.ok()) return c.status();
    absl::StatusOr<std::vector<int64_t>> h = ParseWidths("cnn_hidden", cnn_hidden);
    if (!h.ok()) return h.status();
    spec.kind = ModelSpec::Kind::kCnn;
    spec.cnn.height = height;
    spec.cnn.width = width;
    spec.cnn.channels = *c;
    spec.cnn.hidden = *h;
    spec.cnn.classes = classes;
    if (absl::Status s = CheckCnnShape(spec.cnn); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--cnn_channels: ", s.message()));
    }
    return spec;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--model: unknown model '", model, "' (mlp, cnn)"));
}

std::string ModelName(const ModelSpec& spec) {
  return spec.kind == ModelSpec::Kind::kCnn
             ? CnnName(spec.cnn)
             : absl::StrCat("mlp ", absl::StrJoin(spec.mlp.widths, "-"));
}

absl::StatusOr<ModelLayout> LayoutOf(const ModelSpec& spec) {
  return spec.kind == ModelSpec::Kind::kCnn ? CnnLayout(spec.cnn) : MlpLayout(spec.mlp);
}

absl::StatusOr<std::unique_ptr<Model>> NewModel(const ModelSpec& spec, absl::string_view device) {
  const bool cnn = spec.kind == ModelSpec::Kind::kCnn;
  if (device == "cpu") return cnn ? NewCpuCnn(spec.cnn) : NewCpuMlp(spec.mlp);
  if (device == "cuda") return cnn ? NewCudaCnn(spec.cnn) : NewCudaMlp(spec.mlp);
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", device, "' (cpu, cuda)"));
}

}  // namespace gnc
