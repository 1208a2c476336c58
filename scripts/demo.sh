#!/usr/bin/env bash
# The flagship on the default local testbed: DualPI2, then AQM-LLM (the shipped model,
# models/aqm-llm-anchored), then `testbed compare` of the two. About two minutes.
#
# It builds a testbed of its own name (NAME, default "demo" and a random number, so that two
# demos on one machine do not collide) from SPEC and tears down only that one: other testbeds
# on the machine (other users, other runs) are never touched.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${TESTBED:-.venv/bin/testbed}
SPEC=${SPEC:-testbeds/mininet-like.yaml}
NAME=${NAME:-demo$((RANDOM % 10000))}
DURATION=${DURATION:-20}
POLICIES=${POLICIES:-dualpi2 aqm-llm}
OUT=${OUT:-results/demo-$(date -u +%Y%m%d-%H%M%S)}

trap '$T down "$NAME" >/dev/null 2>&1 || true' EXIT
$T up "$SPEC" --name "$NAME"
mkdir -p "$OUT"
for policy in $POLICIES; do
  echo "== $policy, $DURATION s"
  $T run --testbed "$NAME" --policy "$policy" --duration "$DURATION" --results "$OUT"
done
echo "== comparison"
runs=()
for d in "$OUT"/*/; do
  [ -f "$d/summary.json" ] && runs+=("$d")
done
$T compare "${runs[@]}"
$T down "$NAME"
trap - EXIT
