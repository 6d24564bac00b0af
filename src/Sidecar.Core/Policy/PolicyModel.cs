using System.Collections.Frozen;
using System.Text.RegularExpressions;

namespace Sidecar.Policy;

/// <summary>
/// A compiled, immutable policy. Built once per load by <see cref="PolicyCompiler"/>; swapped whole on reload and read
/// without locks. Tool names are looked up from a <see cref="ReadOnlySpan{T}"/> of chars without allocating.
/// </summary>
public sealed class PolicyModel
{
    private readonly FrozenDictionary<string, RuleModel> _rules;
    private readonly FrozenDictionary<string, RuleModel>.AlternateLookup<ReadOnlySpan<char>> _lookup;
    private readonly FrozenSet<string>.AlternateLookup<ReadOnlySpan<char>> _names;
    private readonly FrozenDictionary<string, string>.AlternateLookup<ReadOnlySpan<char>> _pins;

    /// <summary>The rule a call is denied by when its tool's definition no longer matches its pin.</summary>
    public const string PinRule = "pin";

    /// <summary>The reason a call is denied with when its tool's definition no longer matches its pin.</summary>
    public const string PinChangedReason = "tool definition changed since it was pinned";

    internal PolicyModel(PolicyConfig config, string counterSpace, FrozenDictionary<string, RuleModel> rules,
        RuleModel? allTools, RuleModel defaultRule, RuleModel hiddenRule, IReadOnlyList<CounterModel> counters,
        FrozenDictionary<string, string> pins)
    {
        Config = config;
        CounterSpace = counterSpace;
        _rules = rules;
        _lookup = rules.GetAlternateLookup<ReadOnlySpan<char>>();
        _names = rules.Keys.ToFrozenSet(StringComparer.Ordinal).GetAlternateLookup<ReadOnlySpan<char>>();
        AllTools = allTools;
        DefaultRule = defaultRule;
        HiddenRule = hiddenRule;
        Counters = counters;
        Pins = pins;
        HasPins = pins.Count > 0;
        _pins = pins.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    /// <summary>What the user wrote.</summary>
    public PolicyConfig Config { get; }

    public PolicyMode Mode => Config.Mode;

    public PolicyDefault Default => Config.Default;

    /// <summary>Namespace of this policy's counters in the <see cref="RateLimiting.RateLimitStore"/> (usually the server name).</summary>
    public string CounterSpace { get; }

    /// <summary>The <c>all_tools</c> rule, applied to every call that the tool's own rule lets through.</summary>
    public RuleModel? AllTools { get; }

    /// <summary>Applies to tools the policy does not name: allow or deny per <c>default</c>.</summary>
    public RuleModel DefaultRule { get; }

    /// <summary>Applies to tools listed in <c>hide</c>: always denied.</summary>
    public RuleModel HiddenRule { get; }

    public IReadOnlyList<CounterModel> Counters { get; }

    /// <summary>The rule that governs <paramref name="tool"/>: hidden, named, or the default.</summary>
    public RuleModel Resolve(ReadOnlySpan<char> tool)
        => _lookup.TryGetValue(tool, out var rule) ? rule : DefaultRule;

    public RuleModel Resolve(string tool) => Resolve(tool.AsSpan());

    /// <summary>
    /// The tool's name as the policy holds it (a tool it names or hides), else <paramref name="other"/>: a label whose
    /// values the policy bounds, found without allocating.
    /// </summary>
    public string NameOf(ReadOnlySpan<char> tool, string other)
        => _names.TryGetValue(tool, out var name) ? name : other;

    /// <summary>True when <c>tools/list</c> may show the tool: it is not hidden and not denied outright.</summary>
    public bool IsVisible(ReadOnlySpan<char> tool) => Resolve(tool).Action != RuleAction.Deny;

    /// <summary><c>pins</c>: tool name → the <c>sha256:…</c> hash its definition must still have.</summary>
    public FrozenDictionary<string, string> Pins { get; }

    /// <summary>Whether the policy pins any tool (checked first on the call path, so a policy without pins pays nothing).</summary>
    public bool HasPins { get; }

    /// <summary>The hash <paramref name="tool"/> is pinned to, found without allocating; false when it is not pinned.</summary>
    public bool TryGetPin(ReadOnlySpan<char> tool, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? hash)
    {
        if (HasPins && _pins.TryGetValue(tool, out hash))
        {
            return true;
        }
        hash = null;
        return false;
    }
}

/// <summary>A compiled rule. <see cref="Id"/> names it in decisions (<c>tools.start_proxy</c>, <c>default</c>, <c>hide</c>).</summary>
public sealed class RuleModel
{
    internal RuleModel(string id, RuleAction action, string reason, ConditionModel[] require, ConditionModel[] denyIf,
        LimitModel[] limits, TimeSpan approvalTimeout, string allowReason = AllowedByPolicy)
    {
        Id = id;
        Action = action;
        Reason = reason;
        AllowReason = allowReason;
        Require = require;
        DenyIf = denyIf;
        Limits = limits;
        ApprovalTimeout = approvalTimeout;
    }

