using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Sidecar.Approvals;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Metrics;
using Sidecar.Protocol;
using Sidecar.RateLimiting;

namespace Sidecar.Sessions;

/// <summary>Why the engine refused a message before any session saw it; a transport maps it to its own status.</summary>
internal enum RefusalKind : byte
{
    /// <summary>Malformed, invalid, or not allowed here (HTTP 400).</summary>
    Invalid,

    /// <summary>Over <c>limits.maxMessageBytes</c> (HTTP 413).</summary>
    TooLarge,
}

/// <summary>A message refused as a whole: the JSON-RPC error to answer with, and the request's id when it had one.</summary>
internal readonly record struct Refusal(RefusalKind Kind, int Code, string Message, byte[]? RawId = null);

/// <summary>The result of opening a session.</summary>
internal enum SessionOpen : byte { Opened, GatewayFull, ServerFull, IdentityFull }

/// <summary>
/// The transport-neutral session engine: the live <see cref="GatewaySnapshot"/>, the agent sessions, and every rule
/// about which messages a session takes (scan refusals, batches, notifications). Agent transports (Streamable HTTP,
/// legacy SSE, stateless HTTP in the daemon; stdio in <c>sidecar wrap</c>) are thin adapters: they find or open a
/// session, hand it the body through <see cref="ReceiveAsync"/>, and write what arrives in the sink.
/// </summary>
internal sealed partial class SessionEngine : IAsyncDisposable
{
    private static readonly TimeSpan HeartbeatPeriod = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan SweepPeriod = TimeSpan.FromSeconds(10);

    private readonly ConcurrentDictionary<string, AgentSession> _sessions = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, StrongBox<int>> _perServer = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, StrongBox<int>> _perIdentity = new(StringComparer.Ordinal);
    private long _authFailures;
    private readonly Timer _heartbeat;
    private volatile GatewaySnapshot _snapshot;
    private int _sessionCount;
    private bool _stopping;
    private long _sessionsRefused;
    private long _lastSweep = Environment.TickCount64;
    private long _shedReported;
    private long _lastHeartbeat = Environment.TickCount64;

    public SessionEngine(GatewaySnapshot snapshot, AuditRecorder audit, RateLimitStore store, ILoggerFactory loggers, RedisLimitStore? shared = null)
    {
        _snapshot = snapshot;
        Audit = audit;
        Store = store;
        Decisions = new DecisionEngine(store, shared);
        Log = new SessionLog(loggers.CreateLogger("Sidecar.Sessions"));
        Metrics = new GatewayMetrics();
        Calls = new ToolCalls(Decisions, audit, Log, Metrics);
        InFlight = new InFlightGate(snapshot.Options.Limits.MaxInFlight);
        var audit0 = snapshot.Config.Audit;
        Approvals = new ApprovalBook(snapshot.Config.Approvals, audit, new AuditRedactor(audit0.RedactKeys, audit0.MaxStringLength),
            loggers.CreateLogger("Sidecar.Approvals"));
        foreach (var server in snapshot.Servers.Values)
        {
            Log.ServerReady(server.Name, server.Config.TransportName, server.Config.PolicyPath ?? "(none: everything denied)");
        }
        _heartbeat = new Timer(static state => ((SessionEngine)state!).Heartbeat(), this, HeartbeatPeriod, HeartbeatPeriod);
    }

    /// <summary>The live snapshot. A request reads it once and keeps it; <see cref="Apply"/> replaces it whole.</summary>
    public GatewaySnapshot Current => _snapshot;

    public AuditRecorder Audit { get; }
    public RateLimitStore Store { get; }
    public DecisionEngine Decisions { get; }
    public ToolCalls Calls { get; }

    /// <summary>The measurements <c>/metrics</c> shows (this gateway's own meter).</summary>
    public GatewayMetrics Metrics { get; }

