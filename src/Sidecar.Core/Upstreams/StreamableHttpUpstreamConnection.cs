using System.Buffers;
using System.Runtime.CompilerServices;
using System.Threading.Channels;

namespace Sidecar.Upstreams;

/// <summary>
/// One Streamable HTTP upstream session (MCP 2025-03-26 / 2025-06-18 / 2025-11-25).
/// </summary>
/// <remarks>
/// <para>
/// <b>Sends</b>: every <see cref="SendAsync"/> is its own POST (<c>Accept: application/json, text/event-stream</c>,
/// <c>Content-Type: application/json</c>, the configured headers, <c>Mcp-Session-Id</c> once known,
/// <c>MCP-Protocol-Version</c> once negotiated), started before SendAsync returns and finished in the background;
/// any number may be in flight at once. The response belongs to that send: 202 carries nothing; an
/// <c>application/json</c> body is one <see cref="UpstreamEventKind.Message"/> event with the send's correlation; a
/// <c>text/event-stream</c> body yields one Message event per event, all with the send's correlation (notifications
/// and server requests related to the request, then its response). <c>UpstreamTimeout</c> bounds the wait for the
/// response headers and a JSON body; an event stream may stay open longer (it may carry progress): the caller's own
/// per-request timeout covers that.
/// </para>
/// <para>
/// <b>Session</b>: the <c>initialize</c> request is recognised (a cheap look at <c>method</c>, done only until the
/// session is set up). <c>Mcp-Session-Id</c> is taken from its response headers and <c>result.protocolVersion</c> from
/// its response body. Sends made while it is in flight wait for it, so they carry the session. Once the client's
/// <c>notifications/initialized</c> has been accepted (its SendAsync returns only then, so nothing overtakes it), the
/// standalone GET stream is opened for server-initiated messages (correlation 0): 405 means the server has none; if
/// it drops it is reopened with backoff, with <c>Last-Event-ID</c> when events had ids, while the connection lives.
/// </para>
/// <para>
/// <b>Failures</b>: a send that gets a non-2xx answer, cannot connect, or gets no answer in time becomes a
/// <see cref="UpstreamEventKind.SendFailed"/> event with its correlation (when the server answered with a JSON body,
/// e.g. a JSON-RPC error, <see cref="UpstreamEvent.Payload"/> holds it as sent). A broken response stream is also a
/// SendFailed, which may follow messages already delivered for that send, and so is a message on the send's response
/// that exceeds <c>MaxMessageBytes</c> (dropped with a warning; it is most likely the response). HTTP 404, or 400 on a request that carried
/// the session id (server-everything answers an unknown session with 400), means the session is gone: that send fails
/// and <see cref="Completion"/> faults with <see cref="UpstreamException.SessionGone"/>.
/// </para>
/// <para>
/// <b>Events</b>: <see cref="Events"/> is bounded (<see cref="UpstreamEventSink.Capacity"/>, 1024 events) and has one
/// reader. When it is full the transport waits and stops reading from the server, which then waits too
/// (backpressure); nothing is dropped for being slow. Read it independently of sending. Each payload is a fresh
/// array the reader may keep. After the last event the channel completes, and <see cref="Completion"/> says why.
/// </para>
/// <para>
/// <b>Disposal</b> sends <c>DELETE</c> with the session id (best effort, 2 s) and cancels every stream and request.
/// </para>
/// </remarks>
public sealed class StreamableHttpUpstreamConnection : IUpstreamConnection
{
    private const int PhaseNew = 0;          // no initialize seen yet
    private const int PhaseInitializing = 1; // the initialize POST is in flight: other sends wait for it
    private const int PhaseInitialized = 2;  // waiting for the client's notifications/initialized
    private const int PhaseReady = 3;        // GET stream started; messages are no longer looked at

    private static readonly TimeSpan s_deleteTimeout = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan s_drainTimeout = TimeSpan.FromSeconds(2);
    private static readonly TimeSpan s_firstRetry = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan s_maxRetry = TimeSpan.FromSeconds(10);

