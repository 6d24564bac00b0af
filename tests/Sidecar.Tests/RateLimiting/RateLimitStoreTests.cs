using Sidecar.RateLimiting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.RateLimiting;

public class RateLimitStoreTests
{
    private static readonly BucketKey Key = new("space", "counter", 0, "alice", "g");

    [Fact]
    public void Admits_a_burst_of_exactly_max_then_refills_one_token_per_interval()
    {
        var time = new ManualTimeProvider();
        var store = new RateLimitStore(time);
        for (var i = 0; i < 10; i++)
        {
            var r = store.TryAcquire(Key, max: 10, windowSeconds: 60, cost: 1, store.Now, out _);
            Assert.True(r.Acquired, $"call {i + 1}");
            Assert.Equal(9 - i, r.Remaining);
        }
        var rejected = store.TryAcquire(Key, 10, 60, 1, store.Now, out var none);
        Assert.Equal(AcquireStatus.Rejected, rejected.Status);
        Assert.Null(none);
        Assert.Equal(6000, store.TicksToMilliseconds(rejected.RetryAfterTicks));

        time.Advance(TimeSpan.FromSeconds(5.9));
        Assert.False(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);
        time.Advance(TimeSpan.FromSeconds(0.1));
        Assert.True(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);
        Assert.False(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);

        time.Advance(TimeSpan.FromMinutes(10));
        for (var i = 0; i < 10; i++)
        {
            Assert.True(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);
        }
        Assert.False(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);
    }

    [Fact]
    public void Cost_spends_several_tokens_and_a_cost_above_max_is_never_admitted()
    {
        var time = new ManualTimeProvider();
        var store = new RateLimitStore(time);
        Assert.True(store.TryAcquire(Key, 100, 86400, 60, store.Now, out _).Acquired);
        var second = store.TryAcquire(Key, 100, 86400, 60, store.Now, out _);
        Assert.Equal(AcquireStatus.Rejected, second.Status);
        Assert.Equal(40, second.Remaining);
        Assert.True(store.TryAcquire(Key, 100, 86400, 40, store.Now, out _).Acquired);

        var never = store.TryAcquire(new BucketKey("s", "other", 0, null, null), 100, 86400, 101, store.Now, out _);
        Assert.Equal(AcquireStatus.Never, never.Status);
        Assert.Equal(-1, never.RetryAfterTicks);
    }

    [Fact]
    public void Refund_gives_tokens_back()
    {
        var store = new RateLimitStore(new ManualTimeProvider());
        Assert.True(store.TryAcquire(Key, 2, 60, 1, store.Now, out var first).Acquired);
        Assert.True(store.TryAcquire(Key, 2, 60, 1, store.Now, out _).Acquired);
        Assert.False(store.TryAcquire(Key, 2, 60, 1, store.Now, out _).Acquired);
        store.Refund(first!, 2, 60, 1);
        Assert.True(store.TryAcquire(Key, 2, 60, 1, store.Now, out _).Acquired);
        Assert.False(store.TryAcquire(Key, 2, 60, 1, store.Now, out _).Acquired);
    }

    [Fact]
    public void Keys_are_independent()
    {
        var store = new RateLimitStore(new ManualTimeProvider());
        Assert.True(store.TryAcquire(Key, 1, 60, 1, store.Now, out _).Acquired);
        Assert.False(store.TryAcquire(Key, 1, 60, 1, store.Now, out _).Acquired);
        Assert.True(store.TryAcquire(Key with { Part1 = "bob" }, 1, 60, 1, store.Now, out _).Acquired);
        Assert.True(store.TryAcquire(Key with { Counter = "other" }, 1, 60, 1, store.Now, out _).Acquired);
        Assert.True(store.TryAcquire(Key with { Space = "server2" }, 1, 60, 1, store.Now, out _).Acquired);
        Assert.Equal(4, store.Count);
    }

