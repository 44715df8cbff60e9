#!/usr/bin/env bash
# check_prometheus_config.sh PROMTOOL WORKDIR: promtool check config on the demo's
# prometheus.yml and on a config written by gen-config.sh; both load the gnc rules.
set -euo pipefail
promtool="$1"
work="$2"
prom="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../deploy/prometheus" && pwd)"

"${promtool}" check config "${prom}/prometheus.yml"
"${prom}/gen-config.sh" --servers 127.0.0.1:19400,127.0.0.1:19401 \
  --workers 127.0.0.1:19500,127.0.0.1:19501 --scrape-interval 1s --out "${work}/generated.yml"
"${promtool}" check config "${work}/generated.yml"
grep -q "gnc-recording.yml" "${work}/generated.yml"
grep -q "job_name: gnc-worker" "${work}/generated.yml"
# A bad target must be refused.
if "${prom}/gen-config.sh" --servers 'not a target' > /dev/null 2>&1; then
  echo "gen-config.sh accepted a bad target" >&2
  exit 1
fi
