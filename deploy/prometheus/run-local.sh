#!/usr/bin/env bash
# run-local.sh: runs Prometheus beside a local gnc job, on 127.0.0.1 only.
#
#   run-local.sh --servers 127.0.0.1:9400,127.0.0.1:9401 [--workers 127.0.0.1:9500,...]
#                [--port 9090] [--dir DIR] [--scrape-interval 2s]
#
# Writes DIR/prometheus.yml (from gen-config.sh) and keeps the TSDB in DIR/data
# (default DIR: a fresh temporary folder), prints the URL on stderr, then execs
# Prometheus in the foreground: the caller owns the process. To run it beside a job:
#   deploy/prometheus/run-local.sh --servers ... --workers ... --dir "$run/prom" &
#   prom_pid=$!   ...   kill "$prom_pid"
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
servers=""
workers=""
port=9090
dir=""
interval="2s"

usage() { sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --servers) servers="$2"; shift 2 ;;
    --workers) workers="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --scrape-interval) interval="$2"; shift 2 ;;
    -h|--help) usage 0 ;;
    *) echo "run-local.sh: unknown argument $1" >&2; usage ;;
  esac
done
[[ -n "${servers}" ]] || { echo "run-local.sh: --servers is required" >&2; usage; }
[[ "${port}" =~ ^[0-9]+$ ]] || { echo "run-local.sh: bad --port ${port}" >&2; exit 2; }
command -v prometheus > /dev/null || {
  echo "run-local.sh: prometheus not found (Debian: apt-get install prometheus)" >&2
  exit 1
}

if [[ -z "${dir}" ]]; then
  dir="$(mktemp -d -t gnc-prometheus.XXXXXX)"
fi
mkdir -p "${dir}/data"

"${here}/gen-config.sh" --servers "${servers}" --workers "${workers}" \
  --scrape-interval "${interval}" --out "${dir}/prometheus.yml"

echo "Prometheus: http://127.0.0.1:${port}/  (config and data in ${dir})" >&2
echo "  noise scale: http://127.0.0.1:${port}/graph?g0.expr=gnc%3Agradient_noise_scale&g0.tab=0" >&2
exec prometheus \
  --config.file="${dir}/prometheus.yml" \
  --storage.tsdb.path="${dir}/data" \
  --storage.tsdb.retention.time=7d \
  --web.listen-address="127.0.0.1:${port}" \
  --log.level=warn