    [Fact]
    public void Contended_bucket_admits_exactly_max()
    {
        const int max = 1000;
        var store = new RateLimitStore();
        var admitted = 0;
        var threads = Math.Max(4, Environment.ProcessorCount * 2);
        using var start = new Barrier(threads);
        var workers = Enumerable.Range(0, threads).Select(n => new Thread(() =>
        {
            start.SignalAndWait();
            for (var i = 0; i < 5000; i++)
            {
                if (store.TryAcquire(Key, max, 86400, 1, store.Now, out _).Acquired)
                {
                    Interlocked.Increment(ref admitted);
                }
            }
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        // A day's window refills one token every 86.4 s: nothing refills during the test.
        Assert.Equal(max, admitted);
    }

    [Fact]
    public void Contended_acquires_with_costs_and_refunds_never_overspend()
    {
        const int max = 10_000;
        var store = new RateLimitStore();
        long spent = 0;
        var threads = Math.Max(4, Environment.ProcessorCount * 2);
        var workers = Enumerable.Range(0, threads).Select(t => new Thread(() =>
        {
            var rng = new Random(t);
            for (var i = 0; i < 20_000; i++)
            {
                var cost = rng.Next(1, 7);
                if (store.TryAcquire(Key, max, 86400, cost, store.Now, out var bucket).Acquired)
                {
                    if (rng.Next(4) == 0)
                    {
                        store.Refund(bucket!, max, 86400, cost);
                    }
                    else
                    {
                        Interlocked.Add(ref spent, cost);
                    }
                }
            }
        })).ToList();
        workers.ForEach(t => t.Start());
        workers.ForEach(t => t.Join());
        Assert.InRange(spent, max - 6, max);
    }

    [Fact]
    public void Sweep_evicts_only_full_buckets()
    {
        var time = new ManualTimeProvider();
        var store = new RateLimitStore(time);
        Assert.True(store.TryAcquire(Key, 10, 60, 1, store.Now, out _).Acquired);               // refills in 6 s
        Assert.True(store.TryAcquire(Key with { Part1 = "b" }, 10, 3600, 1, store.Now, out _).Acquired); // refills in 360 s
        Assert.Equal(2, store.Count);
        Assert.Equal(0, store.Sweep());
        time.Advance(TimeSpan.FromSeconds(7));
        Assert.Equal(1, store.Sweep());
        Assert.Equal(1, store.Count);
        time.Advance(TimeSpan.FromHours(1));
        Assert.Equal(1, store.Sweep());
        Assert.Equal(0, store.Count);
    }

    [Fact]
    public void Eviction_racing_with_acquires_never_admits_more_than_max()
    {
        // Buckets are swept while callers hit them: a retired bucket must never swallow an admission.
        const int max = 50;
        var time = new ManualTimeProvider();
        var store = new RateLimitStore(time);
        for (var round = 0; round < 200; round++)
        {
            var key = Key with { Part1 = "round" + round };
            var admitted = 0;
            using var stop = new CancellationTokenSource();
            var sweeper = new Thread(() =>
            {
                while (!stop.IsCancellationRequested)
                {
                    store.Sweep();
                }
            });
            sweeper.Start();
            var workers = Enumerable.Range(0, 4).Select(n => new Thread(() =>
            {
                for (var i = 0; i < 200; i++)
                {
                    if (store.TryAcquire(key, max, 86400, 1, store.Now, out _).Acquired)
                    {
                        Interlocked.Increment(ref admitted);
                    }
                }
            })).ToList();
            workers.ForEach(t => t.Start());
            workers.ForEach(t => t.Join());
            stop.Cancel();
            sweeper.Join();
            Assert.Equal(max, admitted);
        }
    }

    [Fact]
    public void A_full_store_fails_closed_for_new_keys()
    {
        var store = new RateLimitStore(new ManualTimeProvider(), maxBuckets: 3);
        for (var i = 0; i < 3; i++)
        {
            Assert.True(store.TryAcquire(Key with { Part1 = "k" + i }, 5, 60, 1, store.Now, out _).Acquired);
        }
        var refused = store.TryAcquire(Key with { Part1 = "k3" }, 5, 60, 1, store.Now, out _);
        Assert.Equal(AcquireStatus.Rejected, refused.Status);
        Assert.True(store.TryAcquire(Key with { Part1 = "k0" }, 5, 60, 1, store.Now, out _).Acquired);
    }

    [Fact]
    public void A_full_store_evicts_idle_buckets_to_make_room()
    {
        var time = new ManualTimeProvider();
        var store = new RateLimitStore(time, maxBuckets: 2);
        Assert.True(store.TryAcquire(Key with { Part1 = "a" }, 5, 60, 1, store.Now, out _).Acquired);
        Assert.True(store.TryAcquire(Key with { Part1 = "b" }, 5, 60, 1, store.Now, out _).Acquired);
        time.Advance(TimeSpan.FromMinutes(1));
        Assert.True(store.TryAcquire(Key with { Part1 = "c" }, 5, 60, 1, store.Now, out _).Acquired);
        Assert.Equal(1, store.Count);
    }
}
