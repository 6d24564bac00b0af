using System.Buffers.Text;
using System.Net;
using System.Net.Sockets;

namespace Sidecar.Benchmarks.EndToEnd;

/// <summary>How <see cref="EchoUpstream"/> answers a request: one <c>application/json</c> body, or one SSE event.</summary>
public enum EchoResponseStyle
{
    Json,
    Sse,
}

/// <summary>
/// A minimal Streamable HTTP MCP echo server on raw loopback sockets, for the end-to-end benchmark: HTTP/1.1 with
/// keep-alive, one blocking thread per connection, every buffer allocated once per connection, so that it allocates
/// nothing per request and the benchmark's allocation count is the gateway's. It answers <c>initialize</c> (with an
/// <c>Mcp-Session-Id</c>), <c>tools/call</c> (a fixed text result) and any other request (an empty result), all
/// with the request's own id token, and <c>server/discover</c> (it speaks 2026-07-28 too, statelessly: every request
/// is answered the same with or without a session); notifications get 202; <c>GET</c> gets 405 (no standalone stream);
/// <c>DELETE</c> gets 200. It is not a general HTTP server: it expects <c>Content-Length</c> bodies (what
/// <c>HttpClient</c> sends for the gateway's buffered messages) and finds <c>"id"</c> and <c>"method"</c> by a byte
/// search, which holds for the messages the benchmark sends.
/// </summary>
public sealed class EchoUpstream : IDisposable
{
    private const int BufferSize = 64 * 1024;
    private const int MaxConnections = 64;

    private static readonly byte[] InitializeResult =
        ""","result":{"protocolVersion":"2025-06-18","capabilities":{"tools":{}},"serverInfo":{"name":"sidecar-bench-echo","version":"1.0.0"}}}"""u8.ToArray();
    private static readonly byte[] ToolResult = ""","result":{"content":[{"type":"text","text":"hello from the benchmark"}]}}"""u8.ToArray();
    private static readonly byte[] EmptyResult = ""","result":{}}"""u8.ToArray();
    private static readonly byte[] DiscoverResult =
        ""","result":{"supportedVersions":["2025-06-18","2026-07-28"],"capabilities":{"tools":{}},"serverInfo":{"name":"sidecar-bench-echo","version":"1.0.0"}}}"""u8.ToArray();

    private readonly Socket _listener;
    private readonly EchoResponseStyle _style;
    private readonly Thread _acceptor;
    private readonly List<Socket> _connections = [];
    private int _accepted;

    public EchoUpstream(EchoResponseStyle style)
    {
        _style = style;
        _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(16);
        Port = ((IPEndPoint)_listener.LocalEndPoint!).Port;
        _acceptor = new Thread(AcceptLoop) { IsBackground = true, Name = "echo-upstream-accept" };
        _acceptor.Start();
    }

    public int Port { get; }

    public Uri Url => new($"http://127.0.0.1:{Port}/mcp");

    private void AcceptLoop()
    {
        try
        {
            while (Interlocked.Increment(ref _accepted) <= MaxConnections)
            {
                var socket = _listener.Accept();
                socket.NoDelay = true;
                lock (_connections)
                {
                    _connections.Add(socket);
                }
                new Thread(() => Serve(socket)) { IsBackground = true, Name = "echo-upstream-connection" }.Start();
            }
        }
        catch (SocketException)
        {
            // The listener was closed.
        }
        catch (ObjectDisposedException)
        {
        }
    }

    private void Serve(Socket socket)
    {
        var input = new byte[BufferSize];
        var output = new byte[BufferSize];
        var filled = 0;
        try
        {
            // One request per pass; ends when the peer closes the connection (or on anything unexpected).
            while (true)
            {
                int headerEnd;
                while ((headerEnd = input.AsSpan(0, filled).IndexOf("\r\n\r\n"u8)) < 0)
                {
                    if (filled == input.Length || !Receive(socket, input, ref filled))
                    {
                        return;
                    }
                }
                var head = input.AsSpan(0, headerEnd);
                var contentLength = ContentLength(head);
                var total = headerEnd + 4 + contentLength;
                if (total > input.Length)
                {
                    return;
                }
                while (filled < total)
                {
                    if (!Receive(socket, input, ref filled))
                    {
                        return;
                    }
                }

                var length = Answer(head, input.AsSpan(headerEnd + 4, contentLength), output);
                socket.Send(output.AsSpan(0, length));

                input.AsSpan(total, filled - total).CopyTo(input);
                filled -= total;
            }
        }
        catch (SocketException)
        {
        }
        catch (ObjectDisposedException)
        {
        }
        finally
        {
            socket.Dispose();
        }
    }

    private static bool Receive(Socket socket, byte[] buffer, ref int filled)
    {
        var read = socket.Receive(buffer.AsSpan(filled));
        filled += read;
        return read > 0;
    }

