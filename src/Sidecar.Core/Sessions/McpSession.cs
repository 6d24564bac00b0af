using System.Buffers;
using System.Collections.Concurrent;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>How an agent reaches a session: it decides how it is found and how long it lives.</summary>
internal enum SessionTransport : byte
{
    /// <summary>Streamable HTTP (<c>Mcp-Session-Id</c>), closed by DELETE or when idle.</summary>
    StreamableHttp,

    /// <summary>Legacy HTTP+SSE (2024-11-05): lives as long as its one stream, which carries every answer.</summary>
    LegacySse,

    /// <summary>The agent's own stdin/stdout (<c>sidecar wrap</c>): one session for the process's life.</summary>
    Stdio,
}

/// <summary>
/// One agent's MCP session in front of one upstream server. It owns its own upstream session (a process for stdio,
/// an HTTP session otherwise), so server state, server-to-client requests and notifications reach the right agent.
/// It knows nothing of the agent's transport: a transport hands it one scanned message at a time
/// (<see cref="SessionEngine.ReceiveAsync"/> splits batches) with the <see cref="MessageSink"/> its answers go to.
/// Allowed messages are forwarded as the agent sent them (ids included: one upstream session per agent session needs
/// no id rewriting). This file is the agent side; <c>McpSession.Upstream.cs</c> the upstream side.
/// </summary>
internal sealed partial class McpSession : AgentSession
{
    private readonly SessionEngine _engine;
    private readonly ServerState _server;
    private readonly ConcurrentDictionary<RpcId, PendingRequest> _pending = new();
    private readonly CancellationTokenSource _lifetime = new();
    private byte[]? _initializeParams; // the agent's initialize params, once the upstream accepted them
    private byte[]? _initializing;     // the params of an initialize still waiting for its answer
    private string? _protocolVersion;
    private long _correlation;

    public McpSession(string id, SessionEngine engine, ServerState server, SessionTransport transport, Caller caller = default)
        : base(id, transport, caller)
    {
        _engine = engine;
        _server = server;
        server.Upstream.Retain();
    }

    /// <summary>The server's name; its policy comes from the snapshot each request runs under.</summary>
    public override string ServerName => _server.Name;

    /// <summary>The server as it was defined when the session opened (its upstream connector).</summary>
    public ServerState Server => _server;

    public bool IsInitialized => Volatile.Read(ref _initializeParams) is not null;

    /// <summary>The version the upstream's <c>initialize</c> result gave; null until then.</summary>
    public override string? ProtocolVersion => Volatile.Read(ref _protocolVersion);

    private SessionLog Log => _engine.Log;

    private AuditRecorder Audit => _engine.Audit;

    /// <summary>Requests forwarded and not yet answered.</summary>
    public override int Pending => _pending.Count;

    /// <summary>
    /// Set by an <see cref="AggregateSession"/> that owns this session: told when the upstream connection is lost
    /// (false) and when a new one is up and initialized again (true).
    /// </summary>
    internal Action<McpSession, bool>? UpstreamStateChanged { get; set; }

    /// <summary>True while a request of the agent with this id waits for its upstream answer.</summary>
    internal bool IsPending(in RpcId key) => _pending.ContainsKey(key);

