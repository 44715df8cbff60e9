#!/usr/bin/env bash
# compare.sh: does GNC help? Runs a grid of real gnc jobs on this machine (through
# deploy/local/launch.sh: 2 shards and K workers on 127.0.0.1) over smoothing mode
# (none, gnc, isotropic), seed, global batch (a small-batch reference and a large
# one), rho (gnc_scale; isotropic noise at the energy of gnc at that rho), the noise
# timing (gnc-server --gnc_noise=previous|fresh) and model (mlp, cnn). After each job
# it measures the final w with gnc-sharpness (top Hessian eigenvalue,
# epsilon-sharpness, gradient noise along the top eigenvector against tr(Sigma)/d).
#
# Output under --out (default out/compare, or out/compare-quick with --quick):
#   runs/<id>/train.log     the job's output; w.f32 the final w; sharpness.json
#   runs/<id>/run.json      the run: settings, test accuracy / loss and training loss
#                           per epoch, final figures, sharpness (its presence marks the
#                           run done: a second call skips it, so the grid resumes)
#   runs/<id>/run.csv       per epoch: epoch, test_accuracy, test_loss, train_loss
#   results.csv             one row per finished run
#   table.md                means and standard deviations over seeds per setting
#   *.png                   test accuracy against epoch per mode (band over seeds),
#                           final accuracy and sharpness against rho
#   bin/                    the binaries the grid runs (copied from --build_dir at the
#                           first call, so a resumed grid keeps them; delete bin/ to take
#                           a new build)
#
# The grids (see grid_full / grid_quick below and the README):
#   full   mlp and cnn: global batch 8192 (8 x 1024, 100 epochs, peak lr 0.2, 5-epoch
#          warm-up, cosine, momentum 0.9, weight decay 5e-4): none, gnc at rho 0.25,
#          0.5, 1, 2 and isotropic at rho 0.5, 1, 2, 3 seeds each; global batch 256
#          (4 x 64, 30 epochs, peak lr 0.1, 1-epoch warm-up): none, 3 seeds; gnc at rho
#          0.5 and 1 with --gnc_noise=fresh when the server has it (at the same number
#          of optimizer steps: two passes each, so 200 epochs of data). gnc and isotropic
#          runs cap each worker's perturbation per shard (--max_perturbation_norm):
#          --cap_mlp (0.3) and --cap_cnn (0.8), about the largest norm gnc reaches at
#          rho = 1 in the warm-up, so they bind at rho = 2 (which diverges without).
#   quick  the first 8192 training and 2000 test images, 4 epochs: mlp and cnn x
#          none/gnc/isotropic at rho 1 x 2 seeds at batch 1024 (4 x 256), mlp none at
#          batch 128 (4 x 32, 2 epochs) x 2 seeds, and mlp gnc fresh (8 epochs of
#          data: 4 of optimizer steps; skipped while the server has no --gnc_noise);
#          about 2-3 minutes on 2 cores.
#
# Usage: deploy/local/compare.sh [--quick] [--out DIR] [--build_dir DIR] [--cap_mlp X]
#                                [--cap_cnn X] [--only REGEX] [--report_only] [--list]
#   --only REGEX   run only the runs whose id matches (the report covers all done runs)
#   --list         print the grid's run ids and exit
#   --report_only  rebuild results.csv, table.md and the plots from the finished runs
# Exit status: 0 when every run of the grid is done (or skipped for a missing server
# flag) and the report is written; 1 when a run failed (the others still ran); 2 for
# bad options.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
quick=""
out=""
build_dir=${BUILD_DIR:-$root/build}
cap_mlp=${CAP_MLP:-0.3}
cap_cnn=${CAP_CNN:-0.8}
only=""
report_only=""
list_only=""

