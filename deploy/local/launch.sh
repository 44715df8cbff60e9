#!/usr/bin/env bash
# launch.sh: runs one gnc job on this machine: S gnc-server shards and K gnc-worker
# processes on 127.0.0.1 with free ports. Every line of output is prefixed with
# the process it came from ([shard 0], [worker 3]). Everything the script started is
# stopped when it exits, fails or is interrupted.
#
# Exit status: 0 when every worker succeeded (and no shard failed), 1 otherwise,
# 2 for bad options.
#
# Usage: deploy/local/launch.sh [options] [-- extra gnc-worker flags]
# Every option also reads an environment variable (in brackets) for its default.
#   --shards S              [SHARDS=2]      server shards
#   --workers K             [WORKERS=4]     workers
#   --mode M                [MODE=gnc]      none | gnc | isotropic
#   --epochs E              [EPOCHS=1]
#   --steps N               [STEPS=0]       total steps, overrides --epochs when > 0
#   --batch_size B          [BATCH_SIZE=64] per worker
#   --lr X                  [LR=0.1]        peak learning rate
#   --warmup_steps N        [WARMUP_STEPS=0]
#   --lr_decay D            [LR_DECAY=none] none | step | cosine
#   --momentum X            [MOMENTUM=0.9]
#   --weight_decay X        [WEIGHT_DECAY=0]
#   --gnc_scale X           [GNC_SCALE=1]
#   --gnc_noise T           [GNC_NOISE=previous] previous | fresh (gnc-server --gnc_noise;
#                           fresh takes two passes, each a minibatch, per optimizer step:
#                           --epochs and --steps count passes, --warmup_steps updates)
#   --min_workers N         [MIN_WORKERS=0] quorum after the straggler timeout (0 = all)
#   --straggler_timeout D   [STRAGGLER_TIMEOUT=30s]
#   --model M               [MODEL=mlp]     mlp | cnn (gnc-worker --model)
#   --hidden W,W            [HIDDEN=256,128] the MLP's hidden widths
#   --save_params PATH      [SAVE_PARAMS=]  worker 0 writes the final unperturbed w here
#                           (raw little-endian float32, gnc-worker --save_params)
#   --seed N                [SEED=1]
#   --train_limit N         [TRAIN_LIMIT=0] use the first N training images (0 = all)
#   --test_limit N          [TEST_LIMIT=0]
#   --data_dir DIR          [DATA_DIR=/usr/share/datasets/fashion-mnist]
#   --progress_interval D   [PROGRESS_INTERVAL=5s]
#   --device D              [DEVICE=auto]   for shards and workers: auto | cpu | cuda
#   --server_metrics_port P [SERVER_METRICS_PORT=9400] shard s serves /metrics on P+s (0: off)
#   --worker_metrics_port P [WORKER_METRICS_PORT=9500] worker k serves /metrics on P+k (0: off)
#                           (deploy/prometheus/prometheus.yml scrapes these defaults); a
#                           port already in use is skipped: the next free one is taken
#                           and the addresses are printed
#   --build_dir DIR         [BUILD_DIR=build] finds server/gnc-server, worker/gnc-worker;
#                           GNC_SERVER_BIN / GNC_WORKER_BIN override the binaries
#   --run_dir DIR           [RUN_DIR=] port and pid files (shard-S.port, shard-S.pid,
#                           worker-K.pid); default: a temporary folder, removed at exit
#   --timeout SECONDS       [TIMEOUT=0]     stop everything and fail after this long (0: none)
#   --prometheus PORT       [PROMETHEUS_PORT=0] also run Prometheus on 127.0.0.1:PORT,
#                           scraping every shard and worker (deploy/prometheus/run-local.sh;
#                           needs the metrics ports on), with gnc's rules loaded
#   --hold                  after a successful job, keep Prometheus running (and print
#                           where) until Ctrl-C, which then ends the run with status 0
#   --keep_going            keep the job running when a worker fails (default: only
#                           with --min_workers > 0, where the quorum can carry on)
#   --tls_dir DIR           [TLS_DIR=] mutual TLS with the files make-certs.sh writes in
#                           DIR: shards serve server.crt/.key and require client
#                           certificates from ca.crt; workers trust ca.crt and present
#                           client.crt/.key
#   --auth_token_file FILE  [AUTH_TOKEN_FILE=] the job token, for shards and workers
#   --server_arg FLAG       extra gnc-server flag (repeatable)
#   --worker_arg FLAG       extra gnc-worker flag (repeatable; same as after --)
#   --worker_cmd CMD        [WORKER_CMD=] start CMD (split at spaces) as each worker instead
#                           of gnc-worker, e.g. "python3 examples/fashion_mnist_torch.py";
#                           it gets --servers --rank --num_workers --batch_size --epochs
#                           --steps --seed --train_limit --test_limit --data_dir, the
#                           TLS and token flags above (as gnc-worker's) and the
#                           extra worker flags (no metrics port), with $BUILD_DIR/python
#                           on PYTHONPATH (the gnc Python package)
# OPENBLAS_NUM_THREADS defaults to 1 for the workers (K processes share the cores).
set -uo pipefail

