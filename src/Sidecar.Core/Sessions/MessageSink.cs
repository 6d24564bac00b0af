using System.Collections.Concurrent;
using System.Threading.Tasks.Sources;
using Sidecar.Threading;

namespace Sidecar.Sessions;

/// <summary>
/// One message on its way to the agent. <see cref="IsResponse"/> marks the answer to one of the agent's requests;
/// <see cref="AuditTicket"/> (not 0) says it may be written only once its audit record is (<c>durability: before_answer</c>,
/// <see cref="Audit.AuditRecorder.WhenWrittenAsync"/>).
/// </summary>
internal readonly record struct Outbound(ReadOnlyMemory<byte> Payload, bool IsResponse, long AuditTicket = 0);

/// <summary>
/// Where messages for the agent go: the response of one POST (JSON or SSE), the session's standalone GET stream, or
/// a legacy SSE stream. Producers (the upstream pump, the request handler) only enqueue; the HTTP handler that owns
/// the response is the single reader (<see cref="WaitToReadAsync"/> then <see cref="TryRead"/>), so responses are
/// never written concurrently.
/// </summary>
/// <remarks>
/// <para>
/// Built for the common case, a POST answered by one message: the first message goes into an inline slot, so a sink
/// costs one small object and nothing more. Later messages (progress, server requests, a GET stream's traffic) go to
/// a queue created on the second message. The reader takes the slot before the queue, and the slot is used once,
/// so one producer's messages are read in the order it wrote them. Writers never wait and take no lock.
/// </para>
/// <para>
/// The reader waits on the sink itself (an <see cref="IValueTaskSource{TResult}"/> over an <see cref="AsyncSignal"/>):
/// waiting allocates nothing. At most one wait may be pending at a time.
/// </para>
/// </remarks>
internal sealed class MessageSink : IValueTaskSource<bool>
{
    /// <summary>
    /// Rewrites what a relay sink is given before it goes on (<see cref="MessageSink(IMessageRelay, MessageSink?, bool)"/>):
    /// the aggregated endpoint puts its own ids on server-to-client requests, so the agent's answer finds its server.
    /// </summary>
    internal interface IMessageRelay
    {
        /// <summary>Passes <paramref name="payload"/> on to <paramref name="target"/> (null: the session's stream); false when nothing took it.</summary>
        bool Relay(MessageSink? target, ReadOnlyMemory<byte> payload, bool isResponse, long auditTicket);
    }

    /// <summary>Upper bound on queued messages waiting for a slow agent; past it the oldest are dropped (and counted).</summary>
    public const int Capacity = 4096;

    private const int SlotEmpty = 0;
    private const int SlotWriting = 1;
    private const int SlotFull = 2;
    private const int SlotUsed = 3;

    private static readonly Action<object?> s_cancel = static state => ((MessageSink)state!).OnCanceled();

    private Outbound _slot;
    private int _slotState;
    private ConcurrentQueue<Outbound>? _queue;
    private int _queued;
    private long _dropped;
    private int _completed;

    private AsyncSignal _signal;

    private readonly IMessageRelay? _relay;
    private readonly MessageSink? _target;

    public MessageSink(bool acceptsRelatedMessages)
    {
        AcceptsRelatedMessages = acceptsRelatedMessages;
        Origin = this;
    }

    /// <summary>
    /// A sink that is never read: what it is given goes through <paramref name="relay"/> to <paramref name="target"/>
    /// (a POST's own sink; null: wherever the relay sends session-wide traffic). It stands in for
    /// <paramref name="target"/> (<see cref="Origin"/>) when the agent abandons that POST.
    /// </summary>
    public MessageSink(IMessageRelay relay, MessageSink? target, bool acceptsRelatedMessages)
    {
        _relay = relay;
        _target = target;
        AcceptsRelatedMessages = acceptsRelatedMessages;
        Origin = target ?? this;
    }

    /// <summary>The sink an agent's transport reads: this one, or the one a relay sink writes to.</summary>
    public MessageSink Origin { get; }

    /// <summary>True for SSE sinks, which can carry requests and notifications besides the responses.</summary>
    public bool AcceptsRelatedMessages { get; }

    public long Dropped => Interlocked.Read(ref _dropped);

    private int _held;

