using System.Buffers;
using System.Collections.Concurrent;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.JsonRpc;
using Sidecar.Upstreams;

namespace Sidecar.Gateway;

/// <summary>
/// One agent's MCP session in front of one upstream server. It owns its own upstream session (a process for stdio,
/// an HTTP session otherwise), so server state, server-to-client requests and notifications reach the right agent.
/// Every message is scanned; every <c>tools/call</c> is decided before anything leaves; allowed messages are
/// forwarded as the agent sent them (ids included: one upstream session per agent session needs no id rewriting).
/// </summary>
internal sealed class AgentSession : IAsyncDisposable
{
    /// <summary>Server messages kept while the agent has no stream open; past it the oldest are dropped.</summary>
    private const int BacklogCapacity = 256;

    private readonly ServerRuntime _server;
    private readonly ConcurrentDictionary<RpcId, PendingRequest> _pending = new();
    private readonly SemaphoreSlim _connectGate = new(1, 1);
    private readonly Channel<ReadOnlyMemory<byte>> _backlog = Channel.CreateBounded<ReadOnlyMemory<byte>>(
        new BoundedChannelOptions(BacklogCapacity) { FullMode = BoundedChannelFullMode.DropOldest });
    private readonly CancellationTokenSource _lifetime = new();
    private IUpstreamConnection? _connection;
    private int _generation;
    private byte[]? _initializeParams;
    private MessageSink? _stream;
    private long _correlation;
    private long _lastActivity = Environment.TickCount64;
    private long _retryNotBefore;
    private int _failures;
    private int _reinitializations;
    private int _disposed;

    public AgentSession(string id, ServerRuntime server, bool legacy)
    {
        Id = id;
        _server = server;
        Legacy = legacy;
    }

    public string Id { get; }

    /// <summary>A legacy HTTP+SSE (2024-11-05) session: everything goes to its one stream.</summary>
    public bool Legacy { get; }

    public ServerRuntime Server => _server;

    /// <summary>The agent's open stream, if any (always set for a legacy SSE session while it is connected).</summary>
    public MessageSink? StreamSink => Volatile.Read(ref _stream);

    public bool IsInitialized => Volatile.Read(ref _initializeParams) is not null;

    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    private ILogger Log => _server.Logger;

    /// <summary>True when nothing is happening and the agent has not been seen for <paramref name="timeout"/>.</summary>
    public bool IsIdle(TimeSpan timeout)
        => _pending.IsEmpty && Volatile.Read(ref _stream) is null
           && Environment.TickCount64 - Interlocked.Read(ref _lastActivity) > (long)timeout.TotalMilliseconds;

