#include "common/command_line.h"

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/commandlineflag.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/version.h"

namespace gnc {
namespace {

// A gnc flag is any flag that Abseil itself does not define (--flagfile, --help, ...).
bool IsGncFlagFile(absl::string_view file) { return !absl::StrContains(file, "absl/"); }

// The default as Abseil's --helpfull prints it: strings quoted.
std::string DefaultText(const absl::CommandLineFlag& flag) {
  if (flag.IsOfType<std::string>()) return absl::StrCat("\"", flag.DefaultValue(), "\"");
  return flag.DefaultValue();
}

std::string HelpText(absl::string_view program, absl::string_view description) {
  std::vector<const absl::CommandLineFlag*> flags;
  for (const auto& [name, flag] : absl::GetAllFlags()) {
    if (!flag->IsRetired() && IsGncFlagFile(flag->Filename())) flags.push_back(flag);
  }
  std::sort(flags.begin(), flags.end(),
            [](const auto* a, const auto* b) { return a->Name() < b->Name(); });
  std::string out = absl::StrCat(VersionLine(program), "\n", description, "\n\nUsage: ", program,
                                 " [--flag=value]...\n\nFlags, with their defaults:\n");
  for (const absl::CommandLineFlag* flag : flags) {
    const std::string value = DefaultText(*flag);
    absl::StrAppend(&out, "  --", flag->Name(), value.empty() ? " (unset)" : "=" + value,
                    "\n      ", flag->Help(), "\n");
  }
  absl::StrAppend(&out,
                  "\n--helpfull also lists Abseil's own flags (--flagfile, --fromenv, ...).\n");
  return out;
}

}  // namespace

std::string VersionLine(absl::string_view program) {
  const absl::string_view type = GNC_BUILD_TYPE;
  return absl::StrCat(program, " ", GNC_VERSION, " (", type.empty() ? "no build type" : type,
                      " build, CUDA ", GNC_BUILT_WITH_CUDA ? "on" : "off", ")");
}

std::optional<int> HandleHelpAndVersion(int argc, char** argv, absl::string_view program,
                                        absl::string_view description) {
  absl::SetProgramUsageMessage(description);
  absl::FlagsUsageConfig config;
  config.contains_help_flags = IsGncFlagFile;
  config.contains_helpshort_flags = IsGncFlagFile;
  absl::SetFlagsUsageConfig(config);

  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg == "--") break;
    if (!absl::ConsumePrefix(&arg, "-")) continue;
    absl::ConsumePrefix(&arg, "-");
    if (arg == "help" || arg == "helpshort") {
      std::fputs(HelpText(program, description).c_str(), stdout);
      return 0;
    }
    if (arg == "version") {
      std::printf("%s\n", VersionLine(program).c_str());
      return 0;
    }
  }
  return std::nullopt;
}

}  // namespace gnc