    /// <summary>Calls of this sink's request that wait for a person's approval (they need no in-flight place meanwhile).</summary>
    public int Held => Volatile.Read(ref _held);

    /// <summary>Counts a call held for approval (<see cref="Held"/>).</summary>
    public void MarkHeld()
    {
        if (_target is not null)
        {
            _target.MarkHeld();
            return;
        }
        Interlocked.Increment(ref _held);
    }

    /// <summary>
    /// Queues a message for the agent. False once the sink is complete (the stream it fed has ended). The reader holds
    /// a message with an <paramref name="auditTicket"/> back until its audit record is written.
    /// </summary>
    public bool TryWrite(ReadOnlyMemory<byte> payload, bool isResponse, long auditTicket = 0)
    {
        if (_relay is not null)
        {
            return _relay.Relay(_target, payload, isResponse, auditTicket);
        }
        if (Volatile.Read(ref _completed) != 0)
        {
            return false;
        }
        if (Volatile.Read(ref _slotState) == SlotEmpty && Interlocked.CompareExchange(ref _slotState, SlotWriting, SlotEmpty) == SlotEmpty)
        {
            _slot = new Outbound(payload, isResponse, auditTicket);
            Interlocked.Exchange(ref _slotState, SlotFull);
        }
        else
        {
            var queue = Volatile.Read(ref _queue) ?? CreateQueue();
            queue.Enqueue(new Outbound(payload, isResponse, auditTicket));
            if (Interlocked.Increment(ref _queued) > Capacity && queue.TryDequeue(out _))
            {
                Interlocked.Decrement(ref _queued);
                Interlocked.Increment(ref _dropped);
            }
        }
        Wake();
        return true;
    }

    /// <summary>No more messages will be accepted; the reader sees the end once it has read what is queued.</summary>
    public void Complete()
    {
        if (_relay is not null)
        {
            return; // the target's reader owns its end
        }
        Interlocked.Exchange(ref _completed, 1);
        Wake();
    }

    /// <summary>Takes the next message, if there is one. Reader only.</summary>
    public bool TryRead(out Outbound message)
    {
        if (Volatile.Read(ref _slotState) == SlotFull)
        {
            message = _slot;
            _slot = default;
            Volatile.Write(ref _slotState, SlotUsed);
            return true;
        }
        if (Volatile.Read(ref _queue) is { } queue && queue.TryDequeue(out message))
        {
            Interlocked.Decrement(ref _queued);
            return true;
        }
        message = default;
        return false;
    }

    /// <summary>
    /// Completes with true when a message may be available, false when the sink is complete and empty; throws
    /// <see cref="OperationCanceledException"/> when <paramref name="cancellationToken"/> fires first. Reader only.
    /// </summary>
    public ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken)
    {
        if (HasMessages())
        {
            return new ValueTask<bool>(true);
        }
        if (Volatile.Read(ref _completed) != 0)
        {
            return new ValueTask<bool>(HasMessages());
        }
        if (cancellationToken.IsCancellationRequested)
        {
            return ValueTask.FromCanceled<bool>(cancellationToken);
        }

        var version = _signal.Arm(cancellationToken);
        // A producer may have written between the first look and the arming: look again.
        if (HasMessages() || Volatile.Read(ref _completed) != 0)
        {
            if (_signal.Disarm())
            {
                return new ValueTask<bool>(true);
            }
            // A producer took the wait and is completing it: return it.
        }
        else
        {
            _signal.RegisterCancellation(cancellationToken, s_cancel, this);
        }
        return new ValueTask<bool>(this, version);
    }

    private bool HasMessages() => Volatile.Read(ref _slotState) == SlotFull || (Volatile.Read(ref _queue) is { } queue && !queue.IsEmpty);

    private ConcurrentQueue<Outbound> CreateQueue()
    {
        Interlocked.CompareExchange(ref _queue, new ConcurrentQueue<Outbound>(), null);
        return _queue;
    }

    private void Wake() => _signal.Wake();

    private void OnCanceled() => _signal.Cancel();

    bool IValueTaskSource<bool>.GetResult(short token) => _signal.GetResult(token);

    ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _signal.GetStatus(token);

    void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _signal.OnCompleted(continuation, state, token, flags);
}
