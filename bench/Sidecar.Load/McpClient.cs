using System.Net;
using System.Net.Http.Headers;
using System.Text;

namespace Sidecar.Load;

/// <summary>Outcome of one JSON-RPC request over Streamable HTTP.</summary>
internal enum Outcome
{
    Ok,
    RateLimited,   // JSON-RPC error -32011 (Sidecar's rate limit): an expected outcome when limits trip
    Shed,          // JSON-RPC error -32015 with data.reason "audit_backlog": refused before forwarding (audit queue full)
    RpcError,      // any other JSON-RPC error
    HttpError,     // non-2xx status
    Failed,        // transport error, timeout, unparseable answer
}

/// <summary>A minimal Streamable HTTP MCP client over a shared HttpClient. Accepts JSON and SSE answers.</summary>
internal sealed class McpClient
{
    public const string ProtocolVersion = "2025-06-18";
    private static readonly MediaTypeWithQualityHeaderValue Json = new("application/json");
    private static readonly MediaTypeWithQualityHeaderValue Sse = new("text/event-stream");
    private static readonly MediaTypeHeaderValue JsonContentType = new("application/json");

    private readonly HttpClient _http;
    private readonly Uri _url;
    private readonly string _tool;
    private long _nextId;

    public McpClient(Uri url, int maxConnections, TimeSpan timeout, string tool = "echo")
    {
        _url = url;
        _tool = "\"" + System.Text.Json.JsonEncodedText.Encode(tool).ToString() + "\"";
        var handler = new SocketsHttpHandler
        {
            MaxConnectionsPerServer = maxConnections,
            UseProxy = false,
            UseCookies = false,
            AllowAutoRedirect = false,
            AutomaticDecompression = DecompressionMethods.None,
            PooledConnectionIdleTimeout = TimeSpan.FromMinutes(5),
            PooledConnectionLifetime = Timeout.InfiniteTimeSpan,
            ConnectTimeout = TimeSpan.FromSeconds(5),
        };
        _http = new HttpClient(handler) { Timeout = timeout };
    }

    public Uri Url => _url;

    private HttpRequestMessage NewPost(string? session, byte[] body)
    {
        var req = new HttpRequestMessage(HttpMethod.Post, _url) { Version = HttpVersion.Version11 };
        req.Headers.Accept.Add(Json);
        req.Headers.Accept.Add(Sse);
        if (session is not null)
        {
            req.Headers.TryAddWithoutValidation("Mcp-Session-Id", session);
            req.Headers.TryAddWithoutValidation("MCP-Protocol-Version", ProtocolVersion);
        }
        var content = new ByteArrayContent(body);
        content.Headers.ContentType = JsonContentType;
        req.Content = content;
        return req;
    }

