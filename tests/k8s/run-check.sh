#!/bin/sh
# run-check.sh CHECK: runs `node check.mjs CHECK` (see check.mjs). Exits 77, which
# ctest reports as skipped, when node or kubectl is missing, and only then.
# run-check.sh npm-ci installs node_modules from package-lock.json when missing or
# older than the lock file.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in node kubectl; do
  if ! command -v "$tool" > /dev/null 2>&1; then
    echo "SKIP: $tool not found on PATH"
    exit 77
  fi
done
cd "$here"
if [ "${1:-}" = npm-ci ]; then
  stamp=node_modules/.package-lock.json
  if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
    npm ci --no-audit --no-fund
  fi
  exec node --input-type=module -e 'import("js-yaml").then(() => import("kubernetes-models/apps/v1")).then(() => console.log("node_modules ok"))'
fi
exec node check.mjs "$@"
