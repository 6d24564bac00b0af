using System.Threading.Channels;
using System.Threading.Tasks.Sources;
using Sidecar.Threading;

namespace Sidecar.Upstreams;

/// <summary>
/// The state every upstream connection shares: the bounded <see cref="UpstreamEvent"/> channel, the
/// <see cref="IUpstreamConnection.Completion"/> task and the lifetime token that stops the connection's loops.
/// </summary>
/// <remarks>
/// <para>
/// The events channel holds <see cref="Capacity"/> events and is read by one reader (the owning session). When it is
/// full, writers wait: the transport stops reading from the server (stdout, the SSE stream, a response body), so a
/// slow consumer backpressures the server instead of growing memory. Nothing is ever dropped for being slow.
/// </para>
/// <para>
/// Closing is one-way and idempotent: the first <see cref="Close"/> wins, cancels <see cref="Lifetime"/> (which
/// aborts every read, write and HTTP request of the connection), completes the events channel (events already in it
/// stay readable) and then settles <see cref="Completion"/>: faulted with the given <see cref="UpstreamException"/>,
/// or successful for a deliberate <see cref="IAsyncDisposable.DisposeAsync"/>.
/// </para>
/// <para>
/// The reader (<see cref="Reader"/>) waits on an <see cref="AsyncSignal"/> that writers wake, not on the channel: the
/// channel would allocate a wait operation (and a cancellation registration delegate) every time the session's pump
/// waits with its lifetime token, i.e. for nearly every message. The channel still holds the events and makes full
/// writers wait.
/// </para>
/// </remarks>
internal sealed class UpstreamEventSink
{
    /// <summary>Events buffered between the transport and the session before the transport waits.</summary>
    public const int Capacity = 1024;

    private readonly Channel<UpstreamEvent> _events = Channel.CreateBounded<UpstreamEvent>(new BoundedChannelOptions(Capacity)
    {
        FullMode = BoundedChannelFullMode.Wait,
        SingleReader = true,
        SingleWriter = false,
        AllowSynchronousContinuations = false,
    });

    private readonly EventReader _reader;
    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _lifetime = new();
    private readonly Lock _gate = new();
    private UpstreamException? _closeReason;
    private int _closed;

    public UpstreamEventSink() => _reader = new EventReader(_events.Reader);

    public ChannelReader<UpstreamEvent> Reader => _reader;

    public Task Completion => _completion.Task;

    /// <summary>Cancelled when the connection closes, for whatever reason.</summary>
    public CancellationToken Lifetime => _lifetime.Token;

    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>Writes one event, waiting while the channel is full. False once the connection has closed.</summary>
    public async ValueTask<bool> EmitAsync(UpstreamEvent e)
    {
        if (_events.Writer.TryWrite(e))
        {
            _reader.Wake();
            return true;
        }
        try
        {
            await _events.Writer.WriteAsync(e, _lifetime.Token).ConfigureAwait(false);
            _reader.Wake();
            return true;
        }
        catch (ChannelClosedException)
        {
            return false;
        }
        catch (OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>Writes one event if there is room right now (used while closing, where waiting is not an option).</summary>
    public bool TryEmit(UpstreamEvent e)
    {
        if (!_events.Writer.TryWrite(e))
        {
            return false;
        }
        _reader.Wake();
        return true;
    }

    /// <summary>
    /// Ends the connection: <paramref name="reason"/> null for a deliberate close (Completion succeeds), otherwise
    /// Completion faults with it. Only the first call has an effect; returns whether this call closed it.
    /// </summary>
    public bool Close(UpstreamException? reason)
    {
        lock (_gate)
        {
            if (_closed != 0)
            {
                return false;
            }
            _closeReason = reason;
            Volatile.Write(ref _closed, 1);
        }
        try
        {
            _lifetime.Cancel();
        }
        catch (AggregateException)
        {
            // A cancellation callback threw; the connection is closing anyway.
        }
        _events.Writer.TryComplete();
        _reader.Wake();
        if (reason is null)
        {
            _completion.TrySetResult();
        }
        else
        {
            _completion.TrySetException(reason);
        }
        return true;
    }

    /// <summary>The exception a send on a closed connection throws: why it closed, or that it was disposed.</summary>
    public UpstreamException ClosedException()
    {
        UpstreamException? reason;
        lock (_gate)
        {
            reason = _closeReason;
        }
        return reason is null
            ? new UpstreamException("upstream connection is closed")
            : new UpstreamException(reason.Message, reason) { SessionGone = reason.SessionGone };
    }

    /// <summary>The channel's reader, with waits that allocate nothing (see the remarks on the class).</summary>
    private sealed class EventReader(ChannelReader<UpstreamEvent> events) : ChannelReader<UpstreamEvent>, IValueTaskSource<bool>
    {
        private static readonly Action<object?> s_cancel = static state => ((EventReader)state!)._signal.Cancel();

        private AsyncSignal _signal;

        public override Task Completion => events.Completion;

        public override bool CanCount => events.CanCount;

        public override bool CanPeek => events.CanPeek;

        public override int Count => events.Count;

        public override bool TryRead(out UpstreamEvent item) => events.TryRead(out item);

        public override bool TryPeek(out UpstreamEvent item) => events.TryPeek(out item);

        /// <summary>True when an event may be read; false once the channel is complete and drained.</summary>
        public override ValueTask<bool> WaitToReadAsync(CancellationToken cancellationToken = default)
        {
            if (events.TryPeek(out _))
            {
                return new ValueTask<bool>(true);
            }
            if (events.Completion.IsCompleted)
            {
                return new ValueTask<bool>(false);
            }
            if (cancellationToken.IsCancellationRequested)
            {
                return ValueTask.FromCanceled<bool>(cancellationToken);
            }
            var version = _signal.Arm(cancellationToken);
            if (events.TryPeek(out _) || events.Completion.IsCompleted)
            {
                if (_signal.Disarm())
                {
                    return new ValueTask<bool>(true); // the caller looks again (and gets false once drained)
                }
            }
            else
            {
                _signal.RegisterCancellation(cancellationToken, s_cancel, this);
            }
            return new ValueTask<bool>(this, version);
        }

        public void Wake() => _signal.Wake();

        bool IValueTaskSource<bool>.GetResult(short token) => _signal.GetResult(token);

        ValueTaskSourceStatus IValueTaskSource<bool>.GetStatus(short token) => _signal.GetStatus(token);

        void IValueTaskSource<bool>.OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
            => _signal.OnCompleted(continuation, state, token, flags);
    }
}
