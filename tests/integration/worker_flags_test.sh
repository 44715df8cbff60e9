#!/usr/bin/env bash
# gnc-worker's start-up contract: --check_config accepts good flags (exit 0) and
# refuses bad ones with a message (exit 2); --device=cuda without CUDA is a clear
# start-up error; a worker whose job length differs from the servers' fails with
# both numbers (FAILED_PRECONDITION), and the launcher reports it.
source "$(dirname "$0")/worker_lib.sh"

W=$GNC_WORKER_BIN
expect() {  # expect STATUS PATTERN -- command...
  local want=$1 pattern=$2 out st
  shift 3
  out=$("$@" 2>&1)
  st=$?
  ((st == want)) || fail "'$*' exited $st, expected $want: $out"
  [[ -z $pattern ]] || grep -q -- "$pattern" <<<"$out" || fail "'$*' said '$out', expected /$pattern/"
}

expect 0 "config ok: worker 1/4" -- "$W" --check_config --servers=a:1,b:2 --rank=1 --num_workers=4 \
  --batch_size=256 --epochs=5
expect 0 "evaluate=true" -- "$W" --check_config --servers=a:1
expect 0 "evaluate=false" -- "$W" --check_config --servers=a:1 --evaluate=false
expect 0 "evaluate=true" -- "$W" --check_config --servers=a:1 --rank=2 --num_workers=3 --evaluate=true
expect 2 "servers" -- "$W" --check_config
expect 2 "not host:port" -- "$W" --check_config --servers=localhost
expect 2 "rank" -- "$W" --check_config --servers=a:1 --rank=4 --num_workers=4
expect 2 "batch_size" -- "$W" --check_config --servers=a:1 --batch_size=0
expect 2 "exceeds" -- "$W" --check_config --servers=a:1 --num_workers=4 --batch_size=20000
expect 2 "hidden" -- "$W" --check_config --servers=a:1 --hidden=256,x
expect 0 "config ok" -- "$W" --check_config --servers=a:1 --model=cnn --cnn_channels=4,8 --cnn_hidden=
expect 2 "unknown model 'rnn'" -- "$W" --check_config --servers=a:1 --model=rnn
expect 2 "cnn_channels" -- "$W" --check_config --servers=a:1 --model=cnn --cnn_channels=8,16,32
expect 2 "cnn_hidden" -- "$W" --check_config --servers=a:1 --model=cnn --cnn_hidden=0
expect 2 "device" -- "$W" --check_config --servers=a:1 --device=tpu
expect 2 "config_hash" -- "$W" --check_config --servers=a:1 --config_hash=xyz
expect 2 "unknown flag --no_such_flag" -- "$W" --check_config --servers=a:1 --no_such_flag=1
expect 2 "rank" -- "$W" --check_config --servers=a:1 --rank=abc
expect 2 "needs a value" -- "$W" --check_config --servers=a:1 --epochs
expect 0 "evaluate=false" -- "$W" --check_config --servers a:1 --rank 1 --num_workers 2 --nocheck_config --check_config

if ! "$W" --device=cuda --check_config --servers=a:1 >/dev/null 2>&1; then
  fail "--device=cuda must pass --check_config (the device is only probed at start)"
fi
out=$("$W" --device=cuda --servers=127.0.0.1:1 --connect_timeout=1s 2>&1)
st=$?
if grep -q "compute backend: cuda" <<<"$out"; then
  echo "CUDA present: skipping the no-CUDA start-up check"
else
  ((st == 1)) || fail "--device=cuda without CUDA exited $st, expected 1: $out"
  grep -q -- "--device=cuda but CUDA is unavailable" <<<"$out" || fail "unclear error: $out"
fi

# Missing data: a runtime error (1) naming the file, before any connection.
out=$("$W" --servers=127.0.0.1:1 --data_dir="$WORK/no-data" --device=cpu 2>&1)
st=$?
((st == 1)) || fail "missing data exited $st, expected 1: $out"
grep -q "$WORK/no-data/train-images-idx3-ubyte.gz: no such file" <<<"$out" || fail "unclear error: $out"

# The servers are told 999 steps; the workers compute floor(3000 / 2 / 50) = 30.
log=$WORK/mismatch.log
"$LAUNCH" --run_dir "$WORK/run" --shards 1 --workers 2 --epochs 1 --batch_size 50 \
  --train_limit 3000 --test_limit 500 --server_arg=--total_steps=999 --lr_decay cosine \
  --server_metrics_port 0 --worker_metrics_port 0 --timeout 60 >"$log" 2>&1 &
launcher_pid=$!
wait "$launcher_pid"
st=$?
launcher_pid=""
cat "$log"
((st == 1)) || fail "launcher exited $st on a job-length mismatch, expected 1"
grep -q "FAILED_PRECONDITION.*999.*30" "$log" || fail "no FAILED_PRECONDITION naming 999 and 30"
echo "PASS"