die_usage() { echo "compare.sh: $*" >&2; exit 2; }
while (($#)); do
  case $1 in
    --quick) quick=1; shift ;;
    --report_only) report_only=1; shift ;;
    --list) list_only=1; shift ;;
    --out) (($# >= 2)) || die_usage "--out needs a value"; out=$2; shift 2 ;;
    --out=*) out=${1#*=}; shift ;;
    --build_dir) (($# >= 2)) || die_usage "--build_dir needs a value"; build_dir=$2; shift 2 ;;
    --build_dir=*) build_dir=${1#*=}; shift ;;
    --cap_mlp) (($# >= 2)) || die_usage "--cap_mlp needs a value"; cap_mlp=$2; shift 2 ;;
    --cap_mlp=*) cap_mlp=${1#*=}; shift ;;
    --cap_cnn) (($# >= 2)) || die_usage "--cap_cnn needs a value"; cap_cnn=$2; shift 2 ;;
    --cap_cnn=*) cap_cnn=${1#*=}; shift ;;
    --only) (($# >= 2)) || die_usage "--only needs a value"; only=$2; shift 2 ;;
    --only=*) only=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die_usage "unknown option $1 (see --help)" ;;
  esac
done
[[ -n $out ]] || out=$root/out/compare${quick:+-quick}
python=/usr/bin/python3
[[ -x $python ]] || python=python3
report="$python $root/deploy/local/compare_report.py"

# log: to the script's own stdout (fd 3), also from a trap that fires while a child's
# output is redirected.
exec 3>&1
log() { echo "[compare] $*" >&3; }

# Grid lines: "model batch mode rho timing seed".
# Seed-major within two tiers, so that a grid stopped part-way has whole seeds: first
# every MLP setting and the CNN's reference and small-rho settings (the CNN costs about
# four times the MLP), then the CNN's other settings.
grid_full() {
  local model seed rho
  for seed in 1 2 3; do
    echo "mlp 8192 none 0 previous $seed"
    for rho in 0.25 0.5 1 2; do echo "mlp 8192 gnc $rho previous $seed"; done
    for rho in 0.5 1 2; do echo "mlp 8192 isotropic $rho previous $seed"; done
    echo "mlp 256 none 0 previous $seed"
    for rho in 0.5 1; do echo "mlp 8192 gnc $rho fresh $seed"; done
    echo "cnn 8192 none 0 previous $seed"
    for rho in 0.25 0.5; do echo "cnn 8192 gnc $rho previous $seed"; done
    echo "cnn 8192 isotropic 0.5 previous $seed"
  done
  for seed in 1 2 3; do
    for rho in 1 2; do echo "cnn 8192 gnc $rho previous $seed"; done
    for rho in 1 2; do echo "cnn 8192 isotropic $rho previous $seed"; done
    echo "cnn 256 none 0 previous $seed"
    for rho in 0.5 1; do echo "cnn 8192 gnc $rho fresh $seed"; done
  done
}
grid_quick() {
  local model seed mode
  for seed in 1 2; do
    echo "mlp 128 none 0 previous $seed"
    for model in mlp cnn; do
      echo "$model 1024 none 0 previous $seed"
      for mode in gnc isotropic; do echo "$model 1024 $mode 1 previous $seed"; done
    done
    echo "mlp 1024 gnc 1 fresh $seed"
  done
}

# settings BATCH: the job's shape and schedule for a global batch (sets workers,
# per_worker, epochs, lr, warmup, limits, timeout, sharpness flags).
settings() {
  local batch=$1 train=60000
  limits=()
  sharp=(--examples=8192 --power_iterations=20 --ascent_steps=10 --noise_batch=64)
  timeout=10800
  if [[ -n $quick ]]; then
    train=8192
    limits=(--train_limit 8192 --test_limit 2000)
    sharp=(--examples=1024 --power_iterations=8 --ascent_steps=4 --noise_batch=64)
    timeout=300
  fi
  case $batch in
    8192) workers=8; per_worker=1024; epochs=100; lr=0.2; warmup=5 ;;
    256) workers=4; per_worker=64; epochs=30; lr=0.1; warmup=1 ;;
    1024) workers=4; per_worker=256; epochs=4; lr=0.2; warmup=1 ;;
    128) workers=4; per_worker=32; epochs=2; lr=0.1; warmup=1 ;;
    *) die_usage "no settings for global batch $batch" ;;
  esac
  # warm-up in epochs -> steps, as every worker counts them
  warmup=$((warmup * (train / workers / per_worker)))
}

grid() { if [[ -n $quick ]]; then grid_quick; else grid_full; fi; }
run_id() { echo "$1-b$2-$3-rho$4-$5-s$6"; }

if [[ -n $list_only ]]; then
  grid | while read -r m b mo r t s; do run_id "$m" "$b" "$mo" "$r" "$t" "$s"; done
  exit 0
fi

mkdir -p "$out/runs"
if [[ -z $report_only ]]; then
  if [[ ! -d $out/bin ]]; then
    for bin in server/gnc-server worker/gnc-worker worker/gnc-sharpness; do
      [[ -x $build_dir/$bin ]] || die_usage "$build_dir/$bin not found (build it, or set --build_dir)"
    done
    mkdir -p "$out/bin.tmp"
    cp "$build_dir/server/gnc-server" "$build_dir/worker/gnc-worker" \
      "$build_dir/worker/gnc-sharpness" "$out/bin.tmp/"
    git -C "$root" rev-parse HEAD >"$out/bin.tmp/commit" 2>/dev/null || echo unknown >"$out/bin.tmp/commit"
    mv "$out/bin.tmp" "$out/bin"
  fi
fi
commit=$(cat "$out/bin/commit" 2>/dev/null || echo unknown)

# The noise-timing axis is a server flag; a server without it runs the previous
# step's noise (the only timing it has) and the fresh runs are skipped.
fresh_supported=""
if [[ -z $report_only ]] &&
  "$out/bin/gnc-server" --check_config --num_workers=2 --gnc_noise=fresh >/dev/null 2>&1; then
  fresh_supported=1
fi
if [[ -z $report_only ]]; then
  if [[ -n $fresh_supported ]]; then
    log "gnc-server has --gnc_noise: running both noise timings"
  else
    log "gnc-server has no --gnc_noise (unknown flag): running the previous-step noise" \
      "only; the fresh runs are skipped"
  fi
