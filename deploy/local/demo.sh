#!/usr/bin/env bash
# demo.sh: builds gnc-server and gnc-worker (Release, into build/) and trains the
# built-in MLP (784-256-128-10) on Fashion-MNIST with 2 shards x 4 workers in gnc
# mode on this machine, printing progress and the final test accuracy.
#
# Usage: deploy/local/demo.sh [--shards S] [--workers K] [--mode M] [--epochs E]
#                             [--batch_size B] [--lr X] [--build_dir DIR] [--secure]
#                             [any other deploy/local/launch.sh option]
# or the environment: SHARDS=2 WORKERS=4 MODE=gnc EPOCHS=10 BATCH_SIZE=256 LR=0.2
#   WARMUP_STEPS (default: one epoch) BUILD_DIR=build.
# Defaults: batch 256 per worker, peak lr 0.2 after a one-epoch linear warm-up,
# cosine decay, momentum 0.9, weight decay 5e-4; 10 epochs reach a test accuracy of
# about 0.87 in well under a minute on 2 cores.
# Metrics: shards on 127.0.0.1:9400+s, workers on 127.0.0.1:9500+k (see
# deploy/prometheus/run-local.sh); --server_metrics_port 0 --worker_metrics_port 0
# turn them off.
# --secure: the same job with mutual TLS and a job token: deploy/local/make-certs.sh
# makes a CA, certificates and a token in a temporary folder (removed at the end), and
# every shard and worker uses them (see README, Security).
# --prometheus[=PORT] (default 9090): also run Prometheus beside the job on
# 127.0.0.1:PORT with gnc's recording and alert rules and per-worker noise metrics;
# after training it keeps the run's data there until Ctrl-C.
# Exit status: 0 when every process succeeded and the final accuracy was printed.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
shards=${SHARDS:-2}
workers=${WORKERS:-4}
mode=${MODE:-gnc}
epochs=${EPOCHS:-10}
batch_size=${BATCH_SIZE:-256}
lr=${LR:-0.2}
warmup_steps=${WARMUP_STEPS:-}
build_dir=${BUILD_DIR:-$root/build}
data_dir=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
passthrough=()
prometheus=""
secure=""

while (($#)); do
  case $1 in
    --secure) secure=1; shift ;;
    --prometheus) prometheus=9090; shift ;;
    --prometheus=*) prometheus=${1#*=}; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    --shards=* | --workers=* | --mode=* | --epochs=* | --batch_size=* | --lr=* | \
      --build_dir=* | --warmup_steps=* | --data_dir=*)
      opt=${1%%=*}; set -- "$opt" "${1#*=}" "${@:2}"; continue ;;
    --shards) shards=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --mode) mode=$2; shift 2 ;;
    --epochs) epochs=$2; shift 2 ;;
    --batch_size) batch_size=$2; shift 2 ;;
    --lr) lr=$2; shift 2 ;;
    --warmup_steps) warmup_steps=$2; shift 2 ;;
    --build_dir) build_dir=$2; shift 2 ;;
    --data_dir) data_dir=$2; shift 2 ;;
    *) passthrough+=("$1"); shift ;;
  esac
done

# 1. Dependencies: install what is missing (the script is a no-op when all is there).
need_install=""
for tool in cmake ninja g++ protoc grpc_cpp_plugin; do
  command -v "$tool" >/dev/null || need_install=1
done
for f in /usr/include/grpcpp/grpcpp.h /usr/include/prometheus/exposer.h /usr/include/zlib.h \
  /usr/include/absl/status/status.h "$data_dir/train-images-idx3-ubyte.gz" \
  "$data_dir/t10k-labels-idx1-ubyte.gz"; do
  [[ -e $f ]] || need_install=1
done
compgen -G "/usr/include/*/cblas.h" >/dev/null || [[ -e /usr/include/cblas.h ]] || need_install=1
if [[ -n $need_install ]]; then
  echo "[demo] installing missing dependencies"
  "$root/deploy/local/install-deps.sh"
fi

# 2. Build the two daemons only.
echo "[demo] building gnc-server and gnc-worker into $build_dir"
cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
ninja -C "$build_dir" gnc-server gnc-worker

# 3. Train. One epoch of warm-up by default: floor(60000 / K / B) steps.
[[ -n $warmup_steps ]] || warmup_steps=$((60000 / workers / batch_size))
echo "[demo] $shards shards x $workers workers, mode $mode, $epochs epochs, batch $batch_size" \
  "per worker, peak lr $lr, warm-up $warmup_steps steps, cosine decay"
if [[ -n $prometheus ]]; then
  command -v prometheus >/dev/null || "$root/deploy/local/install-deps.sh" --tests
  passthrough+=(--prometheus "$prometheus" --hold --server_arg=--per_worker_noise_metrics)
fi
log=$(mktemp "${TMPDIR:-/tmp}/gnc-demo.XXXXXX")
trap 'rm -f "$log"' EXIT
if [[ -n $secure ]]; then
  secrets=$(mktemp -d "${TMPDIR:-/tmp}/gnc-demo-secrets.XXXXXX")
  trap 'rm -f "$log"; rm -rf "$secrets"' EXIT
  "$root/deploy/local/make-certs.sh" "$secrets" >/dev/null
  echo "[demo] secure: mutual TLS and a job token (made by make-certs.sh in $secrets)"
  passthrough+=(--tls_dir "$secrets" --auth_token_file "$secrets/token")
fi
start=$SECONDS
status=0
# Ctrl-C reaches the launcher, which stops everything (or, holding Prometheus after a
# finished job, ends the run successfully); this script then reports the outcome.
trap ':' INT
"$root/deploy/local/launch.sh" --build_dir "$build_dir" --data_dir "$data_dir" \
  --shards "$shards" --workers "$workers" --mode "$mode" --epochs "$epochs" \
  --batch_size "$batch_size" --lr "$lr" --warmup_steps "$warmup_steps" --lr_decay cosine \
  --momentum 0.9 --weight_decay 5e-4 "${passthrough[@]}" 2>&1 | tee -i "$log" || status=$?

final=$(grep -o 'final test accuracy .*' "$log" | tail -n 1 || true)
if ((status != 0)) || [[ -z $final ]]; then
  echo "[demo] FAILED (launcher status $status)${final:+; $final}"
  exit 1
fi
echo "[demo] $final (whole run $((SECONDS - start))s)"
