using System.Buffers.Text;
using System.Net;
using System.Net.Sockets;
using System.Text;

namespace Sidecar.Benchmarks.EndToEnd;

/// <summary>
/// The agent side of the end-to-end benchmark: one keep-alive HTTP/1.1 connection on a blocking loopback socket,
/// requests pre-built once (a <c>tools/call</c>'s 10-digit id is rewritten in place), responses read into one buffer
/// and parsed in place (<c>Content-Length</c> or chunked). Nothing is allocated per call. Loops are bounded by the
/// buffer size: a response that does not fit is an error.
/// </summary>
public sealed class RawMcpClient : IDisposable
{
    private const int BufferSize = 256 * 1024;

    /// <summary>The <c>tools/call</c> every benchmark call sends (the id is patched per call).</summary>
    public const string ToolsCallBody =
        """{"jsonrpc":"2.0","id":1000000000,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hello from the benchmark"}}}""";

    private readonly Socket _socket;
    private readonly string _hostHeader;
    private readonly string _path;
    private readonly byte[] _buffer = new byte[BufferSize];
    private byte[] _call = [];
    private string _extraHeaders = "";
    private string _protocolVersion = "2025-06-18";
    private int _callIdOffset;
    private long _nextId = 1_000_000_000;
    private int _filled;

    public RawMcpClient(int port, string path)
    {
        _path = path;
        _hostHeader = $"127.0.0.1:{port}";
        _socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        _socket.Connect(new IPEndPoint(IPAddress.Loopback, port));
        _socket.ReceiveTimeout = 30_000; // a gateway that never answers fails the run instead of hanging it
    }

    /// <summary>The session the gateway gave on <see cref="Initialize"/>.</summary>
    public string? SessionId { get; private set; }

    /// <summary>The body of the last response (valid until the next call).</summary>
    public ReadOnlySpan<byte> LastBody => _buffer.AsSpan(_bodyStart, _bodyLength);

    private int _bodyStart;
    private int _bodyLength;

    /// <summary><c>initialize</c>, then <c>notifications/initialized</c>; then prepares the <c>tools/call</c> request.</summary>
    public void Initialize()
    {
        var status = Post("""{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"sidecar-bench","version":"1.0.0"}}}""", out var session);
        if (status != 200 || session is null)
        {
            throw new InvalidOperationException($"initialize failed: HTTP {status}: {Encoding.UTF8.GetString(LastBody)}");
        }
        SessionId = session;
        status = Post("""{"jsonrpc":"2.0","method":"notifications/initialized"}""", out _);
        if (status != 202)
        {
            throw new InvalidOperationException($"notifications/initialized failed: HTTP {status}: {Encoding.UTF8.GetString(LastBody)}");
        }
        _call = BuildRequest(ToolsCallBody);
        _callIdOffset = _call.AsSpan().IndexOf("\"id\":1000000000"u8) + 5;
    }

    /// <summary>
    /// Prepares stateless (MCP 2026-07-28) calls instead: no session; every <c>tools/call</c> carries
    /// <c>MCP-Protocol-Version: 2026-07-28</c> and the mirrored <c>Mcp-Method</c>/<c>Mcp-Name</c> headers.
    /// </summary>
    public void UseStateless()
    {
        _extraHeaders = "Mcp-Method: tools/call\r\nMcp-Name: echo\r\n";
        _protocolVersion = "2026-07-28";
        _call = BuildRequest(ToolsCallBody);
        _callIdOffset = _call.AsSpan().IndexOf("\"id\":1000000000"u8) + 5;
    }

    /// <summary>One <c>tools/call</c>; returns the HTTP status (the body is in <see cref="LastBody"/>).</summary>
    public int Call()
    {
        var id = ++_nextId;
        if (!Utf8Formatter.TryFormat(id, _call.AsSpan(_callIdOffset, 10), out var written) || written != 10)
        {
            throw new InvalidOperationException("the call id outgrew 10 digits");
        }
        Send(_call);
        return ReadResponse(out _);
    }

    /// <summary>A POST with any body (used for setup); returns the status and the <c>Mcp-Session-Id</c> header if any.</summary>
    public int Post(string json, out string? sessionId)
    {
        Send(BuildRequest(json));
        return ReadResponse(out sessionId);
    }

