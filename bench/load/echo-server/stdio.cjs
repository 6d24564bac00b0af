'use strict';
// Minimal MCP echo server over stdio (newline-delimited JSON-RPC), for the load bench.
const { handle } = require('./mcp.cjs');

let buffer = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffer += chunk;
  let out = '';
  let nl;
  while ((nl = buffer.indexOf('\n')) >= 0) {
    const line = buffer.slice(0, nl).trim();
    buffer = buffer.slice(nl + 1);
    if (line.length === 0) continue;
    let msg;
    try {
      msg = JSON.parse(line);
    } catch {
      out += JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } }) + '\n';
      continue;
    }
    const messages = Array.isArray(msg) ? msg : [msg];
    for (const m of messages) {
      const response = handle(m);
      if (response !== null) out += JSON.stringify(response) + '\n';
    }
  }
  if (out.length > 0) process.stdout.write(out);
});
process.stdin.on('end', () => process.exit(0));
