#!/usr/bin/env bash
# compare_tls.sh: what transport security costs a gnc round. gnc_round_bench in
# plaintext, with the job token alone, and with mutual TLS and the token
# (certificates from deploy/local/make-certs.sh), in interleaved repetitions (the
# order rotates each time, so that load on the machine hits every variant alike);
# medians and ratios to plaintext.
#   tests/bench/compare_tls.sh [--build_dir DIR] [--workers K] [--servers S]
#                              [--mfloats N] [--reps R] [--rounds N]
# Needs openssl and a build with gnc_round_bench. Prints a table; asserts nothing.
set -euo pipefail

build=build workers=4 servers=2 mfloats=4 reps=5 rounds=10
while (($#)); do
  case $1 in
    --build_dir) build=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --servers) servers=$2; shift 2 ;;
    --mfloats) mfloats=$2; shift 2 ;;
    --reps) reps=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare_tls.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
command -v openssl >/dev/null || { echo "SKIP: compare_tls.sh needs openssl"; exit 77; }
bench=$build/tests/bench/gnc_round_bench
[[ -x $bench ]] || { echo "compare_tls.sh: $bench is not built" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/gnc-compare-tls.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$(dirname "$0")/../../deploy/local/make-certs.sh" "$work/certs" >/dev/null

variants=(plaintext token mtls+token)
declare -A flags=(
  [plaintext]=""
  [token]="--auth_token_file=$work/certs/token"
  [mtls+token]="--tls_dir=$work/certs --auth_token_file=$work/certs/token"
)
declare -A times=()
for ((r = 0; r < reps; r++)); do
  for ((i = 0; i < ${#variants[@]}; i++)); do
    v=${variants[(i + r) % ${#variants[@]}]}
    # shellcheck disable=SC2086
    ms=$("$bench" --servers="$servers" --workers="$workers" --mfloats="$mfloats" \
      --rounds="$rounds" --no_tcp ${flags[$v]} | sed -n 's/^round_ms=\([0-9.]*\) .*/\1/p')
    [[ -n $ms ]] || { echo "compare_tls.sh: gnc_round_bench ($v) failed" >&2; exit 1; }
    times[$v]+="$ms "
  done
done
median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
base=$(median "${times[plaintext]}")
echo "gnc round, S=$servers K=$workers N=${mfloats} Mi floats, $rounds rounds per run, $reps interleaved runs (median of each run's median):"
for v in "${variants[@]}"; do
  m=$(median "${times[$v]}")
  printf '  %-11s %8.1f ms  x%.2f   runs: %s\n' "$v" "$m" "$(awk -v a="$m" -v b="$base" 'BEGIN { print a / b }')" "${times[$v]}"
done