    /// <summary>Pending approvals (in memory) of calls whose rule is <c>require_approval</c>.</summary>
    public ApprovalBook Approvals { get; }
    internal SessionLog Log { get; }

    /// <summary>The cap on agent requests in flight (<c>limits.maxInFlight</c>).</summary>
    public InFlightGate InFlight { get; }

    public int SessionCount => Volatile.Read(ref _sessionCount);

    /// <summary>When the heartbeat (every 250 ms: timeouts, idle sessions, approvals) last ran to its end (<see cref="Environment.TickCount64"/>).</summary>
    public long LastHeartbeat => Volatile.Read(ref _lastHeartbeat);

    /// <summary>New sessions refused since start for <c>limits.maxSessions</c> or <c>limits.maxSessionsPerServer</c>.</summary>
    public long SessionsRefused => Interlocked.Read(ref _sessionsRefused);

    public int SessionCountOf(string server) => _perServer.TryGetValue(server, out var count) ? Volatile.Read(ref count.Value) : 0;

    // ---- Sessions --------------------------------------------------------------------------------------------------

    /// <summary>
    /// Opens a session on <paramref name="server"/> unless the gateway holds <c>limits.maxSessions</c> or the server its
    /// <c>limits.maxSessionsPerServer</c> (the caller answers 503 with <c>Retry-After</c>; existing sessions are untouched).
    /// </summary>
    public SessionOpen TryOpen(GatewaySnapshot snapshot, ServerState server, SessionTransport transport, out McpSession? session, Caller caller = default)
    {
        var opened = TryOpen(snapshot, new SessionTarget(server), transport, out var agentSession, caller);
        session = agentSession as McpSession;
        return opened;
    }

    /// <summary>
    /// Opens a session on <paramref name="target"/>: one server, or the aggregated endpoint (whose sessions on each
    /// server count against that server's <c>limits.maxSessionsPerServer</c> as they open, see <see cref="TryReserveServer"/>).
    /// </summary>
    public SessionOpen TryOpen(GatewaySnapshot snapshot, SessionTarget target, SessionTransport transport, out AgentSession? session, Caller caller = default)
    {
        session = null;
        if (Volatile.Read(ref _stopping))
        {
            return SessionOpen.GatewayFull;
        }
        var max = snapshot.Options.Limits.MaxSessions;
        if (Interlocked.Increment(ref _sessionCount) > max)
        {
            Interlocked.Decrement(ref _sessionCount);
            Interlocked.Increment(ref _sessionsRefused);
            Log.SessionsFull(target.Name, SessionCount, $"limits.maxSessions is {max}");
            return SessionOpen.GatewayFull;
        }
        if (target.Server is { } server && !TryReserveServer(server))
        {
            Interlocked.Decrement(ref _sessionCount);
            return SessionOpen.ServerFull;
        }
        if (caller.Identity is { } identity)
        {
            var perIdentity = _perIdentity.GetOrAdd(identity, static _ => new StrongBox<int>());
            var maxPerIdentity = snapshot.Options.Limits.MaxSessionsPerIdentity;
            if (Interlocked.Increment(ref perIdentity.Value) > maxPerIdentity)
            {
                Interlocked.Decrement(ref perIdentity.Value);
                if (target.Server is { } reserved)
                {
                    ReleaseServer(reserved.Name);
                }
                Interlocked.Decrement(ref _sessionCount);
                Interlocked.Increment(ref _sessionsRefused);
                Log.SessionsFull(target.Name, Volatile.Read(ref perIdentity.Value), $"limits.maxSessionsPerIdentity is {maxPerIdentity} for identity {identity}");
                return SessionOpen.IdentityFull;
            }
        }
        session = target.Server is { } one
            ? new McpSession(NewSessionId(), this, one, transport, caller)
            : new AggregateSession(NewSessionId(), this, transport, caller);
        _sessions[session.Id] = session;
        return SessionOpen.Opened;
    }

