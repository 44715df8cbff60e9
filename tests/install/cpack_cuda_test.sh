#!/usr/bin/env bash
# cpack_cuda_test.sh BUILD_DIR: a CUDA build cannot make Debian packages (its daemons
# load NVIDIA's libraries, which no Debian package provides, so the packages'
# dependencies would be wrong): `cpack -G DEB` must fail and say how to make them.
set -euo pipefail
build=$1
if ! grep -q '^GNC_WITH_CUDA:BOOL=ON$' "$build/CMakeCache.txt"; then
  echo "SKIP: this build has no CUDA, so cpack has nothing to refuse"
  exit 77
fi
out=$(mktemp -d "${TMPDIR:-/tmp}/gnc-cpack.XXXXXX")
trap 'rm -rf "$out"' EXIT
if log=$(cd "$build" && cpack -G DEB -B "$out" 2>&1); then
  echo "$log"
  echo "FAIL: cpack -G DEB made packages from a CUDA build"
  exit 1
fi
grep -q 'GNC_WITH_CUDA=OFF' <<<"$log" || { echo "$log"; echo "FAIL: the refusal does not say what to do"; exit 1; }
! compgen -G "$out/*.deb" >/dev/null || { echo "FAIL: .deb files left in $out"; exit 1; }
echo "cpack -G DEB refused the CUDA build: $(grep -o 'gnc: Debian packages.*' <<<"$log" | head -n 1)"
