#!/usr/bin/env bash
# Who may talk to a shard that serves mutual TLS and requires the job token: a
# legitimate client joins and offers w0, then outsiders call every rpc (Join, Offer,
# Train, Pull, Leave of every rank, GetStatus, Rewind, reflection):
#   - with the job's certificate but no token, or a wrong one: every call is
#     UNAUTHENTICATED (health checks excepted) and counted in
#     gnc_unauthenticated_requests_total, and w is bit-identical before and after;
#   - in plaintext, without a client certificate, with a certificate of another CA,
#     or trusting another CA: no call gets through (the handshake fails);
#   - with the job's certificate and token: the calls are answered;
#   - the plaintext health port answers health checks and refuses everything else.
# The token is in no log, no /metrics and no command line. A token accepted over
# plaintext on a non-loopback address is warned about.
source "$(dirname "$0")/security_lib.sh"
require_openssl

job=$WORK/job other=$WORK/other
make_certs "$job"
make_certs "$other"
token=$(<"$job/token")
metrics=($(free_port))
health=($(free_port))

# A shard of a fresh job that a legitimate client initialises; then the outsiders.
tls=(--tls_cert_file="$job/server.crt" --tls_key_file="$job/server.key"
  --tls_client_ca_file="$job/ca.crt" --auth_token_file="$job/token")
mine=(--tls_ca_file="$job/ca.crt" --tls_cert_file="$job/client.crt" --tls_key_file="$job/client.key"
  --auth_token_file="$job/token")
slog=$WORK/shard.log
start_server "$slog" --num_workers=2 --mode=gnc --exit_when_done=false \
  --metrics_port="${metrics[0]}" --metrics_address=127.0.0.1 --health_port="${health[0]}" "${tls[@]}"
server_pid=$started
addr=127.0.0.1:$port
grep -q "security: mutual TLS, job token required, plaintext health port ${health[0]}" "$slog" ||
  { cat "$slog"; fail "the shard does not report its security"; }

# A legitimate client joins (a small layout), offers w0 and pulls it back.
outsider calls "$WORK/legit.out" --server="$addr" --calls=Join,GetStatus,Reflection,Health \
  --join_elements=1024 "${mine[@]}"
expect_code "$WORK/legit.out" Join OK
expect_code "$WORK/legit.out" GetStatus OK
expect_code "$WORK/legit.out" Reflection OK
expect_code "$WORK/legit.out" Health OK
outsider calls "$WORK/offer.out" --server="$addr" --calls=Offer "${mine[@]}"
expect_code "$WORK/offer.out" Offer OK
outsider pull "$WORK/pull0.out" --server="$addr" --out="$WORK/w0" "${mine[@]}"
[[ $(stat -c %s "$WORK/w0") == 4096 ]] || fail "pulled $(stat -c %s "$WORK/w0") bytes, want 4096"

# Outsiders with the job's certificate but no token, or a wrong one.
before=$(metric "${metrics[0]}" gnc_unauthenticated_requests_total)
[[ $before == 0 ]] || fail "gnc_unauthenticated_requests_total starts at '$before'"
cert_only=(--tls_ca_file="$job/ca.crt" --tls_cert_file="$job/client.crt" --tls_key_file="$job/client.key")
outsider calls "$WORK/none.out" --server="$addr" --join_elements=1024 "${cert_only[@]}"
expect_refused "$WORK/none.out" UNAUTHENTICATED
n1=$refused
grep -q "needs the job token" "$WORK/none.out" || fail "no reason given for a missing token"
outsider calls "$WORK/wrong.out" --server="$addr" --join_elements=1024 "${cert_only[@]}" \
  --auth_token_file="$other/token"
