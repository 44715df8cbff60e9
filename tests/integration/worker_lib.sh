# Shared helpers of the worker integration tests (sourced, not run).
# Usage: worker_<name>_test.sh GNC_SERVER_BIN GNC_WORKER_BIN
set -uo pipefail

[[ $# -ge 2 ]] || { echo "usage: $0 GNC_SERVER_BIN GNC_WORKER_BIN" >&2; exit 2; }
export GNC_SERVER_BIN=$1 GNC_WORKER_BIN=$2
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
LAUNCH=$REPO/deploy/local/launch.sh
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gnc-worker-test.XXXXXX")
launcher_pid=""

fail() {
  echo "FAIL: $*" >&2
  exit 1
}

# Stops the launcher (which stops its processes), then checks nothing survived.
finish() {
  local st=$?
  if [[ -n $launcher_pid ]] && kill -0 "$launcher_pid" 2>/dev/null; then
    kill -TERM "$launcher_pid" 2>/dev/null
    wait "$launcher_pid" 2>/dev/null
  fi
  local f pid
  for f in "$WORK"/run/*.pid; do
    [[ -e $f ]] || continue
    pid=$(<"$f")
    if kill -0 "$pid" 2>/dev/null; then
      echo "FAIL: $(basename "$f" .pid) (pid $pid) still running after the launcher exited" >&2
      kill -KILL "$pid" 2>/dev/null
      st=1
    fi
  done
  if ((st != 0)); then
    # The processes' last words: the newest logs, so that a CI log shows the cause.
    local log
    while read -r log; do
      echo "--- last lines of $(basename "$log"):" >&2
      tail -n 6 "$log" >&2
    done < <(ls -t "$WORK"/*.log 2>/dev/null | head -n 6)
  fi
  if ((st != 0)) && [[ -n ${GNC_KEEP_FAILED:-} ]]; then
    cp -r "$WORK" "$GNC_KEEP_FAILED.$$" 2>/dev/null &&
      echo "kept the failed test's logs in $GNC_KEEP_FAILED.$$" >&2
  fi
  rm -rf "$WORK"
  exit "$st"
}
trap finish EXIT

# final_accuracy LOG: the evaluator's final test accuracy, or nothing.
final_accuracy() {
  sed -n 's/.*final test accuracy \([0-9.]*\) loss .*/\1/p' "$1" | tail -n 1
}

# at_least X Y: X >= Y as decimals.
at_least() { awk -v x="$1" -v y="$2" 'BEGIN { exit !(x + 0 >= y + 0) }'; }
