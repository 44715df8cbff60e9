#!/usr/bin/env bash
# libtorch_example_test.sh SOURCE_DIR PREFIX WORKDIR: examples/libtorch (a CNN on
# Fashion-MNIST with Debian's libtorch-dev) built against the gnc installed in
# PREFIX, then a short job: two installed shards, two workers, 60 steps of batch 64.
# The job must end cleanly and the CNN must beat chance clearly (test accuracy on
# 2000 images at least 0.5; chance is 0.1). Skips when libtorch-dev is missing.
set -euo pipefail
src=$1
prefix=$2
work=$3
# shellcheck source=tests/install/lib.sh
source "$src/tests/install/lib.sh"
if ! compgen -G "/usr/lib/*/cmake/Torch/TorchConfig.cmake" >/dev/null && [[ -z ${Torch_DIR:-} ]]; then
  echo "SKIP: libtorch-dev not installed (deploy/local/install-deps.sh --tests installs it)"
  exit 77
fi
[[ -d /usr/share/datasets/fashion-mnist ]] ||
  { echo "SKIP: dataset-fashion-mnist not installed"; exit 77; }
[[ -x $prefix/bin/gnc-server ]] || { echo "FAIL: nothing installed in $prefix (test install_into_prefix)"; exit 1; }
mkdir -p "$work"
rm -f "$work"/port* "$work"/*.log
trap stop_shards EXIT

# The build folder is kept between runs: a rebuild only follows what changed.
cmake -S "$src/examples/libtorch" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$prefix" >"$work/configure.log" 2>&1 ||
  { cat "$work/configure.log"; echo "FAIL: configure examples/libtorch"; exit 1; }
cmake --build "$work/build" >"$work/build.log" 2>&1 ||
  { tail -n 40 "$work/build.log"; echo "FAIL: build examples/libtorch"; exit 1; }

steps=60
start_shards "$prefix/bin/gnc-server" "$work" 2 $steps --lr=0.05 --momentum=0.9
trainer=("$work/build/gnc_cnn_trainer" --servers="$servers" --num_workers=2 --steps=$steps
  --batch_size=64 --test_limit=2000)
timeout 300 "${trainer[@]}" --rank=1 >"$work/worker1.log" 2>&1 &
worker1=$!
status=0
timeout 300 "${trainer[@]}" --rank=0 | tee "$work/worker0.log" || status=$?
wait "$worker1" || { cat "$work/worker1.log"; echo "FAIL: worker 1 failed"; exit 1; }
((status == 0)) || { cat "$work"/shard*.log; echo "FAIL: worker 0 exited $status"; exit 1; }
wait_shards 30
accuracy=$(grep -o 'final test accuracy [0-9.]*' "$work/worker0.log" | awk '{print $4}')
[[ -n $accuracy ]] || { echo "FAIL: worker 0 printed no final test accuracy"; exit 1; }
awk -v a="$accuracy" 'BEGIN { exit !(a >= 0.5) }' ||
  { echo "FAIL: test accuracy $accuracy after $steps steps: the CNN did not learn"; exit 1; }
echo "libtorch CNN trained through gnc: test accuracy $accuracy after $steps steps"
