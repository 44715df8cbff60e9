#!/usr/bin/env bash
# cpu_image_test.sh SOURCE_DIR OUT_DIR VERSION: builds the cpu target of
# deploy/docker/Dockerfile from SOURCE_DIR with podman, as the README tells a user,
# tags it localhost/gnc:VERSION and writes its image id to OUT_DIR/gnc-cpu.iid for
# the job test (an id, so that a concurrent build elsewhere cannot swap the tag).
# Checks what a user of the image sees: both daemons start through the image's
# entrypoint as uid 10001 and report VERSION, a Release build without CUDA.
set -euo pipefail
src=$1
out=$2
version=$3
# shellcheck source=tests/containers/lib.sh
source "$src/tests/containers/lib.sh"
require_podman
require_base_images

mkdir -p "$out"
rm -f "$out/gnc-cpu.iid"
log="$out/gnc-cpu-build.log"
start=$SECONDS
if ! podman build --isolation=chroot --network=host --pull=never "${GNC_BUILD_ARGS[@]}" \
  -f "$src/deploy/docker/Dockerfile" --target cpu --iidfile "$out/gnc-cpu.iid" \
  -t "localhost/gnc:$version" "$src" >"$log" 2>&1; then
  tail -n 40 "$log"
  echo "FAIL: podman build --target cpu failed (whole log: $log)"
  exit 1
fi
seconds=$((SECONDS - start))
iid=$(cat "$out/gnc-cpu.iid")

status=0
user=$(podman image inspect --format '{{.Config.User}}' "$iid")
[[ $user == 10001:10001 ]] || { echo "FAIL: the image runs as '$user', want 10001:10001"; status=1; }
for daemon in gnc-server gnc-worker; do
  got=$(podman_run --rm --network=none "$iid" "$daemon" --version 2>&1) || true
  want="$daemon $version (Release build, CUDA off)"
  [[ $got == "$want" ]] || { echo "FAIL: $daemon --version in the image: '$got', want '$want'"; status=1; }
done
uid=$(podman_run --rm --network=none --entrypoint id "$iid" -u)
[[ $uid == 10001 ]] || { echo "FAIL: processes in the image run as uid $uid"; status=1; }
size=$(podman image inspect --format '{{.Size}}' "$iid" | awk '{printf "%.0f MB", $1 / 1e6}')
echo "localhost/gnc:$version (${iid:0:19}): $size, built in $seconds s"
exit "$status"
