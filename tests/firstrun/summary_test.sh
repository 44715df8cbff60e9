#!/usr/bin/env bash
# summary_test.sh SUMMARIZE_PY: tests/run.sh's summary counts skipped tests apart
# from passed ones and says why each skipped. Runs a scratch CTest project whose
# tests pass, fail, exit 77 (SKIP_RETURN_CODE) and GTEST_SKIP, then checks the
# summary of its JUnit report against what those tests did.
set -euo pipefail
summarize=$1
work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-summary.XXXXXX")
trap 'rm -rf "$work"' EXIT

cat >"$work/CMakeLists.txt" <<'CMAKE'
cmake_minimum_required(VERSION 3.25)
project(summary_scratch NONE)
enable_testing()
add_test(NAME passes COMMAND sh -c "echo fine")
add_test(NAME fails COMMAND sh -c "echo broken; exit 1")
add_test(NAME tool_missing COMMAND sh -c "echo 'SKIP: frobnicate not found on PATH'; exit 77")
foreach(i 1 2 3 4)
  add_test(NAME gtest_skips_${i} COMMAND sh -c "printf '%s\n' '[ RUN      ] A.B' 'a_test.cc:9: Skipped' 'no device here' '[  SKIPPED ] A.B (0 ms)'")
  set_tests_properties(gtest_skips_${i} PROPERTIES SKIP_REGULAR_EXPRESSION "SKIPPED")
endforeach()
set_tests_properties(tool_missing PROPERTIES SKIP_RETURN_CODE 77)
CMAKE
cmake -S "$work" -B "$work/build" >/dev/null
(cd "$work/build" && ctest --output-junit "$work/junit.xml" >/dev/null 2>&1) || true
out=$(python3 "$summarize" "$work/junit.xml")
echo "$out"

status=0
want() {
  grep -qxF -- "$1" <<<"$out" || { echo "FAIL: summary lacks the line '$1'"; status=1; }
}
want "gnc tests: 7 total, 1 passed, 1 failed, 5 skipped"
want "  skipped tool_missing: SKIP: frobnicate not found on PATH"
want "  4 skipped: no device here"
want "    gtest_skips_1, gtest_skips_2, gtest_skips_3 and 1 more"
want "  FAILED fails"
exit "$status"
