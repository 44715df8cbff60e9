#!/usr/bin/env bash
# A shard restarted without a checkpoint in a job past step 0 must not take a new w0:
# the running workers, and a worker restarted afterwards, exit 1 with a message that
# names the blank shard and the step of the other; the blank shard stays blank, so no
# code path trains on a mixed model.
EPOCHS=3
source "$(dirname "$0")/failure_lib.sh"

start_job run -- --reconnect_timeout=10s
wait_for_step 0 30 "$WORK/run-worker-0.log"
kill -KILL "${shards[1]}"
wait "${shards[1]}" 2>/dev/null
start_shard 1 "$WORK/run-shard-1-restarted.log"
shards[1]=$started

check_refusal() {  # check_refusal LOG WHO
  grep -q "shard 1 (127.0.0.1:${ports[1]}) holds no job" "$1" ||
    { cat "$1"; fail "$2: the error does not name the blank shard 1"; }
  grep -q "shard 0 (127.0.0.1:${ports[0]}) is at step [1-9][0-9]*" "$1" ||
    { cat "$1"; fail "$2: the error does not give shard 0's step"; }
}
for ((k = 0; k < WORKERS; k++)); do
  st=0
  wait_exit "${workers[$k]}" 60 || st=$?
  ((st == 1)) || { cat "$WORK/run-worker-$k.log"; fail "worker $k exited with $st, expected 1"; }
  check_refusal "$WORK/run-worker-$k.log" "worker $k"
done
# What Kubernetes does next: the worker pods restart. They must refuse as well.
start_worker 0 "$WORK/run-worker-0-restarted.log"
st=0
wait_exit "$started" 60 || st=$?
((st == 1)) || { cat "$WORK/run-worker-0-restarted.log"; fail "restarted worker exited with $st"; }
check_refusal "$WORK/run-worker-0-restarted.log" "the restarted worker"
grep -q "parameters initialised" "$WORK/run-shard-1-restarted.log" &&
  fail "the blank shard took a new w0"
[[ $(metric 1 gnc_job_generation) != "" ]] || fail "shard 1's metrics are unreachable"
for ((s = 0; s < SHARDS; s++)); do
  kill -TERM "${shards[$s]}"
  wait_exit "${shards[$s]}" 10 || fail "shard $s exited with $?"
done
echo "PASS: $(grep -o 'worker 0: a shard came back.*' "$WORK/run-worker-0-restarted.log" | head -c 300)"
