using System.Threading.Tasks.Sources;

namespace Sidecar.Threading;

/// <summary>
/// The waiting half of a single-reader queue: the reader parks on it when the queue is empty, any number of writers
/// wake it after they enqueue. Embedded (it is a mutable struct: keep it in a field, never copy it) in a class that
/// implements <see cref="IValueTaskSource{TResult}"/> by forwarding to <see cref="GetResult"/>,
/// <see cref="GetStatus"/> and <see cref="OnCompleted"/>, so a wait allocates nothing: no operation object, and
/// cancellation is a registration on the reader's token, undone when the wait ends. No locks.
/// </summary>
/// <remarks>
/// The reader's side, with <c>HasItems</c> the queue's own check:
/// <code>
/// if (HasItems()) return new(true);
/// var version = _signal.Arm(cancellationToken);
/// if (HasItems()) { if (_signal.Disarm()) return new(true); }   // a writer came in between: look again
/// else _signal.RegisterCancellation(cancellationToken, s_onCanceled, this);
/// return new ValueTask&lt;bool&gt;(this, version);
/// </code>
/// A writer enqueues, then calls <see cref="Wake"/>. The flag is set and cleared with full fences on both sides, so
/// either the reader sees the item when it looks again, or the writer sees the flag and completes the wait; the
/// one who clears the flag completes the wait (exactly once). At most one wait may be pending.
/// <para>
/// The reader's continuation runs on the thread that wakes it, up to the reader's next wait: the answer an upstream
/// sends is written to the agent by the thread that read it, with no hand-off to another thread (a hand-off is a
/// thread wake-up, which costs more than the rest of the call on a small VM). So writers call <see cref="Wake"/> last,
/// outside any lock, with nothing of theirs left half-done; and readers must not block (they never do: every wait
/// they make is asynchronous).
/// </para>
/// </remarks>
internal struct AsyncSignal
{
    private ManualResetValueTaskSourceCore<bool> _core;
    private int _waiting;
    private CancellationToken _token;
    private CancellationTokenRegistration _registration;

    /// <summary>Readies a wait (reader only). Returns the version to build the <see cref="ValueTask{TResult}"/> with.</summary>
    public short Arm(CancellationToken cancellationToken)
    {
        _core.RunContinuationsAsynchronously = false; // see the remarks: the reader runs on the waking thread
        _core.Reset();
        _token = cancellationToken;
        Interlocked.Exchange(ref _waiting, 1);
        return _core.Version;
    }

    /// <summary>Takes the wait back after finding an item on the second look; false when a writer is already completing it.</summary>
    public bool Disarm() => Interlocked.Exchange(ref _waiting, 0) == 1;

    /// <summary>Makes the armed wait end with <see cref="OperationCanceledException"/> when the token fires (its callback must call <see cref="Cancel"/>).</summary>
    public void RegisterCancellation(CancellationToken cancellationToken, Action<object?> onCanceled, object owner)
    {
        if (cancellationToken.CanBeCanceled)
        {
            _registration = cancellationToken.UnsafeRegister(onCanceled, owner);
        }
    }

    /// <summary>Completes the pending wait with true, if there is one (writers, after enqueueing).</summary>
    public void Wake()
    {
        if (Interlocked.Exchange(ref _waiting, 0) == 1)
        {
            _core.SetResult(true);
        }
    }

    /// <summary>Ends the pending wait with <see cref="OperationCanceledException"/>, if it is still pending.</summary>
    public void Cancel()
    {
        if (Interlocked.Exchange(ref _waiting, 0) == 1)
        {
            _core.SetException(new OperationCanceledException(_token));
        }
    }

    public bool GetResult(short token)
    {
        try
        {
            return _core.GetResult(token);
        }
        finally
        {
            _registration.Dispose();
            _registration = default;
            _token = default;
        }
    }

    public ValueTaskSourceStatus GetStatus(short token) => _core.GetStatus(token);

    public void OnCompleted(Action<object?> continuation, object? state, short token, ValueTaskSourceOnCompletedFlags flags)
        => _core.OnCompleted(continuation, state, token, flags);
}
