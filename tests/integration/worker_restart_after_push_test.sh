#!/usr/bin/env bash
# A worker killed with SIGKILL right after it pushed its gradient, while another rank
# is slow (stopped with SIGSTOP), and restarted with its rank: its accepted gradient
# is kept, it rejoins at the next step and the job finishes with every process
# exiting 0 (it used to be refused with ALREADY_EXISTS and exit 1).
EPOCHS=3
source "$(dirname "$0")/failure_lib.sh"

start_job run --stall_report_after=1s
wait_for_step 0 40 "$WORK/run-worker-0.log"
kill -STOP "${workers[1]}"
# Rank 0 has pushed once a shard waits for rank 1 alone (the other shard may have
# completed the step before rank 1 stopped, and wait for both on the next).
waiting=""
for ((i = 0; i < 100; i++)); do
  for s in 0 1; do
    [[ $(metric "$s" gnc_waiting_workers) == 1 ]] && waiting=$s && break 2
  done
  sleep 0.1
done
[[ -n $waiting ]] || { kill -CONT "${workers[1]}"; fail "no shard ever waited for rank 1 alone"; }
step=$(metric "$waiting" gnc_step)
kill -KILL "${workers[0]}"
wait "${workers[0]}" 2>/dev/null
echo "killed worker 0 after its push of step $step to shard $waiting while worker 1 was stopped"
start_worker 0 "$WORK/run-worker-0-restarted.log"
workers[0]=$started
sleep 1
kill -CONT "${workers[1]}"

for ((k = 0; k < WORKERS; k++)); do
  st=0
  wait_exit "${workers[$k]}" 90 || st=$?
  if ((st != 0)); then
    tail -n 20 "$WORK"/*.log
    fail "worker $k exited with $st"
  fi
done
for ((s = 0; s < SHARDS; s++)); do
  wait_exit "${shards[$s]}" 30 || fail "shard $s exited with $?"
done
grep -q "ALREADY_EXISTS\|already pushed" "$WORK/run-worker-0-restarted.log" &&
  fail "the restarted worker was refused as a duplicate"
acc=$(final_accuracy "$WORK/run-worker-0-restarted.log")
[[ -n $acc ]] || fail "the restarted evaluator reported no final accuracy"
grep -q "final test accuracy $acc loss [0-9.]* after $TOTAL_STEPS steps" \
  "$WORK/run-worker-0-restarted.log" || fail "the job did not reach step $TOTAL_STEPS"
grep -q "step $step has waited .* for rank(s) 1" "$WORK/run-shard-$waiting.log" ||
  fail "shard $waiting did not report the wait for rank 1"
echo "PASS: worker 0 rejoined after its push of step $step; final accuracy $acc"
