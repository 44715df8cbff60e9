#!/usr/bin/env bash
# run.sh: builds the libFuzzer targets (tests/fuzz/fuzz_*.cc) in a tree of their own
# with clang, AddressSanitizer and UndefinedBehaviorSanitizer, then runs each for a
# bounded time over its seed corpus (tests/fuzz/corpus/<target>, made by
# make_corpus.py). Exits 0 when nothing was found, 1 on a crash, leak, undefined
# behaviour or broken invariant (the input is kept and replayed so its message shows),
# 77 (skipped) without clang or libFuzzer's runtime.
#   FUZZ_BUILD_DIR  the fuzz tree (default: build-fuzz in the source folder)
#   FUZZ_SECONDS    seconds per target (default 60)
#   FUZZ_TARGETS    targets to run (default: "wire shard")
#   FUZZ_JOBS       build jobs (default: the CPUs this process may use, tests/cpus.sh)
set -euo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
build="${FUZZ_BUILD_DIR:-$src/build-fuzz}"
seconds="${FUZZ_SECONDS:-60}"
targets="${FUZZ_TARGETS:-wire shard}"
jobs="${FUZZ_JOBS:-$("$src/tests/cpus.sh")}"

skip() {
  echo "SKIP: $* (deploy/local/install-deps.sh --tests installs it)"
  exit 77
}
command -v clang++ >/dev/null || skip "clang++ not found"
mkdir -p "$build"
probe="$build/probe"
printf 'extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) { return 0; }\n' \
  >"$probe.cc"
clang++ -fsanitize=fuzzer,address,undefined "$probe.cc" -o "$probe" >"$probe.log" 2>&1 ||
  skip "clang++ cannot link -fsanitize=fuzzer: libFuzzer's runtime (libclang-rt-14-dev) is missing"

launcher=()
if command -v ccache >/dev/null; then
  launcher=(-DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  export CCACHE_BASEDIR="${CCACHE_BASEDIR:-$src}"
fi
start=$(date +%s)
# Without CUDA and tests: the fuzz tree builds only its two targets and what they link.
CC=clang CXX=clang++ cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DGNC_FUZZ=ON -DGNC_BUILD_TESTS=OFF -DGNC_WITH_CUDA=OFF \
  -DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND "${launcher[@]}" >"$build/configure.log" 2>&1 ||
  { cat "$build/configure.log"; echo "FAIL: configuring the fuzz tree"; exit 1; }
names=()
for t in $targets; do names+=("gnc_fuzz_$t"); done
cmake --build "$build" -j "$jobs" --target "${names[@]}" >"$build/build.log" 2>&1 ||
  { tail -50 "$build/build.log"; echo "FAIL: building the fuzz targets"; exit 1; }
echo "fuzz targets built in $(($(date +%s) - start)) s"

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
if symbolizer=$(command -v llvm-symbolizer-14 || command -v llvm-symbolizer); then
  export ASAN_SYMBOLIZER_PATH="$symbolizer"
fi

status=0
for t in $targets; do
  bin="$build/tests/fuzz/gnc_fuzz_$t"
  seeds="$src/tests/fuzz/corpus/$t"
  # New inputs go to a scratch folder: the committed corpus only grows by hand.
  found="$build/found/$t"
  artifacts="$build/artifacts/$t"
  rm -rf "$found" "$artifacts"
  mkdir -p "$found" "$artifacts"
  echo "== $t: $(find "$seeds" -type f | wc -l) seeds, ${seconds} s"
  # -close_fd_mask=2: the shard core's log lines would flood the output; libFuzzer and
  # the sanitizers still report on their own descriptor.
  if "$bin" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
    -close_fd_mask=2 -print_final_stats=1 -artifact_prefix="$artifacts/" \
    "$found" "$seeds" >"$build/$t.log" 2>&1; then
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb)' \
      "$build/$t.log" || tail -3 "$build/$t.log"
    continue
  fi
  status=1
  grep -v -E '^#[0-9]+ +(NEW|REDUCE|pulse|RELOAD)' "$build/$t.log" | tail -60
  for input in "$artifacts"/*; do
    [[ -f $input ]] || continue
    echo "FAIL: gnc_fuzz_$t: $input; replayed (add it to tests/fuzz/corpus/$t once fixed):"
    # The replay keeps stderr, so a broken invariant names itself; log lines are cut.
    "$bin" "$input" 2>&1 | grep -v -E '^[0-9-]+T[0-9:.]+ [IWE] ' | tail -40 || true
  done
done
echo "fuzzing done in $(($(date +%s) - start)) s"
exit "$status"
