#!/usr/bin/env bash
# Audit completeness at saturation, as issue #9 measured it: one session, 64 calls in flight, the stdio echo upstream,
# the NativeAOT sidecar with the realistic policy, and three audit settings: the default (onFull "shed", durability
# "batched"), onFull "drop", and durability "before_answer". Each runs 1 s warm-up + 8 s closed loop, is stopped with
# SIGTERM and its trail checked with `sidecar audit verify --strict`; prints the generator's JSON line, the events
# kept, the records dropped and the calls shed, and the audit writer thread's CPU.
#
# Needs what bench/load/run.sh builds (out/linux-x64/sidecar and the generator). Loopback only, bounded in time.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
SIDECAR="$ROOT/out/linux-x64/sidecar"
LOAD="$ROOT/bench/Sidecar.Load/bin/Release/net10.0/Sidecar.Load"
PORT="${PORT:-9150}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

for mode in shed drop durable; do
  dir="$work/$mode"
  mkdir -p "$dir"
  extra=""
  [[ $mode == drop ]] && extra=', "onFull": "drop"'
  [[ $mode == durable ]] && extra=', "durability": "before_answer"'
  cat > "$dir/sidecar.json" <<JSON
{ "listen": "127.0.0.1:$PORT",
  "mcpServers": { "echo": { "command": "node", "args": ["stdio.cjs"], "cwd": "$HERE/echo-server", "policy": "$HERE/config/policy-realistic.json" } },
  "audit": { "file": "audit.jsonl" $extra } }
JSON
  NODE_OPTIONS="--require $ROOT/tests/fixtures/mcp-servers/loopback.cjs" "$SIDECAR" run --config "$dir/sidecar.json" > "$dir/log" 2>&1 &
  pid=$!
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$PORT/readyz" > /dev/null && break; sleep 0.05; done
  "$LOAD" --url "http://127.0.0.1:$PORT/servers/echo/mcp" --concurrency 64 --sessions 1 --duration 8 --warmup 1 \
    --max-requests 2000000 --pids "$pid" --target "sidecar-$mode" --scenario sat-s1-c64 > "$dir/result.json"
  writer_cpu=$(for task in /proc/"$pid"/task/*; do
      if [[ "$(cat "$task/comm" 2>/dev/null)" == sidecar-audit-w ]]; then awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "$task/stat"; fi
    done || true)
  kill -TERM "$pid"
  wait "$pid" || true
  trail="$dir/audit.jsonl"
  calls=$(grep -c '"type":"tool_call"' "$trail" || true)
  dropped=$({ grep '"type":"audit_gap"' "$trail" || true; } | { grep -o '"dropped":[0-9]*' || true; } | awk -F: '{s += $2} END {print s + 0}')
  stop=$(tail -1 "$trail" | grep -o '"dropped":[0-9]*,"shed":[0-9]*' || echo "no audit_stop")
  verdict=$("$SIDECAR" audit verify --strict "$trail" 2>&1 | tail -1 || true)
  echo "$mode: $(cat "$dir/result.json")"
  echo "$mode: tool_call events $calls, audit_gap dropped $dropped, audit_stop $stop, writer CPU ${writer_cpu:-?} s; verify --strict: $verdict"
done
