using System.Collections.Concurrent;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Decisions;

/// <summary>
/// The decision with shared limits, against a small in-process fake of <see cref="ISharedLimitStore"/> (the real one
/// is tested against redis-server in the integration tests): which limits go to the shared store, all or nothing
/// with the local ones, the fail modes, refunds, and the keys.
/// </summary>
public sealed class SharedDecisionTests
{
    /// <summary>Counts tokens per key like a store with unlimited windows; can be switched off (unreachable).</summary>
    private sealed class FakeShared(SharedFailMode failMode) : ISharedLimitStore
    {
        public readonly ConcurrentDictionary<string, long> Used = new();
        public readonly List<IReadOnlyList<SharedLimit>> Acquires = [];
        public readonly List<IReadOnlyList<SharedLimit>> Refunds = [];
        public bool Down;

        public SharedFailMode FailMode { get; } = failMode;

        public string KeyFor(string space, string counter, byte scope, string? part1, string? part2) => $"{space}|{counter}|{scope}|{part1}|{part2}";

        public ValueTask<SharedAcquire> AcquireAsync(IReadOnlyList<SharedLimit> limits)
        {
            lock (Acquires)
            {
                Acquires.Add(limits);
                if (Down)
                {
                    return ValueTask.FromResult(new SharedAcquire(SharedStatus.Unavailable, 0, -1, -1, "fake store down"));
                }
                for (var i = 0; i < limits.Count; i++)
                {
                    var max = limits[i].ToleranceMicros / limits[i].EmissionMicros;
                    if (Used.GetValueOrDefault(limits[i].Key) + limits[i].Cost > max)
                    {
                        return ValueTask.FromResult(new SharedAcquire(SharedStatus.Rejected, i, max - Used.GetValueOrDefault(limits[i].Key), 5000));
                    }
                }
                var remaining = long.MaxValue;
                foreach (var limit in limits)
                {
                    var used = Used.AddOrUpdate(limit.Key, limit.Cost, (_, u) => u + limit.Cost);
                    remaining = Math.Min(remaining, limit.ToleranceMicros / limit.EmissionMicros - used);
                }
                return ValueTask.FromResult(new SharedAcquire(SharedStatus.Admitted, 0, remaining, 0));
            }
        }

        public ValueTask RefundAsync(IReadOnlyList<SharedLimit> limits)
        {
            lock (Acquires)
            {
                Refunds.Add(limits);
                foreach (var limit in limits)
                {
                    Used.AddOrUpdate(limit.Key, 0, (_, u) => u - limit.Cost);
                }
            }
            return ValueTask.CompletedTask;
        }
    }

    private const string Policy = """
        { "version": "1", "default": "deny",
          "all_tools": { "limits": [ { "counter": "everything", "window": "hour", "max": 100, "scope": "global" } ] },
          "tools": {
            "pay": { "limits": [ { "counter": "spend", "window": "day", "max": 10, "scope": "identity", "increment_from": "args.amount" },
                                  { "counter": "pay_session", "window": "hour", "max": 2, "scope": "session" } ] },
            "read": {}
          } }
        """;

    private static readonly CallContext Agent = new("agent-1", "ops", "session-1");

    private static (DecisionEngine Engine, FakeShared Shared, PolicyModel Policy) Make(SharedFailMode mode = SharedFailMode.Closed)
    {
        var shared = new FakeShared(mode);
        return (new DecisionEngine(new RateLimitStore(), shared), shared, Policies.Compile(Policy));
    }

    private static async Task<Decision> DecideAsync(DecisionEngine engine, PolicyModel policy, string tool, string arguments = "{}", CallContext? context = null)
    {
        engine.Decide(policy, context ?? Agent, tool, System.Text.Encoding.UTF8.GetBytes(arguments), approved: false, out var decision);
        return await engine.SettleSharedAsync(policy, context ?? Agent, decision);
    }

    [Fact]
    public async Task Global_identity_and_grant_limits_go_to_the_shared_store_in_one_acquire_and_session_limits_stay_local()
    {
        var (engine, shared, policy) = Make();
        engine.Decide(policy, Agent, "pay", """{"amount":3}"""u8, approved: false, out var pending);
        Assert.True(pending.NeedsShared);
        Assert.Equal(DecisionOutcome.Allow, pending.Outcome);
        Assert.Empty(shared.Acquires); // nothing shared taken before the await

        var decision = await engine.SettleSharedAsync(policy, Agent, pending);
        Assert.Equal(DecisionOutcome.Allow, decision.Outcome);
        Assert.False(decision.NeedsShared);
        var acquire = Assert.Single(shared.Acquires);
        Assert.Equal(2, acquire.Count); // everything (global) and spend (identity); pay_session is local
        Assert.Contains(acquire, l => l.Key.Contains("|everything/100/3600|3|", StringComparison.Ordinal) && l.Cost == 1);
        Assert.Contains(acquire, l => l.Key.Contains("|spend/10/86400|1|agent-1|", StringComparison.Ordinal) && l.Cost == 3);
        Assert.Equal(1, engine.Store.Count); // the session bucket
    }

