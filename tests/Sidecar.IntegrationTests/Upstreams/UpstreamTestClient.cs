using System.Buffers;
using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Text.Json;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>One event the connection delivered, parsed for assertions.</summary>
public sealed record Received(UpstreamEventKind Kind, long Correlation, string Json, JsonElement Root, string? Error, long SentCorrelation = 0)
{
    public bool IsRequest => Root.ValueKind == JsonValueKind.Object && Root.TryGetProperty("method", out _) && Root.TryGetProperty("id", out _);

    public bool IsNotification => Root.ValueKind == JsonValueKind.Object && Root.TryGetProperty("method", out _) && !Root.TryGetProperty("id", out _);

    public string? Method => Root.ValueKind == JsonValueKind.Object && Root.TryGetProperty("method", out var m) ? m.GetString() : null;

    /// <summary>The concatenated <c>text</c> of a tool result's content.</summary>
    public string ToolText()
    {
        var sb = new StringBuilder();
        foreach (var item in Root.GetProperty("result").GetProperty("content").EnumerateArray())
        {
            if (item.TryGetProperty("text", out var text))
            {
                sb.Append(text.GetString());
            }
        }
        return sb.ToString();
    }
}

/// <summary>
/// A minimal JSON-RPC client over an <see cref="IUpstreamConnection"/>, for tests: numbers its requests, matches
/// responses by id (never by arrival order), collects server notifications and server-to-client requests, and turns
/// SendFailed events into failed requests. Every wait is bounded.
/// </summary>
public sealed class UpstreamTestClient : IAsyncDisposable
{
    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromSeconds(15);

    private readonly ConcurrentDictionary<string, TaskCompletionSource<Received>> _pending = new();
    private readonly ConcurrentDictionary<long, string> _idByCorrelation = new();
    private readonly List<Received> _notifications = [];
    private readonly List<Received> _serverRequests = [];
    private readonly List<Received> _all = [];
    private TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Task _pump;
    private long _nextId;
    private long _nextCorrelation = 1000;

    public UpstreamTestClient(IUpstreamConnection connection)
    {
        Connection = connection;
        _pump = Task.Run(PumpAsync);
    }

    public IUpstreamConnection Connection { get; }

    /// <summary>Every event received so far (for diagnostics).</summary>
    public string Transcript
    {
        get
        {
            lock (_all)
            {
                return string.Join('\n', _all.Select(r => $"[{r.Kind} c={r.Correlation}] {r.Error} {Truncate(r.Json)}"));
            }
        }
    }

    /// <summary>Every event received so far, in order of arrival.</summary>
    public IReadOnlyList<Received> Events
    {
        get
        {
            lock (_all)
            {
                return [.. _all];
            }
        }
    }

    public IReadOnlyList<Received> Notifications
    {
        get
        {
            lock (_all)
            {
                return [.. _notifications];
            }
        }
    }

