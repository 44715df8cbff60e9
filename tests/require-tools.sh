#!/usr/bin/env bash
# require-tools.sh TOOL... -- COMMAND [ARG...]: runs COMMAND when every TOOL is on
# PATH; otherwise prints which one is missing and exits 77, which CTest reports as
# skipped. Tests that need an optional tool are always registered through this, so
# a tool installed after CMake's configure step is used, and a missing one shows as
# a skipped test instead of a test that vanished.
set -euo pipefail
tools=()
while (($#)) && [[ $1 != -- ]]; do
  tools+=("$1")
  shift
done
if (($# < 2)); then
  echo "usage: require-tools.sh TOOL... -- COMMAND [ARG...]" >&2
  exit 2
fi
shift
for tool in "${tools[@]}"; do
  if ! path=$(type -P "$tool") || [[ ! -x $path ]]; then
    echo "SKIP: $tool not found on PATH (deploy/local/install-deps.sh --tests installs it)"
    exit 77
  fi
done
exec "$@"