    private readonly HttpUpstream _http;
    private readonly UpstreamEventSink _sink = new();
    private readonly TaskCompletionSource _initialized = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _phase;
    private string? _sessionId;
    private string? _protocolVersion;
    private Task _getStream = Task.CompletedTask;
    private UpstreamException? _failure;
    private int _disposing;
    private Task? _disposal;

    private readonly record struct Post(byte[] Buffer, int Length, long Correlation, SessionMessage Kind, bool IsFirstInitialize);

    internal StreamableHttpUpstreamConnection(HttpUpstream http) => _http = http;

    public string Transport => "streamable-http";

    public ChannelReader<UpstreamEvent> Events => _sink.Reader;

    public Task Completion => _sink.Completion;

    /// <summary>The server's <c>Mcp-Session-Id</c>, once the initialize response has set it.</summary>
    public string? SessionId => Volatile.Read(ref _sessionId);

    /// <summary>The negotiated protocol version (from the initialize result), sent as <c>MCP-Protocol-Version</c>.</summary>
    public string? ProtocolVersion => Volatile.Read(ref _protocolVersion);

    public ValueTask SendAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
    {
        if (_sink.IsClosed || Volatile.Read(ref _failure) is not null || Volatile.Read(ref _disposing) != 0)
        {
            return ValueTask.FromException(ClosedException());
        }
        if (message.Length > _http.Limits.MaxMessageBytes)
        {
            return ValueTask.FromException(new ArgumentException($"message of {message.Length} bytes exceeds the {_http.Limits.MaxMessageBytes}-byte limit", nameof(message)));
        }

        var kind = Volatile.Read(ref _phase) == PhaseReady ? SessionMessage.Other : JsonRpcPeek.Classify(message);
        var firstInitialize = kind == SessionMessage.Initialize
            && Interlocked.CompareExchange(ref _phase, PhaseInitializing, PhaseNew) == PhaseNew;

        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, (int)message.Length));
        message.CopyTo(buffer);
        var post = new Post(buffer, (int)message.Length, correlation, kind, firstInitialize);

        if (!firstInitialize && Volatile.Read(ref _phase) == PhaseInitializing)
        {
            return SendAfterInitializeAsync(post, cancellationToken);
        }
        return Start(post);
    }

    private async ValueTask SendAfterInitializeAsync(Post post, CancellationToken cancellationToken)
    {
        try
        {
            await _initialized.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            ArrayPool<byte>.Shared.Return(post.Buffer);
            throw;
        }
        if (_sink.IsClosed || Volatile.Read(ref _failure) is not null || Volatile.Read(ref _disposing) != 0)
        {
            ArrayPool<byte>.Shared.Return(post.Buffer);
            throw ClosedException();
        }
        await Start(post).ConfigureAwait(false);
    }

    private ValueTask Start(Post post)
    {
        var running = RunPostAsync(post); // runs until the request is on its way; never throws
        // Only the client's notifications/initialized is awaited: a request sent after it must not overtake it
        // (servers enable some features on it), and its acceptance opens the GET stream.
        return post.Kind == SessionMessage.Initialized ? new ValueTask(running) : default;
    }

    private UpstreamException ClosedException() =>
        Volatile.Read(ref _failure) is { } failure
            ? new UpstreamException(failure.Message, failure) { SessionGone = failure.SessionGone }
            : _sink.ClosedException();

    /// <summary>
    /// One POST, in the background. Kept small (it is the one state machine per POST that can't be pooled, as no
    /// one awaits it): the exchange itself runs in <see cref="ExchangeAsync"/>, whose state machine is pooled.
    /// </summary>
    private async Task RunPostAsync(Post post)
    {
        try
        {
            await ExchangeAsync(post).ConfigureAwait(false);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(post.Buffer);
            if (post.IsFirstInitialize)
            {
                // Whatever happened, the initialize exchange is over: later sends go ahead (with the session if any).
                Interlocked.CompareExchange(ref _phase, PhaseInitialized, PhaseInitializing);
                _initialized.TrySetResult();
            }
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ExchangeAsync(Post post)
    {
        var timeoutAfter = _http.Limits.UpstreamTimeout;
        var sessionId = Volatile.Read(ref _sessionId);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, _http.Url);
            request.Content = new ReadOnlyMemoryContent(post.Buffer.AsMemory(0, post.Length));
            HttpUpstream.SetJsonContentType(request.Content);
            request.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
            AddSessionHeaders(request, sessionId);

            using var timeout = _http.Timeouts.Rent(timeoutAfter, _sink.Lifetime);
            HttpResponseMessage response;
            try
            {
                // The invoker returns once the response headers are in (the body is read below, or streamed).
                response = await _http.Invoker.SendAsync(request, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (!_sink.Lifetime.IsCancellationRequested)
            {
                await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' did not answer within {HttpUpstream.FormatTimeout(timeoutAfter)}").ConfigureAwait(false);
                return;
            }
            catch (HttpRequestException ex)
            {
                await FailSendAsync(post.Correlation, _http.Unreachable(ex)).ConfigureAwait(false);
                return;
            }

            using (response)
            {
                if (post.IsFirstInitialize && response.IsSuccessStatusCode
                    && response.Headers.TryGetValues("Mcp-Session-Id", out var ids)
                    && ids.FirstOrDefault() is { } id && IsVisibleAscii(id))
                {
                    Volatile.Write(ref _sessionId, id);
                }
                if (!response.IsSuccessStatusCode)
                {
                    await OnErrorStatusAsync(post, response, sessionId, timeout.Token).ConfigureAwait(false);
                    return;
                }

                var content = response.Content;
                if (HttpUpstream.IsMediaType(content, "text/event-stream"))
                {
                    timeout.CancelAfter(Timeout.InfiniteTimeSpan); // progress may take a while: the caller's timeout rules
                    await ReadResponseStreamAsync(post, content).ConfigureAwait(false);
                }
                else if (HttpUpstream.IsMediaType(content, "application/json"))
                {
                    var body = await HttpUpstream.ReadBodyAsync(content, _http.Limits.MaxMessageBytes, timeout.Token).ConfigureAwait(false);
                    if (body is null)
                    {
                        UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, _http.Limits.MaxMessageBytes);
                        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' sent a response larger than {_http.Limits.MaxMessageBytes} bytes").ConfigureAwait(false);
                    }
                    else if (body.Length > 0)
                    {
                        OnResponseMessage(post, body);
                        await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, body, post.Correlation)).ConfigureAwait(false);
                    }
                }
                else if (content.Headers.ContentLength is > 0 || content.Headers.NonValidated.Contains("Content-Type"))
                {
                    if ((int)response.StatusCode != 202)
                    {
                        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' answered with an unexpected content type").ConfigureAwait(false);
                    }
                }

                if (post.Kind == SessionMessage.Initialized)
                {
                    StartGetStream();
                }
            }
        }
        catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException or ObjectDisposedException)
        {
            if (!_sink.Lifetime.IsCancellationRequested)
            {
                await FailSendAsync(post.Correlation, _http.Redact($"upstream '{_http.Name}' response broke: {HttpUpstream.Reason(ex)}")).ConfigureAwait(false);
            }
        }
    }

    private void AddSessionHeaders(HttpRequestMessage request, string? sessionId)
    {
        _http.ApplyHeaders(request.Headers);
        if (sessionId is not null)
        {
            request.Headers.TryAddWithoutValidation("Mcp-Session-Id", sessionId);
        }
        if (Volatile.Read(ref _protocolVersion) is { } version)
        {
            request.Headers.TryAddWithoutValidation("MCP-Protocol-Version", version);
        }
    }

    /// <summary>Before a message of the initialize POST is handed on: note the negotiated version, release waiting sends.</summary>
    private void OnResponseMessage(Post post, byte[] message)
    {
        if (post.IsFirstInitialize && Volatile.Read(ref _protocolVersion) is null
            && JsonRpcPeek.InitializeResultVersion(message) is { } version)
        {
            Volatile.Write(ref _protocolVersion, version);
            Interlocked.CompareExchange(ref _phase, PhaseInitialized, PhaseInitializing);
            _initialized.TrySetResult();
        }
    }

    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ReadResponseStreamAsync(Post post, HttpContent content)
    {
        var body = content.ReadAsStream(_sink.Lifetime); // the handler's stream, handed over at once
        var reader = _http.SseReaders.Rent(body);
        try
        {
            while (true)
            {
                var e = await reader.ReadAsync(_sink.Lifetime).ConfigureAwait(false);
                switch (e.Kind)
                {
                    case SseReadKind.End:
                        return;
                    case SseReadKind.TooLarge:
                        // Most likely the response itself: fail the send now rather than let the caller time out.
                        UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, _http.Limits.MaxMessageBytes);
                        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' sent a message larger than {_http.Limits.MaxMessageBytes} bytes").ConfigureAwait(false);
                        break;
                    default:
                        if (!e.IsMessage)
                        {
                            UpstreamLog.IgnoredSseEvent(_http.Logger, _http.Name, e.Type!);
                            break;
                        }
                        OnResponseMessage(post, e.Data!);
                        if (!await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, e.Data, post.Correlation)).ConfigureAwait(false))
                        {
                            return;
                        }
                        break;
                }
            }
        }
        finally
        {
            _http.SseReaders.Return(reader);
        }
    }

    private async Task OnErrorStatusAsync(Post post, HttpResponseMessage response, string? sentSessionId, CancellationToken cancellationToken)
    {
        var status = (int)response.StatusCode;
        byte[]? body = null;
        if (HttpUpstream.IsMediaType(response.Content, "application/json"))
        {
            try
            {
                body = await HttpUpstream.ReadBodyAsync(response.Content, Math.Min(_http.Limits.MaxMessageBytes, 64 * 1024), cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException)
            {
                // The status says enough.
            }
        }
        var payload = body is { Length: > 0 } ? body : default(ReadOnlyMemory<byte>);

        if (sentSessionId is not null && status is 404 or 400)
        {
            var gone = $"upstream '{_http.Name}' session is gone (HTTP {status})";
            await FailSendAsync(post.Correlation, gone, payload).ConfigureAwait(false);
            Fail(new UpstreamException(gone) { SessionGone = true });
            return;
        }
        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' answered HTTP {status}", payload).ConfigureAwait(false);
    }

    private async ValueTask FailSendAsync(long correlation, string reason, ReadOnlyMemory<byte> payload = default)
    {
        UpstreamLog.SendFailed(_http.Logger, _http.Name, correlation, reason);
        await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.SendFailed, payload, correlation, reason)).ConfigureAwait(false);
    }

    private void Fail(UpstreamException reason)
    {
        if (Volatile.Read(ref _disposing) != 0 || Interlocked.CompareExchange(ref _failure, reason, null) is not null)
        {
            return;
        }
        UpstreamLog.ConnectionFailed(_http.Logger, _http.Name, reason.Message);
        _initialized.TrySetResult();
        _sink.Close(reason); // cancels the GET stream and every POST in flight
    }

    private void StartGetStream()
    {
        if (Interlocked.Exchange(ref _phase, PhaseReady) != PhaseReady && !_sink.IsClosed)
        {
            _getStream = Task.Run(RunGetStreamAsync);
        }
    }

    /// <summary>The standalone GET stream: server-initiated messages, reopened with backoff while the connection lives.</summary>
    private async Task RunGetStreamAsync()
    {
        var lifetime = _sink.Lifetime;
        var delay = s_firstRetry;
        string? lastEventId = null;
        while (!lifetime.IsCancellationRequested && Volatile.Read(ref _disposing) == 0)
        {
            string reason;
            int? serverRetry = null;
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, _http.Url);
                request.Headers.TryAddWithoutValidation("Accept", "text/event-stream");
                var sessionId = Volatile.Read(ref _sessionId);
                AddSessionHeaders(request, sessionId);
                if (lastEventId is not null)
                {
                    request.Headers.TryAddWithoutValidation("Last-Event-ID", lastEventId);
                }
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(lifetime);
                timeout.CancelAfter(_http.Limits.UpstreamTimeout);
                using var response = await _http.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
                var status = (int)response.StatusCode;
                if (status == 405)
                {
                    UpstreamLog.NoGetStream(_http.Logger, _http.Name);
                    return;
                }
                if (sessionId is not null && status is 404 or 400)
                {
                    Fail(new UpstreamException($"upstream '{_http.Name}' session is gone (HTTP {status})") { SessionGone = true });
                    return;
                }
                if (!response.IsSuccessStatusCode)
                {
                    if (status is not (409 or 429 or >= 500))
                    {
                        UpstreamLog.GetStreamAbandoned(_http.Logger, _http.Name, $"HTTP {status}");
                        return;
                    }
                    reason = $"HTTP {status}";
                }
                else if (!HttpUpstream.IsMediaType(response.Content, "text/event-stream"))
                {
                    UpstreamLog.GetStreamAbandoned(_http.Logger, _http.Name, "the answer is not an event stream");
                    return;
                }
                else
                {
                    timeout.CancelAfter(Timeout.InfiniteTimeSpan);
                    var body = await response.Content.ReadAsStreamAsync(lifetime).ConfigureAwait(false);
                    var reader = new SseReader(body, _http.Limits.MaxMessageBytes);
                    await using (reader.ConfigureAwait(false))
                    {
                        while (true)
                        {
                            var e = await reader.ReadAsync(lifetime).ConfigureAwait(false);
                            lastEventId = reader.LastEventId ?? lastEventId;
                            serverRetry = reader.RetryMilliseconds;
                            if (e.Kind == SseReadKind.End)
                            {
                                break;
                            }
                            if (e.Kind == SseReadKind.TooLarge)
                            {
                                UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, _http.Limits.MaxMessageBytes);
                                continue;
                            }
                            if (!e.IsMessage)
                            {
                                UpstreamLog.IgnoredSseEvent(_http.Logger, _http.Name, e.Type!);
                                continue;
                            }
                            delay = s_firstRetry; // the stream works: start backing off afresh next time
                            if (!await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, e.Data, 0)).ConfigureAwait(false))
                            {
                                return;
                            }
                        }
                    }
                    reason = "the server closed it";
                }
            }
            catch (OperationCanceledException) when (lifetime.IsCancellationRequested)
            {
                return;
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException or ObjectDisposedException)
            {
                reason = _http.Redact(HttpUpstream.Reason(ex));
            }

            var wait = serverRetry is { } retry ? TimeSpan.FromMilliseconds(Math.Clamp(retry, 100, 60_000)) : delay;
            UpstreamLog.GetStreamReconnecting(_http.Logger, _http.Name, reason, (int)wait.TotalMilliseconds);
            try
            {
                await Task.Delay(wait, lifetime).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, s_maxRetry.Ticks));
        }
    }

    private static bool IsVisibleAscii(string value)
    {
        if (value.Length is 0 or > 1024)
        {
            return false;
        }
        foreach (var c in value)
        {
            if (c is < (char)0x21 or > (char)0x7E)
            {
                return false;
            }
        }
        return true;
    }

    public ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposing, 1) == 0)
        {
            _disposal = DisposeCoreAsync();
        }
        return new ValueTask(_disposal!);
    }

    private async Task DisposeCoreAsync()
    {
        _initialized.TrySetResult();
        if (Volatile.Read(ref _sessionId) is { } sessionId && !_sink.IsClosed)
        {
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Delete, _http.Url);
                AddSessionHeaders(request, sessionId);
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_sink.Lifetime);
                timeout.CancelAfter(s_deleteTimeout);
                using var response = await _http.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException)
            {
                UpstreamLog.DeleteFailed(_http.Logger, _http.Name, _http.Redact(HttpUpstream.Reason(ex)));
            }
        }
        _sink.Close(null); // cancels the GET stream and every POST in flight
        try
        {
            await _getStream.WaitAsync(s_drainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
    }

    public override string ToString() => $"{_http.Name} (streamable-http: {_http.SafeUrl})";
}
