using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;

namespace Sidecar.Upstreams;

/// <summary>
/// An upstream that may speak the stateless era of MCP (2026-07-28): self-contained requests, no sessions, the
/// method and name mirrored in <c>Mcp-Method</c>/<c>Mcp-Name</c> headers.
/// </summary>
public interface IStatelessUpstream
{
    /// <summary>
    /// Whether the server answers <c>server/discover</c> with 2026-07-28 among its supported versions. Probed once and
    /// remembered for a minute.
    /// </summary>
    ValueTask<bool> SpeaksStatelessAsync(CancellationToken cancellationToken);

    /// <summary>
    /// Sends one request outside any session with the given <c>MCP-Protocol-Version</c>/<c>Mcp-*</c> headers and
    /// returns the server's answer, to read message by message. Throws <see cref="UpstreamException"/> when unreachable.
    /// </summary>
    ValueTask<StatelessExchange> SendStatelessAsync(ReadOnlyMemory<byte> request, IReadOnlyList<KeyValuePair<string, string>> mcpHeaders,
        CancellationToken cancellationToken);
}

/// <summary>The server's answer to one stateless request: its HTTP status and its messages (JSON, or SSE events).</summary>
public sealed class StatelessExchange : IAsyncDisposable
{
    private readonly HttpResponseMessage _response;
    private readonly SseReader? _events;
    private byte[]? _json;

    private StatelessExchange(HttpResponseMessage response, SseReader? events, byte[]? json)
    {
        _response = response;
        _events = events;
        _json = json;
    }

    public int StatusCode => (int)_response.StatusCode;

    /// <summary>True when the server answered with an SSE stream (related notifications, then the response).</summary>
    public bool IsEventStream => _events is not null;

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    internal static async ValueTask<StatelessExchange> ReadAsync(HttpResponseMessage response, int maxMessageBytes, CancellationToken cancellationToken)
    {
        if (HttpUpstream.IsMediaType(response.Content, "text/event-stream"))
        {
            var stream = response.Content.ReadAsStream(cancellationToken); // the handler's stream, handed over at once
            return new StatelessExchange(response, new SseReader(stream, maxMessageBytes), null);
        }
        var body = await HttpUpstream.ReadBodyAsync(response.Content, maxMessageBytes, cancellationToken).ConfigureAwait(false)
            ?? throw new UpstreamException($"the upstream's answer is larger than {maxMessageBytes} bytes");
        return new StatelessExchange(response, null, body.Length == 0 ? null : body);
    }

    /// <summary>The next message, or null when there are no more.</summary>
    public async ValueTask<ReadOnlyMemory<byte>?> ReadAsync(CancellationToken cancellationToken)
    {
        if (_events is null)
        {
            var json = _json;
            _json = null;
            // Not "return json" (nor "json is null ? null : json"): a null byte[] converts to an empty
            // ReadOnlyMemory, not to null, and the caller's "while (ReadAsync() is { } message)" would never end.
            if (json is null)
            {
                return default(ReadOnlyMemory<byte>?);
            }
            return new ReadOnlyMemory<byte>(json);
        }
        while (true)
        {
            var ev = await _events.ReadAsync(cancellationToken).ConfigureAwait(false);
            switch (ev.Kind)
            {
                case SseReadKind.End:
                    return null;
                case SseReadKind.TooLarge:
                    throw new UpstreamException("the upstream sent a message larger than the size limit");
                default:
                    if (ev.IsMessage && ev.Data is { Length: > 0 } data)
                    {
                        return data;
                    }
                    break;
            }
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_events is not null)
        {
            await _events.DisposeAsync().ConfigureAwait(false);
        }
        _response.Dispose();
    }
}

/// <summary>The stateless side of <see cref="StreamableHttpUpstreamConnector"/>.</summary>
internal sealed class StatelessHttpUpstream(HttpUpstream http)
{
    public const string Version = "2026-07-28";
    private static readonly TimeSpan ProbeMemory = TimeSpan.FromMinutes(1);
    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(2);
    private readonly Lock _gate = new();
    private Task<bool>? _probe;
    private long _probedAt;

    public ValueTask<bool> SpeaksStatelessAsync(CancellationToken cancellationToken)
    {
        Task<bool> probe;
        lock (_gate)
        {
            if (_probe is null || (_probe.IsCompleted && Environment.TickCount64 - _probedAt > (long)ProbeMemory.TotalMilliseconds))
            {
                _probedAt = Environment.TickCount64;
                _probe = ProbeAsync();
            }
            probe = _probe;
        }
        return new ValueTask<bool>(probe.WaitAsync(cancellationToken));
    }

    private async Task<bool> ProbeAsync()
    {
        var request = Encoding.UTF8.GetBytes(
            """{"jsonrpc":"2.0","id":"sidecar-discover","method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"sidecar","version":"1"}}}}""");
        // Bounded well below the 5 s a dual-era client waits for its own probe: an agent is never held up by ours.
        using var timeout = new CancellationTokenSource(TimeSpan.FromTicks(Math.Min(http.Limits.ConnectTimeout.Ticks, ProbeTimeout.Ticks)));
        try
        {
            await using var exchange = await SendAsync(request, [new("MCP-Protocol-Version", Version), new("Mcp-Method", "server/discover")], timeout.Token).ConfigureAwait(false);
            if (exchange.StatusCode != 200)
            {
                return false;
            }
            while (await exchange.ReadAsync(timeout.Token).ConfigureAwait(false) is { } message)
            {
                using var doc = JsonDocument.Parse(message);
                if (doc.RootElement.TryGetProperty("result", out var result) && result.TryGetProperty("supportedVersions", out var versions)
                    && versions.ValueKind == JsonValueKind.Array)
                {
                    foreach (var v in versions.EnumerateArray())
                    {
                        if (v.ValueKind == JsonValueKind.String && v.ValueEquals(Version))
                        {
                            return true;
                        }
                    }
                    return false;
                }
            }
            return false;
        }
        catch (Exception ex) when (ex is UpstreamException or OperationCanceledException or JsonException or HttpRequestException or IOException)
        {
            return false;
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    public async ValueTask<StatelessExchange> SendAsync(ReadOnlyMemory<byte> request, IReadOnlyList<KeyValuePair<string, string>> mcpHeaders,
        CancellationToken cancellationToken)
    {
        using var message = new HttpRequestMessage(HttpMethod.Post, http.Url) { Content = new ReadOnlyMemoryContent(request) };
        HttpUpstream.SetJsonContentType(message.Content);
        message.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
        http.ApplyHeaders(message.Headers);
        for (var i = 0; i < mcpHeaders.Count; i++)
        {
            message.Headers.TryAddWithoutValidation(mcpHeaders[i].Key, mcpHeaders[i].Value);
        }
        // Until the response headers are in: the body is read under the caller's token only.
        using var headersTimeout = http.Timeouts.Rent(http.Limits.UpstreamTimeout, cancellationToken);
        HttpResponseMessage response;
        try
        {
            response = await http.Invoker.SendAsync(message, headersTimeout.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is HttpRequestException or IOException || (ex is OperationCanceledException && !cancellationToken.IsCancellationRequested))
        {
            throw new UpstreamException(ex is OperationCanceledException
                ? http.Redact($"upstream '{http.Name}' did not answer within {HttpUpstream.FormatTimeout(http.Limits.UpstreamTimeout)}")
                : http.Unreachable(ex));
        }
        try
        {
            return await StatelessExchange.ReadAsync(response, http.Limits.MaxMessageBytes, cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            response.Dispose();
            throw;
        }
    }
}