    /// <summary>
    /// Takes a place in <paramref name="server"/>'s <c>limits.maxSessionsPerServer</c>; false (counted and logged) when
    /// it is full. <see cref="ReleaseServer"/> gives it back.
    /// </summary>
    internal bool TryReserveServer(ServerState server)
    {
        var perServer = _perServer.GetOrAdd(server.Name, static _ => new StrongBox<int>());
        if (Interlocked.Increment(ref perServer.Value) > server.MaxSessions)
        {
            Interlocked.Decrement(ref perServer.Value);
            Interlocked.Increment(ref _sessionsRefused);
            Log.SessionsFull(server.Name, SessionCountOf(server.Name), $"limits.maxSessionsPerServer is {server.MaxSessions} for this server");
            return false;
        }
        return true;
    }

    internal void ReleaseServer(string server)
    {
        if (_perServer.TryGetValue(server, out var count))
        {
            Interlocked.Decrement(ref count.Value);
        }
    }

    /// <summary>
    /// The open session <paramref name="id"/> of <paramref name="server"/> reached over <paramref name="transport"/> by
    /// the identity that opened it; null otherwise: another identity (or none) on a session's id finds nothing.
    /// </summary>
    public AgentSession? Find(string server, string id, SessionTransport transport, string? identity = null)
        => _sessions.TryGetValue(id, out var session) && session.ServerName == server && session.Transport == transport && !session.IsDisposed
           && string.Equals(session.Caller.Identity, identity, StringComparison.Ordinal)
            ? session
            : null;

    /// <summary>Agent requests refused for their credentials since start.</summary>
    public long AuthFailures => Interlocked.Read(ref _authFailures);

    /// <summary>
    /// Counts, logs and audits (<c>auth_failure</c>) a request refused for its credentials. Only the reason, the
    /// server and the peer's address are kept: never any of the token.
    /// </summary>
    public void RecordAuthFailure(string? server, string reason, string? remote)
    {
        Interlocked.Increment(ref _authFailures);
        Log.AuthFailure(server ?? "", reason, remote ?? "");
        Audit.Notify(new AuditNotice("auth_failure", json =>
        {
            json.WriteString("reason"u8, reason);
            json.WriteString("server"u8, server);
            json.WriteString("remote"u8, remote);
        }));
    }

    /// <summary>Called once by a session as it closes.</summary>
    internal void Forget(AgentSession session)
    {
        if (_sessions.TryRemove(new KeyValuePair<string, AgentSession>(session.Id, session)))
        {
            Interlocked.Decrement(ref _sessionCount);
            if (session is McpSession)
            {
                ReleaseServer(session.ServerName);
            }
            if (session.Caller.Identity is { } identity && _perIdentity.TryGetValue(identity, out var perIdentity))
            {
                Interlocked.Decrement(ref perIdentity.Value);
            }
        }
    }

    /// <summary>128 random bits, hex: unguessable, and safe in headers and URLs.</summary>
    private static string NewSessionId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    // ---- Messages --------------------------------------------------------------------------------------------------

    /// <summary>
    /// Scans a body and refuses what must go no further: anything the scanner rejects (a request with invalid params
    /// is let through, to be answered in its session with its id) and a <c>tools/call</c> sent as a notification (a
    /// call without an id can't be answered and must never run).
    /// </summary>
    public static Refusal? Check(ReadOnlySequence<byte> body, GatewayOptions options, out JsonRpcScan scan)
    {
        var status = JsonRpcScanner.Scan(body, out scan, options.Scanner);
        if (status is ScanStatus.InvalidRequest or ScanStatus.InvalidParams && scan.BatchLength > 0)
        {
            // A well-formed batch with bad elements: each element is answered on its own (ReceiveAsync rescans them).
            scan.Kind = JsonRpcMessageKind.Batch;
            return null;
        }
        if (status != ScanStatus.Ok && !(status == ScanStatus.InvalidParams && scan.Kind == JsonRpcMessageKind.Request))
        {
            return new Refusal(status == ScanStatus.TooLarge ? RefusalKind.TooLarge : RefusalKind.Invalid, ScanErrorCode(status), ScanErrorMessage(scan));
        }
        if (IsCallNotification(scan))
        {
            return new Refusal(RefusalKind.Invalid, ErrorCodes.InvalidRequest, SessionMessages.CallAsNotification);
        }
        return null;
    }

