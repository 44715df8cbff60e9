#!/usr/bin/env bash
# 2 shards and 3 workers with a quorum of 2 (--min_workers 2, 2 s straggler
# timeout); worker 2 is killed with SIGKILL mid-run. The job must still reach its
# last step, the evaluator (worker 0) must report a final test accuracy, the
# launcher must report the dead worker (exit 1) and stop every process.
source "$(dirname "$0")/worker_lib.sh"

log=$WORK/out.log
"$LAUNCH" --run_dir "$WORK/run" --shards 2 --workers 3 --mode gnc --epochs 3 \
  --batch_size 64 --train_limit 30000 --lr 0.1 --warmup_steps 20 --lr_decay cosine \
  --weight_decay 5e-4 --min_workers 2 --straggler_timeout 2s --progress_interval 0.5s \
  --server_metrics_port 0 --worker_metrics_port 0 --timeout 150 >"$log" 2>&1 &
launcher_pid=$!

# Kill worker 2 once it has trained a while: a progress line past step 30.
killed=""
for ((i = 0; i < 1200; i++)); do
  kill -0 "$launcher_pid" 2>/dev/null || break
  step=$(sed -n 's/^\[worker 2\] worker 2 step \([0-9]*\)\/.*/\1/p' "$log" | tail -n 1)
  if [[ -n $step ]] && ((step > 30)); then
    pid=$(<"$WORK/run/worker-2.pid")
    kill -KILL "$pid" && killed=$step
    break
  fi
  sleep 0.1
done
[[ -n $killed ]] || { cat "$log"; fail "worker 2 never got past step 30, or the job ended first"; }
echo "killed worker 2 after step $killed"

wait "$launcher_pid"
st=$?
launcher_pid=""
cat "$log"
((st == 1)) || fail "launcher exited with status $st, expected 1 (a worker failed)"
grep -q "^\[launch\] worker 2 failed with status 137 (signal 9)" "$log" ||
  fail "the launcher did not report worker 2's death"
grep -q "^\[launch\] worker 0 finished" "$log" || fail "worker 0 did not finish"
grep -q "^\[launch\] worker 1 finished" "$log" || fail "worker 1 did not finish"
grep -q "^\[worker 2\] worker 2 done" "$log" && fail "worker 2 finished despite the kill"
# The shards do not wait for the dead worker's Leave: they exit by themselves.
for s in 0 1; do
  grep -q "^\[shard $s\] .*the job is done" "$log" || fail "shard $s did not exit by itself"
done
# floor(floor(30000 / 3) / 64) = 156 steps per epoch, 468 steps.
acc=$(final_accuracy "$log")
[[ -n $acc ]] || fail "the evaluator reported no final test accuracy"
grep -q "final test accuracy $acc loss [0-9.]* after 468 steps" "$log" ||
  fail "the job did not reach step 468"
at_least "$acc" 0.5 || fail "final test accuracy $acc < 0.5 after the kill"
echo "PASS: worker 2 killed after step $killed; final test accuracy $acc"