    [Fact]
    public async Task A_call_without_shared_limits_never_waits_for_the_store()
    {
        var (engine, shared, _) = Make();
        var policy = Policies.Compile("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "s", "window": "hour", "max": 5, "scope": "session" } ] } } }""");
        engine.Decide(policy, Agent, "t", "{}"u8, approved: false, out var decision);
        Assert.False(decision.NeedsShared);
        Assert.Equal(DecisionOutcome.Allow, decision.Outcome);
        Assert.Empty(shared.Acquires);
    }

    [Fact]
    public async Task A_shared_refusal_gives_the_session_tokens_back()
    {
        var (engine, shared, policy) = Make();
        Assert.Equal(DecisionOutcome.Allow, (await DecideAsync(engine, policy, "pay", """{"amount":9}""")).Outcome);
        var refused = await DecideAsync(engine, policy, "pay", """{"amount":2}""");
        Assert.Equal((DecisionOutcome.RateLimited, "tools.pay.limits[0]"), (refused.Outcome, refused.Rule));
        Assert.Equal(5000, refused.RetryAfterMs);
        Assert.Equal(0, refused.ChargeCount);
        // pay_session (max 2) still has one token: the refused call's was given back.
        Assert.Equal(DecisionOutcome.Allow, (await DecideAsync(engine, policy, "pay", """{"amount":1}""")).Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, (await DecideAsync(engine, policy, "pay", """{"amount":0}""")).Outcome); // session limit now
    }

    [Fact]
    public async Task Fail_closed_refuses_with_store_unavailable_and_takes_nothing()
    {
        var (engine, shared, policy) = Make(SharedFailMode.Closed);
        shared.Down = true;
        var refused = await DecideAsync(engine, policy, "pay", """{"amount":1}""");
        Assert.Equal(DecisionOutcome.StoreUnavailable, refused.Outcome);
        Assert.Equal(-32018, Sidecar.Protocol.ErrorCodes.For(refused));
        Assert.Contains("unreachable", refused.Reason, StringComparison.Ordinal);
        Assert.Equal(1000, refused.RetryAfterMs);
        Assert.Equal(1, engine.SharedUnavailable);
        shared.Down = false;
        // The session token went back: two calls still pass pay_session.
        Assert.Equal(DecisionOutcome.Allow, (await DecideAsync(engine, policy, "pay", """{"amount":1}""")).Outcome);
        Assert.Equal(DecisionOutcome.Allow, (await DecideAsync(engine, policy, "pay", """{"amount":1}""")).Outcome);
    }

    [Fact]
    public async Task Fail_open_decides_with_this_replicas_buckets_and_says_so()
    {
        var (engine, shared, policy) = Make(SharedFailMode.Open);
        var outages = new List<string>();
        engine.SharedOutage = outages.Add;
        shared.Down = true;
        Assert.Equal(DecisionOutcome.Allow, (await DecideAsync(engine, policy, "pay", """{"amount":6}""")).Outcome);
        var local = await DecideAsync(engine, policy, "pay", """{"amount":6}""");
        Assert.Equal((DecisionOutcome.RateLimited, "tools.pay.limits[0]"), (local.Outcome, local.Rule)); // 6 + 6 > 10, locally
        Assert.Equal(2, engine.SharedFallbacks);
        Assert.Single(outages); // logged at most once a second
        Assert.Contains("own buckets", outages[0], StringComparison.Ordinal);
    }

    [Fact]
    public async Task Refunds_of_a_failed_call_reach_the_shared_store()
    {
        var (engine, shared, policy) = Make();
        var decision = await DecideAsync(engine, policy, "pay", """{"amount":4}""");
        Assert.Equal(4, shared.Used.Single(u => u.Key.Contains("spend", StringComparison.Ordinal)).Value);
        engine.Refund(ref decision);
        var refund = Assert.Single(shared.Refunds);
        Assert.Equal(2, refund.Count);
        Assert.Equal(0, shared.Used.Single(u => u.Key.Contains("spend", StringComparison.Ordinal)).Value);
        // Copied charges (a forwarded call's) refund the same way.
        var again = await DecideAsync(engine, policy, "pay", """{"amount":4}""");
        engine.Refund(DecisionEngine.CopyCharges(again));
        Assert.Equal(2, shared.Refunds.Count);
    }

    [Fact]
    public async Task An_amount_above_max_is_refused_without_a_round_trip()
    {
        var (engine, shared, policy) = Make();
        var refused = await DecideAsync(engine, policy, "pay", """{"amount":11}""");
        Assert.Equal(DecisionOutcome.RateLimited, refused.Outcome);
        Assert.Empty(shared.Acquires);
    }
}