    private byte[] BuildRequest(string json)
    {
        var body = Encoding.UTF8.GetBytes(json);
        var head = new StringBuilder()
            .Append("POST ").Append(_path).Append(" HTTP/1.1\r\n")
            .Append("Host: ").Append(_hostHeader).Append("\r\n")
            .Append("Content-Type: application/json\r\n")
            .Append("Accept: application/json, text/event-stream\r\n")
            .Append("MCP-Protocol-Version: ").Append(_protocolVersion).Append("\r\n")
            .Append(_extraHeaders);
        if (SessionId is not null)
        {
            head.Append("Mcp-Session-Id: ").Append(SessionId).Append("\r\n");
        }
        head.Append("Content-Length: ").Append(body.Length).Append("\r\n\r\n");
        return [.. Encoding.ASCII.GetBytes(head.ToString()), .. body];
    }

    private void Send(ReadOnlySpan<byte> request)
    {
        while (!request.IsEmpty)
        {
            request = request[_socket.Send(request)..];
        }
    }

    /// <summary>Reads one whole response; the body (de-chunked in place) ends up at <see cref="LastBody"/>.</summary>
    private int ReadResponse(out string? sessionId)
    {
        int headerEnd;
        while ((headerEnd = _buffer.AsSpan(0, _filled).IndexOf("\r\n\r\n"u8)) < 0)
        {
            Receive();
        }
        var head = _buffer.AsSpan(0, headerEnd);
        if (!head.StartsWith("HTTP/1.1 "u8) || !Utf8Parser.TryParse(head[9..12], out int status, out _))
        {
            throw new InvalidOperationException("not an HTTP/1.1 response");
        }
        sessionId = null;
        var sessionAt = EchoUpstream.IndexOfIgnoreCase(head, "\r\nmcp-session-id:"u8);
        if (sessionAt >= 0)
        {
            var value = head[(sessionAt + "\r\nmcp-session-id:"u8.Length)..];
            var end = value.IndexOf("\r\n"u8);
            sessionId = Encoding.ASCII.GetString((end < 0 ? value : value[..end]).Trim((byte)' '));
        }
        var chunked = EchoUpstream.IndexOfIgnoreCase(head, "\r\ntransfer-encoding: chunked"u8) >= 0;
        var contentLength = EchoUpstream.ContentLength(head);

        var pos = headerEnd + 4;
        _bodyStart = pos;
        int consumed;
        if (!chunked)
        {
            consumed = pos + contentLength;
            while (_filled < consumed)
            {
                Receive();
            }
            _bodyLength = contentLength;
        }
        else
        {
            // De-chunk in place: each chunk's data is moved down to follow the previous one.
            var bodyEnd = pos;
            while (true)
            {
                int lineEnd;
                while ((lineEnd = _buffer.AsSpan(pos, _filled - pos).IndexOf("\r\n"u8)) < 0)
                {
                    Receive();
                }
                var sizeLine = _buffer.AsSpan(pos, lineEnd);
                var semicolon = sizeLine.IndexOf((byte)';');
                if (!Utf8Parser.TryParse(semicolon < 0 ? sizeLine : sizeLine[..semicolon], out int size, out _, 'x'))
                {
                    throw new InvalidOperationException("bad chunk size");
                }
                pos += lineEnd + 2;
                while (_filled < pos + size + 2)
                {
                    Receive();
                }
                if (size == 0)
                {
                    pos += 2; // no trailers: the last chunk is followed by CRLF only
                    break;
                }
                _buffer.AsSpan(pos, size).CopyTo(_buffer.AsSpan(bodyEnd));
                bodyEnd += size;
                pos += size + 2;
            }
            consumed = pos;
            _bodyLength = bodyEnd - _bodyStart;
        }

        // One request at a time: nothing can follow the response.
        if (_filled != consumed)
        {
            throw new InvalidOperationException("unexpected bytes after the response");
        }
        _filled = 0;
        return status;
    }

    private void Receive()
    {
        if (_filled == _buffer.Length)
        {
            throw new InvalidOperationException("response larger than the client buffer");
        }
        var read = _socket.Receive(_buffer.AsSpan(_filled));
        if (read == 0)
        {
            throw new InvalidOperationException("the gateway closed the connection");
        }
        _filled += read;
    }

    public void Dispose() => _socket.Dispose();
}
