# Shared helpers of the failure tests (sourced, not run): real gnc-server and
# gnc-worker processes on 127.0.0.1 at fixed free ports, so that a killed shard can
# come back at the same address. Usage: <test>.sh GNC_SERVER_BIN GNC_WORKER_BIN
source "$(dirname "${BASH_SOURCE[0]}")/worker_lib.sh"

mkdir -p "$WORK/run"
all_pids=()
stop_all() {
  local p
  for p in "${all_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${all_pids[@]}"; do wait "$p" 2>/dev/null; done
  all_pids=()
}
trap 'rc=$?; stop_all; (exit $rc); finish' EXIT

# free_port: a port nobody listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# The job every failure test runs unless it says otherwise: S=2, K=2, the MLP on the
# first 6000 training images (46 steps per epoch at batch 64).
SHARDS=2
WORKERS=2
EPOCHS=${EPOCHS:-6}
STEPS_PER_EPOCH=46
TOTAL_STEPS=$((EPOCHS * STEPS_PER_EPOCH))
MODE=${MODE:-none}
ports=()
metrics_ports=()
for ((s = 0; s < SHARDS; s++)); do
  ports+=("$(free_port)")
  metrics_ports+=("$(free_port)")
done
ADDRESSES=$(for p in "${ports[@]}"; do printf '127.0.0.1:%s,' "$p"; done)
ADDRESSES=${ADDRESSES%,}

# start_shard S LOG [FLAG...]: starts shard S at its fixed port; sets $started.
start_shard() {
  local s=$1 log=$2
  shift 2
  "$GNC_SERVER_BIN" --address=127.0.0.1 --port="${ports[$s]}" --shard_index="$s" \
    --num_shards="$SHARDS" --num_workers="$WORKERS" --mode="$MODE" --lr=0.1 --warmup_steps=10 \
    --lr_decay=cosine --total_steps="$TOTAL_STEPS" --weight_decay=5e-4 --device=cpu \
    --metrics_port="${metrics_ports[$s]}" --metrics_address=127.0.0.1 --drain_timeout=3s \
    "$@" >>"$log" 2>&1 &
  started=$!
  all_pids+=("$started")
}

# start_worker K LOG [FLAG...]: starts worker K; sets $started.
start_worker() {
  local k=$1 log=$2
  shift 2
  OPENBLAS_NUM_THREADS=1 "$GNC_WORKER_BIN" --servers="$ADDRESSES" --rank="$k" \
    --num_workers="$WORKERS" --epochs="$EPOCHS" --batch_size=64 --train_limit=6000 \
    --test_limit=2000 --progress_interval=0.05s --device=cpu --connect_timeout=20s \
    --reconnect_timeout=20s --step_timeout=60s "$@" >>"$log" 2>&1 &
  started=$!
  all_pids+=("$started")
}

# start_job PREFIX [SHARD_FLAG...] [-- WORKER_FLAG...]: every shard and worker, logging
# to $WORK/PREFIX-shard-S.log and $WORK/PREFIX-worker-K.log; "{rank}" in a worker flag
# becomes the worker's rank. Fills shards[] and workers[] with their pids.
start_job() {
  local prefix=$1 s k
  shift
  local sflags=()
  while (($#)) && [[ $1 != -- ]]; do sflags+=("$1"); shift; done
  (($#)) && shift
  shards=() workers=()
  for ((s = 0; s < SHARDS; s++)); do
    start_shard "$s" "$WORK/$prefix-shard-$s.log" "${sflags[@]}"
    shards+=("$started")
  done
  for ((k = 0; k < WORKERS; k++)); do
    start_worker "$k" "$WORK/$prefix-worker-$k.log" "${@//\{rank\}/$k}"
    workers+=("$started")
  done
}

# How much longer the tests' own waits are in a sanitized build (tests/sanitize.sh sets
# GNC_TIME_SCALE): its daemons run several times slower, while what a wait checks (that
# a process ends at all, and by its own deadline's route) is the same.
TIME_SCALE=${GNC_TIME_SCALE:-1}

# wait_for_step K N LOG: waits until worker K reports a step above N (up to 60 s
# times TIME_SCALE).
wait_for_step() {
  local k=$1 n=$2 log=$3 i step
  for ((i = 0; i < 600 * TIME_SCALE; i++)); do
    step=$(sed -n "s/.*worker $k step \([0-9]*\)\/.*/\1/p" "$log" | tail -n 1)
    [[ -n $step ]] && ((step > n)) && return 0
    sleep 0.1
  done
  cat "$log" >&2
  fail "worker $k never got past step $n"
}

# wait_exit PID SECONDS: the exit status of PID, or a failure if it runs longer
# (SECONDS times TIME_SCALE).
wait_exit() {
  local pid=$1 limit=$(($2 * TIME_SCALE)) i
  for ((i = 0; i < limit * 10; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"
      return $?
    fi
    sleep 0.1
  done
  fail "process $pid still runs after ${limit} s"
}

# metric S NAME: the value of gnc metric NAME on shard S (empty if unreachable).
metric() {
  python3 - "${metrics_ports[$1]}" "$2" <<'EOF' 2>/dev/null
import sys, urllib.request
port, name = sys.argv[1], sys.argv[2]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
for line in body.splitlines():
    if line.startswith(name + "{") or line.startswith(name + " "):
        print(line.rsplit(" ", 1)[1])
        break
EOF
}

now() { date +%s.%N; }