    /// <summary>Sends raw bytes (exactly as given) with a fresh correlation; returns the correlation.</summary>
    public async Task<long> SendRawAsync(string json)
    {
        var correlation = Interlocked.Increment(ref _nextCorrelation);
        await Connection.SendAsync(new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(json)), correlation, CancellationToken.None);
        return correlation;
    }

    /// <summary>Sends a request and waits (bounded) for the response with its id.</summary>
    public async Task<Received> RequestAsync(string method, string? paramsJson = null, TimeSpan? timeout = null)
    {
        var id = Interlocked.Increment(ref _nextId);
        var json = paramsJson is null
            ? $$"""{"jsonrpc":"2.0","id":{{id}},"method":"{{method}}"}"""
            : $$$"""{"jsonrpc":"2.0","id":{{{id}}},"method":"{{{method}}}","params":{{{paramsJson}}}}""";
        return await RequestRawAsync(id.ToString(CultureInfo.InvariantCulture), json, timeout);
    }

    /// <summary>Sends a request given as raw JSON whose id is <paramref name="idJson"/> and waits for its response.</summary>
    public async Task<Received> RequestRawAsync(string idJson, string json, TimeSpan? timeout = null)
    {
        var pending = new TaskCompletionSource<Received>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[idJson] = pending;
        var correlation = Interlocked.Increment(ref _nextCorrelation);
        _idByCorrelation[correlation] = idJson;
        await Connection.SendAsync(new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(json)), correlation, CancellationToken.None);
        var wait = timeout ?? DefaultTimeout;
        try
        {
            var response = await pending.Task.WaitAsync(wait);
            return response with { SentCorrelation = correlation };
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"no response to request {idJson} within {wait}; received:\n{Transcript}");
        }
    }

    public Task NotifyAsync(string method, string? paramsJson = null) =>
        SendRawAsync(paramsJson is null
            ? $$"""{"jsonrpc":"2.0","method":"{{method}}"}"""
            : $$$"""{"jsonrpc":"2.0","method":"{{{method}}}","params":{{{paramsJson}}}}""");

    /// <summary>Answers a server-to-client request.</summary>
    public Task RespondAsync(Received request, string resultJson) =>
        SendRawAsync($$$"""{"jsonrpc":"2.0","id":{{{request.Root.GetProperty("id").GetRawText()}}},"result":{{{resultJson}}}}""");

    /// <summary>
    /// The client side of the MCP handshake: <c>initialize</c> (protocol 2025-06-18, sampling and elicitation
    /// capabilities), then <c>notifications/initialized</c>. Returns the initialize response.
    /// </summary>
    public async Task<Received> InitializeAsync(string protocolVersion = "2025-06-18")
    {
        var response = await RequestAsync("initialize", $$$"""
            {"protocolVersion":"{{{protocolVersion}}}","capabilities":{"sampling":{},"elicitation":{}},
             "clientInfo":{"name":"sidecar-upstream-tests","version":"1.0.0"}}
            """.ReplaceLineEndings(" "));
        await NotifyAsync("notifications/initialized");
        return response;
    }

    /// <summary>Waits (bounded) for a server notification matching <paramref name="match"/> (already received ones count).</summary>
    public Task<Received> WaitForNotificationAsync(Func<Received, bool> match, TimeSpan? timeout = null) =>
        WaitForAsync(_notifications, match, timeout ?? DefaultTimeout, "notification");

    /// <summary>Waits (bounded) for a server-to-client request matching <paramref name="match"/>.</summary>
    public Task<Received> WaitForServerRequestAsync(Func<Received, bool> match, TimeSpan? timeout = null) =>
        WaitForAsync(_serverRequests, match, timeout ?? DefaultTimeout, "server request");

    private async Task<Received> WaitForAsync(List<Received> list, Func<Received, bool> match, TimeSpan timeout, string what)
    {
        using var deadline = new CancellationTokenSource(timeout);
        while (true)
        {
            var changed = Volatile.Read(ref _changed);
            lock (_all)
            {
                foreach (var r in list)
                {
                    if (match(r))
                    {
                        return r;
                    }
                }
            }
            try
            {
                await changed.Task.WaitAsync(deadline.Token);
            }
            catch (OperationCanceledException)
            {
                throw new TimeoutException($"no matching {what} within {timeout}; received:\n{Transcript}");
            }
        }
    }

    private async Task PumpAsync()
    {
        try
        {
            await foreach (var e in Connection.Events.ReadAllAsync())
            {
                var json = Encoding.UTF8.GetString(e.Payload.Span);
                var root = default(JsonElement);
                if (e.Payload.Length > 0)
                {
                    try
                    {
                        using var doc = JsonDocument.Parse(e.Payload);
                        root = doc.RootElement.Clone();
                    }
                    catch (JsonException)
                    {
                    }
                }
                var received = new Received(e.Kind, e.Correlation, json, root, e.Error);
                lock (_all)
                {
                    _all.Add(received);
                    if (received.IsNotification)
                    {
                        _notifications.Add(received);
                    }
                    else if (received.IsRequest)
                    {
                        _serverRequests.Add(received);
                    }
                }
                Interlocked.Exchange(ref _changed, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();

                if (e.Kind == UpstreamEventKind.SendFailed)
                {
                    if (_idByCorrelation.TryGetValue(e.Correlation, out var failedId) && _pending.TryRemove(failedId, out var failed))
                    {
                        failed.TrySetException(new UpstreamSendFailedException(e.Correlation, e.Error ?? "send failed", json));
                    }
                }
                else if (root.ValueKind == JsonValueKind.Object && !received.IsRequest && !received.IsNotification
                    && root.TryGetProperty("id", out var id) && _pending.TryRemove(id.GetRawText(), out var waiting))
                {
                    waiting.TrySetResult(received);
                }
            }
        }
        finally
        {
            foreach (var (_, waiting) in _pending)
            {
                waiting.TrySetException(new InvalidOperationException("the connection's events ended"));
            }
            Interlocked.Exchange(ref _changed, new(TaskCreationOptions.RunContinuationsAsynchronously)).TrySetResult();
        }
    }

    private static string Truncate(string s) => s.Length > 400 ? s[..400] + "…" : s;

    public async ValueTask DisposeAsync()
    {
        await Connection.DisposeAsync();
        try
        {
            await _pump.WaitAsync(TimeSpan.FromSeconds(5));
        }
        catch (TimeoutException)
        {
        }
    }
}

/// <summary>A request whose send was reported as <see cref="UpstreamEventKind.SendFailed"/>.</summary>
public sealed class UpstreamSendFailedException(long correlation, string error, string payload)
    : Exception($"send {correlation} failed: {error}")
{
    public long Correlation { get; } = correlation;

    public string Error { get; } = error;

    public string Payload { get; } = payload;
}
