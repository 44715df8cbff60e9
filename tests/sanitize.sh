#!/usr/bin/env bash
# sanitize.sh: the unit and integration tests (the Python client's included) built with
# AddressSanitizer and UndefinedBehaviorSanitizer (GCC; any undefined behaviour is
# fatal, leaks count) in a tree of their own, run with CTest. Exits non-zero on any
# failure, 77 (skipped) when the compiler cannot link a sanitized program. The daemons
# the integration tests start are the sanitized ones, so a report in a server or a
# worker fails the test that started it.
#   SANITIZE_BUILD_DIR  the tree (default: build-asan in the source folder)
#   SANITIZE_JOBS       build and test jobs (default: the CPUs this process may use, tests/cpus.sh)
#   CTEST_ARGS          extra ctest arguments (e.g. "-R Shard")
# Left out, and why: gpu (no CUDA in this tree: the kernels are checked against the CPU
# reference on a device, and nvcc's host code under ASan needs care of its own),
# containers and install (they build images and packages from the sources, not these
# binaries), k8s, observability and firstrun (manifests, dashboards, rules and the
# build scripts: they run no gnc code that integration does not), hardening (the fuzz
# targets have their own sanitized tree, and this script is one).
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${SANITIZE_BUILD_DIR:-$src/build-asan}"
jobs="${SANITIZE_JOBS:-$("$src/tests/cpus.sh")}"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"

skip() {
  echo "SKIP: $*"
  exit 77
}
mkdir -p "$build"
probe="$build/probe"
printf 'int main() { return 0; }\n' >"$probe.cc"
g++ $flags "$probe.cc" -o "$probe" >"$probe.log" 2>&1 ||
  skip "g++ cannot link -fsanitize=address,undefined (libasan, libubsan: g++ installs them)"

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$src}"
fi
start=$(date +%s)
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DGNC_WITH_CUDA=OFF \
  -DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND "${launcher[@]}" \
  -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" \
  -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=address,undefined" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "FAIL: configuring the sanitizer tree"; exit 1; }
cmake --build "$build" -j "$jobs" >"$build/build.log" 2>&1 ||
  { grep -E 'error|FAILED' "$build/build.log" | head -40; echo "FAIL: building the sanitizer tree"; exit 1; }
built=$(date +%s)
echo "sanitizer tree built in $((built - start)) s"

# halt_on_error is the default for ASan; UBSan stops at the first report (the flags
# above) and prints its stack. Leaks count as errors.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# The flood test's memory bound is for the real build: ASan's quarantine and redzones
# hold a few hundred MiB more. Its thread bound stays as it is.
export GNC_FLOOD_RSS_SLACK_KB="${GNC_FLOOD_RSS_SLACK_KB:-600000}"
# Tests that need a real allocation failure (AddressSanitizer aborts instead) skip it.
export GNC_SANITIZED=1
# The failure tests wait three times as long for a process to end (its own deadlines
# are unchanged): the sanitized daemons are slower.
export GNC_TIME_SCALE="${GNC_TIME_SCALE:-3}"
cd "$build"
status=0
# shellcheck disable=SC2086
ctest --output-on-failure -j "$jobs" --output-junit "$PWD/Testing/sanitize-junit.xml" \
  -LE 'gpu|containers|install|k8s|observability|firstrun|hardening' ${CTEST_ARGS:-} ||
  status=$?
python3 "$src/tests/summarize.py" Testing/sanitize-junit.xml || true
echo "sanitizer tests ran in $(($(date +%s) - built)) s (build and tests: $(($(date +%s) - start)) s)"
exit "$status"