usage() { sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die_usage() { echo "launch.sh: $*" >&2; exit 2; }

shards=${SHARDS:-2}
workers=${WORKERS:-4}
mode=${MODE:-gnc}
gnc_noise=${GNC_NOISE:-previous}
epochs=${EPOCHS:-1}
steps=${STEPS:-0}
batch_size=${BATCH_SIZE:-64}
lr=${LR:-0.1}
warmup_steps=${WARMUP_STEPS:-0}
lr_decay=${LR_DECAY:-none}
momentum=${MOMENTUM:-0.9}
weight_decay=${WEIGHT_DECAY:-0}
gnc_scale=${GNC_SCALE:-1}
min_workers=${MIN_WORKERS:-0}
straggler_timeout=${STRAGGLER_TIMEOUT:-30s}
model=${MODEL:-mlp}
hidden=${HIDDEN:-256,128}
save_params=${SAVE_PARAMS:-}
seed=${SEED:-1}
train_limit=${TRAIN_LIMIT:-0}
test_limit=${TEST_LIMIT:-0}
data_dir=${DATA_DIR:-/usr/share/datasets/fashion-mnist}
progress_interval=${PROGRESS_INTERVAL:-5s}
device=${DEVICE:-auto}
server_metrics_port=${SERVER_METRICS_PORT:-9400}
worker_metrics_port=${WORKER_METRICS_PORT:-9500}
build_dir=${BUILD_DIR:-build}
run_dir=${RUN_DIR:-}
timeout=${TIMEOUT:-0}
keep_going=""
prometheus_port=${PROMETHEUS_PORT:-0}
hold=""
prometheus_pid=""
holding=""
server_extra=()
worker_extra=()
worker_cmd=${WORKER_CMD:-}
tls_dir=${TLS_DIR:-}
auth_token_file=${AUTH_TOKEN_FILE:-}

while (($#)); do
  opt=$1
  case $opt in
    -h | --help) usage; exit 0 ;;
    --keep_going) keep_going=1; shift; continue ;;
    --hold) hold=1; shift; continue ;;
    --) shift; worker_extra+=("$@"); break ;;
  esac
  # Accept both "--flag value" and "--flag=value".
  if [[ $opt == --*=* ]]; then
    val=${opt#*=}; opt=${opt%%=*}; shift
  else
    (($# >= 2)) || die_usage "$opt needs a value"
    val=$2; shift 2
  fi
  case $opt in
    --shards) shards=$val ;;
    --workers) workers=$val ;;
    --mode) mode=$val ;;
    --epochs) epochs=$val ;;
    --steps) steps=$val ;;
    --batch_size) batch_size=$val ;;
    --lr) lr=$val ;;
    --warmup_steps) warmup_steps=$val ;;
    --lr_decay) lr_decay=$val ;;
    --momentum) momentum=$val ;;
    --weight_decay) weight_decay=$val ;;
    --gnc_scale) gnc_scale=$val ;;
    --gnc_noise) gnc_noise=$val ;;
    --min_workers) min_workers=$val ;;
    --straggler_timeout) straggler_timeout=$val ;;
    --model) model=$val ;;
    --hidden) hidden=$val ;;
    --save_params) save_params=$val ;;
    --seed) seed=$val ;;
    --train_limit) train_limit=$val ;;
    --test_limit) test_limit=$val ;;
    --data_dir) data_dir=$val ;;
    --progress_interval) progress_interval=$val ;;
    --device) device=$val ;;
    --server_metrics_port) server_metrics_port=$val ;;
    --worker_metrics_port) worker_metrics_port=$val ;;
    --build_dir) build_dir=$val ;;
    --run_dir) run_dir=$val ;;
    --timeout) timeout=$val ;;
    --prometheus) prometheus_port=$val ;;
    --server_arg) server_extra+=("$val") ;;
    --worker_arg) worker_extra+=("$val") ;;
    --worker_cmd) worker_cmd=$val ;;
    --tls_dir) tls_dir=$val ;;
    --auth_token_file) auth_token_file=$val ;;
    *) die_usage "unknown option $opt (see --help)" ;;
  esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
