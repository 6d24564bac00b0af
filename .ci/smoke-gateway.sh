#!/usr/bin/env bash
# End-to-end smoke test of the NativeAOT binary: `sidecar run` in front of server-everything (stdio), driven with curl.
# Usage: .ci/smoke-gateway.sh path/to/sidecar
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
fixtures="$root/tests/fixtures/mcp-servers"
[ -d "$fixtures/node_modules/@modelcontextprotocol/server-everything" ] || (cd "$fixtures" && npm ci --no-audit --no-fund)

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/sidecar.json" <<JSON
{
  "listen": "127.0.0.1:$port",
  "mcpServers": {
    "everything": { "command": "node", "args": ["$fixtures/node_modules/@modelcontextprotocol/server-everything/dist/index.js", "stdio"], "policy": "policy.json" }
  },
  "audit": { "file": "audit/audit.jsonl", "flushInterval": "50ms" }
}
JSON
cat > "$work/policy.json" <<'JSON'
{ "version": "1", "default": "deny", "hide": ["get-env"],
  "tools": { "echo": { "limits": [ { "counter": "echo", "window": "hour", "max": 2, "scope": "session" } ] } } }
JSON

start=$(date +%s%N)
"$bin" run --config "$work/sidecar.json" > "$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
  sleep 0.05
done
ready=$(( ($(date +%s%N) - start) / 1000000 ))
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { cat "$work/log"; echo "sidecar did not become ready" >&2; exit 1; }
rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
echo "ready in ${ready} ms; RSS ${rss} kB (binary $(stat -c %s "$bin") bytes)"
grep -q "I/O inline on the socket threads" "$work/log" || { cat "$work/log"; echo "the binary did not start with inline I/O" >&2; exit 1; }

