using System.Buffers;
using System.Threading.Channels;
using Sidecar.Audit;
using Sidecar.Identity;
using Sidecar.JsonRpc;

namespace Sidecar.Sessions;

/// <summary>
/// What every agent session is to the transports and the engine: an id that belongs to one identity, the agent's
/// stream (and a small backlog while none is open), and the lifecycle (idle, drain, close). Two kinds:
/// <see cref="McpSession"/> in front of one upstream server (<c>/servers/{name}/mcp</c>), and
/// <see cref="AggregateSession"/> in front of all of them (<c>/mcp</c>). Transports only ever see this class.
/// </summary>
internal abstract class AgentSession : IAsyncDisposable
{
    /// <summary>Server messages kept while the agent has no stream open; past it the oldest are dropped.</summary>
    private const int BacklogCapacity = 256;

    private readonly Channel<ReadOnlyMemory<byte>> _backlog = Channel.CreateBounded<ReadOnlyMemory<byte>>(
        new BoundedChannelOptions(BacklogCapacity) { FullMode = BoundedChannelFullMode.DropOldest });
    private MessageSink? _stream;
    private long _lastActivity = Environment.TickCount64;
    private int _disposed;

    protected AgentSession(string id, SessionTransport transport, Caller caller)
    {
        Id = id;
        Transport = transport;
        Caller = caller;
    }

    /// <summary>Who opened the session: it belongs to that identity (another one, or none, cannot use its id).</summary>
    public Caller Caller { get; }

    public string Id { get; }

    public SessionTransport Transport { get; }

    /// <summary>The server's name (<see cref="AggregateSession.RouteName"/> for the aggregated endpoint).</summary>
    public abstract string ServerName { get; }

    /// <summary>The version the session speaks with the agent; null until <c>initialize</c> has been answered.</summary>
    public abstract string? ProtocolVersion { get; }

    /// <summary>Requests forwarded and not yet answered.</summary>
    public abstract int Pending { get; }

    /// <summary>Calls waiting for a person's approval.</summary>
    public abstract int HeldCount { get; }

    /// <summary>The agent's open stream, if any (always set for a legacy SSE or stdio session while it is connected).</summary>
    public MessageSink? StreamSink => Volatile.Read(ref _stream);

    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>True when nothing is happening and the agent has not been seen for <paramref name="timeout"/>.</summary>
    public bool IsIdle(TimeSpan timeout)
        => Pending == 0 && HeldCount == 0 && Volatile.Read(ref _stream) is null
           && Environment.TickCount64 - Interlocked.Read(ref _lastActivity) > (long)timeout.TotalMilliseconds;

    /// <summary>The agent was seen now.</summary>
    protected void Touch() => Interlocked.Exchange(ref _lastActivity, Environment.TickCount64);

    /// <summary>
    /// Handles one message from the agent (never a batch: <see cref="SessionEngine.ReceiveAsync"/> splits them) under
    /// <paramref name="snapshot"/>. Returns true when a response for it will be written to <paramref name="sink"/>.
    /// </summary>
    internal abstract ValueTask<bool> ProcessAsync(GatewaySnapshot snapshot, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan,
        MessageSink sink, CancellationToken cancellationToken);

    /// <summary>Attaches the agent's stream (Streamable HTTP GET, legacy SSE, stdout). False if one is already open.</summary>
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
        Touch();
    }

    /// <summary>A server message that belongs to no open request: to the agent's stream, else to the backlog until one opens.</summary>
    protected void ToStream(ReadOnlyMemory<byte> payload, MessageSink? target = null)
    {
        target ??= Volatile.Read(ref _stream);
        if (target is null || !target.TryWrite(payload, false))
        {
            _backlog.Writer.TryWrite(payload);
        }
    }

    /// <summary>The agent stopped waiting for the requests of <paramref name="sink"/> (it disconnected): forget them and tell the servers.</summary>
    public abstract void Abandon(MessageSink sink);

    /// <summary>Fails requests whose upstream answer is overdue. Called by the engine's heartbeat.</summary>
    public abstract void ExpireOverdue(long now);

    /// <summary>The gateway begins to drain: calls waiting for a person are answered now (-32016, shutting down).</summary>
    internal abstract void AbortHeldForShutdown();

    /// <summary>Ends the session: the agent closed it (DELETE, its stream ended, stdin closed) or it was idle; its calls in flight are <c>cancelled</c>.</summary>
    public ValueTask DisposeAsync() => CloseAsync(AuditOutcome.Cancelled, SessionMessages.SessionClosed);

    /// <summary>
    /// Ends the session: calls in flight are answered with -32016 and <paramref name="message"/> and recorded with
    /// <paramref name="outcome"/>. Once; later calls do nothing.
    /// </summary>
    public abstract ValueTask CloseAsync(AuditOutcome outcome, string message);

    /// <summary>True for the first caller only: the session is closing now.</summary>
    protected bool BeginClose() => Interlocked.Exchange(ref _disposed, 1) == 0;
}
