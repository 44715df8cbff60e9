#!/usr/bin/env bash
# downstream_test.sh SOURCE_DIR PREFIX WORKDIR: a trainer of its own (tests/downstream,
# linear regression with known true weights) configured against the gnc installed
# in PREFIX with find_package(gnc) alone, built, and run for 60 steps against two
# shards of the installed gnc-server; it must learn the true weights (relative
# error below 0.05) and the shards must exit 0 after it leaves. The same source is
# also compiled and linked with pkg-config's flags (gnc.pc).
set -euo pipefail
src=$1
prefix=$2
work=$3
# shellcheck source=tests/install/lib.sh
source "$src/tests/install/lib.sh"
[[ -x $prefix/bin/gnc-server ]] || { echo "FAIL: nothing installed in $prefix (test install_into_prefix)"; exit 1; }
rm -rf "$work"
mkdir -p "$work"
trap stop_shards EXIT

cmake -S "$src/tests/downstream" -B "$work/build" -DCMAKE_PREFIX_PATH="$prefix" \
  >"$work/configure.log" 2>&1 || { cat "$work/configure.log"; echo "FAIL: configure"; exit 1; }
found=$(sed -n 's/^gnc_DIR:PATH=//p' "$work/build/CMakeCache.txt")
[[ $found == "$prefix"/* ]] || { echo "FAIL: find_package(gnc) found $found, not the install in $prefix"; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 || { cat "$work/build.log"; echo "FAIL: build"; exit 1; }

pc_dir=$(dirname "$(find "$prefix" -name gnc.pc | head -n 1)")
flags=$(PKG_CONFIG_PATH=$pc_dir pkg-config --cflags --libs gnc) || { echo "FAIL: pkg-config gnc"; exit 1; }
g++ -std=c++20 "$src/tests/downstream/linear_trainer.cc" $flags -o "$work/linear_trainer_pc" ||
  { echo "FAIL: compiling with pkg-config --cflags --libs gnc: $flags"; exit 1; }

start_shards "$prefix/bin/gnc-server" "$work" 1 60 --lr=0.2 --momentum=0.5
status=0
timeout 120 "$work/build/linear_trainer" --servers="$servers" --steps=60 || status=$?
((status == 0)) || { cat "$work"/shard*.log; echo "FAIL: linear_trainer exited $status"; exit 1; }
wait_shards 30
echo "downstream trainer built with find_package(gnc) (and with pkg-config) against $prefix:" \
  "learned the true weights through two installed shards"
