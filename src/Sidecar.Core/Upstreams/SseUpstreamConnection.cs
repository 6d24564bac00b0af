using System.Buffers;
using System.Text;
using System.Threading.Channels;

namespace Sidecar.Upstreams;

/// <summary>
/// One legacy HTTP+SSE upstream session (MCP 2024-11-05).
/// </summary>
/// <remarks>
/// <para>
/// <b>Opening</b>: <c>GET url</c> (<c>Accept: text/event-stream</c> and the configured headers), then wait, at most
/// <c>ConnectTimeout</c>, for the <c>endpoint</c> event. Its data is resolved against the SSE URL and must stay on the
/// same origin (scheme, host, port): an upstream cannot send our messages, and the configured credentials, elsewhere.
/// </para>
/// <para>
/// <b>From the server</b>: every <c>message</c> event's data is one <see cref="UpstreamEventKind.Message"/> event
/// (correlation 0), exactly as sent. Events larger than <c>MaxMessageBytes</c> are skipped with a warning.
/// The stream ending faults <see cref="Completion"/> ("upstream closed the SSE stream").
/// </para>
/// <para>
/// <b>Events</b>: <see cref="Events"/> is bounded (<see cref="UpstreamEventSink.Capacity"/>, 1024 events) and has one
/// reader. When it is full the transport waits and stops reading from the server, which then waits too
/// (backpressure); nothing is dropped for being slow. Read it independently of sending. Each payload is a fresh
/// array the reader may keep. After the last event the channel completes, and <see cref="Completion"/> says why.
/// </para>
/// <para>
/// <b>To the server</b>: <see cref="SendAsync"/> copies the message and queues it; one sender loop POSTs the queue in
/// order (<c>Content-Type: application/json</c>, configured headers), each POST acknowledged (2xx, usually 202) before
/// the next starts, so the server sees messages in the order they were sent. A POST that is refused, cannot connect
/// or is not answered within <c>UpstreamTimeout</c> (a legacy server may never answer a POST for a session it does not
/// know) becomes a <see cref="UpstreamEventKind.SendFailed"/> event with the send's correlation. HTTP 404 or 400 means
/// the session is gone: that send fails and Completion faults with <see cref="UpstreamException.SessionGone"/>.
/// </para>
/// </remarks>
public sealed class SseUpstreamConnection : IUpstreamConnection
{
    /// <summary>Messages queued for the sender loop before senders wait.</summary>
    public const int OutgoingCapacity = 256;

    private static readonly TimeSpan s_drainTimeout = TimeSpan.FromSeconds(2);

    private readonly HttpUpstream _http;
    private readonly UpstreamEventSink _sink = new();
    private readonly Channel<OutgoingMessage> _outgoing = Channel.CreateBounded<OutgoingMessage>(new BoundedChannelOptions(OutgoingCapacity)
    {
        FullMode = BoundedChannelFullMode.Wait,
        SingleReader = false, // the sender loop, and a failing connection draining what is left
        SingleWriter = false,
        AllowSynchronousContinuations = true, // the sender loop starts its POST on the sender's thread (no thread hand-off)
    });
    private HttpResponseMessage? _response;
    private SseReader? _reader;
    private Uri? _endpoint;
    private Task _readLoop = Task.CompletedTask;
    private Task _sendLoop = Task.CompletedTask;
    private UpstreamException? _failure;
    private int _disposing;
    private Task? _disposal;


    private SseUpstreamConnection(HttpUpstream http) => _http = http;

    public string Transport => "sse";

    public ChannelReader<UpstreamEvent> Events => _sink.Reader;

    public Task Completion => _sink.Completion;

    internal static async ValueTask<SseUpstreamConnection> ConnectAsync(HttpUpstream http, CancellationToken cancellationToken)
    {
        var connection = new SseUpstreamConnection(http);
        try
        {
            await connection.OpenAsync(cancellationToken).ConfigureAwait(false);
            return connection;
        }
        catch
        {
            await connection.DisposeAsync().ConfigureAwait(false);
            throw;
        }
    }

    private async Task OpenAsync(CancellationToken cancellationToken)
    {
        var limits = _http.Limits;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _sink.Lifetime);
        timeout.CancelAfter(limits.ConnectTimeout);
        string TimedOut(string what) => $"upstream '{_http.Name}' at {_http.SafeUrl} {what} within {HttpUpstream.FormatTimeout(limits.ConnectTimeout)}";

