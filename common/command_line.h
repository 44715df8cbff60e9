// The daemons' own --help and --version. Abseil's --help shows only flags defined in
// a file named like the program, and exits 1; this lists every gnc flag with its
// default and exits 0, whichever file defines the flag.
#ifndef GNC_COMMON_COMMAND_LINE_H_
#define GNC_COMMON_COMMAND_LINE_H_

#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace gnc {

// VersionLine: "<program> <version> (<build type> build, CUDA on|off)".
std::string VersionLine(absl::string_view program);

// HandleHelpAndVersion: call first thing in main(), before absl::ParseCommandLine.
// Sets the usage message and the flag filter that Abseil's other usage flags
// (--helpfull, --help=SUBSTRING, --helpmatch=...) use. When argv (up to "--")
// holds --help, --helpshort or --version (one or two dashes), prints the help or
// VersionLine() to stdout and returns the exit status (0); otherwise returns
// nullopt and main() goes on. `description` is one line saying what the program is.
std::optional<int> HandleHelpAndVersion(int argc, char** argv, absl::string_view program,
                                        absl::string_view description);

}  // namespace gnc

#endif  // GNC_COMMON_COMMAND_LINE_H_
