#!/usr/bin/env bash
# A worker killed with SIGKILL in a job without a quorum: the job cannot progress.
# The other worker exits 1 within its --step_timeout with a message naming the rank
# the shards wait for; each shard reports the stalled step in its log and metrics
# (gnc_waiting_workers, gnc_step_wait_seconds) and drains cleanly when told to.
EPOCHS=3
source "$(dirname "$0")/failure_lib.sh"

start_job run --stall_report_after=1s -- --step_timeout=4s
wait_for_step 0 30 "$WORK/run-worker-0.log"
kill -KILL "${workers[1]}"
wait "${workers[1]}" 2>/dev/null
st=0
wait_exit "${workers[0]}" 40 || st=$?
((st == 1)) || { cat "$WORK/run-worker-0.log"; fail "worker 0 exited with $st, expected 1"; }
grep -q "no progress within 4s waiting for the next evaluation point" "$WORK/run-worker-0.log" ||
  { cat "$WORK/run-worker-0.log"; fail "worker 0 did not say what it waited for"; }
# Rank 1 may have sent its last gradient to one shard before it was killed: that shard
# has moved on and waits for both ranks, the other for rank 1 alone.
grep -qE "shard [0-9]+ \(127\.0\.0\.1:[0-9]+\): at step [0-9]+, waiting [0-9]+ s for rank\(s\) ([0-9]+,)*1([;,]|$)" \
  "$WORK/run-worker-0.log" || { cat "$WORK/run-worker-0.log"; fail "worker 0 did not name rank 1"; }
for ((s = 0; s < SHARDS; s++)); do
  grep -qE "has waited .* for rank\(s\) ([0-9]+ \([^)]*\), )*1 \(disconnected" "$WORK/run-shard-$s.log" ||
    { cat "$WORK/run-shard-$s.log"; fail "shard $s did not report the wait for rank 1"; }
  waiting=$(metric "$s" gnc_waiting_workers)
  [[ $waiting == 1 || $waiting == 2 ]] || fail "shard $s: gnc_waiting_workers is '$waiting'"
  waited=$(metric "$s" gnc_step_wait_seconds)
  at_least "$waited" 1 || fail "shard $s: gnc_step_wait_seconds is '$waited'"
  kill -TERM "${shards[$s]}"
  wait_exit "${shards[$s]}" 10 || fail "shard $s exited with $?"
done
echo "PASS: $(grep -o 'worker 0: no progress.*' "$WORK/run-worker-0.log" | head -c 300)"
