#!/usr/bin/env bash
# Smoke test of JWT identities in the NativeAOT binary (the validator must work without reflection): an HS256 token
# opens a session, a tampered one gets 401 and an auth_failure audit event. Usage: .ci/smoke-jwt.sh path/to/sidecar
set -euo pipefail
bin=$(realpath "$1")
root=$(cd "$(dirname "$0")/.." && pwd)
everything="$root/tests/fixtures/mcp-servers/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
key="an-hmac-key-of-at-least-32-bytes-0123456789"
cat > "$work/sidecar.json" <<JSON
{ "listen": "127.0.0.1:$port", "mcpServers": { "everything": { "command": "node", "args": ["$everything", "stdio"] } },
  "identities": { "jwt": { "issuer": "https://auth.test", "audiences": ["sidecar"], "hmacKey": "$key" } },
  "grants": { "ops": { "policies": { "*": "ops.json" } } }, "audit": { "file": "audit.jsonl", "flushInterval": "50ms" } }
JSON
echo '{ "version": "1", "default": "deny", "tools": { "get-sum": {} } }' > "$work/ops.json"
token=$(KEY="$key" python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
header = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
now = int(time.time())
payload = b(json.dumps({"iss": "https://auth.test", "aud": "sidecar", "sub": "smoke-agent", "sidecar_grant": "ops", "exp": now + 600, "nbf": now - 10}).encode())
signature = b(hmac.new(os.environ["KEY"].encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest())
print(f"{header}.{payload}.{signature}")
PY
)
"$bin" run --config "$work/sidecar.json" > "$work/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.05; done
init='{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}}'
post() { curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/servers/everything/mcp" -H 'Content-Type: application/json' \
  -H 'Accept: application/json, text/event-stream' -H "Authorization: Bearer $1" -d "$init"; }
[ "$(post "$token")" = 200 ] || { cat "$work/log"; echo "a valid HS256 token was refused" >&2; exit 1; }
[ "$(post "${token}x")" = 401 ] || { cat "$work/log"; echo "a tampered token was not refused with 401" >&2; exit 1; }
kill -TERM $pid
wait $pid || true
grep -q '"type":"auth_failure"' "$work/audit.jsonl" || { echo "no auth_failure audit event" >&2; exit 1; }
if grep -qF "$token" "$work/audit.jsonl" "$work/log"; then echo "token material in the audit trail or the log" >&2; exit 1; fi
echo "jwt smoke test passed: a valid HS256 token served, a tampered one refused (401, audited, no token material) by the AOT binary"
