#!/usr/bin/env bash
# Smoke test of operations in the NativeAOT binary: Type=notify (READY, WATCHDOG, STOPPING over NOTIFY_SOCKET),
# /metrics parsed by the reference Prometheus parser, JSON-line logs, and SIGTERM exiting 0 with audit_stop.
# Usage: .ci/smoke-ops.sh path/to/sidecar
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
everything="$root/tests/fixtures/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/sidecar.json" <<JSON
{ "listen": "127.0.0.1:$port", "mcpServers": { "everything": { "command": "node", "args": ["$everything", "stdio"], "policy": "policy.json" } },
  "audit": { "file": "audit.jsonl", "flushInterval": "50ms" }, "limits": { "shutdownGrace": "2s" } }
JSON
echo '{ "version": "1", "default": "deny", "tools": { "echo": {} } }' > "$work/policy.json"
# systemd's side: a datagram socket that writes what it receives, one message per line.
python3 - "$work/notify" "$work/notified" <<'PY' &
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(60)
with open(sys.argv[2], "w", buffering=1) as out:
    try:
        while True:
            out.write(s.recv(4096).decode().replace("\n", " ") + "\n")
    except socket.timeout:
        pass
PY
listener=$!
for _ in $(seq 1 50); do [ -S "$work/notify" ] && break; sleep 0.05; done
NOTIFY_SOCKET="$work/notify" WATCHDOG_USEC=500000 "$bin" run --config "$work/sidecar.json" > "$work/stdout" 2> "$work/log" &
pid=$!
trap 'kill $pid $listener 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
url="http://127.0.0.1:$port/servers/everything/mcp"
headers=(-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}'
session=$(curl -s -D - -o /dev/null "$url" "${headers[@]}" -d "$init" | tr -d '\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
curl -s -o /dev/null "$url" "${headers[@]}" -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
curl -s "$url" "${headers[@]}" -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"m"}}}' | grep -q 'Echo: m' \
  || { cat "$work/log"; echo "the allowed call failed" >&2; exit 1; }
curl -sf "http://127.0.0.1:$port/metrics" > "$work/metrics"
/usr/bin/python3 - "$work/metrics" <<'PY' || { cat "$work/metrics"; echo "/metrics is not valid Prometheus text or lacks the call" >&2; exit 1; }
import sys
from prometheus_client.parser import text_string_to_metric_families
samples = [s for f in text_string_to_metric_families(open(sys.argv[1]).read()) for s in f.samples]
calls = [s for s in samples if s.name == "sidecar_tool_calls_total" and s.labels == {"server": "everything", "tool": "echo", "decision": "allow"}]
assert calls and calls[0].value == 1, calls
assert any(s.name == "sidecar_overhead_seconds_count" and s.value == 1 for s in samples)
PY
sleep 1.2
grep -q '^READY=1' "$work/notified" || { cat "$work/notified"; echo "no READY=1" >&2; exit 1; }
grep -q '^WATCHDOG=1' "$work/notified" || { cat "$work/notified"; echo "no watchdog ping" >&2; exit 1; }
kill -TERM $pid
code=0; wait $pid || code=$?
[ "$code" = 0 ] || { cat "$work/log"; echo "SIGTERM exited $code" >&2; exit 1; }
sleep 0.2
grep -q '^STOPPING=1' "$work/notified" || { cat "$work/notified"; echo "no STOPPING=1" >&2; exit 1; }
tail -1 "$work/audit.jsonl" | grep -q '"type":"audit_stop"' || { echo "the trail does not end with audit_stop" >&2; exit 1; }
python3 -c 'import json,sys; [json.loads(l) for l in open(sys.argv[1]) if l.strip()]' "$work/log" || { cat "$work/log"; echo "a log line is not JSON" >&2; exit 1; }
echo "ops smoke test passed: READY/WATCHDOG/STOPPING over NOTIFY_SOCKET, /metrics parsed with the call counted, JSON logs, SIGTERM exit 0 with audit_stop"