    private static bool IsCallNotification(in JsonRpcScan scan) => scan.Kind == JsonRpcMessageKind.Notification && scan.Method == McpMethod.ToolsCall;

    /// <summary>
    /// Hands one checked body (<see cref="Check"/>) to <paramref name="session"/> under <paramref name="snapshot"/>:
    /// a single message, or a batch element by element (only in a session that negotiated 2025-03-26; later versions
    /// removed batches and get a refusal). Returns how many responses will be written to <paramref name="sink"/>.
    /// </summary>
    public ValueTask<(int Expected, Refusal? Refused)> ReceiveAsync(GatewaySnapshot snapshot, AgentSession session, ReadOnlySequence<byte> body,
        JsonRpcScan scan, MessageSink sink, CancellationToken cancellationToken)
        => ReceiveAsync(snapshot, session, session.Caller, body, scan, sink, cancellationToken);

    /// <summary>
    /// As above, for a request of <paramref name="caller"/> (the session's identity, with the grant the current
    /// snapshot gives it).
    /// </summary>
    public async ValueTask<(int Expected, Refusal? Refused)> ReceiveAsync(GatewaySnapshot snapshot, AgentSession session, Caller caller,
        ReadOnlySequence<byte> body, JsonRpcScan scan, MessageSink sink, CancellationToken cancellationToken)
    {
        if (scan.Kind != JsonRpcMessageKind.Batch)
        {
            return (await session.ProcessAsync(snapshot, caller, body, scan, sink, cancellationToken).ConfigureAwait(false) ? 1 : 0, null);
        }
        if (!McpProtocol.AllowsBatches(session.ProtocolVersion))
        {
            return (0, new Refusal(RefusalKind.Invalid, ErrorCodes.InvalidRequest, SessionMessages.BatchNotAllowed(session.ProtocolVersion)));
        }
        var expected = 0;
        foreach (var range in BatchRanges(body))
        {
            var element = body.Slice(range.Start, range.Length);
            expected += await ReceiveElementAsync(snapshot, session, caller, element, sink, cancellationToken).ConfigureAwait(false) ? 1 : 0;
        }
        return (expected, null);
    }

    /// <summary>The element ranges of a scanned batch (collected first: the enumerator can't live across awaits).</summary>
    private static List<TokenRange> BatchRanges(ReadOnlySequence<byte> body)
    {
        var ranges = new List<TokenRange>();
        foreach (var range in JsonRpcScanner.EnumerateBatch(body))
        {
            ranges.Add(range);
        }
        return ranges;
    }

    private async ValueTask<bool> ReceiveElementAsync(GatewaySnapshot snapshot, AgentSession session, Caller caller, ReadOnlySequence<byte> element,
        MessageSink sink, CancellationToken cancellationToken)
    {
        var status = JsonRpcScanner.Scan(element, out var scan, snapshot.Options.Scanner);
        if (status != ScanStatus.Ok && !(status == ScanStatus.InvalidParams && scan.Kind == JsonRpcMessageKind.Request))
        {
            var rawId = scan.IdKind is JsonRpcIdKind.String or JsonRpcIdKind.Number ? element.Slice(scan.Id.Start, scan.Id.Length).ToArray() : null;
            sink.TryWrite(JsonRpcResponses.Error(rawId, ScanErrorCode(status), ScanErrorMessage(scan)), true);
            return true;
        }
        if (scan.Kind == JsonRpcMessageKind.Request && scan.Method == McpMethod.Initialize)
        {
            sink.TryWrite(JsonRpcResponses.Error(element.Slice(scan.Id.Start, scan.Id.Length).ToArray(), ErrorCodes.InvalidRequest, SessionMessages.InitializeInBatch), true);
            return true;
        }
        if (IsCallNotification(scan))
        {
            Log.CallAsNotification(session.ServerName);
            return false;
        }
        return await session.ProcessAsync(snapshot, caller, element, scan, sink, cancellationToken).ConfigureAwait(false);
    }

