using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

public class RequestTimeoutsTests
{
    private static readonly TimeSpan Long = TimeSpan.FromHours(1);

    [Fact]
    public void The_token_follows_the_connection_lifetime()
    {
        using var timeouts = new RequestTimeouts();
        using var lifetime = new CancellationTokenSource();
        var lease = timeouts.Rent(Long, lifetime.Token);
        Assert.False(lease.Token.IsCancellationRequested);
        lifetime.Cancel();
        Assert.True(lease.Token.IsCancellationRequested);
        lease.Dispose(); // a cancelled source is not reused

        var next = timeouts.Rent(Long, CancellationToken.None);
        Assert.False(next.Token.IsCancellationRequested);
        next.Dispose();
    }

    [Fact]
    public void An_already_ended_lifetime_cancels_at_once()
    {
        using var timeouts = new RequestTimeouts();
        var lease = timeouts.Rent(Long, new CancellationToken(canceled: true));
        Assert.True(lease.Token.IsCancellationRequested);
        lease.Dispose();
    }

    [Fact]
    public void A_returned_lease_no_longer_listens_to_its_old_lifetime()
    {
        using var timeouts = new RequestTimeouts();
        using var first = new CancellationTokenSource();
        var lease = timeouts.Rent(Long, first.Token);
        var registered = false;
        using (lease.Token.Register(() => registered = true))
        {
        }
        lease.Dispose();

        using var second = new CancellationTokenSource();
        var reused = timeouts.Rent(Long, second.Token);
        first.Cancel(); // the first request's connection ends: the second request must not notice
        Assert.False(reused.Token.IsCancellationRequested);
        Assert.False(registered);
        second.Cancel();
        Assert.True(reused.Token.IsCancellationRequested);
        reused.Dispose();
    }

    [Fact]
    public void Renting_and_returning_allocates_nothing_once_warm()
    {
        using var timeouts = new RequestTimeouts();
        using var lifetime = new CancellationTokenSource();
        Cycle(timeouts, lifetime.Token, 100);

        var before = GC.GetAllocatedBytesForCurrentThread();
        Cycle(timeouts, lifetime.Token, 1000);
        var allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
    }

    private static void Cycle(RequestTimeouts timeouts, CancellationToken lifetime, int count)
    {
        for (var i = 0; i < count; i++)
        {
            var lease = timeouts.Rent(Long, lifetime);
            lease.CancelAfter(Timeout.InfiniteTimeSpan);
            lease.Dispose();
        }
    }
}
