#!/usr/bin/env bash
# A worker that dies is restarted with the same rank and rejoins the running job, as
# Kubernetes does with a failed pod of the worker Job. 2 shards, 3 workers, no quorum
# (every step needs all three): worker 2 is killed with SIGKILL mid-run, so the job
# stalls until the new worker 2 has joined; then it must finish every step, the
# evaluator must report an accuracy, every process must exit 0 and the shards must
# exit by themselves once all three workers have left.
source "$(dirname "$0")/worker_lib.sh"

mkdir -p "$WORK/run"
pids=()
cleanup_children() {
  local p
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap 'rc=$?; cleanup_children; (exit $rc); finish' EXIT

# floor(floor(15000 / 3) / 64) = 78 steps per epoch, 3 epochs.
steps=234
servers=()
for s in 0 1; do
  "$GNC_SERVER_BIN" --address=127.0.0.1 --port=0 --port_file="$WORK/run/shard-$s.port" \
    --shard_index=$s --num_shards=2 --num_workers=3 --mode=gnc --lr=0.1 --warmup_steps=20 \
    --lr_decay=cosine --total_steps=$steps --weight_decay=5e-4 >"$WORK/shard-$s.log" 2>&1 &
  pids+=($!)
  servers+=($!)
done
for s in 0 1; do
  for ((i = 0; i < 200; i++)); do [[ -s $WORK/run/shard-$s.port ]] && break; sleep 0.05; done
  [[ -s $WORK/run/shard-$s.port ]] || fail "shard $s did not start"
done
addresses="127.0.0.1:$(<"$WORK/run/shard-0.port"),127.0.0.1:$(<"$WORK/run/shard-1.port")"

start_worker() {  # start_worker RANK LOG
  "$GNC_WORKER_BIN" --servers="$addresses" --rank="$1" --num_workers=3 --epochs=3 \
    --batch_size=64 --train_limit=15000 --progress_interval=0.5s --device=cpu >"$2" 2>&1 &
  started=$!
  pids+=($started)
}
workers=()
for k in 0 1 2; do
  start_worker $k "$WORK/worker-$k.log"
  workers+=($started)
done

# Kill worker 2 once it is past step 30.
killed=""
for ((i = 0; i < 1200; i++)); do
  step=$(sed -n 's/.*worker 2 step \([0-9]*\)\/.*/\1/p' "$WORK/worker-2.log" | tail -n 1)
  if [[ -n $step ]] && ((step > 30)); then
    kill -KILL "${workers[2]}" && killed=$step
    wait "${workers[2]}" 2>/dev/null
    break
  fi
  sleep 0.1
done
[[ -n $killed ]] || { cat "$WORK"/worker-2.log; fail "worker 2 never got past step 30"; }
echo "killed worker 2 after step $killed; restarting it"
sleep 1
start_worker 2 "$WORK/worker-2-restarted.log"
workers[2]=$started

status=0
for k in 0 1 2; do
  wait "${workers[$k]}" || { echo "worker $k exited with status $?"; status=1; }
done
for s in 0 1; do
  wait "${servers[$s]}" || { echo "shard $s exited with status $?"; status=1; }
done
pids=()
for f in "$WORK"/*.log; do echo "== $(basename "$f")"; tail -n 5 "$f"; done
((status == 0)) || fail "a process failed"
grep -q "rank 2 opened a new stream\|rank 2 finished" "$WORK"/shard-0.log || fail "shard 0 never saw rank 2 again"
pushed=$(sed -n 's/.*worker 2 done: \([0-9]*\) steps pushed.*/\1/p' "$WORK/worker-2-restarted.log")
[[ -n $pushed ]] && ((pushed > 0 && pushed < steps)) ||
  fail "the restarted worker 2 pushed '${pushed}' steps, expected some but not all $steps"
acc=$(final_accuracy "$WORK/worker-0.log")
[[ -n $acc ]] || fail "the evaluator reported no final test accuracy"
grep -q "final test accuracy $acc loss [0-9.]* after $steps steps" "$WORK/worker-0.log" ||
  fail "the job did not reach step $steps"
at_least "$acc" 0.5 || fail "final test accuracy $acc < 0.5"
echo "PASS: worker 2 killed after step $killed, rejoined and pushed $pushed steps; accuracy $acc"
