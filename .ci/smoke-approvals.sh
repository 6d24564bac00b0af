#!/usr/bin/env bash
# Smoke test of approvals and the admin API in the NativeAOT binary: a call whose rule is require_approval gets
# -32012 with an approval id (hold 0s), `sidecar approvals list|approve` (the AOT CLI) approves it through the admin
# API, the identical retry reaches the server once, and the admin API refuses a request without its token.
# Usage: .ci/smoke-approvals.sh path/to/sidecar
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
everything="$root/tests/fixtures/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
admin=$(free_port)
export SMOKE_ADMIN_TOKEN="smoke-admin-token-0123456789abcdef"
cat > "$work/sidecar.json" <<JSON
{ "listen": "127.0.0.1:$port", "mcpServers": { "everything": { "command": "node", "args": ["$everything", "stdio"], "policy": "policy.json" } },
  "admin": { "listen": "127.0.0.1:$admin", "token": "\${SMOKE_ADMIN_TOKEN}" }, "approvals": { "hold": "0s" },
  "audit": { "file": "audit.jsonl", "flushInterval": "50ms" } }
JSON
echo '{ "version": "1", "default": "deny", "tools": { "get-sum": { "action": "require_approval" } } }' > "$work/policy.json"
"$bin" run --config "$work/sidecar.json" > "$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
url="http://127.0.0.1:$port/servers/everything/mcp"
headers=(-H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream')
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}'
session=$(curl -s -D - -o /dev/null "$url" "${headers[@]}" -d "$init" | tr -d '\r' | awk -F': ' 'tolower($1)=="mcp-session-id"{print $2}')
[ -n "$session" ] || { cat "$work/log"; echo "no session" >&2; exit 1; }
curl -s -o /dev/null "$url" "${headers[@]}" -H "Mcp-Session-Id: $session" -d '{"jsonrpc":"2.0","method":"notifications/initialized"}'
call() { curl -s "$url" "${headers[@]}" -H "Mcp-Session-Id: $session" -d "{\"jsonrpc\":\"2.0\",\"id\":$1,\"method\":\"tools/call\",\"params\":{\"name\":\"get-sum\",\"arguments\":$2}}"; }
first=$(call 2 '{"a":2,"b":3}')
echo "$first" | grep -q '"code":-32012' || { cat "$work/log"; echo "expected -32012, got: $first" >&2; exit 1; }
id=$(echo "$first" | sed -n 's/.*"approvalId":"\([0-9a-f]*\)".*/\1/p')
[ -n "$id" ] || { echo "no approvalId in: $first" >&2; exit 1; }
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin/v1/approvals")" = 401 ] || { echo "the admin API answered without its token" >&2; exit 1; }
"$bin" approvals list --admin "http://127.0.0.1:$admin" --token-env SMOKE_ADMIN_TOKEN | grep -q "$id" || { echo "approvals list does not show $id" >&2; exit 1; }
"$bin" approvals approve "$id" --reason smoke --config "$work/sidecar.json" | grep -q "approved $id" || { echo "approve failed" >&2; exit 1; }
retry=$(call 3 '{ "b": 3, "a": 2 }')
echo "$retry" | grep -q 'The sum of 2 and 3 is 5' || { cat "$work/log"; echo "the approved retry did not pass: $retry" >&2; exit 1; }
again=$(call 4 '{"a":2,"b":3}')
echo "$again" | grep -q '"code":-32012' || { echo "a second identical call passed without a new approval: $again" >&2; exit 1; }
"$bin" reload --config "$work/sidecar.json" | grep -q 'reload' || { echo "sidecar reload failed" >&2; exit 1; }
kill -TERM $pid
wait $pid || true
grep -q '"type":"approval_granted"' "$work/audit.jsonl" || { echo "no approval_granted audit event" >&2; exit 1; }
grep -q "\"approvalId\":\"$id\",\"approvalStatus\":\"used\"" "$work/audit.jsonl" || { echo "the released call's tool_call lacks its approvalId" >&2; exit 1; }
if grep -qF "$SMOKE_ADMIN_TOKEN" "$work/audit.jsonl" "$work/log"; then echo "the admin token is in the audit trail or the log" >&2; exit 1; fi
echo "approvals smoke test passed: -32012 with an id, approved with the AOT CLI through the admin API, the retry passed once, admin API refused without its token"
