using Sidecar.Sessions;

namespace Sidecar.Tests.Gateway;

public sealed class InFlightGateTests
{
    [Fact]
    public void Admits_up_to_the_capacity_sheds_the_rest_and_admits_again_after_an_exit()
    {
        var gate = new InFlightGate(2);
        Assert.True(gate.TryEnter());
        Assert.True(gate.TryEnter());
        Assert.False(gate.TryEnter());
        Assert.False(gate.TryEnter());
        Assert.Equal(2, gate.Count);
        Assert.Equal(2, gate.Shed);
        gate.Exit();
        Assert.True(gate.TryEnter());
        Assert.Equal(2, gate.Count);
        Assert.Equal(2, gate.Shed);
    }

    [Fact]
    public void Never_admits_more_than_the_capacity_under_contention()
    {
        const int capacity = 3, threads = 4, attempts = 50_000;
        var gate = new InFlightGate(capacity);
        var inside = 0;
        var maxInside = 0;
        var admitted = 0L;
        using var start = new Barrier(threads);
        var workers = new Thread[threads];
        for (var t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() =>
            {
                start.SignalAndWait();
                for (var i = 0; i < attempts; i++)
                {
                    if (!gate.TryEnter())
                    {
                        continue;
                    }
                    Interlocked.Increment(ref admitted);
                    var now = Interlocked.Increment(ref inside);
                    int seen;
                    while (now > (seen = Volatile.Read(ref maxInside)) && Interlocked.CompareExchange(ref maxInside, now, seen) != seen)
                    {
                    }
                    Interlocked.Decrement(ref inside);
                    gate.Exit();
                }
            });
            workers[t].Start();
        }
        foreach (var worker in workers)
        {
            worker.Join();
        }
        Assert.InRange(maxInside, 1, capacity);
        Assert.Equal(0, gate.Count);
        Assert.Equal((long)threads * attempts, admitted + gate.Shed);
    }

    [Fact]
    public void A_capacity_below_one_is_refused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new InFlightGate(0));
}
