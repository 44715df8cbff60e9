# Sourced by the container tests: the skips, and how podman runs on this kind of
# machine (shared/DESIGN.md section 5): runc, not crun, which refuses the hybrid
# cgroup hierarchy; cgroupfs; explicit ulimits, as raising a hard limit is refused.

skip() {
  echo "SKIP: $*"
  exit 77
}

# require_podman: skips unless podman and runc can run containers here as root.
require_podman() {
  command -v podman >/dev/null || skip "podman not found (deploy/local/install-deps.sh --tests installs it)"
  command -v runc >/dev/null || skip "runc not found (deploy/local/install-deps.sh --tests installs it)"
  [[ $(id -u) -eq 0 ]] || skip "the container tests run podman as root (bridge networks, cgroup limits)"
}

# podman_run ARGS...: `podman run` with this machine's runtime settings.
podman_run() {
  podman --runtime runc --cgroup-manager=cgroupfs run \
    --ulimit nofile=20000:20000 --ulimit nproc=4096:4096 "$@"
}

# The base images the Dockerfile builds on here (deploy/docker/debian-base-image.sh).
GNC_BUILD_ARGS=(--build-arg DEBIAN_IMAGE=localhost/debian:12
  --build-arg DEBIAN_SLIM_IMAGE=localhost/debian:12-slim)

# require_base_images: fails, naming the fixture, when the base images are missing.
require_base_images() {
  local image
  for image in localhost/debian:12 localhost/debian:12-slim; do
    podman image exists "$image" ||
      { echo "FAIL: base image $image missing (test containers_base_image makes it)"; exit 1; }
  done
}
