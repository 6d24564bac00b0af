using System.Runtime.CompilerServices;
using Sidecar.Approvals;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Decisions;

public enum DecisionOutcome : byte
{
    Allow,
    /// <summary>Denied by a rule, by <c>hide</c>, by the default, or by a <c>deny_if</c> condition.</summary>
    Deny,
    /// <summary>A limit has no tokens left; <see cref="Decision.RetryAfterMs"/> says when it will.</summary>
    RateLimited,
    /// <summary>The call waits for a human decision (<c>action: require_approval</c>).</summary>
    RequireApproval,
    /// <summary>Arguments fail a <c>require</c> condition, or a limit's <c>increment_from</c> is missing or negative.</summary>
    InvalidArguments,

    /// <summary>A limit's shared counter (Redis) could not be reached and <c>failMode</c> is <c>closed</c> (-32018).</summary>
    StoreUnavailable,
}

public static class DecisionOutcomeNames
{
    /// <summary>The outcome's name in errors, audit and <c>sidecar explain</c>: <c>allow</c>, <c>deny</c>, <c>rate_limited</c>, <c>require_approval</c>, <c>invalid_arguments</c>.</summary>
    public static string ToWireName(this DecisionOutcome outcome) => outcome switch
    {
        DecisionOutcome.Allow => "allow",
        DecisionOutcome.Deny => "deny",
        DecisionOutcome.RateLimited => "rate_limited",
        DecisionOutcome.RequireApproval => "require_approval",
        DecisionOutcome.StoreUnavailable => "store_unavailable",
        _ => "invalid_arguments",
    };
}

/// <summary>Who is calling: the scope keys of rate limits. Strings the caller already holds; nothing is built per call.</summary>
public readonly record struct CallContext(string? Identity, string? Grant, string? Session)
{
    public static CallContext Anonymous => default;
}

/// <summary>
/// Tokens of one limit for this call, kept so that a call failing upstream can give them back: taken from a local
/// bucket (<see cref="Bucket"/>), or from a shared counter in Redis (<see cref="SharedKey"/>; before
/// <see cref="DecisionEngine.SettleSharedAsync"/> only <see cref="Limit"/> is known).
/// </summary>
internal readonly struct Charge
{
    public Charge(RateBucket bucket, CounterModel counter, long cost)
    {
        Bucket = bucket;
        Counter = counter;
        Cost = cost;
    }

    private Charge(LimitModel limit, long cost, string? sharedKey)
    {
        Limit = limit;
        Counter = limit.Counter;
        Cost = cost;
        SharedKey = sharedKey;
    }

    /// <summary>A shared limit still to be taken (in Redis, by <see cref="DecisionEngine.SettleSharedAsync"/>).</summary>
    public static Charge Shared(LimitModel limit, long cost) => new(limit, cost, null);

    /// <summary>This shared charge, taken under <paramref name="key"/>.</summary>
    public Charge Taken(string key) => new(Limit!, Cost, key);

    public RateBucket? Bucket { get; }
    public CounterModel Counter { get; }
    public long Cost { get; }

    /// <summary>The limit of a shared charge (its rule id and reasons); null for a local one.</summary>
    public LimitModel? Limit { get; }

    /// <summary>The Redis key a shared charge was taken under; null while pending, and for a local one.</summary>
    public string? SharedKey { get; }

    public bool IsShared => Limit is not null;
}

[InlineArray(PolicyCompiler.MaxLimitsPerCall)]
internal struct ChargeBuffer
{
    private Charge _first;
}

/// <summary>
/// The outcome of one <c>tools/call</c> decision. A value type with no heap allocations: rule and reason strings
/// come from the compiled policy. In shadow mode <see cref="Enforced"/> is false and nothing is blocked.
/// </summary>
public struct Decision
{
    public DecisionOutcome Outcome;

    /// <summary>False in <c>mode: shadow</c>: the outcome is recorded but the call proceeds.</summary>
    public bool Enforced;

    /// <summary>The rule that decided, e.g. <c>tools.set_option.deny_if[0]</c>, <c>default</c>, <c>hide</c>.</summary>
    public string Rule;

    public string Reason;

    /// <summary>When a rate-limited call could succeed, in milliseconds; -1 when unknown or never.</summary>
    public long RetryAfterMs;

    /// <summary>Tokens left in the tightest bucket this call touched; -1 when no limit applied.</summary>
    public long Remaining;

    /// <summary>The tool's approval timeout when <see cref="Outcome"/> is <see cref="DecisionOutcome.RequireApproval"/>.</summary>
    public TimeSpan ApprovalTimeout;

    /// <summary>
    /// The approval behind this decision: the one a <c>require_approval</c> call waits for (or was refused with), or
    /// the one that released an allowed call. Null when none.
    /// </summary>
    public string? ApprovalId;

    /// <summary>Where <see cref="ApprovalId"/> stands (<see cref="ApprovalStatus.Denied"/>: refused with -32013).</summary>
    public ApprovalStatus ApprovalStatus;

    internal ChargeBuffer Charges;
    internal int ChargeCount;

    /// <summary>
    /// An allowed decision whose shared limits (Redis) are still to be taken: the caller awaits
    /// <see cref="DecisionEngine.SettleSharedAsync"/> before acting on it. Never set with the memory store.
    /// </summary>
    public bool NeedsShared;

    /// <summary>True when the call must not be forwarded.</summary>
    public readonly bool Blocks => Enforced && Outcome != DecisionOutcome.Allow;

    public readonly bool IsAllowed => Outcome == DecisionOutcome.Allow;
}
