'use strict';
// Minimal MCP echo server over Streamable HTTP, for the load bench. Binds 127.0.0.1 only.
//   node http.cjs PORT
// POST /mcp: JSON responses (never SSE); initialize issues an Mcp-Session-Id; notifications/responses get 202.
// GET /mcp: holds an (empty) SSE stream open for a known session, as a server with nothing to push would.
// DELETE /mcp: ends the session (200) and its stream; unknown session 404.
const http = require('node:http');
const { randomUUID } = require('node:crypto');
const { handle } = require('./mcp.cjs');

const HOST = '127.0.0.1';
const port = Number(process.argv[2] || 9100);
const sessions = new Set();
const streams = new Map(); // session id -> open GET response
const MAX_BODY = 4 * 1024 * 1024;

function reply(res, status, body, headers) {
  const payload = body === undefined ? '' : JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(payload), ...headers });
  res.end(payload);
}

const server = http.createServer((req, res) => {
  const path = req.url.split('?')[0];
  if (path === '/healthz') { res.writeHead(200); res.end('ok'); return; }
  if (path !== '/mcp') { reply(res, 404, { error: 'not found' }); return; }
  const sid = req.headers['mcp-session-id'];

  if (req.method === 'DELETE') {
    if (sid && sessions.delete(sid)) {
      const stream = streams.get(sid);
      if (stream) { streams.delete(sid); stream.end(); }
      res.writeHead(200); res.end();
    } else { res.writeHead(404); res.end(); }
    return;
  }
  if (req.method === 'GET') {
    if (!sid || !sessions.has(sid)) { res.writeHead(sid ? 404 : 400); res.end(); return; }
    if (streams.has(sid)) { res.writeHead(409); res.end(); return; }
    res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
    res.write(': open\n\n');
    streams.set(sid, res);
    res.on('close', () => { if (streams.get(sid) === res) streams.delete(sid); });
    return;
  }
  if (req.method !== 'POST') { res.writeHead(405, { Allow: 'GET, POST, DELETE' }); res.end(); return; }

  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) { reply(res, 413, { error: 'too large' }); req.destroy(); return; }
    chunks.push(c);
  });
  req.on('end', () => {
    let msg;
    try {
      msg = JSON.parse(Buffer.concat(chunks).toString('utf8'));
    } catch {
      reply(res, 400, { jsonrpc: '2.0', id: null, error: { code: -32700, message: 'Parse error' } });
      return;
    }
    const messages = Array.isArray(msg) ? msg : [msg];
    const isInit = messages.some((m) => m && m.method === 'initialize');
    const headers = {};
    if (isInit) {
      const id = randomUUID();
      sessions.add(id);
      headers['Mcp-Session-Id'] = id;
    } else if (sid !== undefined && !sessions.has(sid)) {
      reply(res, 404, { jsonrpc: '2.0', id: null, error: { code: -32001, message: 'Session not found' } });
      return;
    }
    const responses = [];
    for (const m of messages) {
      const r = handle(m);
      if (r !== null) responses.push(r);
    }
    if (responses.length === 0) { res.writeHead(202, headers); res.end(); return; }
    reply(res, 200, Array.isArray(msg) ? responses : responses[0], headers);
  });
});
server.keepAliveTimeout = 60000;
server.listen(port, HOST, () => {
  process.stderr.write(`echo-http listening on http://${HOST}:${port}/mcp\n`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