for pair in "shards:$shards" "workers:$workers" "epochs:$epochs" "steps:$steps" \
  "batch_size:$batch_size" "warmup_steps:$warmup_steps" "min_workers:$min_workers" \
  "train_limit:$train_limit" "server_metrics_port:$server_metrics_port" \
  "worker_metrics_port:$worker_metrics_port" "timeout:$timeout"; do
  is_uint "${pair#*:}" || die_usage "--${pair%%:*} must be a non-negative integer, got '${pair#*:}'"
done
((shards >= 1 && workers >= 1 && batch_size >= 1)) ||
  die_usage "--shards, --workers and --batch_size must be >= 1"
[[ -n $keep_going ]] || { ((min_workers > 0)) && keep_going=1; }

server_bin=${GNC_SERVER_BIN:-$build_dir/server/gnc-server}
worker_bin=${GNC_WORKER_BIN:-$build_dir/worker/gnc-worker}
bins=("$server_bin")
[[ -n $worker_cmd ]] || bins+=("$worker_bin")
for bin in "${bins[@]}"; do
  [[ -x $bin ]] || die_usage "$bin not found or not executable (build it, or set --build_dir)"
done

# The job length, as every worker computes it: each rank gets floor(N / K) training
# images and runs floor(slice / batch) steps per epoch. The shards need it for the
# cosine schedule, and the workers check that they agree with it.
train_count=60000
((train_limit > 0 && train_limit < train_count)) && train_count=$train_limit
steps_per_epoch=$((train_count / workers / batch_size))
((steps_per_epoch >= 1)) ||
  die_usage "batch_size $batch_size exceeds the $((train_count / workers)) images per worker"
total_steps=$steps
((total_steps > 0)) || total_steps=$((epochs * steps_per_epoch))
# The workers count passes; the shards' schedule counts optimizer steps.
case $gnc_noise in
  previous) server_steps=$total_steps ;;
  fresh)
    ((total_steps % 2 == 0)) ||
      die_usage "--gnc_noise fresh needs an even number of passes, got $total_steps"
    server_steps=$((total_steps / 2))
    ;;
  *) die_usage "--gnc_noise must be previous or fresh, got '$gnc_noise'" ;;
esac

# Transport security: flags for both sides, checked with the rest below.
server_security=()
worker_security=()
if [[ -n $tls_dir ]]; then
  for f in ca.crt server.crt server.key client.crt client.key; do
    [[ -r $tls_dir/$f ]] || die_usage "--tls_dir: $tls_dir/$f is missing (make it with deploy/local/make-certs.sh)"
  done
  server_security+=(--tls_cert_file="$tls_dir/server.crt" --tls_key_file="$tls_dir/server.key"
    --tls_client_ca_file="$tls_dir/ca.crt")
  worker_security+=(--tls_ca_file="$tls_dir/ca.crt" --tls_cert_file="$tls_dir/client.crt"
    --tls_key_file="$tls_dir/client.key")