    private static int ScanErrorCode(ScanStatus status) => status switch
    {
        ScanStatus.ParseError or ScanStatus.InvalidUtf8 => ErrorCodes.ParseError,
        ScanStatus.InvalidParams => ErrorCodes.InvalidParams,
        _ => ErrorCodes.InvalidRequest,
    };

    private static string ScanErrorMessage(in JsonRpcScan scan) => scan.Status switch
    {
        ScanStatus.ParseError or ScanStatus.InvalidUtf8 => "Parse error: " + scan.Error,
        ScanStatus.InvalidParams => "Invalid params: " + scan.Error,
        _ => "Invalid Request: " + scan.Error,
    };

    // ---- Heartbeat ------------------------------------------------------------------------------------------------

    private void Heartbeat()
    {
        try
        {
            var now = Environment.TickCount64;
            var sweep = now - _lastSweep >= (long)SweepPeriod.TotalMilliseconds;
            var idleTimeout = _snapshot.Options.Limits.SessionIdleTimeout;
            foreach (var (_, session) in _sessions)
            {
                session.ExpireOverdue(now);
                if (sweep && session.Transport == SessionTransport.StreamableHttp && session.IsIdle(idleTimeout))
                {
                    Log.IdleSession(session.Id, session.ServerName);
                    _ = session.DisposeAsync().AsTask();
                }
            }
            Approvals.Sweep();
            if (sweep)
            {
                _lastSweep = now;
                Store.Sweep();
            }
            var shed = InFlight.Shed;
            if (shed != _shedReported)
            {
                Log.Shed(shed - _shedReported, shed, InFlight.Count, InFlight.Capacity);
                _shedReported = shed;
            }
            Volatile.Write(ref _lastHeartbeat, now);
        }
        catch (Exception ex)
        {
            Log.HeartbeatFailed(ex);
        }
    }

    // ---- Snapshots -------------------------------------------------------------------------------------------------

    /// <summary>
    /// Publishes <paramref name="next"/> (built and validated whole by <see cref="SnapshotBuilder"/>) with one swap.
    /// Requests already running keep the snapshot they read; sessions of servers <paramref name="next"/> no longer has
    /// are closed; connectors <paramref name="next"/> does not reuse are retired (closed once their sessions are).
    /// </summary>
    public void Apply(GatewaySnapshot next)
    {
        var previous = Interlocked.Exchange(ref _snapshot, next);
        InFlight.Capacity = next.Options.Limits.MaxInFlight;
        Approvals.Configure(next.Config.Approvals);
        foreach (var (name, server) in previous.Servers)
        {
            var kept = next.Find(name);
            if (kept is null || !ReferenceEquals(kept.Upstream, server.Upstream))
            {
                server.Upstream.Retire();
            }
            if (kept is null)
            {
                var closing = 0;
                foreach (var (_, session) in _sessions)
                {
                    if (session.ServerName == name)
                    {
                        closing++;
                        _ = session.DisposeAsync().AsTask();
                    }
                    else if (session is AggregateSession aggregate)
                    {
                        closing += aggregate.ServerRemoved(name);
                    }
                }
                Log.ServerRemoved(name, closing);
            }
        }
        foreach (var (name, server) in next.Servers)
        {
            // A pin watch carried over forgets the tools no policy pins any more (only once the snapshot is live: a
            // snapshot built and not applied shares the watch too).
            server.Pins.Watch.Retain(server.Pins.Watched);
            if (!previous.Servers.ContainsKey(name))
            {
                Log.ServerReady(name, server.Config.TransportName, server.Config.PolicyPath ?? "(none: everything denied)");
            }
        }
        foreach (var (_, session) in _sessions)
        {
            if (session is AggregateSession aggregate)
            {
                aggregate.SnapshotApplied(previous, next);
            }
        }
    }

