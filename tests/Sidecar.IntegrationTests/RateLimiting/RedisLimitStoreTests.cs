using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.RateLimiting;

namespace Sidecar.IntegrationTests.RateLimiting;

/// <summary>
/// The shared store against a real <c>redis-server</c> on loopback: exact under contention from several connections
/// (as from several replicas), all or nothing, refunds, keys that expire, the script loaded again after
/// <c>NOSCRIPT</c>, and a Redis that goes away and comes back without a restart of the store.
/// </summary>
public sealed class RedisLimitStoreTests : IAsyncLifetime
{
    private RedisServer _redis = null!;

    public async Task InitializeAsync() => _redis = await RedisServer.StartAsync(password: "s3cret-" + Guid.NewGuid().ToString("N")[..8]);

    public Task DisposeAsync() => _redis.DisposeAsync().AsTask();

    private async Task<RedisLimitStore> StoreAsync(string prefix = "test:")
    {
        var store = new RedisLimitStore(new RedisLimitsConfig(_redis.Connection, prefix, SharedFailMode.Closed, TimeSpan.FromSeconds(2)), NullLogger.Instance);
        await store.StartAsync();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!store.IsConnected && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        Assert.True(store.IsConnected, "the store did not connect");
        return store;
    }

    private static SharedLimit Limit(RedisLimitStore store, string counter, long max, long windowSeconds, long cost = 1, string? identity = "agent")
    {
        var (emission, tolerance) = RedisLimitStore.Parameters(max, windowSeconds);
        return new SharedLimit(store.KeyFor("srv", counter, 1, identity, null), cost, emission, tolerance);
    }

    [Fact]
    public async Task Stores_on_separate_connections_admit_exactly_max_in_total_under_contention()
    {
        await using var a = await StoreAsync();
        await using var b = await StoreAsync();
        var counter = "exact-" + Guid.NewGuid().ToString("N");
        var admitted = 0;
        var rejected = 0;
        var calls = Enumerable.Range(0, 400).Select(async i =>
        {
            var store = i % 2 == 0 ? a : b;
            var result = await store.AcquireAsync([Limit(store, counter, 50, 3600)]);
            if (result.Status == SharedStatus.Admitted)
            {
                Interlocked.Increment(ref admitted);
            }
            else if (result.Status == SharedStatus.Rejected)
            {
                Interlocked.Increment(ref rejected);
                Assert.True(result.RetryAfterMs > 0);
            }
        });
        await Task.WhenAll(calls);
        Assert.Equal(50, admitted);
        Assert.Equal(350, rejected);
        Assert.Equal(400, a.RoundTrips + b.RoundTrips); // one round trip per decision
    }

    [Fact]
    public async Task All_limits_of_a_call_are_taken_or_none()
    {
        await using var store = await StoreAsync();
        var wide = "wide-" + Guid.NewGuid().ToString("N");
        var narrow = "narrow-" + Guid.NewGuid().ToString("N");
        Assert.Equal(SharedStatus.Admitted, (await store.AcquireAsync([Limit(store, wide, 10, 60), Limit(store, narrow, 1, 60)])).Status);
        var refused = await store.AcquireAsync([Limit(store, wide, 10, 60), Limit(store, narrow, 1, 60)]);
        Assert.Equal(SharedStatus.Rejected, refused.Status);
        Assert.Equal(1, refused.Failed); // the second limit
        // The refused call took nothing from the wide one: 9 of its 10 are left.
        var alone = await store.AcquireAsync([Limit(store, wide, 10, 60)]);
        Assert.Equal(SharedStatus.Admitted, alone.Status);
        Assert.Equal(8, alone.Remaining);
    }