        using (var request = new HttpRequestMessage(HttpMethod.Get, _http.Url))
        {
            request.Headers.TryAddWithoutValidation("Accept", "text/event-stream");
            request.Headers.TryAddWithoutValidation("Cache-Control", "no-cache");
            _http.ApplyHeaders(request.Headers);
            try
            {
                _response = await _http.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
            {
                throw new UpstreamException(TimedOut("did not answer"), ex);
            }
            catch (HttpRequestException ex)
            {
                throw new UpstreamException(_http.Unreachable(ex), ex);
            }
        }
        if (!_response.IsSuccessStatusCode)
        {
            throw new UpstreamException($"upstream '{_http.Name}' answered GET {_http.SafeUrl} with HTTP {(int)_response.StatusCode}");
        }
        if (!HttpUpstream.IsMediaType(_response.Content, "text/event-stream"))
        {
            throw new UpstreamException($"upstream '{_http.Name}' at {_http.SafeUrl} did not answer with an event stream");
        }

        try
        {
            var body = await _response.Content.ReadAsStreamAsync(timeout.Token).ConfigureAwait(false);
            _reader = new SseReader(body, limits.MaxMessageBytes);
            while (_endpoint is null)
            {
                var e = await _reader.ReadAsync(timeout.Token).ConfigureAwait(false);
                switch (e.Kind)
                {
                    case SseReadKind.End:
                        throw new UpstreamException($"upstream '{_http.Name}' at {_http.SafeUrl} closed the SSE stream before announcing its message endpoint");
                    case SseReadKind.TooLarge:
                        UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, limits.MaxMessageBytes);
                        break;
                    default:
                        if (e.Type == SseReader.EndpointType)
                        {
                            _endpoint = ResolveEndpoint(e.Data!);
                        }
                        else if (e.IsMessage)
                        {
                            _sink.TryEmit(new UpstreamEvent(UpstreamEventKind.Message, e.Data, 0)); // the channel is empty
                        }
                        else
                        {
                            UpstreamLog.IgnoredSseEvent(_http.Logger, _http.Name, e.Type!);
                        }
                        break;
                }
            }
        }
        catch (OperationCanceledException ex) when (!cancellationToken.IsCancellationRequested)
        {
            throw new UpstreamException(TimedOut("did not announce its message endpoint"), ex);
        }
        catch (Exception ex) when (ex is IOException or HttpRequestException)
        {
            throw new UpstreamException(_http.Unreachable(ex), ex);
        }

