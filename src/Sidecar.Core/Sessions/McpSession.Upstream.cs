using System.Buffers;
using Sidecar.Audit;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>The upstream side of a session: connect and re-initialize, the pump, answers, routing, failures.</summary>
internal sealed partial class McpSession
{
    private readonly SemaphoreSlim _connectGate = new(1, 1);
    private IUpstreamConnection? _connection;
    private int _generation;
    private long _retryNotBefore;
    private int _failures;
    private int _reinitializations;

    /// <summary>Returns the live upstream connection, connecting (and re-initializing after a crash) when needed.</summary>
    private async ValueTask<IUpstreamConnection> EnsureConnectedAsync(GatewayOptions options, CancellationToken cancellationToken)
    {
        var connection = Volatile.Read(ref _connection);
        if (connection is not null && !connection.Completion.IsCompleted)
        {
            return connection;
        }
        await _connectGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            connection = _connection;
            if (connection is not null && !connection.Completion.IsCompleted)
            {
                return connection;
            }
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            var wait = Interlocked.Read(ref _retryNotBefore) - Environment.TickCount64;
            if (wait > 0)
            {
                throw new UpstreamException($"reconnecting after a failure; next attempt in {wait} ms");
            }
            if (connection is not null)
            {
                await DisposeQuietlyAsync(connection).ConfigureAwait(false);
            }

            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken, _lifetime.Token);
            timeout.CancelAfter(options.Limits.ConnectTimeout);
            try
            {
                connection = await _server.Upstream.Connector.ConnectAsync(timeout.Token).ConfigureAwait(false);
                var generation = Interlocked.Increment(ref _generation);
                if (generation > 1)
                {
                    _engine.Metrics.RecordRestart(_server.Name);
                }
                Volatile.Write(ref _connection, connection);
                _ = PumpAsync(connection, generation);
                if (Volatile.Read(ref _initializeParams) is { } initializeParams)
                {
                    await ReinitializeAsync(connection, initializeParams, options, timeout.Token).ConfigureAwait(false);
                    UpstreamStateChanged?.Invoke(this, true);
                }
                _failures = 0;
                return connection;
            }
            catch (Exception ex) when (ex is UpstreamException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                var backoff = Math.Min(30_000, 250L << Math.Min(_failures++, 7));
                Interlocked.Exchange(ref _retryNotBefore, Environment.TickCount64 + backoff);
                Log.ConnectFailed(_server.Name, _server.Config.TransportName, Id, ex.Message, backoff);
                if (connection is not null)
                {
                    await DisposeQuietlyAsync(connection).ConfigureAwait(false);
                }
                throw ex as UpstreamException ?? new UpstreamException("timed out connecting to the upstream server", ex);
            }
        }
        finally
        {
            _connectGate.Release();
        }
    }

    /// <summary>
    /// Connects again now if the upstream connection is gone (an initialized session replays the agent's
    /// <c>initialize</c>); throws <see cref="UpstreamException"/> when that fails or the backoff after a failure has
    /// not passed yet. For <see cref="AggregateSession"/>, which brings a lost server back without waiting for a call.
    /// </summary>
    internal async ValueTask ReconnectAsync(GatewayOptions options, CancellationToken cancellationToken)
        => await EnsureConnectedAsync(options, cancellationToken).ConfigureAwait(false);

    /// <summary>
    /// A respawned or reconnected upstream starts a fresh session: replay the agent's own <c>initialize</c> (same
    /// capabilities and client info) and <c>notifications/initialized</c> before anything else goes through.
    /// </summary>
    private async Task ReinitializeAsync(IUpstreamConnection connection, byte[] initializeParams, GatewayOptions options, CancellationToken cancellationToken)
    {
        var id = $"sidecar-reinitialize-{Interlocked.Increment(ref _reinitializations)}";
        var done = new TaskCompletionSource<ReadOnlyMemory<byte>>(TaskCreationOptions.RunContinuationsAsynchronously);
        var pending = new PendingRequest(new RpcId(id, 0), System.Text.Encoding.UTF8.GetBytes($"\"{id}\""), new MessageSink(acceptsRelatedMessages: false), 0)
        {
            Internal = done,
            Deadline = Deadline(options),
            Generation = Volatile.Read(ref _generation),
        };
        _pending[pending.Key] = pending;
        var request = JsonRpcResponses.Request(id, "initialize", initializeParams);
        await connection.SendAsync(new ReadOnlySequence<byte>(request), 0, cancellationToken).ConfigureAwait(false);
        var response = await done.Task.WaitAsync(cancellationToken).ConfigureAwait(false);
        if (JsonRpcScanner.Scan(response.Span, out var scan) != ScanStatus.Ok || scan.Kind != JsonRpcMessageKind.Response)
        {
            throw new UpstreamException("the restarted upstream refused initialize");
        }
        await connection.SendAsync(new ReadOnlySequence<byte>(JsonRpcResponses.InitializedNotification), 0, cancellationToken).ConfigureAwait(false);
        Log.Reinitialized(_server.Name, Id);
    }

    private async Task PumpAsync(IUpstreamConnection connection, int generation)
    {
        try
        {
            await foreach (var ev in connection.Events.ReadAllAsync(_lifetime.Token).ConfigureAwait(false))
            {
                if (ev.Kind == UpstreamEventKind.SendFailed)
                {
                    FailCorrelation(ev.Correlation, ev.Error ?? "the upstream did not accept the message");
                }
                else
                {
                    OnUpstreamMessage(ev.Payload, ev.Correlation);
                }
            }
        }
        catch (OperationCanceledException) when (_lifetime.IsCancellationRequested)
        {
            return;
        }
        catch (Exception ex)
        {
            Log.PumpFailed(ex, _server.Name, Id);
        }

        string reason;
        try
        {
            await connection.Completion.ConfigureAwait(false);
            reason = "the upstream closed the session";
        }
        catch (Exception ex)
        {
            reason = ex.Message;
        }
        if (!IsDisposed)
        {
            Log.UpstreamEnded(_server.Name, _server.Config.TransportName, Id, reason);
        }
        FailGeneration(generation, SessionMessages.WentAway(_server.Name, reason));
        if (!IsDisposed && generation == Volatile.Read(ref _generation))
        {
            UpstreamStateChanged?.Invoke(this, false);
        }
    }

    private void OnUpstreamMessage(ReadOnlyMemory<byte> payload, long correlation)
    {
        if (JsonRpcScanner.Scan(payload.Span, out var scan, _engine.Current.Options.Scanner) != ScanStatus.Ok)
        {
            Log.InvalidUpstreamMessage(_server.Name, scan.Error);
            return;
        }
        switch (scan.Kind)
        {
            case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                if (RpcId.TryCreate(payload.Span.Slice(scan.Id.Start, scan.Id.Length), out var key) && _pending.TryRemove(key, out var pending))
                {
                    Complete(pending, payload, scan);
                }
                else
                {
                    Log.UnmatchedResponse(_server.Name);
                }
                break;
            case JsonRpcMessageKind.Request or JsonRpcMessageKind.Notification:
                Route(payload, correlation, scan.Kind == JsonRpcMessageKind.Request || scan.Method == McpMethod.NotificationsProgress);
                break;
            case JsonRpcMessageKind.Batch:
                foreach (var element in JsonRpcScanner.EnumerateBatch(new ReadOnlySequence<byte>(payload)))
                {
                    OnUpstreamMessage(payload.Slice(element.Start, element.Length).ToArray(), correlation);
                }
                break;
        }
    }

    private void Complete(PendingRequest pending, ReadOnlyMemory<byte> payload, in JsonRpcScan scan)
    {
        if (pending.Internal is { } internalRequest)
        {
            internalRequest.TrySetResult(payload);
            return;
        }
        if (pending.IsInitialize && scan.Kind == JsonRpcMessageKind.Response)
        {
            Volatile.Write(ref _protocolVersion, Answers.ProtocolVersion(payload.Span));
            Volatile.Write(ref _initializeParams, Interlocked.Exchange(ref _initializing, null) ?? []);
        }
        var received = System.Diagnostics.Stopwatch.GetTimestamp();
        var response = Answers.Review(_engine, _server.Name, pending, payload, scan, out var ticket);
        pending.Sink.TryWrite(response, true, ticket);
        if (pending.HasDecision && pending.Sent != 0)
        {
            var now = System.Diagnostics.Stopwatch.GetTimestamp();
            _engine.Metrics.RecordForwarded(_server.Name, pending.Sent - pending.Arrived + (now - received), received - pending.Sent);
        }
    }

    /// <summary>
    /// Sends a server-to-client request or notification to the agent. Streamable HTTP upstreams say which request a
    /// message belongs to (it came on that request's stream): it goes on that request's SSE response. Otherwise
    /// (stdio, legacy SSE) requests (sampling, elicitation, roots) and progress belong to the call in flight when
    /// there is exactly one, while session-wide notifications (list changes, logs, resource updates) prefer the
    /// agent's own stream. Whatever finds no open stream waits in a small backlog until one opens.
    /// </summary>
    private void Route(ReadOnlyMemory<byte> payload, long correlation, bool callScoped)
    {
        MessageSink? target = null;
        MessageSink? only = null;
        PendingRequest? onlyPending = null;
        var candidates = 0;
        var deadline = Deadline(_engine.Current.Options);
        foreach (var (_, pending) in _pending)
        {
            if (!pending.Sink.AcceptsRelatedMessages || pending.Internal is not null)
            {
                continue;
            }
            if (correlation != 0 && pending.Correlation == correlation)
            {
                target = pending.Sink;
                pending.Deadline = deadline; // the request is alive: progress resets its clock
                break;
            }
            candidates++;
            only = pending.Sink;
            onlyPending = pending;
        }
        var stream = StreamSink;
        if (target is null && correlation == 0 && candidates == 1 && (callScoped || stream is null))
        {
            target = only;
            onlyPending!.Deadline = deadline;
        }
        ToStream(payload, target);
    }

    private async Task CancelUpstreamAsync(byte[] rawId, string reason)
    {
        var connection = Volatile.Read(ref _connection);
        if (connection is null || connection.Completion.IsCompleted)
        {
            return;
        }
        try
        {
            await connection.SendAsync(new ReadOnlySequence<byte>(JsonRpcResponses.Cancelled(rawId, reason)), 0, _lifetime.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is UpstreamException or OperationCanceledException or ObjectDisposedException)
        {
            // Best effort: the server is gone or going.
        }
    }

    private void FailCorrelation(long correlation, string error)
    {
        foreach (var (_, pending) in _pending)
        {
            if (pending.Correlation == correlation)
            {
                _engine.Metrics.RecordUpstreamError(_server.Name, "unavailable");
                Fail(pending, ErrorCodes.UpstreamUnavailable, SessionMessages.Failed(_server.Name, error));
                return;
            }
        }
    }

    private void FailGeneration(int generation, string message)
    {
        foreach (var (_, pending) in _pending)
        {
            if (pending.Generation == generation)
            {
                if (pending.Internal is null)
                {
                    _engine.Metrics.RecordUpstreamError(_server.Name, "unavailable");
                }
                Fail(pending, ErrorCodes.UpstreamUnavailable, message);
            }
        }
    }

    private void Fail(PendingRequest pending, int code, string message, AuditOutcome outcome = AuditOutcome.Unavailable)
    {
        if (!_pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(pending.Key, pending)))
        {
            return;
        }
        if (pending.Internal is { } internalRequest)
        {
            internalRequest.TrySetException(new UpstreamException(message));
            return;
        }
        var ticket = Settle(pending, outcome, code);
        pending.Sink.TryWrite(JsonRpcResponses.Error(pending.RawId, code, message,
            ReferenceEquals(message, SessionMessages.ShuttingDown) ? SessionMessages.ShuttingDownReason : null), true, ticket);
    }

    private async Task DisposeQuietlyAsync(IUpstreamConnection connection)
    {
        try
        {
            await connection.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Log.CloseFailed(ex, _server.Name);
        }
    }
}