fi
if [[ -n $auth_token_file ]]; then
  [[ -r $auth_token_file ]] || die_usage "--auth_token_file: cannot read $auth_token_file"
  server_security+=(--auth_token_file="$auth_token_file")
  worker_security+=(--auth_token_file="$auth_token_file")
fi

server_flags=(
  --num_shards="$shards" --num_workers="$workers" --min_workers="$min_workers"
  --mode="$mode" --gnc_scale="$gnc_scale" --lr="$lr" --warmup_steps="$warmup_steps"
  --lr_decay="$lr_decay" --total_steps="$server_steps" --gnc_noise="$gnc_noise"
  --momentum="$momentum"
  --weight_decay="$weight_decay" --straggler_timeout="$straggler_timeout"
  --device="$device" --address=127.0.0.1 --port=0 --metrics_address=127.0.0.1
  "${server_security[@]}" "${server_extra[@]}"
)
worker_flags=(
  --num_workers="$workers" --batch_size="$batch_size" --epochs="$epochs" --steps="$steps"
  --model="$model" --hidden="$hidden" --seed="$seed" --train_limit="$train_limit" --test_limit="$test_limit"
  --data_dir="$data_dir" --progress_interval="$progress_interval" --device="$device"
  --metrics_address=127.0.0.1
  "${worker_security[@]}" "${worker_extra[@]}"
)

# Flag errors are cheaper to find before anything runs.
"$server_bin" "${server_flags[@]}" --shard_index=0 --check_config >/dev/null ||
  die_usage "gnc-server refuses these flags"
if [[ -z $worker_cmd ]]; then
  "$worker_bin" "${worker_flags[@]}" --servers=127.0.0.1:1 --rank=0 --check_config >/dev/null ||
    die_usage "gnc-worker refuses these flags"
