using System.Collections.Concurrent;

namespace Sidecar.Upstreams;

/// <summary>
/// Per-request timeouts without a new <see cref="CancellationTokenSource"/>, timer and link for every request: a
/// source is rented, armed with <see cref="CancellationTokenSource.CancelAfter(TimeSpan)"/>, tied to the
/// connection's lifetime by a registration, and given back afterwards. A source that has not fired is reset
/// (<see cref="CancellationTokenSource.TryReset"/>: its timer stopped, its registrations dropped) and reused; one
/// that fired is disposed. At most <see cref="MaxIdle"/> idle sources are kept. Lock-free.
/// </summary>
/// <remarks>
/// A returned source may cancel again for another request, so its token must not be used once the lease is
/// disposed: the upstream transports use it only for sending the request and reading a response body within the
/// lease, as they did with a linked source of their own.
/// </remarks>
internal sealed class RequestTimeouts : IDisposable
{
    public const int MaxIdle = 256;

    private static readonly Action<object?> s_cancel = static state => ((CancellationTokenSource)state!).Cancel();

    private readonly ConcurrentQueue<CancellationTokenSource> _idle = new();
    private int _idleCount;

    /// <summary>A token that is cancelled after <paramref name="timeout"/>, or when <paramref name="lifetime"/> is.</summary>
    public Lease Rent(TimeSpan timeout, CancellationToken lifetime)
    {
        if (_idle.TryDequeue(out var source))
        {
            Interlocked.Decrement(ref _idleCount);
        }
        else
        {
            source = new CancellationTokenSource();
        }
        source.CancelAfter(timeout);
        var link = lifetime.UnsafeRegister(s_cancel, source);
        return new Lease(this, source, link);
    }

    private void Return(CancellationTokenSource source)
    {
        if (source.TryReset())
        {
            if (Interlocked.Increment(ref _idleCount) <= MaxIdle)
            {
                _idle.Enqueue(source);
                return;
            }
            Interlocked.Decrement(ref _idleCount);
        }
        source.Dispose();
    }

    public void Dispose()
    {
        while (_idle.TryDequeue(out var source))
        {
            source.Dispose();
        }
    }

    /// <summary>One request's timeout. Dispose it (once) when the request is over.</summary>
    public readonly struct Lease(RequestTimeouts owner, CancellationTokenSource source, CancellationTokenRegistration link) : IDisposable
    {
        public CancellationToken Token => source.Token;

        /// <summary>Re-arms the timer (<see cref="Timeout.InfiniteTimeSpan"/> disarms it).</summary>
        public void CancelAfter(TimeSpan delay) => source.CancelAfter(delay);

        public void Dispose()
        {
            link.Dispose(); // waits for a lifetime callback in progress: after this, only the timer can fire
            owner.Return(source);
        }
    }
}
