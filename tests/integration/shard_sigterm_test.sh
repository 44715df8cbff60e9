#!/usr/bin/env bash
# SIGTERM one shard under load, 10 times. Odd rounds: the shard stays away; the
# drained shard exits 0 within its drain bound, every worker exits 1 within its
# --reconnect_timeout naming the shard, and the other shard drains when told to.
# Even rounds: the shard is restarted with the same flags (a rolling restart); it
# restores the checkpoint it wrote while draining and the job finishes (exit 0).
# No process may hang in any round.
# Long enough (368 steps, about 1.5 s) that the job is still running when the last
# round's SIGTERM lands, past step 80.
EPOCHS=8
source "$(dirname "$0")/failure_lib.sh"

for ((round = 1; round <= 10; round++)); do
  ckpt=$WORK/ckpt-$round
  rm -rf "$ckpt"
  # A shard that stays away is given up after 3 s; one that comes back is waited for.
  reconnect=$((round % 2 == 0 ? 60 : 3))
  start_job "r$round" --checkpoint_dir="$ckpt" -- --reconnect_timeout=${reconnect}s
  # Under load: past a step that moves with the round.
  wait_for_step 0 $((10 + round * 7)) "$WORK/r$round-worker-0.log"
  victim=$((round % 2))
  kill -TERM "${shards[$victim]}"
  wait_exit "${shards[$victim]}" 10 || fail "round $round: the drained shard exited with $?"
  if ((round % 2 == 0)); then
    start_shard "$victim" "$WORK/r$round-shard-$victim.log" --checkpoint_dir="$ckpt"
    shards[$victim]=$started
    for ((k = 0; k < WORKERS; k++)); do
      st=0
      wait_exit "${workers[$k]}" 60 || st=$?
      if ((st != 0)); then
        tail -n 20 "$WORK/r$round"-*.log
        fail "round $round: worker $k exited with $st after the shard came back"
      fi
    done
    for ((s = 0; s < SHARDS; s++)); do
      wait_exit "${shards[$s]}" 30 || fail "round $round: shard $s exited with $?"
    done
    grep -q "restored step" "$WORK/r$round-shard-$victim.log" ||
      fail "round $round: the restarted shard restored nothing"
    echo "round $round: shard $victim drained, came back, the job finished"
  else
    for ((k = 0; k < WORKERS; k++)); do
      st=0
      wait_exit "${workers[$k]}" 30 || st=$?
      ((st == 1)) || fail "round $round: worker $k exited with $st, expected 1"
      grep -q "shard $victim (127.0.0.1:${ports[$victim]})" "$WORK/r$round-worker-$k.log" ||
        fail "round $round: worker $k's error does not name shard $victim"
    done
    other=$((1 - victim))
    kill -TERM "${shards[$other]}"
    wait_exit "${shards[$other]}" 10 || fail "round $round: shard $other exited with $?"
    echo "round $round: shard $victim drained and stayed away; every process exited"
  fi
  all_pids=()
done
echo "PASS: 10 rounds of SIGTERM under load, no process hung"