    public string Id { get; }
    public RuleAction Action { get; }

    /// <summary>The reason of an allowed call.</summary>
    public const string AllowedByPolicy = "allowed by policy";

    /// <summary>The reason given when this rule denies (the user's <c>reason</c>, or a generated one).</summary>
    public string Reason { get; }

    /// <summary>
    /// The reason recorded when this rule lets a call through: never the rule's own <c>reason</c>, which explains a
    /// refusal (<c>"sums are capped at a million"</c> on an allowed <c>get-sum</c> would read as a denial).
    /// </summary>
    public string AllowReason { get; }
    public ConditionModel[] Require { get; }
    public ConditionModel[] DenyIf { get; }
    public LimitModel[] Limits { get; }
    public TimeSpan ApprovalTimeout { get; }

    public override string ToString() => Id;
}

/// <summary>A compiled condition: the argument path as UTF-8 segments and a pre-parsed operand.</summary>
public sealed class ConditionModel
{
    internal ConditionModel(string id, string path, byte[][] segments, ConditionOp op, Operand operand, Operand[] list,
        Regex? regex, string description, string reason)
    {
        Id = id;
        Path = path;
        Segments = segments;
        Op = op;
        Operand = operand;
        List = list;
        Regex = regex;
        Description = description;
        Reason = reason;
    }

    public string Id { get; }
    public string Path { get; }
    internal byte[][] Segments { get; }
    public ConditionOp Op { get; }
    internal Operand Operand { get; }
    internal Operand[] List { get; }
    internal Regex? Regex { get; }

    /// <summary>e.g. <c>args.key in ["listen_host", "mode"]</c>.</summary>
    public string Description { get; }

    /// <summary>The message the agent gets when this condition blocks a call.</summary>
    public string Reason { get; }

    public override string ToString() => Description;
}

internal enum OperandKind : byte { None, String, Number, True, False, Null }

/// <summary>A scalar operand, pre-encoded for comparing against the raw JSON of an argument.</summary>
internal readonly struct Operand(OperandKind kind, byte[]? utf8, decimal number, double approx, bool exact)
{
    public OperandKind Kind { get; } = kind;
    public byte[]? Utf8 { get; } = utf8;
    public decimal Number { get; } = number;
    /// <summary>The number as a double, for values outside decimal's range.</summary>
    public double Approx { get; } = approx;
    /// <summary>True when <see cref="Number"/> holds the exact value.</summary>
    public bool Exact { get; } = exact;
}

/// <summary>A counter: the bucket parameters shared by every limit naming it.</summary>
public sealed class CounterModel(string name, long max, long windowSeconds, LimitScope scope)
{
    public string Name { get; } = name;
    public long Max { get; } = max;
    public long WindowSeconds { get; } = windowSeconds;
    public LimitScope Scope { get; } = scope;

    /// <summary>
    /// The counter's bucket name: its name and its definition. A reload that keeps a counter's definition finds its
    /// buckets (and their state) again; one that changes the max or the window starts the counter afresh, since the
    /// old state means something else under a new rate.
    /// </summary>
    public string BucketName { get; } = $"{name}/{max}/{windowSeconds}";

    public override string ToString() => $"{Name}: {Max} per {WindowSeconds}s ({Scope.ToString().ToLowerInvariant()})";
}

/// <summary>A compiled limit: which counter it spends, and how much (1, or the number at <c>increment_from</c>).</summary>
public sealed class LimitModel
{
    internal LimitModel(string id, CounterModel counter, string? incrementFrom, byte[][]? incrementSegments, string rejectReason)
    {
        Id = id;
        Counter = counter;
        IncrementFrom = incrementFrom;
        IncrementSegments = incrementSegments;
        RejectReason = rejectReason;
        InvalidIncrementReason = $"{incrementFrom} must be a non-negative number: it is spent from counter \"{counter.Name}\"";
        TooLargeReason = $"{incrementFrom} exceeds what counter \"{counter.Name}\" can ever allow ({counter.Max} per {PolicyCompiler.DescribeWindow(counter.WindowSeconds)})";
    }

    public string Id { get; }
    public CounterModel Counter { get; }
    public string? IncrementFrom { get; }
    internal byte[][]? IncrementSegments { get; }

    /// <summary>e.g. <c>rate limit start_proxy_rate exceeded: 10 per minute</c>.</summary>
    public string RejectReason { get; }

    /// <summary>Given when the <c>increment_from</c> argument is missing, not a number, or negative.</summary>
    public string InvalidIncrementReason { get; }

    /// <summary>Given when one call would spend more than the counter's <c>max</c>: it can never be admitted.</summary>
    public string TooLargeReason { get; }
}
