#!/usr/bin/env bash
# Installs the Debian 12 packages gnc needs, idempotently: nothing happens when all
# are present. Usage: deploy/local/install-deps.sh [--tests]
#   (default)  build + run: compiler, CMake, gRPC, Protocol Buffers, Abseil,
#              prometheus-cpp, OpenBLAS, zlib, Fashion-MNIST
#   --tests    also what the test suite uses: GoogleTest, Google Benchmark,
#              Prometheus/promtool, Python 3 with matplotlib and numpy (compare.sh's
#              plots), Node.js + npm (manifest validation), podman + runc +
#              debootstrap (container images built and run), libtorch-dev (the
#              libtorch example), OpenMPI (the MPI_Allreduce yardstick), clang with
#              libFuzzer's runtime and llvm-symbolizer (the fuzz targets, tests/fuzz),
#              openssl (the security tests' certificates, deploy/local/make-certs.sh)
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev prometheus-cpp-dev libopenblas-dev zlib1g-dev
  dataset-fashion-mnist
)
if [[ "${1:-}" == "--tests" ]]; then
  packages+=(libgtest-dev libgmock-dev libbenchmark-dev prometheus python3 python3-matplotlib
    nodejs npm podman runc debootstrap libtorch-dev openmpi-bin libopenmpi-dev openssl)
  # The fuzz targets: clang, its sanitizer and libFuzzer runtimes, stack symbols.
  packages+=(clang libclang-rt-14-dev llvm)
  # The Python client's tests: gRPC, protobuf, numpy, PyTorch, pip (installing it).
  packages+=(python3-grpcio python3-protobuf python3-numpy python3-torch python3-pip)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
# A newer Node.js from elsewhere also satisfies the tests.
if command -v node >/dev/null && command -v npm >/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do [[ "$p" == nodejs || "$p" == npm ]] || filtered+=("$p"); done
  missing=("${filtered[@]}")
fi
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

echo "gnc: installing missing packages: ${missing[*]}" >&2
if [[ $(id -u) -ne 0 ]]; then
  if command -v sudo >/dev/null; then
    SUDO=sudo
  else
    echo "gnc: not root. Run: su -c 'apt-get update && apt-get install -y ${missing[*]}'" >&2
    exit 1
  fi
else
  SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