    [Fact]
    public async Task Costs_and_refunds_are_exact()
    {
        await using var store = await StoreAsync();
        var spend = "spend-" + Guid.NewGuid().ToString("N");
        var first = await store.AcquireAsync([Limit(store, spend, 100, 86400, cost: 60)]);
        Assert.Equal((SharedStatus.Admitted, 40L), (first.Status, first.Remaining));
        Assert.Equal(SharedStatus.Rejected, (await store.AcquireAsync([Limit(store, spend, 100, 86400, cost: 41)])).Status);
        await store.RefundAsync([Limit(store, spend, 100, 86400, cost: 60)]);
        var again = await store.AcquireAsync([Limit(store, spend, 100, 86400, cost: 100)]);
        Assert.Equal((SharedStatus.Admitted, 0L), (again.Status, again.Remaining));
    }

    [Fact]
    public async Task Keys_sit_under_the_prefix_with_the_server_as_hash_tag_and_expire_once_full_again()
    {
        await using var store = await StoreAsync("sidecar-test:");
        var counter = "ttl-" + Guid.NewGuid().ToString("N");
        var limit = Limit(store, counter, 2, 2);
        Assert.StartsWith("sidecar-test:{srv}:", limit.Key, StringComparison.Ordinal);
        Assert.Equal(SharedStatus.Admitted, (await store.AcquireAsync([limit])).Status);
        var ttl = long.Parse((await _redis.CommandAsync("PTTL", limit.Key))!.TrimStart(':'));
        Assert.InRange(ttl, 1, 3000); // one token of 2 per 2 s: full again after 1 s, plus a second of slack
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (await _redis.CommandAsync("EXISTS", limit.Key) != ":0" && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }
        Assert.Equal(":0", await _redis.CommandAsync("EXISTS", limit.Key));
    }

    [Fact]
    public async Task Parts_that_look_like_separators_cannot_collide()
    {
        await using var store = await StoreAsync();
        Assert.NotEqual(store.KeyFor("srv", "c", 0, "a:b", "c"), store.KeyFor("srv", "c", 0, "a", "b:c"));
        Assert.NotEqual(store.KeyFor("s}x", "c", 2, null, null), store.KeyFor("s", "x}:c", 2, null, null));
        Assert.DoesNotContain("}x", store.KeyFor("s}x", "c", 2, null, null)[..^4], StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_flushed_script_is_loaded_again_on_noscript()
    {
        await using var store = await StoreAsync();
        var counter = "flush-" + Guid.NewGuid().ToString("N");
        Assert.Equal(SharedStatus.Admitted, (await store.AcquireAsync([Limit(store, counter, 5, 60)])).Status);
        Assert.Equal("+OK", await _redis.CommandAsync("SCRIPT", "FLUSH"));
        var after = await store.AcquireAsync([Limit(store, counter, 5, 60)]);
        Assert.Equal((SharedStatus.Admitted, 3L), (after.Status, after.Remaining));
        Assert.True(store.ScriptLoads >= 1, "the script was not sent again");
    }

    [Fact]
    public async Task A_redis_that_goes_away_is_unavailable_and_serves_again_when_back_without_a_new_store()
    {
        await using var store = await StoreAsync();
        var counter = "outage-" + Guid.NewGuid().ToString("N");
        Assert.Equal(SharedStatus.Admitted, (await store.AcquireAsync([Limit(store, counter, 5, 60)])).Status);

        await _redis.KillAsync();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        SharedAcquire down;
        do
        {
            down = await store.AcquireAsync([Limit(store, counter, 5, 60)]);
        }
        while (down.Status != SharedStatus.Unavailable && DateTime.UtcNow < deadline && await Delay());
        Assert.Equal(SharedStatus.Unavailable, down.Status);
        Assert.DoesNotContain(_redis.Password!, down.Error ?? "", StringComparison.Ordinal);

        await _redis.StartAgainAsync(); // empty: no persistence, so the counter starts afresh
        deadline = DateTime.UtcNow.AddSeconds(20);
        SharedAcquire back;
        do
        {
            back = await store.AcquireAsync([Limit(store, counter, 5, 60)]);
        }
        while (back.Status != SharedStatus.Admitted && DateTime.UtcNow < deadline && await Delay());
        Assert.Equal(SharedStatus.Admitted, back.Status);
        Assert.True(store.Errors >= 1);

        static async Task<bool> Delay()
        {
            await Task.Delay(100);
            return true;
        }
    }
}
