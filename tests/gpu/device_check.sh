#!/usr/bin/env bash
# device_check.sh: the GPU checks of gnc, in two halves.
#
#   prepare [BUNDLE]   on a build machine (Debian 12 with the build dependencies and the
#                      CUDA toolkit, no GPU needed): configures a CUDA build for sm_90,
#                      builds the GPU tests and the merge benchmark (static GoogleTest),
#                      gnc-server and gnc-worker, and bundles them with the shared
#                      libraries a bare CUDA machine lacks (gRPC, protobuf, Abseil,
#                      prometheus-cpp, OpenBLAS, ...), a small Fashion-MNIST subset,
#                      launch.sh and this script into BUNDLE (default out/gpu-bundle),
#                      plus BUNDLE.tar.xz to carry. Checks that every bundled binary
#                      starts (--help / --check_config) with only the bundle's libraries.
#   run [OUT_DIR]      on the GPU machine (from the repository or from an unpacked
#                      bundle): runs the GPU tests, the merge benchmark and a short
#                      training run (2 shards and 2 workers, --device=cuda, 127.0.0.1),
#                      writing their logs and summary.txt to OUT_DIR (default $OUT, else
#                      ./gpu-check-out). Finishes within about 8 minutes. Exit 0 when
#                      every part passed.
#
# Environment: GNC_GPU_BUILD_DIR (prepare; default build-gpu in the repository),
# GNC_GPU_BUNDLE (run; default: the bundle this script sits in, else out/gpu-bundle,
# else out/gpu-bundle.tar.xz unpacked under /tmp), TRAIN_STEPS (run; default 40),
# TRAIN_DEVICE (run; default cuda; cpu dry-runs the whole script on a machine without a
# GPU, where the GPU tests skip and the benchmark says there is no device).
#
# Carrying a bundle to the GPU machine: the folder is about 60 MiB (OpenBLAS alone is
# 36), so carry out/gpu-bundle.tar.xz and run `bash tests/gpu/device_check.sh run`.
set -uo pipefail

script=$(readlink -f "${BASH_SOURCE[0]}")
here=$(dirname "$script")

die() { echo "device_check: $*" >&2; exit 1; }

# --- prepare -------------------------------------------------------------------------

# Libraries every GPU machine brings: the C runtime (newer there, backward compatible)
# and the CUDA driver and toolkit libraries (cuBLAS is 600 MB; the run finds it there).
system_lib() {
  case $1 in
    linux-vdso.so.* | ld-linux*.so.* | libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | \
      librt.so.* | libresolv.so.* | libutil.so.* | libstdc++.so.* | libgcc_s.so.*) return 0 ;;
    libcuda.so.* | libnvidia-*.so.* | libcublas.so.* | libcublasLt.so.*) return 0 ;;
  esac
  return 1
}

