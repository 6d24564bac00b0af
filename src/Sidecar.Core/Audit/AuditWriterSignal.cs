namespace Sidecar.Audit;

/// <summary>
/// Wakes the audit writer when it sleeps. The writer announces that it is about to sleep (<see cref="PrepareWait"/>),
/// looks at the queue once more, and sleeps until a producer wakes it or its flush interval passes. A producer wakes
/// it only while it sleeps, so a busy writer costs the call path one read.
/// </summary>
internal sealed class AuditWriterSignal : IDisposable
{
    private readonly ManualResetEventSlim _event = new(false, spinCount: 0);
    private int _idle;

    /// <summary>Writer: from now on producers wake it. Look at the queue again before <see cref="Wait"/>.</summary>
    public void PrepareWait()
    {
        _event.Reset();
        Interlocked.Exchange(ref _idle, 1); // a full fence: the queue is looked at again after this store
    }

    /// <summary>Writer: sleeps until woken or <paramref name="timeout"/> passes.</summary>
    public void Wait(TimeSpan timeout)
    {
        _event.Wait(timeout);
        Volatile.Write(ref _idle, 0);
    }

    /// <summary>Writer: it found work after <see cref="PrepareWait"/> and will not sleep.</summary>
    public void CancelWait() => Volatile.Write(ref _idle, 0);

    /// <summary>Producer: wakes the writer if it sleeps (one read when it does not).</summary>
    public void Wake()
    {
        if (Volatile.Read(ref _idle) != 0 && Interlocked.Exchange(ref _idle, 0) != 0)
        {
            _event.Set();
        }
    }

    /// <summary>Anyone: wakes the writer whether it sleeps or not (shutdown).</summary>
    public void WakeAlways()
    {
        Volatile.Write(ref _idle, 0);
        _event.Set();
    }

    public void Dispose() => _event.Dispose();
}
