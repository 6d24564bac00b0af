'use strict';
// The MCP the bench echo servers speak: just enough to be a fast, correct upstream.
// handle(message) returns the response object for a request, or null for a notification / response.

const TOOLS = {
  tools: [{
    name: 'echo',
    description: 'Returns the message it is given.',
    inputSchema: {
      type: 'object',
      properties: { message: { type: 'string' } },
      required: ['message'],
    },
  }],
};

function handle(msg) {
  if (msg === null || typeof msg !== 'object' || msg.id === undefined || typeof msg.method !== 'string') {
    return null; // notifications (notifications/initialized, cancelled, ...) and responses are ignored
  }
  const id = msg.id;
  const params = msg.params || {};
  switch (msg.method) {
    case 'initialize':
      return {
        jsonrpc: '2.0', id,
        result: {
          protocolVersion: typeof params.protocolVersion === 'string' ? params.protocolVersion : '2025-06-18',
          capabilities: { tools: {} },
          serverInfo: { name: 'sidecar-bench-echo', version: '1.0.0' },
        },
      };
    case 'ping':
      return { jsonrpc: '2.0', id, result: {} };
    case 'tools/list':
      return { jsonrpc: '2.0', id, result: TOOLS };
    case 'tools/call': {
      if (params.name !== 'echo') {
        return { jsonrpc: '2.0', id, error: { code: -32602, message: `Unknown tool: ${params.name}` } };
      }
      const args = params.arguments || {};
      const text = typeof args.message === 'string' ? args.message : JSON.stringify(args);
      return { jsonrpc: '2.0', id, result: { content: [{ type: 'text', text }] } };
    }
    default:
      return { jsonrpc: '2.0', id, error: { code: -32601, message: `Method not found: ${msg.method}` } };
  }
}

module.exports = { handle };