expect_refused "$WORK/wrong.out" UNAUTHENTICATED
n2=$refused
grep -q "token is wrong" "$WORK/wrong.out" || fail "no reason given for a wrong token"
# TrainHello and TrainGradient report the same refused call.
want=$((before + n1 - 1 + n2 - 1))
after=$(metric "${metrics[0]}" gnc_unauthenticated_requests_total)
[[ $after == "$want" ]] || fail "gnc_unauthenticated_requests_total is '$after', want $want"
grep -q "refused [0-9]* unauthenticated call" "$slog" || fail "refusals are not logged"
lines=$(grep -c "unauthenticated call" "$slog")
((lines <= 2)) || fail "$lines log lines for $((n1 + n2)) refusals in a few seconds: not rate-limited"

# No TLS, no client certificate, a client certificate of another CA, another CA's
# view of the server: nothing gets through.
for variant in plaintext no-client-cert foreign-cert foreign-ca; do
  case $variant in
    plaintext) flags=(--auth_token_file="$job/token") ;;
    no-client-cert) flags=(--tls_ca_file="$job/ca.crt" --auth_token_file="$job/token") ;;
    foreign-cert) flags=(--tls_ca_file="$job/ca.crt" --tls_cert_file="$other/client.crt"
      --tls_key_file="$other/client.key" --auth_token_file="$job/token") ;;
    foreign-ca) flags=(--tls_ca_file="$other/ca.crt" --tls_cert_file="$job/client.crt"
      --tls_key_file="$job/client.key" --auth_token_file="$job/token") ;;
  esac
  outsider calls "$WORK/$variant.out" --server="$addr" --timeout=3s \
    --calls=Join,Train,Leave,GetStatus,Health "${flags[@]}"
  while read -r what code _; do
    [[ $code == UNAVAILABLE || $code == DEADLINE_EXCEEDED ]] ||
      { cat "$WORK/$variant.out"; fail "$variant: $what came back $code"; }
  done <"$WORK/$variant.out"
done

# w after all that: bit-identical, and the shard still knows both ranks as not left.
outsider pull "$WORK/pull1.out" --server="$addr" --out="$WORK/w1" "${mine[@]}"
cmp -s "$WORK/w0" "$WORK/w1" || fail "w changed while outsiders called"
outsider calls "$WORK/status.out" --server="$addr" --calls=GetStatus "${mine[@]}"
expect_code "$WORK/status.out" GetStatus OK
grep -q "rank . finished" "$slog" && fail "an outsider's Leave was taken"
kill -0 "$server_pid" 2>/dev/null || fail "the shard exited"

# The health port: health checks in plaintext, nothing else (even with the token).
outsider calls "$WORK/health.out" --server="127.0.0.1:${health[0]}" \
  --calls=Join,GetStatus,Reflection,Health --join_elements=1024 --auth_token_file="$job/token"
expect_refused "$WORK/health.out" UNAUTHENTICATED
grep -q "serves only grpc.health.v1" "$WORK/health.out" || fail "the health port gives no reason"

# The token is in no log, no /metrics, no command line.
metrics_page=$(python3 -c "import urllib.request,sys; print(urllib.request.urlopen('http://127.0.0.1:${metrics[0]}/metrics', timeout=2).read().decode())")
grep -qF "$token" "$slog" && fail "the token appears in the shard's log"
grep -qF "$token" <<<"$metrics_page" && fail "the token appears in /metrics"
tr '\0' ' ' <"/proc/$server_pid/cmdline" | grep -qF "$token" && fail "the token is on the command line"

# A token accepted in plaintext on every address is warned about.
wlog=$WORK/plain.log
start_server "$wlog" --num_workers=1 --address=0.0.0.0 --auth_token_file="$job/token"
for ((i = 0; i < 50; i++)); do
  grep -q "job token is accepted in plaintext" "$wlog" && break
  sleep 0.1
done
grep -q "job token is accepted in plaintext" "$wlog" || { cat "$wlog"; fail "no plaintext warning"; }
grep -qF "$token" "$wlog" && fail "the token appears in the log"
echo "PASS: $((n1 + n2)) outsider calls refused, w unchanged, TLS refusals, health port, no token in logs"
