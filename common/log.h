// Minimal leveled logging to stderr (this Abseil release predates absl/log).
// Thread-safe: each line is written with a single fwrite.
#ifndef GNC_COMMON_LOG_H_
#define GNC_COMMON_LOG_H_

#include <string_view>

#include "absl/strings/str_cat.h"

namespace gnc {

enum class LogLevel { kInfo, kWarning, kError };

// LogLine: writes "<time> <level> <message>\n" to stderr.
void LogLine(LogLevel level, std::string_view message);

template <typename... Args>
void LogInfo(const Args&... args) {
  LogLine(LogLevel::kInfo, absl::StrCat(args...));
}
template <typename... Args>
void LogWarning(const Args&... args) {
  LogLine(LogLevel::kWarning, absl::StrCat(args...));
}
template <typename... Args>
void LogError(const Args&... args) {
  LogLine(LogLevel::kError, absl::StrCat(args...));
}

}  // namespace gnc

#endif  // GNC_COMMON_LOG_H_
