// Device selection for the merge: --device=auto|cpu|cuda.
#ifndef GNC_SERVER_DEVICE_H_
#define GNC_SERVER_DEVICE_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/merge_backend.h"

namespace gnc {

enum class DeviceChoice { kAuto, kCpu, kCuda };

// ParseDeviceChoice: INVALID_ARGUMENT for anything but auto, cpu, cuda.
absl::StatusOr<DeviceChoice> ParseDeviceChoice(const std::string& text);

// NewMergeBackend: kCpu -> CPU on cpu_threads threads; kCuda -> CUDA or
// FAILED_PRECONDITION naming why it is unavailable (built without CUDA, no device);
// kAuto -> CUDA when a device is present, else CPU. Logs the choice.
absl::StatusOr<std::unique_ptr<MergeBackend>> NewMergeBackend(DeviceChoice choice,
                                                              int cpu_threads = 1);

// NewCudaMergeBackend: defined by the CUDA build (server/cuda/); FAILED_PRECONDITION
// without a usable device.
absl::StatusOr<std::unique_ptr<MergeBackend>> NewCudaMergeBackend();

}  // namespace gnc

#endif  // GNC_SERVER_DEVICE_H_
