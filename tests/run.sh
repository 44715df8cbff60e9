#!/usr/bin/env bash
# The test command: installs what is missing, configures, builds everything and runs
# every test with CTest. Non-zero exit on any failure.
#   BUILD_DIR   build folder (default: build)
#   BUILD_TYPE  CMake build type (default: Release)
#   CTEST_ARGS  extra arguments for ctest (e.g. "-L integration" or "-R shard")
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
build="${BUILD_DIR:-build}"
jobs="$(nproc)"

deploy/local/install-deps.sh --tests

if [[ ! -f "$build/build.ninja" ]]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-Release}"
fi
cmake --build "$build" -j "$jobs"
cd "$build"
# shellcheck disable=SC2086
ctest --output-on-failure -j "$jobs" ${CTEST_ARGS:-}
