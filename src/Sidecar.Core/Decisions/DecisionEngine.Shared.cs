using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Decisions;

/// <summary>
/// Shared limits (<c>rateLimits.store: redis</c>): <see cref="Decide(PolicyModel, in CallContext, ReadOnlySpan{char}, System.Text.Json.Utf8JsonReader, bool, out Decision)"/>
/// takes a call's local limits (scope <c>session</c>) and notes its shared ones (<see cref="Decision.NeedsShared"/>);
/// <see cref="SettleSharedAsync"/> then takes the shared ones in Redis in one round trip, all or nothing with the
/// local ones. With the memory store nothing here runs, and the decision path stays synchronous and allocation-free.
/// </summary>
public sealed partial class DecisionEngine
{
    private long _unavailable;
    private long _fallbacks;
    private long _lastFallbackLog;

    /// <summary>Calls refused with -32018 because Redis was unreachable (<c>failMode: closed</c>).</summary>
    public long SharedUnavailable => Interlocked.Read(ref _unavailable);

    /// <summary>Calls decided by this replica's own buckets because Redis was unreachable (<c>failMode: open</c>).</summary>
    public long SharedFallbacks => Interlocked.Read(ref _fallbacks);

    /// <summary>Told (rarely: at most once a second) that Redis is unreachable, with what the fail mode did.</summary>
    public Action<string>? SharedOutage { get; set; }

    /// <summary>
    /// Takes the shared limits of an allowed <paramref name="decision"/> (<see cref="Decision.NeedsShared"/>) in Redis.
    /// Admitted: the decision stays allowed, its charges keyed for refunds. Rejected: rate limited, by the limit that
    /// had too few tokens, and its local charges given back. Redis unreachable: -32018 (<c>failMode: closed</c>), or
    /// the shared limits taken from this replica's buckets instead (<c>open</c>).
    /// </summary>
    public async ValueTask<Decision> SettleSharedAsync(PolicyModel policy, CallContext context, Decision decision)
    {
        if (!decision.NeedsShared || Shared is not { } shared)
        {
            return decision;
        }
        decision.NeedsShared = false;
        if (decision.Outcome != DecisionOutcome.Allow)
        {
            return decision;
        }
        var pending = new List<(int Index, SharedLimit Limit)>(decision.ChargeCount);
        for (var i = 0; i < decision.ChargeCount; i++)
        {
            var charge = decision.Charges[i];
            if (charge.IsShared && charge.SharedKey is null)
            {
                var key = shared.KeyFor(policy.CounterSpace, charge.Counter.BucketName, (byte)charge.Counter.Scope, PartOne(charge.Counter, context), PartTwo(charge.Counter, context));
                pending.Add((i, SharedLimitOf(key, charge)));
            }
        }
        var limits = new SharedLimit[pending.Count];
        for (var i = 0; i < limits.Length; i++)
        {
            limits[i] = pending[i].Limit;
        }
        var result = await shared.AcquireAsync(limits).ConfigureAwait(false);
        switch (result.Status)
        {
            case SharedStatus.Admitted:
                foreach (var (index, limit) in pending)
                {
                    decision.Charges[index] = decision.Charges[index].Taken(limit.Key);
                }
                if (decision.Remaining < 0 || result.Remaining < decision.Remaining)
                {
                    decision.Remaining = result.Remaining;
                }
                return decision;
            case SharedStatus.Rejected:
                var failed = decision.Charges[pending[result.Failed].Index].Limit!;
                DropPending(ref decision);
                Reject(ref decision, DecisionOutcome.RateLimited, failed.Id, failed.RejectReason);
                decision.RetryAfterMs = result.RetryAfterMs;
                decision.Remaining = result.Remaining;
                return decision;
            default:
                return shared.FailMode == SharedFailMode.Open
                    ? FallBack(policy, context, decision, result.Error)
                    : Unavailable(decision, pending, result.Error);
        }
    }

    private Decision Unavailable(Decision decision, List<(int Index, SharedLimit Limit)> pending, string? error)
    {
        Interlocked.Increment(ref _unavailable);
        var limit = decision.Charges[pending[0].Index].Limit!;
        DropPending(ref decision);
        Reject(ref decision, DecisionOutcome.StoreUnavailable, limit.Id,
            $"the shared rate-limit store is unreachable ({error ?? "Redis"}), so a call that needs counter \"{limit.Counter.Name}\" is refused (rateLimits.redis.failMode: closed)");
        decision.RetryAfterMs = 1000;
        NoteOutage($"refusing calls with -32018 ({error})");
        return decision;
    }

    /// <summary><c>failMode: open</c>: the shared limits are taken from this replica's own buckets (all or nothing with the rest).</summary>
    private Decision FallBack(PolicyModel policy, CallContext context, Decision decision, string? error)
    {
        Interlocked.Increment(ref _fallbacks);
        NoteOutage($"deciding with this replica's own buckets meanwhile ({error})");
        var now = Store.Now;
        for (var i = 0; i < decision.ChargeCount; i++)
        {
            var charge = decision.Charges[i];
            if (charge.Bucket is not null || !charge.IsShared)
            {
                continue;
            }
            var counter = charge.Counter;
            var result = Store.TryAcquire(KeyFor(policy.CounterSpace, counter, context), counter.Max, counter.WindowSeconds, charge.Cost, now, out var bucket);
            if (!result.Acquired)
            {
                var limit = charge.Limit!;
                DropPending(ref decision);
                Reject(ref decision, DecisionOutcome.RateLimited, limit.Id, limit.RejectReason);
                decision.RetryAfterMs = Store.TicksToMilliseconds(result.RetryAfterTicks);
                decision.Remaining = result.Remaining;
                return decision;
            }
            decision.Charges[i] = new Charge(bucket!, counter, charge.Cost);
            if (decision.Remaining < 0 || result.Remaining < decision.Remaining)
            {
                decision.Remaining = result.Remaining;
            }
        }
        return decision;
    }

    /// <summary>Removes the shared charges not taken (so a refund gives back only what was).</summary>
    private static void DropPending(ref Decision decision)
    {
        var kept = 0;
        for (var i = 0; i < decision.ChargeCount; i++)
        {
            var charge = decision.Charges[i];
            if (!charge.IsShared || charge.SharedKey is not null)
            {
                decision.Charges[kept++] = charge;
            }
        }
        decision.ChargeCount = kept;
    }

    private void NoteOutage(string what)
    {
        var now = Environment.TickCount64;
        var last = Interlocked.Read(ref _lastFallbackLog);
        if (now - last >= 1000 && Interlocked.CompareExchange(ref _lastFallbackLog, now, last) == last)
        {
            SharedOutage?.Invoke(what);
        }
    }

    private static SharedLimit SharedLimitOf(string key, in Charge charge)
    {
        var (emission, tolerance) = RedisLimitStore.Parameters(charge.Counter.Max, charge.Counter.WindowSeconds);
        return new SharedLimit(key, charge.Cost, emission, tolerance);
    }

    private async Task RefundSharedAsync(List<SharedLimit> limits)
    {
        try
        {
            await Shared!.RefundAsync(limits).ConfigureAwait(false);
        }
        catch (ObjectDisposedException)
        {
            // Stopping.
        }
    }

    private static string? PartOne(CounterModel counter, in CallContext context) => counter.Scope switch
    {
        LimitScope.Grant or LimitScope.Identity => context.Identity ?? "",
        _ => null,
    };

    private static string? PartTwo(CounterModel counter, in CallContext context) => counter.Scope == LimitScope.Grant ? context.Grant ?? "" : null;
}
