using Sidecar.Configuration;

namespace Sidecar.Policy;

public enum PolicyDefault : byte { Deny, Allow }

public enum PolicyMode : byte
{
    /// <summary>Decisions are enforced.</summary>
    Enforce,
    /// <summary>Decisions are made and audited but nothing is blocked.</summary>
    Shadow,
}

public enum RuleAction : byte { Allow, Deny, RequireApproval }

public enum ConditionOp : byte { Eq, Neq, In, NotIn, Lt, Lte, Gt, Gte, Regex, Contains, Exists }

public enum LimitScope : byte
{
    /// <summary>Per identity and grant (the default).</summary>
    Grant,
    Identity,
    /// <summary>Per MCP session.</summary>
    Session,
    Global,
}

/// <summary>A policy file as the user wrote it (see README "Policy format"). Compiled into <see cref="PolicyModel"/>.</summary>
public sealed record PolicyConfig(
    string Version,
    PolicyDefault Default,
    PolicyMode Mode,
    IReadOnlyList<string> Hide,
    RuleConfig? AllTools,
    IReadOnlyList<ToolRuleConfig> Tools,
    string? Description,
    IReadOnlyList<ToolPinConfig> Pins);

public sealed record ToolRuleConfig(string Tool, RuleConfig Rule);

/// <summary>
/// <c>pins.NAME</c>: the definition hash (<c>sha256:</c> and 64 lowercase hex digits, as <c>sidecar tools</c> prints it)
/// the tool must still have upstream; a tool whose definition changed is hidden and denied (rule <c>pin</c>).
/// </summary>
public sealed record ToolPinConfig(string Tool, string Hash, SourceLocation Location);

/// <summary>A rule: for one tool (<c>tools.NAME</c>) or for every tool (<c>all_tools</c>).</summary>
/// <param name="Id">The rule's name in decisions and audit, e.g. <c>tools.start_proxy</c>.</param>
public sealed record RuleConfig(
    string Id,
    SourceLocation Location,
    RuleAction Action,
    string? Reason,
    IReadOnlyList<ConditionConfig> Require,
    IReadOnlyList<ConditionConfig> DenyIf,
    IReadOnlyList<LimitConfig> Limits,
    TimeSpan? ApprovalTimeout,
    string? Description);

/// <summary>A condition over the call's arguments, e.g. <c>{ "path": "args.key", "op": "in", "value": [...] }</c>.</summary>
/// <param name="Segments">The path below <c>args</c>, split on dots.</param>
public sealed record ConditionConfig(
    string Id,
    SourceLocation Location,
    string Path,
    IReadOnlyList<string> Segments,
    ConditionOp Op,
    ConditionValue? Value);

/// <summary>A scalar or list operand of a condition.</summary>
public sealed record ConditionValue(ConfigNodeKind Kind, string? Text, IReadOnlyList<ConditionValue>? Items)
{
    public override string ToString() => Kind switch
    {
        ConfigNodeKind.String => "\"" + Text + "\"",
        ConfigNodeKind.Number => Text!,
        ConfigNodeKind.True => "true",
        ConfigNodeKind.False => "false",
        ConfigNodeKind.Array => "[" + string.Join(", ", Items!) + "]",
        _ => "null",
    };
}

/// <summary>A rate limit: a token bucket of <see cref="Max"/> tokens refilled over <see cref="WindowSeconds"/>.</summary>
public sealed record LimitConfig(
    string Id,
    SourceLocation Location,
    string Counter,
    long Max,
    long WindowSeconds,
    LimitScope Scope,
    string? IncrementFrom,
    IReadOnlyList<string>? IncrementSegments);
