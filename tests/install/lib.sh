# Sourced by the install tests: shards of the installed gnc-server on 127.0.0.1.

# start_shards GNC_SERVER WORKDIR NUM_WORKERS TOTAL_STEPS [SERVER FLAG...]: starts
# two shards on free ports and sets `servers` (host:port list) and `shard_pids`.
# They exit by themselves once every worker has left (--exit_when_done).
start_shards() {
  local bin=$1 dir=$2 workers=$3 steps=$4 i
  shift 4
  shard_pids=()
  for i in 0 1; do
    "$bin" --address=127.0.0.1 --port=0 --port_file="$dir/port$i" --num_shards=2 \
      --shard_index=$i --num_workers="$workers" --total_steps="$steps" "$@" \
      >"$dir/shard$i.log" 2>&1 &
    shard_pids+=($!)
  done
  local deadline=$((SECONDS + 30))
  until [[ -s $dir/port0 && -s $dir/port1 ]]; do
    if ((SECONDS > deadline)); then
      cat "$dir"/shard*.log
      echo "FAIL: waited 30 s for both shards to write their ports"
      exit 1
    fi
    sleep 0.2
  done
  servers="127.0.0.1:$(cat "$dir/port0"),127.0.0.1:$(cat "$dir/port1")"
}

# stop_shards: kills shards still running (a failed test).
stop_shards() {
  local pid
  for pid in "${shard_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}

# wait_shards SECONDS: waits that long at most for the shards to exit, and fails
# unless both exited 0.
wait_shards() {
  local deadline=$((SECONDS + $1)) i
  for i in 0 1; do
    while kill -0 "${shard_pids[$i]}" 2>/dev/null; do
      ((SECONDS < deadline)) || { echo "FAIL: shard $i still running $1 s after the job"; exit 1; }
      sleep 0.2
    done
    wait "${shard_pids[$i]}" || { cat "$work/shard$i.log"; echo "FAIL: shard $i exited with an error"; exit 1; }
  done
}
