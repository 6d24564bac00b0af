#!/usr/bin/env bash
# Shared limits in Redis against the memory store, side by side in one run (issue #14): two Sidecars in front of the
# same HTTP echo with the same realistic policy (its all_tools limit is global, so with rateLimits.store "redis" every
# call takes it in Redis; echo's session limit stays local), driven alternately with the same load; a real
# redis-server on loopback. Also counts Redis's EVALSHA calls against the calls decided: the round trips per call.
#
#   bench/load/redis.sh     (needs what run.sh builds: out/linux-x64/sidecar and the load generator; redis-server)
#
# Knobs: ROUNDS (3), DURATION (5 s), WARMUP (2 s), MAX_REQUESTS (500000). Results: results/redis.jsonl and a table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/side-by-side.sh"
OUT="$RESULTS/redis.jsonl"
: > "$OUT"; rm -rf "$RESULTS/audit-redis"
command -v redis-server >/dev/null || { echo "redis-server is missing (apt-get install redis-server)" >&2; exit 1; }
redis-server --port 9123 --bind 127.0.0.1 --save "" --appendonly no > "$RESULTS/redis-server.log" 2>&1 & PIDS+=("$!")
wait_port 9123
NODE_OPTIONS="--require $PRELOAD" node "$HERE/echo-server/http.cjs" 9120 > "$RESULTS/redis-echo.log" 2>&1 & PIDS+=("$!")
wait_port 9120
"$SIDECAR" run --config "$HERE/config/sidecar-memory.json" > "$RESULTS/redis-memory.log" 2>&1 & MEMORY_PID=$!; PIDS+=("$MEMORY_PID")
"$SIDECAR" run --config "$HERE/config/sidecar-redis.json" > "$RESULTS/redis-redis.log" 2>&1 & REDIS_PID=$!; PIDS+=("$REDIS_PID")
wait_port 9121; wait_port 9122
evalsha() { redis-cli -p 9123 info commandstats | awk -F'[:=,]' '/^cmdstat_evalsha:/ {print $3}'; }

run() { # target scenario port pid mode-args...
  local target=$1 scenario=$2 port=$3 pid=$4; shift 4
  "$LOAD" --url "http://127.0.0.1:$port/servers/echo/mcp" "$@" --duration "$DURATION" --warmup "$WARMUP" --max-requests "$MAX_REQUESTS" \
    --pids "$pid" --target "$target" --scenario "$scenario" >> "$OUT"
}
for round in $(seq 1 "$ROUNDS"); do
  run memory sat-c32-s4 9121 "$MEMORY_PID" --concurrency 32 --sessions 4
  run redis sat-c32-s4 9122 "$REDIS_PID" --concurrency 32 --sessions 4
  run memory r1000-s4 9121 "$MEMORY_PID" --rate 1000 --sessions 4
  run redis r1000-s4 9122 "$REDIS_PID" --rate 1000 --sessions 4
  echo "round $round/$ROUNDS done" >&2
done
kill -TERM "$MEMORY_PID" "$REDIS_PID"; wait "$MEMORY_PID" "$REDIS_PID" || true
"$SIDECAR" audit verify --strict "$RESULTS/audit-redis/memory" >&2
"$SIDECAR" audit verify --strict "$RESULTS/audit-redis/redis" >&2
# Round trips per call over the whole run (warm-ups included): Redis's own count of EVALSHA (and of EVAL, sent only
# after a NOSCRIPT) against the decisions in the redis target's audit trail.
trips=$(redis-cli -p 9123 info commandstats | awk -F'[:=,]' '/^cmdstat_(evalsha|eval):/ {s+=$3} END {print s+0}')
decisions=$(cat "$RESULTS"/audit-redis/redis/*.jsonl | grep -c '"type":"tool_call"')
echo "Redis round trips: $trips for $decisions decisions ($(awk -v t="$trips" -v d="$decisions" 'BEGIN {printf "%.4f", t / d}') per decision)"

node "$HERE/side-by-side.mjs" "$OUT"
