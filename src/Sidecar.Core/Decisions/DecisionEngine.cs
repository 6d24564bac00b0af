using System.Runtime.CompilerServices;
using System.Text.Json;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Decisions;

/// <summary>
/// Decides one <c>tools/call</c>: (identity, grant, session, tool, arguments) → allow | deny | rate-limited |
/// require-approval | invalid-arguments. Allocation-free and lock-free; never throws on bad arguments.
/// </summary>
/// <remarks>
/// Order: the tool's rule (hidden / named / default) and <c>all_tools</c> may deny outright; then a pin the tool's
/// definition no longer matches; then <c>deny_if</c>
/// conditions (all_tools first), then <c>require</c> conditions, then approval, then limits — so that a call that
/// is refused for any other reason spends no tokens. Limits are taken all or nothing.
/// </remarks>
public sealed partial class DecisionEngine(RateLimitStore store, ISharedLimitStore? shared = null)
{
    public RateLimitStore Store { get; } = store;

    /// <summary>Where counters of scope global, identity and grant live with <c>rateLimits.store: redis</c>; null: all in <see cref="Store"/>.</summary>
    public ISharedLimitStore? Shared { get; } = shared;

    /// <summary>The arguments of a call that has none: an empty object, as the upstream will read it.</summary>
    public static ReadOnlySpan<byte> NoArguments => "{}"u8;

    /// <summary>Decides a call whose arguments are the UTF-8 JSON object <paramref name="arguments"/> (empty = no arguments).</summary>
    public void Decide(PolicyModel policy, in CallContext context, ReadOnlySpan<char> tool, ReadOnlySpan<byte> arguments,
        bool approved, out Decision decision, PinWatch? pins = null)
        => Decide(policy, context, tool, new Utf8JsonReader(arguments.IsEmpty ? NoArguments : arguments), approved, out decision, pins);

    /// <summary>
    /// Decides a call whose arguments are a JSON object in <paramref name="arguments"/>, a reader positioned before it
    /// (a call without arguments passes a reader over <see cref="NoArguments"/>). Malformed arguments are refused as
    /// invalid arguments; this method never throws on them. With <paramref name="pins"/> (what the server's pinned
    /// tools were last seen as), a pinned tool last seen with another definition is denied (rule <c>pin</c>) before
    /// its conditions, approval and limits are looked at.
    /// </summary>
    public void Decide(PolicyModel policy, in CallContext context, ReadOnlySpan<char> tool, Utf8JsonReader arguments,
        bool approved, out Decision decision, PinWatch? pins = null)
    {
        decision = default;
        decision.Enforced = policy.Mode == PolicyMode.Enforce;
        decision.RetryAfterMs = -1;
        decision.Remaining = -1;

        var rule = policy.Resolve(tool);
        var all = policy.AllTools;
        if (rule.Action == RuleAction.Deny)
        {
            Set(ref decision, DecisionOutcome.Deny, rule.Id, rule.Reason);
            return;
        }
        if (all is { Action: RuleAction.Deny })
        {
            Set(ref decision, DecisionOutcome.Deny, all.Id, all.Reason);
            return;
        }
        if (pins is not null && policy.HasPins && pins.Drifted(policy, tool))
        {
            Set(ref decision, DecisionOutcome.Deny, PolicyModel.PinRule, PolicyModel.PinChangedReason);
            return;
        }

        try
        {
            if ((all is not null && CheckConditions(all, arguments, ref decision)) || CheckConditions(rule, arguments, ref decision))
            {
                return;
            }

            if (!approved && (rule.Action == RuleAction.RequireApproval || all is { Action: RuleAction.RequireApproval }))
            {
                var approvalRule = rule.Action == RuleAction.RequireApproval ? rule : all!;
                Set(ref decision, DecisionOutcome.RequireApproval, approvalRule.Id, approvalRule.Reason);
                decision.ApprovalTimeout = approvalRule.ApprovalTimeout;
                return;
            }

            if (rule.Limits.Length > 0 || all is { Limits.Length: > 0 })
            {
                // One clock read per call: every limit of the call is charged at the same instant.
                var now = Store.Now;
                if ((all is not null && !TakeLimits(policy, all, context, arguments, now, ref decision))
                    || !TakeLimits(policy, rule, context, arguments, now, ref decision))
                {
                    return;
                }
            }
        }
        catch (Exception ex) when (ex is JsonException or InvalidOperationException)
        {
            // The gateway's scanner never lets malformed arguments through; this keeps the engine total on direct use.
            Reject(ref decision, DecisionOutcome.InvalidArguments, rule.Id, "arguments are not a valid JSON object");
            return;
        }

        Set(ref decision, DecisionOutcome.Allow, rule.Id, rule.AllowReason);
    }

