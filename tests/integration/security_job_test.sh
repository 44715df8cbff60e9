#!/usr/bin/env bash
# A whole local job with mutual TLS and a job token (deploy/local/launch.sh --tls_dir
# --auth_token_file, the demo's settings: 2 shards x 4 workers, batch 256, peak lr 0.2
# after a one-epoch warm-up, cosine, 3 epochs) while outsiders attack both shards in
# the middle of training: a Hello as rank 0 and as rank 1 (on an open shard it would
# take the worker's stream and its points), a gradient of 1e30s, Leave for every rank
# (on an open shard the job would stop), a rewind; without a token, with a wrong one,
# with another CA's certificate, in plaintext. Every attack must fail, and the job must
# run every step without a late gradient or a superseded stream and reach the demo's
# accuracy (0.83 after 3 epochs).
source "$(dirname "$0")/security_lib.sh"
require_openssl

job=$WORK/job other=$WORK/other
make_certs "$job"
make_certs "$other"

log=$WORK/job.log
metrics_base=$(free_port)
"$LAUNCH" --run_dir "$WORK/run" --shards 2 --workers 4 --mode gnc --epochs 3 --batch_size 256 \
  --lr 0.2 --warmup_steps 58 --lr_decay cosine --momentum 0.9 --weight_decay 5e-4 \
  --device cpu --progress_interval 0.2s --server_metrics_port "$metrics_base" \
  --worker_metrics_port 0 --timeout 240 --tls_dir "$job" --auth_token_file "$job/token" \
  >"$log" 2>&1 &
launcher_pid=$!

# Training has begun: rank 0 and 1 have their streams.
for ((i = 0; i < 1200; i++)); do
  step=$(sed -n 's/.*worker 0 step \([0-9]*\)\/.*/\1/p' "$log" | tail -n 1)
  [[ -n $step ]] && ((step >= 3)) && break
  kill -0 "$launcher_pid" 2>/dev/null || break
  sleep 0.05
done
[[ -n ${step:-} ]] && ((step >= 3)) || { cat "$log"; fail "the job did not start training"; }
shard_metrics=($(sed -n 's/.*shard metrics on \(.*\)$/\1/p' "$log" | tr ',' ' '))
((${#shard_metrics[@]} == 2)) || { cat "$log"; fail "no shard metrics ports in the log"; }

cert=(--tls_ca_file="$job/ca.crt" --tls_cert_file="$job/client.crt" --tls_key_file="$job/client.key")
attacks=0
for s in 0 1; do
  addr=127.0.0.1:$(<"$WORK/run/shard-$s.port")
  common=(--server="$addr" --num_workers=4 --num_shards=2 --shard_index="$s" --timeout=3s
    --calls=Join,Train,Leave,Rewind,Pull)
  outsider calls "$WORK/none-$s.out" "${common[@]}" --rank=0 "${cert[@]}"
  expect_refused "$WORK/none-$s.out" UNAUTHENTICATED
  outsider calls "$WORK/wrong-$s.out" "${common[@]}" --rank=1 "${cert[@]}" \
    --auth_token_file="$other/token"
  expect_refused "$WORK/wrong-$s.out" UNAUTHENTICATED
  for variant in foreign plaintext; do
    if [[ $variant == foreign ]]; then
      flags=(--tls_ca_file="$job/ca.crt" --tls_cert_file="$other/client.crt"
        --tls_key_file="$other/client.key" --auth_token_file="$job/token")
    else
      flags=(--auth_token_file="$job/token")
    fi
    outsider calls "$WORK/$variant-$s.out" "${common[@]}" --rank=0 "${flags[@]}"
    while read -r what code _; do
      [[ $code == UNAVAILABLE ]] || { cat "$WORK/$variant-$s.out"; fail "$variant: $what came back $code"; }
    done <"$WORK/$variant-$s.out"
  done
  attacks=$((attacks + 1))
  counted[s]=$(metric "${shard_metrics[s]#*:}" gnc_unauthenticated_requests_total)
done
kill -0 "$launcher_pid" 2>/dev/null || { cat "$log"; fail "the job ended before the attacks were over"; }

wait "$launcher_pid"
st=$?
launcher_pid=""
((st == 0)) || { cat "$log"; fail "the secure job failed (launcher status $st)"; }
grep -q "security: mutual TLS (certificates in $job), job token from $job/token" "$log" ||
  { cat "$log"; fail "launch.sh did not report the job's security"; }
for s in 0 1; do
  grep -q "^\[shard $s\] .*security: mutual TLS, job token required" "$log" ||
    { cat "$log"; fail "shard $s does not require mutual TLS and the token"; }
  ((${counted[s]:-0} >= 10)) || fail "shard $s counted ${counted[s]:-no} unauthenticated calls"
done
grep -q "superseded" "$log" && { cat "$log"; fail "a stream was superseded"; }
# 3 x floor(floor(60000 / 4) / 256) = 174 steps.
for k in 0 1 2 3; do
  grep -q "^\[worker $k\] worker $k done: 174 steps pushed, 0 late" "$log" ||
    { cat "$log"; fail "worker $k did not push all 174 steps on time"; }
done
acc=$(sed -n 's/.*final test accuracy \([0-9.]*\) loss .*/\1/p' "$log" | tail -n 1)
[[ -n $acc ]] || { cat "$log"; fail "no final test accuracy"; }
awk -v x="$acc" 'BEGIN { exit !(x >= 0.83) }' || fail "final test accuracy $acc < 0.83"
echo "PASS: mutual TLS + token job, final test accuracy $acc; outsiders refused" \
  "(${counted[0]} and ${counted[1]} calls counted on the shards)"
