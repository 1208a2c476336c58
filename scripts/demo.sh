#!/usr/bin/env bash
# The main job on the default local testbed: build it, run the default experiment, tear down.
set -euo pipefail
cd "$(dirname "$0")/.."
T=.venv/bin/testbed
SPEC=${SPEC:-testbeds/mininet-like.yaml}
trap '$T down --all >/dev/null 2>&1 || true' EXIT
$T down --all >/dev/null
$T up "$SPEC"
if $T run --help >/dev/null 2>&1; then
  $T run --policy "${POLICY:-dualpi2}" --duration "${DURATION:-20}"
else
  $T exec rx -- iperf3 -s -1 -D -p 5201
  sleep 0.5
  $T exec s1 -- iperf3 -c 10.0.3.2 -p 5201 -C cubic -t 10
fi
$T down
