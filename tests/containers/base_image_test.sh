#!/usr/bin/env bash
# base_image_test.sh SOURCE_DIR: makes the Debian 12 base images the container
# tests build on, once per machine (deploy/docker/debian-base-image.sh keeps them),
# and checks that they run: Debian 12 inside, apt configured.
set -euo pipefail
src=$1
# shellcheck source=tests/containers/lib.sh
source "$src/tests/containers/lib.sh"
require_podman
if ! podman image exists localhost/debian:12 || ! podman image exists localhost/debian:12-slim; then
  command -v debootstrap >/dev/null ||
    skip "debootstrap not found, and the base images it makes are missing (install-deps.sh --tests)"
fi
"$src/deploy/docker/debian-base-image.sh"
for image in localhost/debian:12 localhost/debian:12-slim; do
  out=$(podman_run --rm --network=none "$image" sh -c '. /etc/os-release; echo "$VERSION_ID"; ls /etc/apt/sources.list.d /etc/apt/sources.list 2>/dev/null | wc -l')
  [[ $(sed -n 1p <<<"$out") == 12 ]] || { echo "FAIL: $image is not Debian 12: $out"; exit 1; }
  [[ $(sed -n 2p <<<"$out") -gt 0 ]] || { echo "FAIL: $image has no APT sources"; exit 1; }
  echo "$image: Debian 12, $(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1 / 1e6}')"
done