    /// <summary>True once the gateway drains: new sessions and new requests are refused.</summary>
    public bool Draining => Volatile.Read(ref _stopping);

    /// <summary>
    /// The gateway begins to stop (SIGTERM): new sessions and requests are refused from now on, calls waiting for a
    /// person are answered (-32016, shutting down), and streams that carry no call are ended. Calls in flight go on:
    /// <see cref="DrainAsync"/> waits for them.
    /// </summary>
    public void BeginDrain()
    {
        Volatile.Write(ref _stopping, true);
        foreach (var (_, session) in _sessions)
        {
            session.AbortHeldForShutdown();
            if (session.Transport == SessionTransport.StreamableHttp)
            {
                session.StreamSink?.Complete(); // a standalone GET stream carries no call's answer
            }
        }
    }

    /// <summary>
    /// Lets the calls in flight finish for up to <paramref name="grace"/> (<c>limits.shutdownGrace</c>), closing each
    /// session once it has nothing in flight; then closes what is left (<see cref="BeginShutdown"/>: -32016, shutting
    /// down). <paramref name="stopNow"/> (a second SIGTERM) cuts the grace short.
    /// </summary>
    public async Task DrainAsync(TimeSpan grace, CancellationToken stopNow)
    {
        BeginDrain();
        var deadline = Environment.TickCount64 + (long)grace.TotalMilliseconds;
        var started = Environment.TickCount64;
        while (!stopNow.IsCancellationRequested)
        {
            var busy = InFlight.Count > 0;
            foreach (var (_, session) in _sessions)
            {
                if (session.Pending == 0 && session.HeldCount == 0)
                {
                    _ = session.CloseAsync(AuditOutcome.Unknown, SessionMessages.ShuttingDown).AsTask();
                }
                else
                {
                    busy = true;
                }
            }
            if (!busy || Environment.TickCount64 >= deadline)
            {
                break;
            }
            try
            {
                await Task.Delay(20, stopNow).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
        var left = 0;
        foreach (var (_, session) in _sessions)
        {
            left += session.Pending;
        }
        Log.Drained(Environment.TickCount64 - started, left, (long)grace.TotalMilliseconds);
        BeginShutdown();
    }

    /// <summary>
    /// The gateway is stopping: new sessions are refused, and every session is closed, its calls in flight answered
    /// with -32016 and recorded as <c>unknown</c> (whether the upstream ran them is not known). Not awaited:
    /// <see cref="DisposeAsync"/> waits for the sessions.
    /// </summary>
    public void BeginShutdown()
    {
        Volatile.Write(ref _stopping, true);
        foreach (var (_, session) in _sessions)
        {
            _ = session.CloseAsync(AuditOutcome.Unknown, SessionMessages.ShuttingDown).AsTask();
        }
    }

    public async ValueTask DisposeAsync()
    {
        Volatile.Write(ref _stopping, true);
        await _heartbeat.DisposeAsync().ConfigureAwait(false);
        var closing = new List<Task>();
        foreach (var (_, session) in _sessions)
        {
            closing.Add(session.CloseAsync(AuditOutcome.Unknown, SessionMessages.ShuttingDown).AsTask());
        }
        await Task.WhenAll(closing).ConfigureAwait(false);
        foreach (var server in _snapshot.Servers.Values)
        {
            server.Upstream.Retire();
        }
        await Approvals.DisposeAsync().ConfigureAwait(false);
        Metrics.Dispose();
    }
}