    /// <summary>
    /// The tokens a decision took, for a caller that keeps them beyond the decision (a forwarded call that may fail
    /// upstream): an array of exactly the charges taken, or null when it took none.
    /// </summary>
    internal static Charge[]? CopyCharges(in Decision decision)
    {
        if (decision.ChargeCount == 0)
        {
            return null;
        }
        var charges = new Charge[decision.ChargeCount];
        for (var i = 0; i < charges.Length; i++)
        {
            charges[i] = decision.Charges[i];
        }
        return charges;
    }

    /// <summary>Gives back the tokens of <see cref="CopyCharges"/> (shared ones in one script, not awaited).</summary>
    internal void Refund(ReadOnlySpan<Charge> charges)
    {
        List<SharedLimit>? shared = null;
        foreach (ref readonly var charge in charges)
        {
            if (charge.Bucket is { } bucket)
            {
                Store.Refund(bucket, charge.Counter.Max, charge.Counter.WindowSeconds, charge.Cost);
            }
            else if (charge.SharedKey is { } key)
            {
                (shared ??= []).Add(SharedLimitOf(key, charge));
            }
        }
        if (shared is not null)
        {
            _ = RefundSharedAsync(shared);
        }
    }

    /// <summary>Gives back every token a decision took: call it when an allowed call fails upstream. Idempotent.</summary>
    public void Refund(ref Decision decision)
    {
        Refund(((ReadOnlySpan<Charge>)decision.Charges)[..decision.ChargeCount]);
        decision.ChargeCount = 0;
    }

    /// <summary>Returns true when a condition decided the call (deny or invalid arguments).</summary>
    private static bool CheckConditions(RuleModel rule, Utf8JsonReader arguments, ref Decision decision)
    {
        foreach (var condition in rule.DenyIf)
        {
            if (ArgumentEvaluator.Evaluate(condition, arguments) != ConditionResult.False)
            {
                Set(ref decision, DecisionOutcome.Deny, condition.Id, condition.Reason);
                return true;
            }
        }
        foreach (var condition in rule.Require)
        {
            if (ArgumentEvaluator.Evaluate(condition, arguments) != ConditionResult.True)
            {
                Set(ref decision, DecisionOutcome.InvalidArguments, condition.Id, condition.Reason);
                return true;
            }
        }
        return false;
    }

    private bool TakeLimits(PolicyModel policy, RuleModel rule, in CallContext context, Utf8JsonReader arguments, long now, ref Decision decision)
    {
        foreach (var limit in rule.Limits)
        {
            var counter = limit.Counter;
            long cost = 1;
            if (limit.IncrementSegments is { } segments && !ArgumentEvaluator.TryReadAmount(arguments, segments, counter.Max, out cost))
            {
                Reject(ref decision, DecisionOutcome.InvalidArguments, limit.Id, limit.InvalidIncrementReason);
                return false;
            }

            if (Shared is not null && counter.Scope != LimitScope.Session && cost <= counter.Max)
            {
                // Taken in Redis with the call's other shared limits, in one script (SettleSharedAsync).
                decision.Charges[decision.ChargeCount++] = Charge.Shared(limit, cost);
                decision.NeedsShared = true;
                continue;
            }
            var key = KeyFor(policy.CounterSpace, counter, context);
            var result = Store.TryAcquire(key, counter.Max, counter.WindowSeconds, cost, now, out var bucket);
            if (!result.Acquired)
            {
                Reject(ref decision, DecisionOutcome.RateLimited, limit.Id,
                    result.Status == AcquireStatus.Never ? limit.TooLargeReason : limit.RejectReason);
                decision.RetryAfterMs = result.RetryAfterTicks < 0 ? -1 : Store.TicksToMilliseconds(result.RetryAfterTicks);
                decision.Remaining = result.Remaining;
                return false;
            }
            decision.Charges[decision.ChargeCount++] = new Charge(bucket!, counter, cost);
            if (decision.Remaining < 0 || result.Remaining < decision.Remaining)
            {
                decision.Remaining = result.Remaining;
            }
        }
        return true;
    }

    /// <summary>Records a refusal and gives back what earlier limits of the same call took (all or nothing).</summary>
    private void Reject(ref Decision decision, DecisionOutcome outcome, string rule, string reason)
    {
        Refund(ref decision);
        decision.NeedsShared = false; // a refused call takes no shared tokens: nothing left to settle
        Set(ref decision, outcome, rule, reason);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static BucketKey KeyFor(string space, CounterModel counter, in CallContext context) => counter.Scope switch
    {
        LimitScope.Grant => new BucketKey(space, counter.BucketName, (byte)LimitScope.Grant, context.Identity ?? "", context.Grant ?? ""),
        LimitScope.Identity => new BucketKey(space, counter.BucketName, (byte)LimitScope.Identity, context.Identity ?? "", null),
        LimitScope.Session => new BucketKey(space, counter.BucketName, (byte)LimitScope.Session, context.Session ?? "", null),
        _ => new BucketKey(space, counter.BucketName, (byte)LimitScope.Global, null, null),
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Set(ref Decision decision, DecisionOutcome outcome, string rule, string reason)
    {
        decision.Outcome = outcome;
        decision.Rule = rule;
        decision.Reason = reason;
    }
}
