#!/usr/bin/env bash
# debian-base-image.sh [--force]: makes the Debian 12 base images that
# deploy/docker/Dockerfile builds on, for a machine that reaches a Debian mirror but
# no image registry: localhost/debian:12 and localhost/debian:12-slim, from
# `debootstrap --variant=minbase bookworm` with this machine's APT sources.
# Build with them:
#   podman build --build-arg DEBIAN_IMAGE=localhost/debian:12 \
#     --build-arg DEBIAN_SLIM_IMAGE=localhost/debian:12-slim ...
# Does nothing when both images exist (--force remakes them). Needs root, podman and
# debootstrap (deploy/local/install-deps.sh --tests installs them); takes about a
# minute. The slim image leaves out documentation, manual pages and locales, also
# from packages installed later, as Docker's debian:12-slim does.
#   GNC_DEBIAN_MIRROR  mirror for debootstrap (default: the first URIs of
#                      /etc/apt/sources.list.d/debian.sources, else deb.debian.org)
set -euo pipefail

image=localhost/debian:12
slim=localhost/debian:12-slim
force=""
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac

die() {
  echo "debian-base-image: $*" >&2
  exit 1
}
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, podman import)"
for tool in podman debootstrap; do
  command -v "$tool" >/dev/null || die "$tool not found (deploy/local/install-deps.sh --tests)"
done

# One maker at a time on this machine; the second finds the images made.
exec 9>/var/lock/gnc-debian-base-image.lock
flock -w 900 9 || die "waited 900 s for another debian-base-image.sh to finish"
if [[ -z $force ]] && podman image exists "$image" && podman image exists "$slim"; then
  echo "debian-base-image: $image and $slim exist"
  exit 0
fi

mirror=${GNC_DEBIAN_MIRROR:-}
if [[ -z $mirror && -f /etc/apt/sources.list.d/debian.sources ]]; then
  mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/debian.sources | head -n 1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/gnc-debian-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
start=$SECONDS
echo "debian-base-image: debootstrap bookworm from $mirror"
if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi

# The image's APT sources are this machine's (security updates included), so that
# packages built here install there with the same library versions.
if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
  cp /etc/apt/sources.list.d/debian.sources "$rootfs/etc/apt/sources.list.d/"
  rm -f "$rootfs/etc/apt/sources.list"
fi
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
  "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/* "$rootfs"/tmp/*
import_rootfs() {
  tar --numeric-owner -C "$rootfs" -c . |
    podman import --quiet --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$1" >/dev/null
}
import_rootfs "$image"

cat >"$rootfs/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
# As in Docker's debian:*-slim: no documentation, manual pages or locales.
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
EOF
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/groff/* "$rootfs"/usr/share/info/* \
  "$rootfs"/usr/share/lintian/* "$rootfs"/usr/share/locale/*
import_rootfs "$slim"
size() { podman image inspect --format '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1 / 1e6}'; }
echo "debian-base-image: $image ($(size "$image")) and $slim ($(size "$slim")) made in" \
  "$((SECONDS - start)) s"