    /// <summary>
    /// Handles one message from the agent (never a batch: batches are split by the caller). Returns true when a
    /// response for it will be written to <paramref name="sink"/> (at once for a blocked call or an error, later for
    /// a forwarded request).
    /// </summary>
    public async ValueTask<bool> ProcessAsync(ReadOnlySequence<byte> message, JsonRpcScan scan, MessageSink sink, CancellationToken cancellationToken)
    {
        Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);
        switch (scan.Kind)
        {
            case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                // The agent answering a server-to-client request (sampling, elicitation, roots): the id is the server's own.
                await ForwardAsync(message, 0, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Notification:
                if (scan.Method == McpMethod.ToolsCall)
                {
                    // A call without an id can't be answered and must never run: refused by the caller, never forwarded.
                    Log.LogWarning("Refused tools/call sent as a notification in session {Session} of {Server}", Id, _server.Name);
                    return false;
                }
                await ForwardAsync(message, 0, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Request:
                return await ProcessRequestAsync(message, scan, sink, cancellationToken).ConfigureAwait(false);
            default:
                return false;
        }
    }

    private async ValueTask<bool> ProcessRequestAsync(ReadOnlySequence<byte> message, JsonRpcScan scan, MessageSink sink, CancellationToken cancellationToken)
    {
        var rawId = message.Slice(scan.Id.Start, scan.Id.Length).ToArray();
        if (!RpcId.TryCreate(rawId, out var key))
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, "Invalid Request: unsupported id"), true);
            return true;
        }
        if (scan.Status == ScanStatus.InvalidParams)
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, "Invalid params: " + scan.Error), true);
            return true;
        }

        var decision = default(Decision);
        var hasDecision = false;
        string? tool = null;
        long auditId = 0;
        switch (scan.Method)
        {
            case McpMethod.ToolsCall:
                switch (ToolCallPolicy.Decide(_server, message, scan, new CallContext(null, null, Id), new ReadOnlySequence<byte>(rawId), out decision, out tool, out auditId, out var ticket))
                {
                    case ToolCallVerdict.Blocked:
                        sink.TryWrite(JsonRpcResponses.Blocked(rawId, _server.Name, tool!, decision, _server.Options.BlockedCalls == Configuration.BlockedCallStyle.ToolResult), true, ticket);
                        return true;
                    case ToolCallVerdict.AuditBacklog:
                        sink.TryWrite(JsonRpcResponses.AuditBacklog(rawId, _server.Name, tool!, _server.Audit.RetryAfterMs), true);
                        return true;
                }
                hasDecision = true;
                break;
            case McpMethod.Initialize when IsInitialized:
                sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, "Invalid Request: this session is already initialized"), true);
                return true;
            case McpMethod.ServerDiscover:
                sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.MethodNotFound, "Method not found: server/discover (this session uses initialize)"), true);
                return true;
        }

        var pending = new PendingRequest(key, rawId, sink, Interlocked.Increment(ref _correlation))
        {
            FilterToolList = scan.Method == McpMethod.ToolsList,
            Tool = tool,
            HasDecision = hasDecision,
            Charges = hasDecision ? DecisionEngine.CopyCharges(decision) : null,
            AuditId = auditId,
            Deadline = Deadline(),
        };
        if (!_pending.TryAdd(key, pending))
        {
            var ticket = Settle(pending, AuditOutcome.Error, ErrorCodes.InvalidRequest);
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, "Invalid Request: a request with this id is already in flight"), true, ticket);
            return true;
        }

        try
        {
            var connection = await EnsureConnectedAsync(cancellationToken).ConfigureAwait(false);
            pending.Generation = Volatile.Read(ref _generation);
            await connection.SendAsync(message, pending.Correlation, cancellationToken).ConfigureAwait(false);
            if (scan.Method == McpMethod.Initialize)
            {
                Volatile.Write(ref _initializeParams, scan.Params.IsEmpty ? [] : message.Slice(scan.Params.Start, scan.Params.Length).ToArray());
            }
        }
        catch (UpstreamException ex)
        {
            Fail(pending, ErrorCodes.UpstreamUnavailable, $"Upstream server \"{_server.Name}\" is unavailable: {ex.Message}");
        }
        catch (OperationCanceledException)
        {
            if (_pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(key, pending)))
            {
                Settle(pending, AuditOutcome.Cancelled, 0);
            }
            throw;
        }
        return true;
    }

    private async ValueTask ForwardAsync(ReadOnlySequence<byte> message, long correlation, CancellationToken cancellationToken)
    {
        try
        {
            var connection = await EnsureConnectedAsync(cancellationToken).ConfigureAwait(false);
            await connection.SendAsync(message, correlation, cancellationToken).ConfigureAwait(false);
        }
        catch (UpstreamException ex)
        {
            Log.LogWarning("Could not forward a message to {Server}: {Error}", _server.Name, ex.Message);
        }
    }

    private long Deadline() => Environment.TickCount64 + (long)_server.Options.Limits.UpstreamTimeout.TotalMilliseconds;

    /// <summary>Returns the live upstream connection, connecting (and re-initializing after a crash) when needed.</summary>
    private async ValueTask<IUpstreamConnection> EnsureConnectedAsync(CancellationToken cancellationToken)
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
            timeout.CancelAfter(_server.Options.Limits.ConnectTimeout);
            try
            {
                connection = await _server.Connector.ConnectAsync(timeout.Token).ConfigureAwait(false);
                var generation = Interlocked.Increment(ref _generation);
                Volatile.Write(ref _connection, connection);
                _ = PumpAsync(connection, generation);
                if (Volatile.Read(ref _initializeParams) is { } initializeParams)
                {
                    await ReinitializeAsync(connection, initializeParams, timeout.Token).ConfigureAwait(false);
                }
                _failures = 0;
                return connection;
            }
            catch (Exception ex) when (ex is UpstreamException or OperationCanceledException && !cancellationToken.IsCancellationRequested)
            {
                var backoff = Math.Min(30_000, 250L << Math.Min(_failures++, 7));
                Interlocked.Exchange(ref _retryNotBefore, Environment.TickCount64 + backoff);
                Log.LogWarning("Upstream {Server} ({Transport}) unavailable for session {Session}: {Error}; retry allowed in {Backoff} ms",
                    _server.Name, _server.Config.TransportName, Id, ex.Message, backoff);
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
    /// A respawned or reconnected upstream starts a fresh session: replay the agent's own <c>initialize</c> (same
    /// capabilities and client info) and <c>notifications/initialized</c> before anything else goes through.
    /// </summary>
    private async Task ReinitializeAsync(IUpstreamConnection connection, byte[] initializeParams, CancellationToken cancellationToken)
    {
        var id = $"sidecar-reinitialize-{Interlocked.Increment(ref _reinitializations)}";
        var done = new TaskCompletionSource<ReadOnlyMemory<byte>>(TaskCreationOptions.RunContinuationsAsynchronously);
        var pending = new PendingRequest(new RpcId(id, 0), System.Text.Encoding.UTF8.GetBytes($"\"{id}\""), new MessageSink(acceptsRelatedMessages: false), 0)
        {
            Internal = done,
            Deadline = Deadline(),
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
        Log.LogInformation("Re-initialized upstream {Server} for session {Session}", _server.Name, Id);
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
            Log.LogError(ex, "Upstream pump for {Server} session {Session} failed", _server.Name, Id);
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
            Log.LogWarning("Upstream {Server} ({Transport}) for session {Session} ended: {Reason}", _server.Name, _server.Config.TransportName, Id, reason);
        }
        FailGeneration(generation, $"Upstream server \"{_server.Name}\" went away: {reason}");
    }

    private void OnUpstreamMessage(ReadOnlyMemory<byte> payload, long correlation)
    {
        if (JsonRpcScanner.Scan(payload.Span, out var scan, _server.Options.Scanner) != ScanStatus.Ok)
        {
            Log.LogWarning("Dropped an invalid message from upstream {Server}: {Error}", _server.Name, scan.Error);
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
                    Log.LogDebug("Dropped a response from {Server} for no pending request", _server.Name);
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
        long ticket = 0;
        if (pending.HasDecision)
        {
            var outcome = AuditResponses.Classify(payload.Span, scan.Kind, out var errorCode);
            if (scan.Kind == JsonRpcMessageKind.ErrorResponse)
            {
                Refund(pending);
            }
            ticket = _server.Audit.RecordCompletion(pending.AuditId, outcome, errorCode);
        }

        var span = payload.Span;
        var response = payload;
        if (pending.FilterToolList && scan.Kind == JsonRpcMessageKind.Response)
        {
            try
            {
                if (ToolListFilter.Filter(payload, _server.Policy, pending.RawId, out var removed) is { } filtered)
                {
                    response = filtered;
                    if (removed > 0)
                    {
                        Log.LogDebug("Removed {Count} tools from tools/list of {Server}", removed, _server.Name);
                    }
                }
            }
            catch (JsonException ex)
            {
                Log.LogWarning("Refused a tools/list response from {Server} that could not be filtered: {Error}", _server.Name, ex.Message);
                response = JsonRpcResponses.Error(pending.RawId, ErrorCodes.InternalError, "Internal error: the upstream tools/list response could not be checked");
            }
        }
        else if (!span.Slice(scan.Id.Start, scan.Id.Length).SequenceEqual(pending.RawId))
        {
            response = JsonRpcResponses.ReplaceId(span, scan.Id.Start, scan.Id.Length, pending.RawId);
        }
        pending.Sink.TryWrite(response, true, ticket);
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
        foreach (var (_, pending) in _pending)
        {
            if (!pending.Sink.AcceptsRelatedMessages || pending.Internal is not null)
            {
                continue;
            }
            if (correlation != 0 && pending.Correlation == correlation)
            {
                target = pending.Sink;
                pending.Deadline = Deadline(); // the request is alive: progress resets its clock
                break;
            }
            candidates++;
            only = pending.Sink;
            onlyPending = pending;
        }
        var stream = Volatile.Read(ref _stream);
        if (target is null && correlation == 0 && candidates == 1 && (callScoped || stream is null))
        {
            target = only;
            onlyPending!.Deadline = Deadline();
        }
        target ??= stream;
        if (target is null || !target.TryWrite(payload, false))
        {
            _backlog.Writer.TryWrite(payload);
        }
    }

    /// <summary>Attaches the agent's stream (Streamable HTTP GET, or the legacy SSE stream). False if one is already open.</summary>
    public bool AttachStream(MessageSink sink)
    {
        if (Interlocked.CompareExchange(ref _stream, sink, null) is not null)
        {
            return false;
        }
        while (_backlog.Reader.TryRead(out var message))
        {
            sink.TryWrite(message, false);
        }
        return true;
    }

    public void DetachStream(MessageSink sink)
    {
        Interlocked.CompareExchange(ref _stream, null, sink);
        Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);
    }

    /// <summary>Fails requests whose upstream answer is overdue. Called by the gateway's heartbeat.</summary>
    public void ExpireOverdue(long now)
    {
        foreach (var (_, pending) in _pending)
        {
            if (pending.Deadline <= now)
            {
                if (_pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(pending.Key, pending)))
                {
                    Log.LogWarning("Upstream {Server} did not answer request {Id} in session {Session} in time", _server.Name, pending.Key, Id);
                    pending.Internal?.TrySetException(new UpstreamException("the upstream did not answer initialize in time"));
                    if (pending.Internal is null)
                    {
                        var ticket = _server.Audit.RecordCompletion(pending.AuditId, AuditOutcome.Timeout, ErrorCodes.UpstreamTimeout);
                        pending.Sink.TryWrite(JsonRpcResponses.Error(pending.RawId, ErrorCodes.UpstreamTimeout,
                            $"Upstream server \"{_server.Name}\" did not answer within {_server.Options.Limits.UpstreamTimeout.TotalSeconds:0.###} s"), true, ticket);
                        _ = CancelUpstreamAsync(pending.RawId, "timed out at the gateway");
                    }
                }
            }
        }
    }

    /// <summary>The agent stopped waiting for these requests (it disconnected): forget them and tell the server.</summary>
    public void Abandon(MessageSink sink)
    {
        foreach (var (_, pending) in _pending)
        {
            if (ReferenceEquals(pending.Sink, sink) && _pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(pending.Key, pending)))
            {
                _server.Audit.RecordCompletion(pending.AuditId, AuditOutcome.Cancelled);
                _ = CancelUpstreamAsync(pending.RawId, "the client disconnected");
            }
        }
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
                Fail(pending, ErrorCodes.UpstreamUnavailable, $"Upstream server \"{_server.Name}\" failed: {error}");
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
        pending.Sink.TryWrite(JsonRpcResponses.Error(pending.RawId, code, message), true, ticket);
    }

    private void Refund(PendingRequest pending)
    {
        if (pending.TakeCharges() is { } charges)
        {
            _server.Engine.Refund(charges);
        }
    }

    /// <summary>
    /// A forwarded call that will get no upstream answer: its tokens go back and the audit trail learns how it ended.
    /// Returns the audit ticket the gateway's answer for it waits for.
    /// </summary>
    private long Settle(PendingRequest pending, AuditOutcome outcome, int code)
    {
        if (!pending.HasDecision)
        {
            return 0;
        }
        Refund(pending);
        return _server.Audit.RecordCompletion(pending.AuditId, outcome, code);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _server.Sessions.TryRemove(new KeyValuePair<string, AgentSession>(Id, this));
        await _lifetime.CancelAsync().ConfigureAwait(false);
        foreach (var (_, pending) in _pending)
        {
            Fail(pending, ErrorCodes.UpstreamUnavailable, "The session was closed", AuditOutcome.Cancelled);
        }
        Volatile.Read(ref _stream)?.Complete();
        if (Interlocked.Exchange(ref _connection, null) is { } connection)
        {
            await DisposeQuietlyAsync(connection).ConfigureAwait(false);
        }
        _lifetime.Dispose();
    }

    private async Task DisposeQuietlyAsync(IUpstreamConnection connection)
    {
        try
        {
            await connection.DisposeAsync().ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            Log.LogDebug(ex, "Closing the upstream connection of {Server} failed", _server.Name);
        }
    }
}
