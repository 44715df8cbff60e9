#include "server/device.h"

#include "absl/strings/str_cat.h"
#include "common/log.h"

namespace gnc {

absl::StatusOr<DeviceChoice> ParseDeviceChoice(const std::string& text) {
  if (text == "auto") return DeviceChoice::kAuto;
  if (text == "cpu") return DeviceChoice::kCpu;
  if (text == "cuda") return DeviceChoice::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("unknown device '", text, "' (auto, cpu, cuda)"));
}

#if !defined(GNC_WITH_CUDA)
absl::StatusOr<std::unique_ptr<MergeBackend>> NewCudaMergeBackend() {
  return absl::FailedPreconditionError("gnc was built without CUDA");
}
#endif

absl::StatusOr<std::unique_ptr<MergeBackend>> NewMergeBackend(DeviceChoice choice,
                                                              int cpu_threads) {
  if (choice == DeviceChoice::kCpu) {
    std::unique_ptr<MergeBackend> cpu = NewCpuMergeBackend(cpu_threads);
    LogInfo("merge backend: ", cpu->Name(), " (--device=cpu)");
    return cpu;
  }
  absl::StatusOr<std::unique_ptr<MergeBackend>> cuda = NewCudaMergeBackend();
  if (cuda.ok()) {
    LogInfo("merge backend: ", (*cuda)->Name());
    return cuda;
  }
  if (choice == DeviceChoice::kCuda) {
    return absl::FailedPreconditionError(
        absl::StrCat("--device=cuda but CUDA is unavailable: ", cuda.status().message()));
  }
  std::unique_ptr<MergeBackend> cpu = NewCpuMergeBackend(cpu_threads);
  LogInfo("merge backend: ", cpu->Name(), " (", cuda.status().message(), ")");
  return cpu;
}

}  // namespace gnc
