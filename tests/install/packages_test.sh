#!/usr/bin/env bash
# packages_test.sh SOURCE_DIR WORKDIR: the Debian packages, made by the Dockerfile's
# deb target (cpack in a clean Debian 12 CPU build), installed as a user would in a
# clean Debian 12 container (the base image of the container tests):
#   1. `apt-get install ./gnc-server_*.deb` alone, then gnc-server --check_config and
#      --version: its Depends bring every library it loads;
#   2. gnc-worker and libgnc-client-dev (with libgnc-client), a compiler and CMake,
#      then tests/downstream built with find_package(gnc) from /usr and trained
#      against two shards of the packaged gnc-server.
set -euo pipefail
src=$1
work=$2
# shellcheck source=tests/containers/lib.sh
source "$src/tests/containers/lib.sh"
require_podman
require_base_images
rm -rf "$work"
mkdir -p "$work/deb"
cid=""
trap '[[ -z $cid ]] || podman rm -f "$cid" >/dev/null 2>&1 || true' EXIT

start=$SECONDS
podman build --isolation=chroot --network=host --pull=never "${GNC_BUILD_ARGS[@]}" \
  -f "$src/deploy/docker/Dockerfile" --target deb --iidfile "$work/deb.iid" "$src" \
  >"$work/build.log" 2>&1 || { tail -n 40 "$work/build.log"; echo "FAIL: podman build --target deb"; exit 1; }
cid=$(podman create "$(cat "$work/deb.iid")")
podman cp "$cid:/deb/." "$work/deb/"
ls "$work/deb"
for pkg in gnc-server gnc-worker libgnc-client-dev; do
  compgen -G "$work/deb/${pkg}_*.deb" >/dev/null || { echo "FAIL: no $pkg package"; exit 1; }
done
echo "packages made in $((SECONDS - start)) s"

# shellcheck disable=SC2016
podman_run --rm --network=host -v "$work/deb:/deb:ro" -v "$src/tests:/src/tests:ro" \
  localhost/debian:12-slim bash -euo pipefail -c '
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  cd /deb
  apt-get install -y -qq --no-install-recommends ./gnc-server_*.deb >/tmp/apt1.log ||
    { cat /tmp/apt1.log; echo "FAIL: apt-get install ./gnc-server_*.deb"; exit 1; }
  gnc-server --check_config
  gnc-server --version
  apt-get install -y -qq --no-install-recommends ./gnc-worker_*.deb ./libgnc-client*.deb \
    g++ cmake make pkg-config >/tmp/apt2.log || { cat /tmp/apt2.log; echo "FAIL: apt-get install"; exit 1; }
  gnc-worker --check_config --servers=localhost:7070
  cmake -S /src/tests/downstream -B /tmp/downstream >/tmp/cmake.log ||
    { cat /tmp/cmake.log; echo "FAIL: find_package(gnc) from the package"; exit 1; }
  grep "^gnc_DIR:PATH=/usr/" /tmp/downstream/CMakeCache.txt
  cmake --build /tmp/downstream >/tmp/build.log || { cat /tmp/build.log; echo "FAIL: build"; exit 1; }
  source /src/tests/install/lib.sh
  work=/tmp
  trap stop_shards EXIT
  start_shards /usr/bin/gnc-server /tmp 1 60 --lr=0.2 --momentum=0.5
  timeout 120 /tmp/downstream/linear_trainer --servers="$servers" --steps=60
  wait_shards 30
' || { echo "FAIL: the packages in a clean Debian 12 container (above)"; exit 1; }
echo "Debian packages installed in a clean Debian 12 container: gnc-server runs;" \
  "a trainer built with find_package(gnc) from libgnc-client-dev learned through the packaged shards" \
  "($((SECONDS - start)) s in all)"
