#!/usr/bin/env bash
# Smoke test of the NativeAOT binary with shared rate limits: two `sidecar run` processes in front of the faulty stdio
# fixture share one limit (2 calls in all) through a real redis-server on loopback; with Redis killed, fail closed
# (-32018, /readyz 503); with Redis back, shared again without a restart.
# Usage: .ci/smoke-redis.sh path/to/sidecar
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
command -v redis-server >/dev/null || { apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server; }
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port); pa=$(free_port); pb=$(free_port)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
start_redis() { redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --requirepass smoke-pw > "$work/redis.log" 2>&1 & redis_pid=$!; pids+=("$redis_pid");
  for _ in $(seq 1 100); do redis-cli -p "$rport" -a smoke-pw --no-auth-warning ping 2>/dev/null | grep -q PONG && return 0; sleep 0.05; done; echo "redis did not start" >&2; exit 1; }
start_redis

cat > "$work/policy.json" <<'JSON'
{ "version": "1", "default": "deny", "tools": { "ok": { "limits": [ { "counter": "ok_rate", "window": "hour", "max": 2, "scope": "global" } ] } } }
JSON
for port in "$pa" "$pb"; do
  cat > "$work/sidecar-$port.json" <<JSON
{ "listen": "127.0.0.1:$port",
  "mcpServers": { "faulty": { "command": "node", "args": ["$root/tests/fixtures/mcp-servers/faulty.cjs"], "policy": "policy.json" } },
  "rateLimits": { "store": "redis", "redis": { "connection": "127.0.0.1:$rport,password=\${REDIS_PASSWORD}", "prefix": "smoke:", "timeout": "500ms" } },
  "audit": { "file": "audit-$port.jsonl" } }
JSON
  REDIS_PASSWORD=smoke-pw "$bin" run --config "$work/sidecar-$port.json" > "$work/log-$port" 2>&1 &
  pids+=("$!")
done
for port in "$pa" "$pb"; do
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
  curl -sf "http://127.0.0.1:$port/readyz" | grep -q "Redis at 127.0.0.1:$rport connected" || { cat "$work/log-$port"; echo "sidecar on $port is not connected to Redis" >&2; exit 1; }
done

session() { # port
  curl -s -D "$work/h" "http://127.0.0.1:$1/servers/faulty/mcp" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
    -d '{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}' >/dev/null
  awk 'tolower($1)=="mcp-session-id:" {print $2}' "$work/h" | tr -d '\r'
}
call() { # port session id
  curl -s "http://127.0.0.1:$1/servers/faulty/mcp" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' -H "Mcp-Session-Id: $2" \
    -d '{"jsonrpc":"2.0","id":'"$3"',"method":"tools/call","params":{"name":"ok","arguments":{"message":"smoke"}}}'
}
sa=$(session "$pa"); sb=$(session "$pb")
call "$pa" "$sa" 1 | grep -q '"text":"ok: smoke"' || { echo "first call not admitted" >&2; exit 1; }
call "$pb" "$sb" 2 | grep -q '"text":"ok: smoke"' || { echo "second call (other replica) not admitted" >&2; exit 1; }
call "$pa" "$sa" 3 | grep -q '"code":-32011' || { echo "third call across replicas was not rate limited: the limit is not shared" >&2; exit 1; }
echo "redis smoke test passed: two AOT replicas admitted exactly 2 calls of a shared limit of 2"

kill "$redis_pid"; wait "$redis_pid" 2>/dev/null || true
for _ in $(seq 1 100); do out=$(call "$pb" "$sb" 4); grep -q '"code":-32018' <<<"$out" && break; sleep 0.1; done
grep -q '"code":-32018' <<<"$out" || { echo "$out"; echo "no -32018 with Redis down (failMode closed)" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$pb/readyz")" = 503 ] || { echo "/readyz is not 503 with shared limits failing closed" >&2; exit 1; }
start_redis
for _ in $(seq 1 150); do out=$(call "$pa" "$sa" 5); grep -q '"text":"ok: smoke"' <<<"$out" && break; sleep 0.2; done
grep -q '"text":"ok: smoke"' <<<"$out" || { echo "$out"; echo "no shared limit after Redis came back" >&2; exit 1; }
if grep -q smoke-pw "$work"/log-*; then echo "the Redis password appeared in a log" >&2; exit 1; fi
echo "redis smoke test passed: -32018 and /readyz 503 while Redis was down, shared again once it was back, no password in the logs"