# collect_libs DEST BINARY...: the binaries' ldd closure minus system_lib, by soname.
collect_libs() {
  local dest=$1 bin name arrow path rest
  shift
  for bin in "$@"; do
    while read -r name arrow path rest; do
      [[ $name == /* ]] && continue  # the loader itself
      system_lib "$name" && continue
      [[ $arrow == "=>" && -f $path ]] || die "$bin: ldd cannot resolve $name"
      [[ -e $dest/$name ]] || cp -L "$path" "$dest/$name"
    done < <(ldd "$bin")
  done
}

# subset_idx SRC.gz DEST.gz COUNT HEADER_BYTES ITEM_BYTES: the first COUNT items of an
# IDX file with its count field rewritten (IDX: magic, big-endian counts, data).
subset_idx() {
  local src=$1 dest=$2 count=$3 header=$4 item=$5
  {
    gzip -dc "$src" | head -c 4
    printf '%b' "$(printf '\\x%02x\\x%02x\\x%02x\\x%02x' $((count >> 24 & 255)) \
      $((count >> 16 & 255)) $((count >> 8 & 255)) $((count & 255)))"
    gzip -dc "$src" | tail -c +9 | head -c $((header - 8 + count * item))
  } | gzip -9 > "$dest"
}

write_wrapper() {
  local bundle=$1 name=$2
  cat > "$bundle/bin/$name" <<EOF
#!/bin/sh
# Runs libexec/$name with the bundle's libraries first, then GNC_CUDA_LIB_PATH (where
# the run found cuBLAS), then the caller's LD_LIBRARY_PATH.
b=\$(cd "\$(dirname "\$0")/.." && pwd)
LD_LIBRARY_PATH="\$b/lib\${GNC_CUDA_LIB_PATH:+:\$GNC_CUDA_LIB_PATH}\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" \\
  exec "\$b/libexec/$name" "\$@"
EOF
  chmod +x "$bundle/bin/$name"
}

prepare() {
  local root bundle build data_src
  root=$(git -C "$here" rev-parse --show-toplevel 2>/dev/null) || root=$(cd "$here/../.." && pwd)
  bundle=${1:-$root/out/gpu-bundle}
  build=${GNC_GPU_BUILD_DIR:-$root/build-gpu}
  data_src=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
  local tests=(gnc_merge_cuda_test gnc_compute_cuda_test gnc_merge_cuda_bench)
  local daemons=(gnc-server gnc-worker)

  local configure_log="$build/configure.log"
  mkdir -p "$build" || die "cannot create $build"
  echo "[prepare] configuring $build (CUDA, sm_90, Release)"
  cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGNC_WITH_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90 -DGNC_BUILD_TESTS=ON > "$configure_log" 2>&1 ||
    { tail -30 "$configure_log"; die "configure failed (log: $configure_log)"; }
  echo "[prepare] building ${tests[*]} ${daemons[*]}"
  ninja -C "$build" -j "$(nproc)" "${tests[@]}" "${daemons[@]}" || die "build failed"

  rm -rf "$bundle" "$bundle.tar.xz"
  mkdir -p "$bundle"/{bin,libexec,lib,data} || die "cannot create $bundle"
  local name path
  for name in "${tests[@]}" "${daemons[@]}"; do
    path=$(find "$build" -name "$name" -type f -perm -u+x -not -path '*/CMakeFiles/*' | head -1)
    [[ -n $path ]] || die "built $name not found under $build"
    cp "$path" "$bundle/libexec/$name"
    write_wrapper "$bundle" "$name"
  done
  collect_libs "$bundle/lib" "$bundle"/libexec/*
  # The CUDA runtime the binaries were linked against (0.7 MB), whatever the GPU
  # machine's toolkit minor version is.
  path=$(ldd "$bundle/libexec/gnc_merge_cuda_test" | awk '/libcudart\.so/ {print $3}')
  [[ -f $path ]] && cp -L "$path" "$bundle/lib/"
  strip --strip-unneeded "$bundle"/libexec/* "$bundle"/lib/* 2>/dev/null

  # 6000 training and 1000 test images: enough for a short run, 3 MB.
  [[ -f $data_src/train-images-idx3-ubyte.gz ]] || die "no Fashion-MNIST under $data_src"
  subset_idx "$data_src/train-images-idx3-ubyte.gz" "$bundle/data/train-images-idx3-ubyte.gz" 6000 16 784
  subset_idx "$data_src/train-labels-idx1-ubyte.gz" "$bundle/data/train-labels-idx1-ubyte.gz" 6000 8 1
  subset_idx "$data_src/t10k-images-idx3-ubyte.gz" "$bundle/data/t10k-images-idx3-ubyte.gz" 1000 16 784
  subset_idx "$data_src/t10k-labels-idx1-ubyte.gz" "$bundle/data/t10k-labels-idx1-ubyte.gz" 1000 8 1

  cp "$root/deploy/local/launch.sh" "$bundle/launch.sh"
  cp "$script" "$bundle/device_check.sh"
  printf '#!/bin/sh\nexec bash "$(dirname "$0")/device_check.sh" run "$@"\n' > "$bundle/run.sh"
  chmod +x "$bundle"/*.sh
  {
    echo "gnc GPU bundle"
    echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (+ local changes)')"
    echo "built: $(date -u +%FT%TZ) on $(uname -n), $(nvcc --version 2>/dev/null | tail -1 ||
      /usr/local/cuda/bin/nvcc --version | tail -1), sm_90"
    echo "needs on the GPU machine: NVIDIA driver, libcublas.so.13 and libcublasLt.so.13"
    (cd "$bundle" && find . -type f | sort)
  } > "$bundle/MANIFEST"

  # Every binary must start with the bundle's libraries alone (plus the system's C
  # runtime and CUDA): --help loads every library without touching the device.
  echo "[prepare] checking that the bundled binaries start"
  local failed=0 out
  for name in "${tests[@]}" "${daemons[@]}"; do
    case $name in
      gnc_merge_cuda_test | gnc_compute_cuda_test) out=$("$bundle/bin/$name" --gtest_list_tests 2>&1) ;;
      gnc_merge_cuda_bench) out=$("$bundle/bin/$name" --help 2>&1; true) ;;
      gnc-server) out=$("$bundle/bin/$name" --check_config --num_shards=2 --num_workers=2 \
        --device=cuda 2>&1) ;;
      gnc-worker) out=$("$bundle/bin/$name" --check_config --servers=127.0.0.1:1 \
        --num_workers=2 --data_dir="$bundle/data" --device=cuda 2>&1) ;;
    esac
    if [[ $? -ne 0 ]] || grep -q "error while loading shared libraries" <<<"$out"; then
      echo "  $name: FAILED"; echo "$out" | tail -5 | sed 's/^/    /'; failed=1
    else
      echo "  $name: starts ($(echo "$out" | grep -v '^\s*$' | head -1 | cut -c1-90))"
    fi
  done
  ((failed == 0)) || die "a bundled binary does not start"
  # The same with ldd: nothing may resolve outside the bundle but system_lib.
  for path in "$bundle"/libexec/* "$bundle"/lib/*; do
    while read -r name arrow lib rest; do
      [[ $arrow == "=>" ]] || continue
      system_lib "$name" && continue
      [[ $lib == "$bundle"/lib/* ]] || { echo "  $path: $name from $lib"; failed=1; }
    done < <(LD_LIBRARY_PATH="$bundle/lib" ldd "$path" 2>/dev/null)
  done
  ((failed == 0)) || die "libraries resolve outside the bundle"

  tar -C "$(dirname "$bundle")" -cJf "$bundle.tar.xz" "$(basename "$bundle")" ||
    die "cannot pack $bundle.tar.xz"
  echo "[prepare] bundle: $bundle ($(du -sh "$bundle" | cut -f1)), packed:" \
    "$bundle.tar.xz ($(du -sh "$bundle.tar.xz" | cut -f1))"
}

# --- run -------------------------------------------------------------------------------

find_bundle() {
  local root
  if [[ -n ${GNC_GPU_BUNDLE:-} ]]; then echo "$GNC_GPU_BUNDLE"; return; fi
  if [[ -x $here/bin/gnc_merge_cuda_test ]]; then echo "$here"; return; fi
  root=$(cd "$here/../.." && pwd)
  if [[ -x $root/out/gpu-bundle/bin/gnc_merge_cuda_test ]]; then echo "$root/out/gpu-bundle"; return; fi
  if [[ -f $root/out/gpu-bundle.tar.xz ]]; then
    mkdir -p /tmp/gnc-gpu && tar -C /tmp/gnc-gpu -xJf "$root/out/gpu-bundle.tar.xz" &&
      echo /tmp/gnc-gpu/gpu-bundle && return
  fi
  return 1
}

# find_cublas: a folder holding libcublas.so.13 (the toolkit's, else any, e.g. a wheel's).
find_cublas() {
  local d f
  for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib \
    /usr/lib/x86_64-linux-gnu; do
    [[ -e $d/libcublas.so.13 ]] && { echo "$d"; return; }
  done
  f=$(timeout 30 find / -xdev -name 'libcublas.so.13*' -not -path '/proc/*' 2>/dev/null | head -1)
  [[ -n $f ]] && dirname "$f"
}

# step NAME TIMEOUT LOG CMD...: runs CMD under a time limit, logging to LOG, and notes
# the outcome in the summary.
step() {
  local name=$1 limit=$2 log=$3 start=$SECONDS rc
  shift 3
  echo "[run] $name (limit ${limit}s)"
  timeout -k 10 "$limit" "$@" > "$log" 2>&1
  rc=$?
  local verdict=PASS
  ((rc == 0)) || verdict="FAIL (exit $rc$( ((rc == 124)) && echo ', timed out'))"
  echo "$name: $verdict in $((SECONDS - start))s" | tee -a "$summary"
  ((rc == 0)) || failures=$((failures + 1))
  return $rc
}

# gtest_totals LOG: GoogleTest's totals, the first skip reason and every failed test.
gtest_totals() {
  grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ tests?' "$1" | sed 's/^/  /' >> "$summary"
  grep -m1 -A1 ': Skipped$' "$1" | tail -1 | sed 's/^/  first skip: /' >> "$summary"
  grep -E '^\[  FAILED  \] [A-Za-z]' "$1" | sort -u | head -20 | sed 's/^/  /' >> "$summary"
}

run() {
  local out bundle cublas
  out=${1:-${OUT:-$PWD/gpu-check-out}}
  mkdir -p "$out" || die "cannot create $out"
  summary=$out/summary.txt
  failures=0
  : > "$summary"
  bundle=$(find_bundle) || die "no bundle: run 'device_check.sh prepare' on a build machine"
  cublas=$(find_cublas)
  export GNC_CUDA_LIB_PATH=${cublas:-}
  {
    echo "gnc device check, $(date -u +%FT%TZ)"
    head -3 "$bundle/MANIFEST" | tail -2
    if command -v nvidia-smi > /dev/null; then
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -2
    else
      echo "nvidia-smi: not found"
    fi
    echo "cuBLAS from: ${cublas:-NOT FOUND}"
    echo
  } >> "$summary"

  step "gnc_merge_cuda_test" 120 "$out/gnc_merge_cuda_test.log" "$bundle/bin/gnc_merge_cuda_test"
  gtest_totals "$out/gnc_merge_cuda_test.log"
  step "gnc_compute_cuda_test" 60 "$out/gnc_compute_cuda_test.log" "$bundle/bin/gnc_compute_cuda_test"
  gtest_totals "$out/gnc_compute_cuda_test.log"
  step "gnc_merge_cuda_bench" 120 "$out/gnc_merge_cuda_bench.txt" "$bundle/bin/gnc_merge_cuda_bench" --runs=7
  sed 's/^/  /' "$out/gnc_merge_cuda_bench.txt" >> "$summary"

  # A short GPU training run: 2 shards and 2 workers, both sides on CUDA.
  local steps=${TRAIN_STEPS:-40} device=${TRAIN_DEVICE:-cuda}
  step "training (2 shards x 2 workers, --device=$device, $steps steps)" 130 "$out/training.log" \
    env GNC_SERVER_BIN="$bundle/bin/gnc-server" GNC_WORKER_BIN="$bundle/bin/gnc-worker" \
    bash "$bundle/launch.sh" --shards 2 --workers 2 --device "$device" --mode gnc --steps "$steps" \
    --batch_size 64 --lr 0.1 --train_limit 6000 --test_limit 1000 --data_dir "$bundle/data" \
    --server_metrics_port 0 --worker_metrics_port 0 --progress_interval 2s --timeout 110
  grep -E "merge backend|compute backend|accuracy|FAIL|rror" "$out/training.log" | head -12 |
    sed 's/^/  /' >> "$summary"
  if [[ $device == cuda ]] && { ! grep -q "merge backend: cuda" "$out/training.log" ||
    ! grep -q "compute backend: cuda" "$out/training.log"; }; then
    echo "training: FAIL (a daemon did not run on CUDA)" | tee -a "$summary"
    failures=$((failures + 1))
  fi

  echo >> "$summary"
  echo "device check: $failures part(s) failed" | tee -a "$summary"
  ((failures == 0))
}

case ${1:-} in
  prepare) shift; prepare "$@" ;;
  run) shift; run "$@" ;;
  -h | --help) sed -n '2,/^set -uo/p' "$script" | sed '$d; s/^# \{0,1\}//' ;;
  *) sed -n '2,/^set -uo/p' "$script" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
