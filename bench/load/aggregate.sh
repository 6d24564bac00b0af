#!/usr/bin/env bash
# The aggregated endpoint's overhead against a per-server endpoint, side by side in one run (issue #13): one Sidecar
# (bench/load/config/sidecar-aggregate.json) in front of the HTTP echo and the stdio echo, driven alternately through
# /servers/NAME/mcp (tool "echo") and /mcp (tool "NAME__echo"), same load, same process, same audit trail.
#
#   bench/load/aggregate.sh            (needs what run.sh builds: out/linux-x64/sidecar and the load generator)
#
# Knobs: ROUNDS (3), DURATION (5 s), WARMUP (2 s), MAX_REQUESTS (500000). Results: results/aggregate.jsonl and a
# table on stdout. Loopback only; every run is capped in time and requests.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/side-by-side.sh"
OUT="$RESULTS/aggregate.jsonl"
: > "$OUT"; rm -rf "$RESULTS/audit-aggregate"
NODE_OPTIONS="--require $PRELOAD" node "$HERE/echo-server/http.cjs" 9110 > "$RESULTS/aggregate-echo.log" 2>&1 & PIDS+=("$!")
wait_port 9110
NODE_OPTIONS="--require $PRELOAD" "$SIDECAR" run --config "$HERE/config/sidecar-aggregate.json" > "$RESULTS/aggregate-sidecar.log" 2>&1 & SIDECAR_PID=$!; PIDS+=("$SIDECAR_PID")
wait_port 9111

run() { # target scenario url tool mode-args...
  local target=$1 scenario=$2 url=$3 tool=$4; shift 4
  "$LOAD" --url "$url" --tool "$tool" "$@" --duration "$DURATION" --warmup "$WARMUP" --max-requests "$MAX_REQUESTS" \
    --pids "$SIDECAR_PID" --target "$target" --scenario "$scenario" >> "$OUT"
}
for round in $(seq 1 "$ROUNDS"); do
  for upstream in echo stdio; do
    # Saturation over 4 sessions (closed loop, 32 in flight), then a moderate open-loop rate for latency.
    run "per-server-$upstream" sat-c32-s4 "http://127.0.0.1:9111/servers/$upstream/mcp" echo --concurrency 32 --sessions 4
    run "aggregated-$upstream" sat-c32-s4 "http://127.0.0.1:9111/mcp" "${upstream}__echo" --concurrency 32 --sessions 4
    run "per-server-$upstream" r1000-s4 "http://127.0.0.1:9111/servers/$upstream/mcp" echo --rate 1000 --sessions 4
    run "aggregated-$upstream" r1000-s4 "http://127.0.0.1:9111/mcp" "${upstream}__echo" --rate 1000 --sessions 4
  done
  echo "round $round/$ROUNDS done" >&2
done
kill -TERM "$SIDECAR_PID"; wait "$SIDECAR_PID" || true
"$SIDECAR" audit verify --strict "$RESULTS/audit-aggregate" >&2

node "$HERE/side-by-side.mjs" "$OUT"