    /// <summary>initialize + notifications/initialized; returns the session id (or "" if the server issued none), null on failure.</summary>
    public async Task<string?> OpenSessionAsync(CancellationToken ct)
    {
        long id = Interlocked.Increment(ref _nextId);
        byte[] init = Encoding.UTF8.GetBytes(
            "{\"jsonrpc\":\"2.0\",\"id\":" + id.ToString(System.Globalization.CultureInfo.InvariantCulture)
            + ",\"method\":\"initialize\",\"params\":{\"protocolVersion\":\"" + ProtocolVersion
            + "\",\"capabilities\":{},\"clientInfo\":{\"name\":\"sidecar-load\",\"version\":\"1.0.0\"}}}");
        using var req = NewPost(null, init);
        using var res = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
        byte[] body = await res.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false);
        if (!res.IsSuccessStatusCode || Classify(res, body) != Outcome.Ok)
        {
            return null;
        }
        string session = res.Headers.TryGetValues("Mcp-Session-Id", out var v) ? v.First() : "";
        using var note = NewPost(session.Length > 0 ? session : null, """{"jsonrpc":"2.0","method":"notifications/initialized"}"""u8.ToArray());
        using var noteRes = await _http.SendAsync(note, ct).ConfigureAwait(false);
        return noteRes.IsSuccessStatusCode ? session : null;
    }

    public async Task CloseSessionAsync(string session, CancellationToken ct)
    {
        if (session.Length == 0)
        {
            return;
        }
        using var req = new HttpRequestMessage(HttpMethod.Delete, _url) { Version = HttpVersion.Version11 };
        req.Headers.TryAddWithoutValidation("Mcp-Session-Id", session);
        req.Headers.TryAddWithoutValidation("MCP-Protocol-Version", ProtocolVersion);
        using var res = await _http.SendAsync(req, ct).ConfigureAwait(false);
    }

    /// <summary>One tools/call of the echo tool (<c>--tool</c>: <c>echo</c>, or <c>echo__echo</c> on the aggregated endpoint).</summary>
    public async Task<Outcome> CallEchoAsync(string session, CancellationToken ct)
    {
        long id = Interlocked.Increment(ref _nextId);
        byte[] body = Encoding.UTF8.GetBytes(
            "{\"jsonrpc\":\"2.0\",\"id\":" + id.ToString(System.Globalization.CultureInfo.InvariantCulture)
            + ",\"method\":\"tools/call\",\"params\":{\"name\":" + _tool + ",\"arguments\":{\"message\":\"hello from the load bench\"}}}");
        try
        {
            using var req = NewPost(session.Length > 0 ? session : null, body);
            using var res = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
            byte[] answer = await res.Content.ReadAsByteArrayAsync(ct).ConfigureAwait(false);
            return res.IsSuccessStatusCode ? Classify(res, answer) : Outcome.HttpError;
        }
        catch (Exception) when (!ct.IsCancellationRequested)
        {
            return Outcome.Failed;
        }
    }

    /// <summary>Opens the session's GET stream and reads it until cancelled. Returns false if the server refused it.</summary>
    public async Task<bool> HoldStreamAsync(string session, Action opened, CancellationToken ct)
    {
        using var req = new HttpRequestMessage(HttpMethod.Get, _url) { Version = HttpVersion.Version11 };
        req.Headers.Accept.Add(Sse);
        req.Headers.TryAddWithoutValidation("Mcp-Session-Id", session);
        req.Headers.TryAddWithoutValidation("MCP-Protocol-Version", ProtocolVersion);
        try
        {
            using var res = await _http.SendAsync(req, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
            if (!res.IsSuccessStatusCode)
            {
                return false;
            }
            opened();
            await using var stream = await res.Content.ReadAsStreamAsync(ct).ConfigureAwait(false);
            byte[] buf = new byte[4096];
            while (await stream.ReadAsync(buf, ct).ConfigureAwait(false) > 0)
            {
            }
            return true;
        }
        catch (Exception)
        {
            return !ct.IsCancellationRequested ? false : true;
        }
    }

    /// <summary>Finds the JSON-RPC response in a JSON or SSE body and classifies it.</summary>
    private static Outcome Classify(HttpResponseMessage res, byte[] body)
    {
        ReadOnlySpan<byte> span = body;
        string? mediaType = res.Content.Headers.ContentType?.MediaType;
        if (mediaType == "text/event-stream")
        {
            // The response is the last "data:" line that carries a result or an error.
            Outcome last = Outcome.Failed;
            foreach (var line in new SseDataLines(span))
            {
                Outcome o = ClassifyJson(line);
                if (o != Outcome.Failed)
                {
                    last = o;
                }
            }
            return last;
        }
        return ClassifyJson(span);
    }

    private static Outcome ClassifyJson(ReadOnlySpan<byte> json)
    {
        try
        {
            var reader = new System.Text.Json.Utf8JsonReader(json);
            if (!reader.Read() || reader.TokenType != System.Text.Json.JsonTokenType.StartObject)
            {
                return Outcome.Failed;
            }
            while (reader.Read() && reader.TokenType == System.Text.Json.JsonTokenType.PropertyName)
            {
                if (reader.ValueTextEquals("result"u8))
                {
                    return Outcome.Ok;
                }
                if (reader.ValueTextEquals("error"u8))
                {
                    return ClassifyError(ref reader);
                }
                reader.Read();
                reader.Skip();
            }
            return Outcome.Failed;
        }
        catch (System.Text.Json.JsonException)
        {
            return Outcome.Failed;
        }
    }

    public const int RateLimitedCode = -32011;
    public const int ShedCode = -32015;

    /// <summary>
    /// Classifies the value of an answer's "error" member (the reader is on its property name): -32011 is a rate
    /// limit; -32015 with data.reason "audit_backlog" is a call shed because its audit record could not be queued;
    /// anything else is another JSON-RPC error. Members may come in any order; nothing is allocated.
    /// </summary>
    private static Outcome ClassifyError(ref System.Text.Json.Utf8JsonReader reader)
    {
        if (!reader.Read() || reader.TokenType != System.Text.Json.JsonTokenType.StartObject)
        {
            return Outcome.RpcError;
        }
        int depth = reader.CurrentDepth;
        int code = 0;
        bool backlog = false;
        while (reader.Read() && reader.CurrentDepth > depth)
        {
            if (reader.TokenType != System.Text.Json.JsonTokenType.PropertyName || reader.CurrentDepth != depth + 1)
            {
                continue;
            }
            if (reader.ValueTextEquals("code"u8))
            {
                reader.Read();
                if (reader.TokenType != System.Text.Json.JsonTokenType.Number || !reader.TryGetInt32(out code))
                {
                    code = 0;
                }
            }
            else if (reader.ValueTextEquals("data"u8))
            {
                reader.Read();
                if (reader.TokenType != System.Text.Json.JsonTokenType.StartObject)
                {
                    reader.Skip();
                    continue;
                }
                int dataDepth = reader.CurrentDepth;
                while (reader.Read() && reader.CurrentDepth > dataDepth)
                {
                    if (reader.TokenType == System.Text.Json.JsonTokenType.PropertyName && reader.CurrentDepth == dataDepth + 1
                        && reader.ValueTextEquals("reason"u8))
                    {
                        reader.Read();
                        backlog = reader.TokenType == System.Text.Json.JsonTokenType.String && reader.ValueTextEquals("audit_backlog"u8);
                    }
                }
            }
            else
            {
                reader.Read();
                reader.Skip();
            }
        }
        return code switch
        {
            RateLimitedCode => Outcome.RateLimited,
            ShedCode when backlog => Outcome.Shed,
            _ => Outcome.RpcError,
        };
    }

    /// <summary>Enumerates the payloads of "data:" lines of an SSE body.</summary>
    private ref struct SseDataLines(ReadOnlySpan<byte> body)
    {
        private ReadOnlySpan<byte> _rest = body;
        public ReadOnlySpan<byte> Current { get; private set; }
        public readonly SseDataLines GetEnumerator() => this;

        public bool MoveNext()
        {
            while (!_rest.IsEmpty)
            {
                int nl = _rest.IndexOf((byte)'\n');
                ReadOnlySpan<byte> line = nl < 0 ? _rest : _rest[..nl];
                _rest = nl < 0 ? default : _rest[(nl + 1)..];
                if (line.EndsWith("\r"u8))
                {
                    line = line[..^1];
                }
                if (line.StartsWith("data:"u8))
                {
                    line = line[5..];
                    if (line.StartsWith(" "u8))
                    {
                        line = line[1..];
                    }
                    Current = line;
                    return true;
                }
            }
            return false;
        }
    }
}
