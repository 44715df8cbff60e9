#!/usr/bin/env bash
# 2 shards and 3 workers on 127.0.0.1 train the MLP on the first 15 000
# Fashion-MNIST images for 3 epochs (gnc mode, cosine schedule): every process exits
# 0, each worker runs every step, and the final test accuracy on the 10 000 test
# images is above 0.75.
source "$(dirname "$0")/worker_lib.sh"

log=$WORK/out.log
"$LAUNCH" --run_dir "$WORK/run" --shards 2 --workers 3 --mode gnc --epochs 3 \
  --batch_size 64 --train_limit 15000 --lr 0.1 --warmup_steps 20 --lr_decay cosine \
  --weight_decay 5e-4 --progress_interval 2s --server_metrics_port 0 --worker_metrics_port 0 \
  --timeout 150 >"$log" 2>&1 &
launcher_pid=$!
wait "$launcher_pid"
st=$?
launcher_pid=""
cat "$log"
((st == 0)) || fail "launcher exited with status $st"

# floor(floor(15000 / 3) / 64) = 78 steps per epoch, 234 steps.
for k in 0 1 2; do
  grep -q "^\[worker $k\] worker $k done: 234 steps pushed, 0 late" "$log" ||
    fail "worker $k did not push all 234 steps"
done
grep -q "^\[worker 0\] epoch 2/3 test accuracy" "$log" || fail "no evaluation after epoch 2"
grep -q "^\[worker 1\] final test accuracy" "$log" && fail "worker 1 evaluated without --evaluate"
acc=$(final_accuracy "$log")
[[ -n $acc ]] || fail "no final test accuracy line"
grep -q "final test accuracy $acc loss [0-9.]* after 234 steps" "$log" || fail "final line malformed"
at_least "$acc" 0.75 || fail "final test accuracy $acc <= 0.75"
awk -v x="$acc" 'BEGIN { exit !(x > 0.75) }' || fail "final test accuracy $acc <= 0.75"
echo "PASS: final test accuracy $acc"
