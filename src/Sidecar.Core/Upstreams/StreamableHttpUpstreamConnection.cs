using System.Buffers;
using System.Diagnostics;
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
/// <b>Resumption</b> (MCP 2025-11-25, "Resumability and Redelivery"): a server may close a request's event stream
/// before the response once it has sent an event id (it primes each stream with one: an id, often a <c>retry</c>,
/// empty data, which is not a message and is skipped). When a request's stream ends, cleanly or broken, before its
/// response and it had an event id, the rest is fetched with a <c>GET</c> carrying <c>Last-Event-ID</c> (and the
/// session headers) after the server's <c>retry</c>; that stream is read like the POST's, with the same correlation,
/// and resumed again with the newest id if it too ends early. Failed attempts back off and are bounded (see
/// <see cref="ResumeAsync"/>); then, or when the stream had no event id at all, the send fails.
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
/// e.g. a JSON-RPC error, <see cref="UpstreamEvent.Payload"/> holds it as sent). A request's response stream that
/// ends before the response and can't be resumed is also a SendFailed, which may follow messages already delivered
/// for that send, and so is a message on the send's response that exceeds <c>MaxMessageBytes</c> (dropped with a
/// warning; it is most likely the response). HTTP 404, or 400 on a request that carried
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

    /// <summary>Resumptions of a send's event stream in a row that bring nothing new before the send fails.</summary>
    private const int MaxResumeFailures = 5;

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

    /// <summary>The POST and its answer, then (rarely) the resumption of an event stream that ended before the answer.</summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder))]
    private async ValueTask ExchangeAsync(Post post)
    {
        var timeoutAfter = _http.Limits.UpstreamTimeout;
        var sessionId = Volatile.Read(ref _sessionId);
        var unfinished = default(StreamEnd);
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
                    unfinished = await SettleStreamAsync(post, await ReadEventStreamAsync(post, content, default).ConfigureAwait(false)).ConfigureAwait(false);
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
        if (unfinished.AwaitsAnswer)
        {
            await ResumeAsync(post, unfinished).ConfigureAwait(false); // the POST's request and response are released
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

    /// <summary>
    /// How one event stream of a send ended. <see cref="AwaitsAnswer"/>: before the send's response, with nothing else
    /// settling the send (a failure already reported, the connection closing). Then <see cref="LastEventId"/> and
    /// <see cref="RetryMilliseconds"/> (the newest over all the send's streams so far) say where and when to resume,
    /// <see cref="Broken"/> why it ended if not cleanly, and <see cref="Delivered"/> whether it brought any message.
    /// </summary>
    private readonly record struct StreamEnd(bool AwaitsAnswer, string? LastEventId, int? RetryMilliseconds, string? Broken, bool Delivered);

    /// <summary>
    /// Reads one event stream of a send (the POST's answer, or a GET resuming it) to its end, handing on every message
    /// with the send's correlation. <paramref name="before"/> is how the send's previous stream ended (default for the
    /// POST's own).
    /// </summary>
    [AsyncMethodBuilder(typeof(PoolingAsyncValueTaskMethodBuilder<>))]
    private async ValueTask<StreamEnd> ReadEventStreamAsync(Post post, HttpContent content, StreamEnd before)
    {
        var lifetime = _sink.Lifetime;
        var reader = _http.SseReaders.Rent(content.ReadAsStream(lifetime)); // the handler's stream, handed over at once
        try
        {
            var settled = false; // the response went by, or the send has failed already
            var delivered = false;
            string? broken = null;
            try
            {
                while (true)
                {
                    var e = await reader.ReadAsync(lifetime).ConfigureAwait(false);
                    if (e.Kind == SseReadKind.End)
                    {
                        break;
                    }
                    if (e.Kind == SseReadKind.TooLarge)
                    {
                        // Most likely the response itself: fail the send now rather than let the caller time out.
                        UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, _http.Limits.MaxMessageBytes);
                        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' sent a message larger than {_http.Limits.MaxMessageBytes} bytes").ConfigureAwait(false);
                        settled = true;
                        continue;
                    }
                    if (!e.IsMessage)
                    {
                        UpstreamLog.IgnoredSseEvent(_http.Logger, _http.Name, e.Type!);
                        continue;
                    }
                    OnResponseMessage(post, e.Data!);
                    settled = settled || JsonRpcPeek.IsResponse(e.Data);
                    delivered = true;
                    if (!await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, e.Data, post.Correlation)).ConfigureAwait(false))
                    {
                        return default; // the connection has closed
                    }
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or IOException or HttpRequestException or ObjectDisposedException)
            {
                if (lifetime.IsCancellationRequested)
                {
                    return default;
                }
                broken = _http.Redact(HttpUpstream.Reason(ex));
            }
            return settled
                ? default
                : new StreamEnd(true, reader.LastEventId ?? before.LastEventId, reader.RetryMilliseconds ?? before.RetryMilliseconds, broken, delivered);
        }
        finally
        {
            _http.SseReaders.Return(reader);
        }
    }

    /// <summary>
    /// After the POST's event stream ended before its answer: a request's stream that set an event id is to be resumed
    /// (returned); one without an id can't be, and its send fails now rather than wait for the caller's timeout.
    /// </summary>
    private async ValueTask<StreamEnd> SettleStreamAsync(Post post, StreamEnd end)
    {
        if (!end.AwaitsAnswer)
        {
            return default;
        }
        var isRequest = JsonRpcPeek.IsRequest(post.Buffer.AsSpan(0, post.Length)); // a notification's stream owes nothing
        if (isRequest && end.LastEventId is not null)
        {
            return end;
        }
        if (end.Broken is not null)
        {
            await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' response broke: {end.Broken}").ConfigureAwait(false);
        }
        else if (isRequest)
        {
            await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' closed the response stream before the answer, with no event id to resume from").ConfigureAwait(false);
        }
        return default;
    }

    /// <summary>
    /// Resumes a request's event stream that ended before the answer (MCP 2025-11-25 lets a server close it once it
    /// has sent an event id): after the server's <c>retry</c> (else 250 ms), a GET with <c>Last-Event-ID</c>, whose
    /// stream is read like the POST's, with the same correlation; again, with the newest id, while streams keep ending
    /// before the answer. Attempts that bring nothing new (no connection, HTTP 409, 429 or 5xx, a stream without a new
    /// id or message) back off, doubling, and the send fails after <see cref="MaxResumeFailures"/> of them in a row, or
    /// once <c>UpstreamTimeout</c> has passed without a message, or at once if the server refuses to resume. HTTP 404
    /// means the session is gone. Nothing is attempted once the connection is closing or disposed.
    /// </summary>
    private async Task ResumeAsync(Post post, StreamEnd end)
    {
        var lifetime = _sink.Lifetime;
        var failures = 0;
        var quietSince = Stopwatch.GetTimestamp();
        var reason = end.Broken ?? "the server closed it";
        string refused;
        while (true)
        {
            if (failures >= MaxResumeFailures)
            {
                refused = $"{failures} attempts in a row failed, the last: {reason}";
                break;
            }
            if (Stopwatch.GetElapsedTime(quietSince) >= _http.Limits.UpstreamTimeout)
            {
                refused = $"no message within {HttpUpstream.FormatTimeout(_http.Limits.UpstreamTimeout)}; the last stream ended: {reason}";
                break;
            }
            var wait = ResumeDelay(end.RetryMilliseconds, failures);
            UpstreamLog.ResumingStream(_http.Logger, _http.Name, post.Correlation, reason, (int)wait.TotalMilliseconds);
            try
            {
                await Task.Delay(wait, lifetime).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            if (Volatile.Read(ref _disposing) != 0)
            {
                return;
            }

            var sessionId = Volatile.Read(ref _sessionId);
            try
            {
                using var request = new HttpRequestMessage(HttpMethod.Get, _http.Url);
                request.Headers.TryAddWithoutValidation("Accept", "text/event-stream");
                AddSessionHeaders(request, sessionId);
                request.Headers.TryAddWithoutValidation("Last-Event-ID", end.LastEventId);
                using var timeout = _http.Timeouts.Rent(_http.Limits.UpstreamTimeout, lifetime);
                using var response = await _http.Invoker.SendAsync(request, timeout.Token).ConfigureAwait(false);
                var status = (int)response.StatusCode;
                if (sessionId is not null && status == 404)
                {
                    var gone = $"upstream '{_http.Name}' session is gone (HTTP {status})";
                    await FailSendAsync(post.Correlation, gone).ConfigureAwait(false);
                    Fail(new UpstreamException(gone) { SessionGone = true });
                    return;
                }
                if (status is 409 or 429 or >= 500)
                {
                    reason = $"HTTP {status}";
                    failures++;
                    continue;
                }
                if (!response.IsSuccessStatusCode)
                {
                    refused = $"HTTP {status}"; // e.g. 400 for an id the server no longer has, 405 for no GET at all
                    break;
                }
                if (!HttpUpstream.IsMediaType(response.Content, "text/event-stream"))
                {
                    refused = "the answer is not an event stream";
                    break;
                }
                timeout.CancelAfter(Timeout.InfiniteTimeSpan); // as for the POST's stream: the caller's timeout rules
                var next = await ReadEventStreamAsync(post, response.Content, end).ConfigureAwait(false);
                if (!next.AwaitsAnswer)
                {
                    return; // answered (or settled otherwise)
                }
                if (next.Delivered)
                {
                    quietSince = Stopwatch.GetTimestamp();
                }
                failures = next.Delivered || next.LastEventId != end.LastEventId ? 0 : failures + 1;
                reason = next.Broken ?? "the server closed it again";
                end = next;
            }
            catch (OperationCanceledException) when (lifetime.IsCancellationRequested)
            {
                return;
            }
            catch (OperationCanceledException)
            {
                reason = $"no answer within {HttpUpstream.FormatTimeout(_http.Limits.UpstreamTimeout)}";
                failures++;
            }
            catch (Exception ex) when (ex is IOException or HttpRequestException or ObjectDisposedException)
            {
                reason = _http.Redact(HttpUpstream.Reason(ex));
                failures++;
            }
        }
        UpstreamLog.ResumeAbandoned(_http.Logger, _http.Name, post.Correlation, refused);
        await FailSendAsync(post.Correlation, $"upstream '{_http.Name}' closed the response stream before the answer and it could not be resumed: {refused}").ConfigureAwait(false);
    }

    /// <summary>
    /// The wait before a resumption: the server's <c>retry</c> (clamped, see <see cref="ServerRetry"/>), else 250 ms;
    /// doubled for each failure in a row, up to 10 s (or the server's retry, if longer).
    /// </summary>
    private static TimeSpan ResumeDelay(int? serverRetry, int failures)
    {
        var first = serverRetry is { } retry ? ServerRetry(retry) : s_firstRetry;
        return TimeSpan.FromTicks(Math.Min(first.Ticks << Math.Min(failures, 16), Math.Max(first.Ticks, s_maxRetry.Ticks)));
    }

    /// <summary>A server's <c>retry:</c>, held to 100 ms .. 60 s: neither a reconnection storm nor a wait for ever.</summary>
    private static TimeSpan ServerRetry(int milliseconds) => TimeSpan.FromMilliseconds(Math.Clamp(milliseconds, 100, 60_000));

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

            var wait = serverRetry is { } retry ? ServerRetry(retry) : delay;
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
