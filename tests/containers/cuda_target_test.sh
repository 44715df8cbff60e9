#!/usr/bin/env bash
# cuda_target_test.sh SOURCE_DIR: the cuda target of deploy/docker/Dockerfile as far
# as this machine can take it. Building it needs NVIDIA's APT repository
# (developer.download.nvidia.com, for nvcc, cuBLAS and cuRAND) and the nvidia/cuda
# runtime base image from a registry.
# - Where NVIDIA's repository is reachable, builds the target for real (its last
#   step runs both daemons' --check_config in the image) and passes or fails on it.
# - Otherwise checks what it can and skips, saying why: the Dockerfile's syntax and
#   the COPY sources of every stage (tests/k8s check.mjs dockerfile, with the
#   environment CMake gives the k8s tests), and podman building stage build-cuda up
#   to NVIDIA's download, which must be the step that fails.
set -euo pipefail
src=$1
# shellcheck source=tests/containers/lib.sh
source "$src/tests/containers/lib.sh"
require_podman
require_base_images
command -v node >/dev/null || skip "node not found (deploy/local/install-deps.sh --tests installs it)"

nvidia=developer.download.nvidia.com
node "$src/tests/k8s/check.mjs" dockerfile ||
  { echo "FAIL: Dockerfile syntax or COPY sources (above)"; exit 1; }

log=$(mktemp "${TMPDIR:-/tmp}/gnc-cuda-build.XXXXXX")
trap 'rm -f "$log"' EXIT
build() {
  podman build --isolation=chroot --network=host "${GNC_BUILD_ARGS[@]}" \
    -f "$src/deploy/docker/Dockerfile" "$@" "$src" >"$log" 2>&1
}
if getent hosts "$nvidia" >/dev/null; then
  build --target cuda --build-arg CUDA_ARCHITECTURES=90 -t localhost/gnc-cuda:test ||
    { tail -n 40 "$log"; echo "FAIL: podman build --target cuda"; exit 1; }
  echo "cuda target built: $(podman image inspect --format '{{.Size}}' localhost/gnc-cuda:test |
    awk '{printf "%.0f MB", $1 / 1e6}')"
  exit 0
fi
if build --pull=never --target build-cuda; then
  echo "FAIL: stage build-cuda built although $nvidia does not resolve here"
  exit 1
fi
grep -q "building at STEP \"ADD https://$nvidia/" "$log" ||
  { tail -n 30 "$log"; echo "FAIL: stage build-cuda failed before NVIDIA's download (above)"; exit 1; }
skip "cuda image not built: it needs NVIDIA's APT repository ($nvidia) and the" \
  "nvidia/cuda runtime image from a registry, neither reachable from this machine." \
  "Checked: Dockerfile syntax and COPY sources of every stage; podman built stage" \
  "build-cuda up to NVIDIA's download"