    /// <summary>
    /// Handles one message from the agent (never a batch: <see cref="SessionEngine.ReceiveAsync"/> splits them) under
    /// <paramref name="snapshot"/>. Returns true when a response for it will be written to <paramref name="sink"/> (at
    /// once for a blocked call or an error, later for a forwarded request).
    /// </summary>
    internal override async ValueTask<bool> ProcessAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, MessageSink sink,
        CancellationToken cancellationToken)
    {
        Touch();
        switch (scan.Kind)
        {
            case JsonRpcMessageKind.Response or JsonRpcMessageKind.ErrorResponse:
                // The agent answering a server-to-client request (sampling, elicitation, roots): the id is the server's own.
                await ForwardAsync(snapshot, message, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Notification:
                await ForwardAsync(snapshot, message, cancellationToken).ConfigureAwait(false);
                return false;
            case JsonRpcMessageKind.Request:
                return await ProcessRequestAsync(snapshot, caller, message, scan, sink, cancellationToken).ConfigureAwait(false);
            default:
                return false;
        }
    }

    private async ValueTask<bool> ProcessRequestAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, MessageSink sink,
        CancellationToken cancellationToken)
    {
        var arrived = System.Diagnostics.Stopwatch.GetTimestamp();
        var rawId = message.Slice(scan.Id.Start, scan.Id.Length).ToArray();
        if (!RpcId.TryCreate(rawId, out var key))
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.UnsupportedId), true);
            return true;
        }
        if (_held.ContainsKey(key))
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.DuplicateId), true);
            return true;
        }
        if (scan.Status == ScanStatus.InvalidParams)
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidParams, SessionMessages.InvalidParams(scan.Error)), true);
            return true;
        }
        // The policy of the snapshot this request runs under; a server removed by a reload closes its sessions.
        if (snapshot.Find(_server.Name) is not { } current)
        {
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.UpstreamUnavailable, SessionMessages.ServerRemoved(_server.Name)), true);
            return true;
        }

        var decision = default(Decision);
        var hasDecision = false;
        string? tool = null;
        long auditId = 0;
        switch (scan.Method)
        {
            case McpMethod.ToolsCall:
                var callContext = new CallContext(caller.Identity, caller.Grant, Id);
                var verdict = _engine.Calls.Decide(current, caller, snapshot.Options, message, scan, callContext,
                    new ReadOnlySequence<byte>(rawId), out decision, out tool, out auditId, out var ticket);
                if (verdict == CallVerdict.Settle)
                {
                    // Shared limits (Redis): one round trip, then the verdict every local counter would have given.
                    var settled = await _engine.Calls.SettleAsync(current, caller, message, scan, callContext, rawId, tool!, decision).ConfigureAwait(false);
                    (verdict, decision, auditId, ticket) = settled;
                }
                if (verdict == CallVerdict.Hold)
                {
                    return Hold(snapshot, current, caller, message, scan, key, rawId, tool!, decision, sink);
                }
                if (verdict is CallVerdict.Blocked or CallVerdict.AuditBacklog)
                {
                    sink.TryWrite(ToolCalls.Answer(verdict, rawId, current.Name, tool!, decision, snapshot.Options.BlockedCalls, Audit.RetryAfterMs), true, ticket);
                    return true;
                }
                hasDecision = true;
                break;
            case McpMethod.Initialize when IsInitialized:
                sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.AlreadyInitialized), true);
                return true;
            case McpMethod.ServerDiscover:
                sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.MethodNotFound, SessionMessages.DiscoverInSession), true);
                return true;
        }

        return await SendRequestAsync(snapshot, current, caller, message, scan, key, rawId, sink, tool, hasDecision,
            hasDecision ? DecisionEngine.CopyCharges(decision) : null, auditId, arrived, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Sends a request the gateway lets through (a decided <c>tools/call</c> when <paramref name="hasDecision"/>) and
    /// registers it to wait for its answer. Returns true: a response will be written to <paramref name="sink"/>.
    /// </summary>
    private async ValueTask<bool> SendRequestAsync(GatewaySnapshot snapshot, ServerState current, Caller caller, ReadOnlySequence<byte> message,
        JsonRpcScan scan, RpcId key, byte[] rawId, MessageSink sink, string? tool, bool hasDecision, Charge[]? charges, long auditId,
        long arrived, CancellationToken cancellationToken)
    {
        var pending = new PendingRequest(key, rawId, sink, Interlocked.Increment(ref _correlation))
        {
            ToolListPolicy = scan.Method == McpMethod.ToolsList ? current.PolicyFor(caller) : null,
            ToolListPins = scan.Method == McpMethod.ToolsList ? current.Pins : null,
            IsInitialize = scan.Method == McpMethod.Initialize,
            Tool = tool,
            HasDecision = hasDecision,
            Charges = charges,
            AuditId = auditId,
            Arrived = arrived,
            Deadline = Deadline(snapshot.Options),
            TimeoutMs = (int)Math.Min(int.MaxValue, snapshot.Options.Limits.UpstreamTimeout.TotalMilliseconds),
        };
        if (!_pending.TryAdd(key, pending))
        {
            var ticket = Settle(pending, AuditOutcome.Error, ErrorCodes.InvalidRequest);
            sink.TryWrite(JsonRpcResponses.Error(rawId, ErrorCodes.InvalidRequest, SessionMessages.DuplicateId), true, ticket);
            return true;
        }

        if (scan.Method == McpMethod.Initialize)
        {
            // Kept for replay only once the upstream accepts it (Complete): a refused initialize leaves the session
            // uninitialized, so the agent may try again. Set before sending: the answer can come before SendAsync returns.
            Volatile.Write(ref _initializing, scan.Params.IsEmpty ? [] : message.Slice(scan.Params.Start, scan.Params.Length).ToArray());
        }
        try
        {
            var connection = await EnsureConnectedAsync(snapshot.Options, cancellationToken).ConfigureAwait(false);
            pending.Generation = Volatile.Read(ref _generation);
            await connection.SendAsync(message, pending.Correlation, cancellationToken).ConfigureAwait(false);
            pending.Sent = System.Diagnostics.Stopwatch.GetTimestamp();
        }
        catch (UpstreamException ex)
        {
            _engine.Metrics.RecordUpstreamError(_server.Name, "unavailable");
            Fail(pending, ErrorCodes.UpstreamUnavailable, SessionMessages.Unavailable(_server.Name, ex.Message));
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

    private async ValueTask ForwardAsync(GatewaySnapshot snapshot, ReadOnlySequence<byte> message, CancellationToken cancellationToken)
    {
        try
        {
            var connection = await EnsureConnectedAsync(snapshot.Options, cancellationToken).ConfigureAwait(false);
            await connection.SendAsync(message, 0, cancellationToken).ConfigureAwait(false);
        }
        catch (UpstreamException ex)
        {
            Log.ForwardFailed(_server.Name, ex.Message);
        }
    }

    private static long Deadline(GatewayOptions options) => Environment.TickCount64 + (long)options.Limits.UpstreamTimeout.TotalMilliseconds;

    /// <summary>The agent stopped waiting for these requests (it disconnected): forget them and tell the server.</summary>
    public override void Abandon(MessageSink sink)
    {
        foreach (var (_, pending) in _pending)
        {
            if (ReferenceEquals(pending.Sink.Origin, sink) && _pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(pending.Key, pending)))
            {
                // No refund: the server may have run the call already.
                Audit.RecordCompletion(pending.AuditId, AuditOutcome.Cancelled);
                _ = CancelUpstreamAsync(pending.RawId, SessionMessages.CancelledClientGone);
            }
        }
        AbortHeld(sink, SessionMessages.CancelledClientGone);
    }

    /// <summary>Fails requests whose upstream answer is overdue. Called by the engine's heartbeat.</summary>
    public override void ExpireOverdue(long now)
    {
        foreach (var (_, pending) in _pending)
        {
            if (pending.Deadline > now || !_pending.TryRemove(new KeyValuePair<RpcId, PendingRequest>(pending.Key, pending)))
            {
                continue;
            }
            Log.Overdue(_server.Name, pending.Key, Id);
            if (pending.Internal is { } internalRequest)
            {
                internalRequest.TrySetException(new UpstreamException("the upstream did not answer initialize in time"));
                continue;
            }
            // No refund: the server may still run the call.
            _engine.Metrics.RecordUpstreamError(_server.Name, "timeout");
            var ticket = Audit.RecordCompletion(pending.AuditId, AuditOutcome.Timeout, ErrorCodes.UpstreamTimeout);
            pending.Sink.TryWrite(JsonRpcResponses.Error(pending.RawId, ErrorCodes.UpstreamTimeout,
                SessionMessages.Timeout(_server.Name, pending.TimeoutMs / 1000.0)), true, ticket);
            _ = CancelUpstreamAsync(pending.RawId, SessionMessages.CancelledTimeout);
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
        return Audit.RecordCompletion(pending.AuditId, outcome, code);
    }

    private void Refund(PendingRequest pending)
    {
        if (pending.TakeCharges() is { } charges)
        {
            _engine.Decisions.Refund(charges);
        }
    }

    /// <summary>
    /// Ends the session: calls in flight are answered with -32016 and <paramref name="message"/> and recorded with
    /// <paramref name="outcome"/>; the upstream session (a stdio process) is closed. Once; later calls do nothing.
    /// </summary>
    public override async ValueTask CloseAsync(AuditOutcome outcome, string message)
    {
        if (!BeginClose())
        {
            return;
        }
        _engine.Forget(this);
        // Held calls first: each is answered and recorded before the lifetime's cancellation ends its wait.
        AbortHeld(null, message);
        await _lifetime.CancelAsync().ConfigureAwait(false);
        foreach (var (_, pending) in _pending)
        {
            Fail(pending, ErrorCodes.UpstreamUnavailable, message, outcome);
        }
        StreamSink?.Complete();
        if (Interlocked.Exchange(ref _connection, null) is { } connection)
        {
            await DisposeQuietlyAsync(connection).ConfigureAwait(false);
        }
        _lifetime.Dispose();
        _server.Upstream.Release();
    }
}