    private int Answer(ReadOnlySpan<byte> head, ReadOnlySpan<byte> body, Span<byte> output)
    {
        if (head.StartsWith("GET "u8))
        {
            return Status(output, "405 Method Not Allowed"u8);
        }
        if (head.StartsWith("DELETE "u8))
        {
            return Status(output, "200 OK"u8);
        }
        var id = IdToken(body);
        if (id.IsEmpty)
        {
            return Status(output, "202 Accepted"u8); // a notification (or a response to the server)
        }
        var isInitialize = body.IndexOf("\"method\":\"initialize\""u8) >= 0;
        var result = isInitialize ? InitializeResult
            : body.IndexOf("\"method\":\"tools/call\""u8) >= 0 ? ToolResult
            : body.IndexOf("\"method\":\"server/discover\""u8) >= 0 ? DiscoverResult
            : EmptyResult;

        // Body first (after room for the headers), then the headers in front of it once its length is known.
        Span<byte> message = stackalloc byte[512];
        var messageLength = Append(message, 0, """{"jsonrpc":"2.0","id":"""u8);
        messageLength = Append(message, messageLength, id);
        messageLength = Append(message, messageLength, result);

        var pos = Append(output, 0, "HTTP/1.1 200 OK\r\nContent-Type: "u8);
        pos = Append(output, pos, _style == EchoResponseStyle.Sse ? "text/event-stream"u8 : "application/json"u8);
        if (isInitialize)
        {
            pos = Append(output, pos, "\r\nMcp-Session-Id: bench-echo-session"u8);
        }
        pos = Append(output, pos, "\r\nContent-Length: "u8);
        var bodyLength = _style == EchoResponseStyle.Sse ? "event: message\ndata: "u8.Length + messageLength + 2 : messageLength;
        Utf8Formatter.TryFormat(bodyLength, output[pos..], out var written);
        pos += written;
        pos = Append(output, pos, "\r\n\r\n"u8);
        if (_style == EchoResponseStyle.Sse)
        {
            pos = Append(output, pos, "event: message\ndata: "u8);
            pos = Append(output, pos, message[..messageLength]);
            pos = Append(output, pos, "\n\n"u8);
        }
        else
        {
            pos = Append(output, pos, message[..messageLength]);
        }
        return pos;
    }

    private static int Status(Span<byte> output, ReadOnlySpan<byte> status)
    {
        var pos = Append(output, 0, "HTTP/1.1 "u8);
        pos = Append(output, pos, status);
        return Append(output, pos, "\r\nContent-Length: 0\r\n\r\n"u8);
    }

    private static int Append(Span<byte> output, int pos, ReadOnlySpan<byte> bytes)
    {
        bytes.CopyTo(output[pos..]);
        return pos + bytes.Length;
    }

    /// <summary>The <c>Content-Length</c> header's value (0 when absent).</summary>
    internal static int ContentLength(ReadOnlySpan<byte> head)
    {
        var at = IndexOfIgnoreCase(head, "\r\ncontent-length:"u8);
        if (at < 0)
        {
            return 0;
        }
        var value = head[(at + "\r\ncontent-length:"u8.Length)..];
        var end = value.IndexOf("\r\n"u8);
        value = (end < 0 ? value : value[..end]).Trim((byte)' ');
        return Utf8Parser.TryParse(value, out int length, out _) ? length : 0;
    }

    /// <summary>The first <c>"id":</c> value token (a number or a string), or empty.</summary>
    private static ReadOnlySpan<byte> IdToken(ReadOnlySpan<byte> body)
    {
        var at = body.IndexOf("\"id\":"u8);
        if (at < 0)
        {
            return default;
        }
        var value = body[(at + 5)..];
        if (!value.IsEmpty && value[0] == (byte)'"')
        {
            var close = value[1..].IndexOf((byte)'"');
            return close < 0 ? default : value[..(close + 2)];
        }
        var end = value.IndexOfAny((byte)',', (byte)'}');
        return end < 0 ? default : value[..end];
    }

    internal static int IndexOfIgnoreCase(ReadOnlySpan<byte> text, ReadOnlySpan<byte> lowerCaseNeedle)
    {
        for (var i = 0; i + lowerCaseNeedle.Length <= text.Length; i++)
        {
            var match = true;
            for (var j = 0; j < lowerCaseNeedle.Length; j++)
            {
                var c = text[i + j];
                if (c is >= (byte)'A' and <= (byte)'Z')
                {
                    c = (byte)(c + 32);
                }
                if (c != lowerCaseNeedle[j])
                {
                    match = false;
                    break;
                }
            }
            if (match)
            {
                return i;
            }
        }
        return -1;
    }

    public void Dispose()
    {
        _listener.Dispose();
        lock (_connections)
        {
            foreach (var socket in _connections)
            {
                socket.Dispose();
            }
        }
    }
}