        _readLoop = Task.Run(ReadLoopAsync);
        _sendLoop = Task.Run(SendLoopAsync);
    }

    /// <summary>Resolves the announced endpoint against the SSE URL; it must be on the same origin.</summary>
    private Uri ResolveEndpoint(byte[] data)
    {
        var text = Encoding.UTF8.GetString(data).Trim();
        if (text.Length == 0 || !Uri.TryCreate(_http.Url, text, out var endpoint))
        {
            throw new UpstreamException($"upstream '{_http.Name}' announced an invalid message endpoint");
        }
        var sse = _http.Url;
        if (!string.Equals(endpoint.Scheme, sse.Scheme, StringComparison.OrdinalIgnoreCase)
            || !string.Equals(endpoint.IdnHost, sse.IdnHost, StringComparison.OrdinalIgnoreCase)
            || endpoint.Port != sse.Port)
        {
            throw new UpstreamException(
                $"upstream '{_http.Name}' announced a message endpoint on another origin ({endpoint.GetLeftPart(UriPartial.Authority)}, " +
                $"not {sse.GetComponents(UriComponents.SchemeAndServer, UriFormat.UriEscaped)}); refusing to send messages there");
        }
        return endpoint;
    }

    private async Task ReadLoopAsync()
    {
        string reason;
        try
        {
            while (true)
            {
                var e = await _reader!.ReadAsync(_sink.Lifetime).ConfigureAwait(false);
                if (e.Kind == SseReadKind.End)
                {
                    reason = $"upstream '{_http.Name}' closed the SSE stream";
                    break;
                }
                if (e.Kind == SseReadKind.TooLarge)
                {
                    UpstreamLog.MessageTooLarge(_http.Logger, _http.Name, Transport, _http.Limits.MaxMessageBytes);
                }
                else if (e.IsMessage)
                {
                    if (!await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.Message, e.Data, 0)).ConfigureAwait(false))
                    {
                        return;
                    }
                }
                else
                {
                    UpstreamLog.IgnoredSseEvent(_http.Logger, _http.Name, e.Type!);
                }
            }
        }
        catch (OperationCanceledException) when (_sink.Lifetime.IsCancellationRequested)
        {
            return;
        }
        catch (Exception ex) when (ex is IOException or HttpRequestException or OperationCanceledException or ObjectDisposedException)
        {
            reason = _http.Redact($"upstream '{_http.Name}' SSE stream broke: {HttpUpstream.Reason(ex)}");
        }
        Fail(new UpstreamException(reason));
    }

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
        var buffer = ArrayPool<byte>.Shared.Rent(Math.Max(1, (int)message.Length));
        message.CopyTo(buffer);
        var item = new OutgoingMessage(buffer, (int)message.Length, correlation);
        return _outgoing.Writer.TryWrite(item) ? default : SendSlowAsync(item, cancellationToken);
    }

    private ValueTask SendSlowAsync(OutgoingMessage item, CancellationToken cancellationToken)
        => OutgoingMessage.WriteSlowAsync(_outgoing.Writer, item, ClosedException, cancellationToken);

    private UpstreamException ClosedException() =>
        Volatile.Read(ref _failure) is { } failure
            ? new UpstreamException(failure.Message, failure) { SessionGone = failure.SessionGone }
            : _sink.ClosedException();

    private async Task SendLoopAsync()
    {
        try
        {
            while (await _outgoing.Reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
            {
                while (_outgoing.Reader.TryRead(out var item))
                {
                    try
                    {
                        if (_sink.IsClosed || Volatile.Read(ref _failure) is not null)
                        {
                            FailSend(item.Correlation, ClosedException().Message);
                        }
                        else
                        {
                            await PostAsync(item).ConfigureAwait(false);
                        }
                    }
                    finally
                    {
                        ArrayPool<byte>.Shared.Return(item.Buffer);
                    }
                }
            }
        }
        catch (ChannelClosedException)
        {
        }
    }

    private async Task PostAsync(OutgoingMessage item)
    {
        var timeoutAfter = _http.Limits.UpstreamTimeout;
        using var request = new HttpRequestMessage(HttpMethod.Post, _endpoint);
        request.Content = new ReadOnlyMemoryContent(item.Buffer.AsMemory(0, item.Length));
        HttpUpstream.SetJsonContentType(request.Content);
        _http.ApplyHeaders(request.Headers);
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_sink.Lifetime);
        timeout.CancelAfter(timeoutAfter);
        try
        {
            using var response = await _http.Client.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token).ConfigureAwait(false);
            var status = (int)response.StatusCode;
            if (response.IsSuccessStatusCode)
            {
                return;
            }
            if (status is 404 or 400)
            {
                var gone = $"upstream '{_http.Name}' session is gone (HTTP {status})";
                await FailSendAsync(item.Correlation, gone).ConfigureAwait(false);
                Fail(new UpstreamException(gone) { SessionGone = true });
                return;
            }
            await FailSendAsync(item.Correlation, $"upstream '{_http.Name}' refused the message (HTTP {status})").ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!_sink.Lifetime.IsCancellationRequested)
        {
            await FailSendAsync(item.Correlation, $"upstream '{_http.Name}' did not accept the message within {HttpUpstream.FormatTimeout(timeoutAfter)}").ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await FailSendAsync(item.Correlation, ClosedException().Message).ConfigureAwait(false);
        }
        catch (HttpRequestException ex)
        {
            await FailSendAsync(item.Correlation, _http.Unreachable(ex)).ConfigureAwait(false);
        }
    }

    private async ValueTask FailSendAsync(long correlation, string reason)
    {
        UpstreamLog.SendFailed(_http.Logger, _http.Name, correlation, reason);
        await _sink.EmitAsync(new UpstreamEvent(UpstreamEventKind.SendFailed, default, correlation, reason)).ConfigureAwait(false);
    }

    private void FailSend(long correlation, string reason)
    {
        UpstreamLog.SendFailed(_http.Logger, _http.Name, correlation, reason);
        _sink.TryEmit(new UpstreamEvent(UpstreamEventKind.SendFailed, default, correlation, reason));
    }

    /// <summary>Ends the connection with an error: what is queued fails, then Completion faults.</summary>
    private void Fail(UpstreamException reason)
    {
        if (Volatile.Read(ref _disposing) != 0 || Interlocked.CompareExchange(ref _failure, reason, null) is not null)
        {
            return;
        }
        UpstreamLog.ConnectionFailed(_http.Logger, _http.Name, reason.Message);
        _outgoing.Writer.TryComplete();
        while (_outgoing.Reader.TryRead(out var item))
        {
            FailSend(item.Correlation, reason.Message);
            ArrayPool<byte>.Shared.Return(item.Buffer);
        }
        _sink.Close(reason);
        _response?.Dispose();
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
        _outgoing.Writer.TryComplete();
        _sink.Close(null); // cancels the stream and any POST in flight
        _response?.Dispose(); // closing the GET ends the server's session
        try
        {
            await Task.WhenAll(_readLoop, _sendLoop).WaitAsync(s_drainTimeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
        }
        while (_outgoing.Reader.TryRead(out var item))
        {
            ArrayPool<byte>.Shared.Return(item.Buffer);
        }
        if (_reader is not null)
        {
            await _reader.DisposeAsync().ConfigureAwait(false);
        }
    }

    public override string ToString() => $"{_http.Name} (sse: {_http.SafeUrl})";
}