url="http://127.0.0.1:$port/servers/everything/mcp"
post() { curl -s -D "$work/headers" "$url" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' ${session:+-H "Mcp-Session-Id: $session"} -d "$1"; }
session=
post '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}' | grep -q '"serverInfo"'
session=$(awk 'tolower($1)=="mcp-session-id:" {print $2}' "$work/headers" | tr -d '\r')
[ -n "$session" ] || { echo "no session id" >&2; exit 1; }
post '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null

tools=$(post '{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
grep -q '"name":"echo"' <<<"$tools" || { echo "echo missing from tools/list" >&2; exit 1; }
if grep -q '"name":"get-env"' <<<"$tools"; then echo "hidden tool listed" >&2; exit 1; fi

post '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","arguments":{"message":"smoke"}}}' | grep -q 'Echo: smoke'
post '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"get-env","arguments":{}}}' | grep -q '"code":-32010'
post '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"message":"again"}}}' | grep -q 'Echo: again'
post '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"message":"third"}}}' | grep -q '"code":-32011'
echo "gateway smoke test passed: allowed, hidden, denied and rate-limited calls behave through the AOT binary"

# The aggregated endpoint: the same server as everything__*, decided by the same policy, in a session of its own.
url="http://127.0.0.1:$port/mcp"
single_session=$session
session=
post '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}' | grep -q '"name":"sidecar"' \
  || { cat "$work/log"; echo "the aggregated endpoint did not initialize" >&2; exit 1; }
session=$(awk 'tolower($1)=="mcp-session-id:" {print $2}' "$work/headers" | tr -d '\r')
post '{"jsonrpc":"2.0","method":"notifications/initialized"}' >/dev/null
tools=$(post '{"jsonrpc":"2.0","id":2,"method":"tools/list"}')
grep -q '"name":"everything__echo"' <<<"$tools" || { echo "$tools"; echo "everything__echo missing from the aggregated tools/list" >&2; exit 1; }
if grep -q '"name":"everything__get-env"' <<<"$tools"; then echo "hidden tool listed on the aggregated endpoint" >&2; exit 1; fi
post '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"everything__echo","arguments":{"message":"aggregated"}}}' | grep -q 'Echo: aggregated' \
  || { echo "the aggregated call did not reach the server" >&2; exit 1; }
post '{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"everything__get-env","arguments":{}}}' | grep -q '"code":-32010' \
  || { echo "the aggregated endpoint did not deny the hidden tool" >&2; exit 1; }
curl -s -X DELETE "$url" -H "Mcp-Session-Id: $session" >/dev/null
url="http://127.0.0.1:$port/servers/everything/mcp"
session=$single_session
echo "aggregate smoke test passed: /mcp lists everything__echo, routes it and denies the hidden tool through the AOT binary"

# SIGHUP reloads (a config_reload event) and never ends the process.
kill -HUP $pid
for _ in $(seq 1 100); do
  grep -q '"type":"config_reload"' "$work/audit/audit.jsonl" 2>/dev/null && break
  sleep 0.05
done
kill -0 $pid 2>/dev/null || { cat "$work/log"; echo "SIGHUP ended the gateway" >&2; exit 1; }
grep '"type":"config_reload"' "$work/audit/audit.jsonl" | grep -q '"result":"applied"' || { cat "$work/log"; echo "SIGHUP did not reload" >&2; exit 1; }
post '{"jsonrpc":"2.0","id":7,"method":"tools/list"}' | grep -q '"name":"echo"' || { echo "no answer after the reload" >&2; exit 1; }
echo "reload smoke test passed: SIGHUP reloaded (config_reload applied) and the gateway kept serving"

# The audit trail: SIGTERM drains it (audit_stop), every decision is one event, and the chain verifies.
kill -TERM $pid
wait $pid || true
audit="$work/audit/audit.jsonl"
[ "$(grep -c '"type":"tool_call"' "$audit")" = 6 ] || { cat "$audit"; echo "expected 6 tool_call audit events (4 on the server's endpoint, 2 on /mcp)" >&2; exit 1; }
grep -q '"type":"audit_stop"' "$audit" || { echo "no audit_stop: the trail was not drained on shutdown" >&2; exit 1; }
[ "$(grep '"requestId":4' "$audit" | grep -c '"decision":"deny"')" = 2 ] || { echo "the denied calls are not in the audit trail" >&2; exit 1; }
[ "$(grep '"requestId":3' "$audit" | grep -c '"outcome":"ok"')" = 2 ] || { echo "the allowed calls have no outcome in the audit trail" >&2; exit 1; }
"$bin" audit verify --strict "$audit"
echo "audit smoke test passed: 6 decisions recorded, drained on SIGTERM, chain verified by the AOT binary"

# sidecar wrap: the same policy over stdin/stdout, stdout only MCP, its own audit trail.
wrapped=$(printf '%s\n' \
  '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}' \
  '{"jsonrpc":"2.0","method":"notifications/initialized"}' \
  '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"wrapped"}}}' \
  '{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get-env","arguments":{}}}' \
  | "$bin" wrap -c "$work/policy.json" --audit "$work/wrap.jsonl" -- node "$fixtures/node_modules/@modelcontextprotocol/server-everything/dist/index.js" stdio 2>"$work/wrap.log")
grep -q 'Echo: wrapped' <<<"$wrapped" || { echo "$wrapped"; cat "$work/wrap.log"; echo "wrap did not forward the allowed call" >&2; exit 1; }
grep '"id":3' <<<"$wrapped" | grep -q '"code":-32010' || { echo "$wrapped"; echo "wrap did not deny the hidden tool" >&2; exit 1; }
if grep -qv '^{"' <<<"$wrapped"; then echo "$wrapped"; echo "wrap wrote something other than JSON-RPC to stdout" >&2; exit 1; fi
"$bin" audit verify --strict "$work/wrap.jsonl"
echo "wrap smoke test passed: allowed and denied calls over stdio through the AOT binary, its trail verified"