fi

failed=0
skipped_fresh=0
planned=0
ran=0
already=0
child=""
# stop_child: the running job's launcher stops its shards and workers on TERM; the
# commands run in the background so that a signal stops them at once.
stop_child() {
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
}
# run_child CMD...: runs CMD in the background and waits for it; its status.
run_child() {
  local st=0
  "$@" 3>&- &
  child=$!
  wait "$child" || st=$?
  child=""
  return "$st"
}
trap stop_child EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

run_one() {
  local model=$1 batch=$2 mode=$3 rho=$4 timing=$5 seed=$6
  local id dir
  id=$(run_id "$@")
  dir=$out/runs/$id
  if [[ -f $dir/run.json ]]; then
    already=$((already + 1))
    return 0
  fi
  if [[ $timing == fresh && -z $fresh_supported ]]; then
    skipped_fresh=$((skipped_fresh + 1))
    return 0
  fi
  settings "$batch"
  # Fresh noise at the same number of optimizer steps: each takes two passes, each pass
  # a minibatch, so the workers go through twice the epochs (twice the compute).
  [[ $timing == fresh ]] && epochs=$((epochs * 2))
  rm -rf "$dir"
  mkdir -p "$dir"
  local cap=$cap_mlp
  [[ $model == cnn ]] && cap=$cap_cnn
  local server_args=()
  [[ -n $fresh_supported ]] && server_args+=(--gnc_noise "$timing")
  if [[ $mode != none ]]; then
    server_args+=(--server_arg=--max_perturbation_norm="$cap")
  fi
  local scale=$rho
  [[ $mode == none ]] && scale=1  # unused in mode none: the server default
  local cmd=(
    "$root/deploy/local/launch.sh" --shards 2 --workers "$workers" --batch_size "$per_worker"
    --epochs "$epochs" --model "$model" --mode "$mode" --gnc_scale "$scale"
    --lr "$lr" --warmup_steps "$warmup" --lr_decay cosine --momentum 0.9 --weight_decay 5e-4
    --seed "$seed" "${limits[@]}" --save_params "$dir/w.f32" --progress_interval 30s
    --server_metrics_port 0 --worker_metrics_port 0 --timeout "$timeout"
    "${server_args[@]}"
  )
  printf '%q ' "${cmd[@]}" >"$dir/cmd.txt"
  echo >>"$dir/cmd.txt"
  log "run $id: $workers x $per_worker, $epochs epochs, lr $lr"
  local start=$SECONDS st=0
  GNC_SERVER_BIN=$out/bin/gnc-server GNC_WORKER_BIN=$out/bin/gnc-worker \
    run_child "${cmd[@]}" </dev/null >"$dir/train.log" 2>&1 || st=$?
  local seconds=$((SECONDS - start))
  local status=ok
  if ((st != 0)); then
    if grep -q -i "non-finite" "$dir/train.log"; then
      status=diverged
      log "run $id diverged (non-finite gradients) after ${seconds}s"
    else
      log "run $id failed with status $st after ${seconds}s; see $dir/train.log (it is" \
        "retried by the next call)"
      failed=$((failed + 1))
      return 0
    fi
  fi
  if [[ $status == ok ]]; then
    local sharp_args=(--params="$dir/w.f32" --model="$model" --out="$dir/sharpness.json"
      "${sharp[@]}")
    if ! OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2} run_child "$out/bin/gnc-sharpness" \
      "${sharp_args[@]}" </dev/null >"$dir/sharpness.log" 2>&1; then
      log "run $id: gnc-sharpness failed; see $dir/sharpness.log"
      failed=$((failed + 1))
      return 0
    fi
  fi
  $report run --dir "$dir" --status "$status" --seconds "$seconds" --commit "$commit" \
    --model "$model" --global_batch "$batch" --workers "$workers" --per_worker "$per_worker" \
    --mode "$mode" --rho "$rho" --cap "$([[ $mode == none ]] && echo 0 || echo "$cap")" \
    --timing "$timing" --seed "$seed" --epochs "$epochs" --lr "$lr" --warmup_steps "$warmup" \
    --quick "${quick:-0}"
  ran=$((ran + 1))
  log "run $id done in ${seconds}s: $($report summary --dir "$dir")"
}

if [[ -z $report_only ]]; then
  start_all=$SECONDS
  while read -r m b mo r t s; do
    id=$(run_id "$m" "$b" "$mo" "$r" "$t" "$s")
    [[ -z $only || $id =~ $only ]] || continue
    planned=$((planned + 1))
    run_one "$m" "$b" "$mo" "$r" "$t" "$s"
  done < <(grid)
  log "grid: $planned run(s): $ran ran, $already already done, $skipped_fresh fresh skipped" \
    "(server without --gnc_noise), $failed failed, in $((SECONDS - start_all))s"
fi

$report report --out "$out"
log "report: $out/table.md, $out/results.csv, $out/*.png"
((failed == 0)) || exit 1
exit 0
