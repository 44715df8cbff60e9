#!/usr/bin/env bash
# tests_registered_test.sh SOURCE_DIR: no test vanishes because a
# tool was missing when CMake configured the tree. In the README's order, demo.sh
# configures build/ before `install-deps.sh --tests` installs Prometheus, Node.js,
# kubectl's helpers or podman; the tests that need them must still be registered,
# skip (naming the tool) while it is missing, and run once it is installed.
#
# Configures two scratch trees of SOURCE_DIR (no build): one as this machine is, one
# in a private mount namespace where the optional tools are hidden (an empty,
# non-executable file bound over each). Their test lists must be equal; in the
# second tree, a promtool test skips while promtool is hidden and passes once it is
# visible again, without reconfiguring. Needs root (mount namespace): skips otherwise.
set -euo pipefail
src=$1

skip() {
  echo "SKIP: $*"
  exit 77
}
[[ $(id -u) -eq 0 ]] || skip "hiding tools needs root (a private mount namespace)"
command -v unshare >/dev/null || skip "unshare (util-linux) not found"
command -v promtool >/dev/null || skip "promtool not installed, so it cannot be hidden and found again"

optional=(prometheus promtool node npm kubectl podman runc debootstrap openssl)
hidden=()
for tool in "${optional[@]}"; do
  if path=$(command -v "$tool"); then hidden+=("$(readlink -f "$path")"); fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-registered.XXXXXX")
trap 'rm -rf "$work"' EXIT
# Without CUDA (both trees alike): nvcc's detection would take most of the time, and
# nvcc is not one of the tools the scripts install.
configure() {
  cmake -S "$src" -B "$1" -G Ninja -DCMAKE_CUDA_COMPILER=CMAKE_CUDA_COMPILER-NOTFOUND \
    -DGNC_WITH_CUDA=OFF >"$1.log" 2>&1 || { cat "$1.log"; echo "FAIL: configuring $1"; exit 1; }
}
test_names() {
  (cd "$1" && ctest -N) | sed -n 's/^ *Test *#[0-9]*: //p' | sort
}
check=obs_promtool_check_rules

configure "$work/visible"
printf '' >"$work/not-executable"
chmod 0644 "$work/not-executable"
export -f configure
export src work check
# In the namespace: hide, prove the tools are gone, configure, run one test.
unshare --mount --propagation private bash -euo pipefail -c '
  for f in "$@"; do mount --bind "$work/not-executable" "$f"; done
  for t in promtool prometheus; do
    if command -v "$t" >/dev/null && [[ -x $(command -v "$t") ]]; then
      echo "FAIL: $t still visible after hiding"; exit 1
    fi
  done
  configure "$work/hidden"
  cd "$work/hidden"
  ctest -R "^$check\$" --output-junit "$work/hidden-junit.xml" >"$work/hidden-ctest.log" 2>&1 ||
    { cat "$work/hidden-ctest.log"; echo "FAIL: $check failed while promtool was hidden"; exit 1; }
' hide "${hidden[@]}"

status=0
if ! diff <(test_names "$work/visible") <(test_names "$work/hidden") >"$work/diff"; then
  echo "FAIL: tests registered only when the optional tools (${optional[*]}) are installed" \
    "at configure time (< with them, > without):"
  cat "$work/diff"
  status=1
fi
count=$(test_names "$work/hidden" | wc -l)
grep -q '<skipped' "$work/hidden-junit.xml" && grep -q 'promtool not found' "$work/hidden-junit.xml" ||
  { echo "FAIL: with promtool hidden, $check did not skip naming promtool:"; cat "$work/hidden-junit.xml"; status=1; }

# promtool is back (outside the namespace): the same tree, not reconfigured, runs it.
(cd "$work/hidden" && ctest -R "^$check\$" --output-junit "$work/junit.xml" >"$work/ctest.log" 2>&1) ||
  { cat "$work/ctest.log"; echo "FAIL: $check failed once promtool was visible"; status=1; }
if grep -q '<skipped' "$work/junit.xml" || ! grep -q 'status="run"' "$work/junit.xml"; then
  echo "FAIL: $check did not run once promtool was installed after configuring:"
  cat "$work/junit.xml"
  status=1
fi
((status == 0)) && echo "ok: $count tests registered with or without ${#hidden[@]} optional tools;" \
  "$check skipped while promtool was missing and ran once it was there"
exit "$status"
