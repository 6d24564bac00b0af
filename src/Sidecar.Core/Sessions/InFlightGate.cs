namespace Sidecar.Sessions;

/// <summary>
/// Caps the agent requests the gateway works on at once (<c>limits.maxInFlight</c>): the POSTs that carry JSON-RPC
/// messages, from arrival until their answer is written. A request beyond the cap is shed at once with HTTP 503 and
/// <c>Retry-After</c>, before its body is read, so an agent that sends faster than the upstream (or the CPU) can
/// answer gets told so instead of queueing without bound in memory. Lock-free: one compare-and-swap to enter, one
/// decrement to leave.
/// </summary>
internal sealed class InFlightGate
{
    private int _count;
    private long _shed;
    private volatile int _capacity;

    public InFlightGate(int capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        _capacity = capacity;
    }

    /// <summary>The cap; a reload may change it (requests in flight over a lowered cap finish, new ones wait for room).</summary>
    public int Capacity
    {
        get => _capacity;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            _capacity = value;
        }
    }

    /// <summary>Requests in flight now.</summary>
    public int Count => Volatile.Read(ref _count);

    /// <summary>Requests shed since start.</summary>
    public long Shed => Interlocked.Read(ref _shed);

    /// <summary>Takes a place, or counts a shed request and returns false when all <see cref="Capacity"/> are taken.</summary>
    public bool TryEnter()
    {
        var count = Volatile.Read(ref _count);
        var capacity = _capacity;
        while (count < capacity)
        {
            var seen = Interlocked.CompareExchange(ref _count, count + 1, count);
            if (seen == count)
            {
                return true;
            }
            count = seen;
        }
        Interlocked.Increment(ref _shed);
        return false;
    }

    /// <summary>Gives back a place taken by <see cref="TryEnter"/>.</summary>
    public void Exit() => Interlocked.Decrement(ref _count);
}
