# Shared helpers of the security tests (sourced, not run): real gnc-server and
# gnc-worker processes on 127.0.0.1, certificates from deploy/local/make-certs.sh, and
# gnc_outsider, a client that is not part of the job. Every wait is bounded.
# Usage: security_<name>_test.sh GNC_SERVER_BIN GNC_WORKER_BIN GNC_OUTSIDER_BIN
set -uo pipefail

[[ $# -ge 3 ]] || { echo "usage: $0 GNC_SERVER_BIN GNC_WORKER_BIN GNC_OUTSIDER_BIN" >&2; exit 2; }
export GNC_SERVER_BIN=$1 GNC_WORKER_BIN=$2
OUTSIDER=$3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAUNCH=$REPO/deploy/local/launch.sh

skip() {
  echo "SKIP: $*"
  exit 77
}
fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# require_openssl: skips the test without openssl (make_certs needs it).
require_openssl() {
  command -v openssl >/dev/null ||
    skip "openssl not found (deploy/local/install-deps.sh --tests installs it)"
}
command -v python3 >/dev/null || skip "python3 not found (free ports, /metrics)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gnc-security-test.XXXXXX")
own_pids=()
launcher_pid=""
cleanup() {
  local st=$? p
  if [[ -n $launcher_pid ]] && kill -0 "$launcher_pid" 2>/dev/null; then
    kill -TERM "$launcher_pid" 2>/dev/null
    wait "$launcher_pid" 2>/dev/null
  fi
  for p in "${own_pids[@]}"; do kill -KILL "$p" 2>/dev/null; done
  for p in "${own_pids[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
  exit "$st"
}
trap cleanup EXIT

# make_certs DIR: a CA, server and client certificates and a token (make-certs.sh).
make_certs() {
  "$REPO/deploy/local/make-certs.sh" "$1" >/dev/null || fail "make-certs.sh $1 failed"
}

# free_port: a port nobody listens on now.
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_server LOG FLAG...: a gnc-server on 127.0.0.1 at a free port; waits (up to
# 20 s) until it listens. Sets $started (pid) and $port.
start_server() {
  local log=$1 i
  shift
  local port_file=$WORK/port.$RANDOM$RANDOM
  "$GNC_SERVER_BIN" --address=127.0.0.1 --port=0 --port_file="$port_file" --device=cpu \
    --drain_timeout=2s "$@" >>"$log" 2>&1 &
  started=$!
  own_pids+=("$started")
  for ((i = 0; i < 200; i++)); do
    [[ -s $port_file ]] && break
    kill -0 "$started" 2>/dev/null || { cat "$log" >&2; fail "gnc-server exited at start"; }
    sleep 0.1
  done
  [[ -s $port_file ]] || { cat "$log" >&2; fail "gnc-server did not listen within 20 s"; }
  port=$(<"$port_file")
}

# metric PORT NAME [LABEL_FRAGMENT]: the value of the first series of NAME on the
# /metrics at PORT whose labels contain LABEL_FRAGMENT (empty if unreachable).
metric() {
  python3 - "$1" "$2" "${3:-}" <<'EOF' 2>/dev/null
import sys, urllib.request
port, name, frag = sys.argv[1], sys.argv[2], sys.argv[3]
body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
for line in body.splitlines():
    if (line.startswith(name + "{") or line.startswith(name + " ")) and frag in line:
        print(line.rsplit(" ", 1)[1])
        break
EOF
}

# proc_field PID FIELD: a field of /proc/PID/status (Threads, VmRSS in kB).
proc_field() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# outsider MODE OUT [FLAG...]: runs gnc_outsider (bounded by its own deadlines, and
# by timeout) and writes its lines to OUT.
outsider() {
  local mode=$1 out=$2
  shift 2
  timeout 120 "$OUTSIDER" "$mode" "$@" >"$out" 2>"$out.err" ||
    { cat "$out" "$out.err" >&2; fail "gnc_outsider $mode failed"; }
}

# expect_code OUT WHAT CODE: the line of WHAT in OUT has CODE.
expect_code() {
  local got
  got=$(awk -v w="$2" '$1 == w { print $2; exit }' "$1")
  [[ $got == "$3" ]] || { cat "$1" >&2; fail "$2: expected $3, got '${got:-no line}'"; }
}

# expect_refused OUT CODE: every call in OUT ended with CODE, except the health check,
# which must have answered SERVING. Returns the number of refused calls in $refused.
expect_refused() {
  local out=$1 code=$2 what got n=0
  while read -r what got _; do
    if [[ $what == Health ]]; then
      [[ $got == OK ]] || { cat "$out" >&2; fail "health check: $got"; }
      continue
    fi
    [[ $got == "$code" ]] || { cat "$out" >&2; fail "$what: expected $code, got $got"; }
    n=$((n + 1))
  done <"$out"
  ((n > 0)) || { cat "$out" >&2; fail "no call was made"; }
  refused=$n
}