else
  read -r -a worker_cmd_words <<<"$worker_cmd"
  ((${#worker_cmd_words[@]})) || die_usage "--worker_cmd is empty"
  worker_flags=(
    --num_workers="$workers" --batch_size="$batch_size" --epochs="$epochs" --steps="$steps"
    --seed="$seed" --train_limit="$train_limit" --test_limit="$test_limit" --data_dir="$data_dir"
    "${worker_security[@]}" "${worker_extra[@]}"
  )
  export PYTHONPATH="$(realpath -m "$build_dir/python")${PYTHONPATH:+:$PYTHONPATH}"
  worker_metrics_port=0  # only gnc-worker serves metrics
fi

own_run_dir=""
if [[ -z $run_dir ]]; then
  run_dir=$(mktemp -d "${TMPDIR:-/tmp}/gnc-launch.XXXXXX") || exit 1
  own_run_dir=1
else
  mkdir -p "$run_dir" || exit 1
fi

declare -A name_of=()  # pid -> "shard 0" / "worker 3"
running=()             # pids not yet reaped
server_pids=()
worker_pids=()
watchdog=""

log() { echo "[launch] $*"; }

# stop_all: TERM, then KILL after a grace period, every process still running.
stop_all() {
  local pid alive=()
  for pid in "${running[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
  if ((${#alive[@]})); then
    kill -TERM "${alive[@]}" 2>/dev/null
    for _ in $(seq 50); do
      local still=()
      for pid in "${alive[@]}"; do kill -0 "$pid" 2>/dev/null && still+=("$pid"); done
      ((${#still[@]})) || break
      sleep 0.1
    done
    for pid in "${alive[@]}"; do kill -KILL "$pid" 2>/dev/null; done
  fi
  for pid in "${running[@]}"; do wait "$pid" 2>/dev/null; done
  running=()
  [[ -n $watchdog ]] && { kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null; watchdog=""; }
}

cleanup() {
  stop_all
  [[ -n $own_run_dir ]] && rm -rf "$run_dir"
}
trap cleanup EXIT
trap 'if [[ -n $holding ]]; then exit 0; fi; log "interrupted: stopping everything"; exit 130' INT
trap 'log "terminated: stopping everything"; exit 143' TERM

# start NAME CMD...: runs CMD in the background with its output prefixed by [NAME];
# sets started_pid.
start() {
  local name=$1; shift
  "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
  started_pid=$!
  name_of[$started_pid]=$name
  running+=("$started_pid")
  echo "$started_pid" >"$run_dir/${name// /-}.pid"
}

forget() {
  local pid=$1 keep=() p
  for p in "${running[@]}"; do [[ $p == "$pid" ]] || keep+=("$p"); done
  running=("${keep[@]}")
}

describe_status() {
  local st=$1
  if ((st > 128)); then echo "status $st (signal $((st - 128)))"; else echo "status $st"; fi
}

# next_free_port P: P or the first port above it that nothing listens on (sets port).
next_free_port() {
  port=$1
  while (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
}
server_metrics=()
worker_metrics=()
if ((server_metrics_port > 0)); then
  port=$((server_metrics_port - 1))
  for ((s = 0; s < shards; s++)); do next_free_port $((port + 1)); server_metrics+=("$port"); done
fi
if ((worker_metrics_port > 0)); then
  port=$((worker_metrics_port - 1))
  for ((k = 0; k < workers; k++)); do next_free_port $((port + 1)); worker_metrics+=("$port"); done
fi

export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}
log "job: $shards shard(s), $workers worker(s), mode $mode, batch $batch_size per worker," \
  "$total_steps steps ($steps_per_epoch per epoch), lr $lr, warm-up $warmup_steps, decay $lr_decay"
if [[ -n $tls_dir || -n $auth_token_file ]]; then
  log "security: ${tls_dir:+mutual TLS (certificates in $tls_dir)}${tls_dir:+${auth_token_file:+, }}${auth_token_file:+job token from $auth_token_file}"
fi

for ((s = 0; s < shards; s++)); do
  extra=()
  ((server_metrics_port > 0)) && extra+=(--metrics_port="${server_metrics[s]}")
  rm -f "$run_dir/shard-$s.port"
  start "shard $s" "$server_bin" "${server_flags[@]}" --shard_index="$s" \
    --port_file="$run_dir/shard-$s.port" "${extra[@]}"
  server_pids+=("$started_pid")
done

servers=""
for ((s = 0; s < shards; s++)); do
  for ((i = 0; i < 300; i++)); do
    [[ -s $run_dir/shard-$s.port ]] && break
    kill -0 "${server_pids[s]}" 2>/dev/null || break
    sleep 0.1
  done
  if [[ ! -s $run_dir/shard-$s.port ]]; then
    log "shard $s did not start listening"
    exit 1
  fi
  servers+="${servers:+,}127.0.0.1:$(<"$run_dir/shard-$s.port")"
done
log "shards listening on $servers"
join_targets() { local IFS=,; echo "${*/#/127.0.0.1:}"; }
((${#server_metrics[@]})) && log "shard metrics on $(join_targets "${server_metrics[@]}")"
((${#worker_metrics[@]})) && log "worker metrics on $(join_targets "${worker_metrics[@]}")"

if ((prometheus_port > 0)); then
  ((${#server_metrics[@]})) || die_usage "--prometheus needs --server_metrics_port > 0"
  prom_args=(--servers "$(join_targets "${server_metrics[@]}")" --port "$prometheus_port"
    --dir "$run_dir/prometheus" --scrape-interval 1s)
  ((${#worker_metrics[@]})) && prom_args+=(--workers "$(join_targets "${worker_metrics[@]}")")
  start "prometheus" "$(dirname "${BASH_SOURCE[0]}")/../prometheus/run-local.sh" "${prom_args[@]}"
  prometheus_pid=$started_pid
  log "Prometheus on http://127.0.0.1:$prometheus_port/ (graph gnc:gradient_noise_scale," \
    "gnc:step_rate, ...; dashboard: deploy/grafana/dashboards/gnc-dashboard.json)"
fi

for ((k = 0; k < workers; k++)); do
  extra=()
  ((worker_metrics_port > 0)) && extra+=(--metrics_port="${worker_metrics[k]}")
  ((k == 0)) && [[ -n $save_params ]] && extra+=(--save_params="$save_params")
  if [[ -n $worker_cmd ]]; then
    start "worker $k" "${worker_cmd_words[@]}" "${worker_flags[@]}" --servers="$servers" --rank="$k"
  else
    start "worker $k" "$worker_bin" "${worker_flags[@]}" --servers="$servers" --rank="$k" "${extra[@]}"
  fi
  worker_pids+=("$started_pid")
done

if ((timeout > 0)); then
  sleep "$timeout" &
  watchdog=$!
fi

start_time=$SECONDS
workers_left=$workers
failed_workers=0
failed_shards=0
is_worker() { [[ ${name_of[$1]:-} == worker* ]]; }

# Reap processes as they end until every worker has.
while ((workers_left > 0)); do
  wait_list=("${running[@]}")
  [[ -n $watchdog ]] && wait_list+=("$watchdog")
  done_pid=""
  wait -n -p done_pid "${wait_list[@]}"
  st=$?
  [[ -n $done_pid ]] || continue
  if [[ $done_pid == "$watchdog" ]]; then
    watchdog=""
    log "timeout: the job ran past ${timeout}s; stopping everything"
    exit 1
  fi
  forget "$done_pid"
  name=${name_of[$done_pid]}
  if is_worker "$done_pid"; then
    workers_left=$((workers_left - 1))
    if ((st == 0)); then
      log "$name finished"
    else
      failed_workers=$((failed_workers + 1))
      log "$name failed with $(describe_status "$st")"
      if [[ -z $keep_going ]]; then
        log "stopping the job (use --keep_going or --min_workers to carry on without it)"
        exit 1
      fi
    fi
  elif [[ $done_pid == "$prometheus_pid" ]]; then
    log "prometheus exited with $(describe_status "$st"); the job goes on without it"
    prometheus_pid=""
  elif ((st == 0)); then
    # A shard exits 0 once every worker has left; the last worker may not have been
    # reaped yet.
    log "$name stopped"
  else
    failed_shards=$((failed_shards + 1))
    log "$name failed with $(describe_status "$st") while workers were running"
    exit 1
  fi
done

# The shards exit on their own once every live worker has left after the last step
# (a worker that died is not waited for); they are stopped after a grace period.
for ((i = 0; i < 100; i++)); do
  alive=0
  for pid in "${server_pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
  ((alive)) || break
  sleep 0.1
done
for pid in "${server_pids[@]}"; do
  [[ " ${running[*]} " == *" $pid "* ]] || continue  # already reaped
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null
  fi
  wait "$pid"
  st=$?
  forget "$pid"
  # 143: stopped by our TERM before it had installed its handler; not a failure.
  if ((st != 0 && st != 143)); then
    failed_shards=$((failed_shards + 1))
    log "${name_of[$pid]} exited with $(describe_status "$st")"
  fi
done

elapsed=$((SECONDS - start_time))
if ((failed_workers == 0 && failed_shards == 0)); then
  log "done: all $workers workers succeeded in ${elapsed}s"
  if [[ -n $hold && -n $prometheus_pid ]]; then
    holding=1
    log "Prometheus keeps this run at http://127.0.0.1:$prometheus_port/ - press Ctrl-C to stop it"
    wait "$prometheus_pid"
  fi
  exit 0
fi
log "done in ${elapsed}s: $failed_workers of $workers workers failed, $failed_shards shard(s) failed"
exit 1
