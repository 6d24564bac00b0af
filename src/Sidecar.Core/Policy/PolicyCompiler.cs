using System.Collections.Frozen;
using System.Diagnostics.CodeAnalysis;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Sidecar.Configuration;

namespace Sidecar.Policy;

/// <summary>Turns a <see cref="PolicyConfig"/> into an immutable <see cref="PolicyModel"/>, reporting every error at once.</summary>
public static class PolicyCompiler
{
    /// <summary>Upper bound on the limits one call can spend (all_tools + the tool's own): keeps decisions allocation-free.</summary>
    public const int MaxLimitsPerCall = 8;

    /// <summary>Regexes run on the linear-time engine; this is a backstop, not the defence.</summary>
    public static readonly TimeSpan RegexTimeout = TimeSpan.FromMilliseconds(200);

    private const int RegexCacheSize = 4096;
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, Regex> s_regexes = new(StringComparer.Ordinal);

    /// <summary>Reads and compiles a policy file's bytes. Returns null with the errors in <paramref name="diagnostics"/>.</summary>
    public static PolicyModel? Load(ReadOnlySpan<byte> utf8Json, string counterSpace, DiagnosticBag diagnostics)
    {
        var config = PolicyConfigReader.Read(utf8Json, diagnostics);
        return config is null ? null : Compile(config, counterSpace, diagnostics);
    }

    /// <summary>Reads and compiles a policy file; throws <see cref="ConfigValidationException"/> with every error.</summary>
    public static PolicyModel LoadFile(string path, string? counterSpace = null)
    {
        var diagnostics = new DiagnosticBag(path);
        var bytes = diagnostics.ReadFile(path, "policy") ?? throw new ConfigValidationException(diagnostics.Items);
        return Load(bytes, counterSpace ?? Path.GetFullPath(path), diagnostics)
            ?? throw new ConfigValidationException(diagnostics.Items);
    }

    public static PolicyModel? Compile(PolicyConfig config, string counterSpace, DiagnosticBag diagnostics)
    {
        var errorsBefore = diagnostics.Items.Count;
        var counters = new Dictionary<string, (CounterModel Model, LimitConfig First)>(StringComparer.Ordinal);

        var allTools = config.AllTools is null ? null : CompileRule(config.AllTools, null, counters, diagnostics);
        var rules = new Dictionary<string, RuleModel>(StringComparer.Ordinal);
        foreach (var tool in config.Tools)
        {
            var rule = CompileRule(tool.Rule, tool.Tool, counters, diagnostics);
            rules[tool.Tool] = rule;
            var total = rule.Limits.Length + (allTools?.Limits.Length ?? 0);
            if (total > MaxLimitsPerCall)
            {
                diagnostics.Add("$." + tool.Rule.Id + ".limits", tool.Rule.Location,
                    $"a call to \"{tool.Tool}\" would spend {total} limits (including all_tools); at most {MaxLimitsPerCall} are supported");
            }
        }

        var hiddenRule = new RuleModel("hide", RuleAction.Deny, "the tool is hidden by policy", [], [], [], TimeSpan.Zero);
        foreach (var name in config.Hide)
        {
            rules[name] = hiddenRule;
        }

        var defaultRule = config.Default == PolicyDefault.Allow
            ? new RuleModel("default", RuleAction.Allow, "allowed by the policy default", [], [], [], TimeSpan.Zero, "allowed by the policy default")
            : new RuleModel("default", RuleAction.Deny, "the tool is not allowed by policy (default deny)", [], [], [], TimeSpan.Zero);

        if (diagnostics.Items.Count > errorsBefore)
        {
            return null;
        }

        var counterList = new List<CounterModel>(counters.Count);
        foreach (var c in counters.Values)
        {
            counterList.Add(c.Model);
        }
        var pins = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pin in config.Pins)
        {
            pins[pin.Tool] = pin.Hash;
        }
        return new PolicyModel(config, counterSpace, rules.ToFrozenDictionary(StringComparer.Ordinal), allTools, defaultRule,
            hiddenRule, counterList, pins.ToFrozenDictionary(StringComparer.Ordinal));
    }

    private static RuleModel CompileRule(RuleConfig rule, string? tool, Dictionary<string, (CounterModel, LimitConfig)> counters,
        DiagnosticBag diagnostics)
    {
        var denyIf = new ConditionModel[rule.DenyIf.Count];
        for (var i = 0; i < denyIf.Length; i++)
        {
            denyIf[i] = CompileCondition(rule.DenyIf[i], rule.Reason, deny: true, diagnostics);
        }
        var require = new ConditionModel[rule.Require.Count];
        for (var i = 0; i < require.Length; i++)
        {
            require[i] = CompileCondition(rule.Require[i], rule.Reason, deny: false, diagnostics);
        }
        var limits = new LimitModel[rule.Limits.Count];
        for (var i = 0; i < limits.Length; i++)
        {
            limits[i] = CompileLimit(rule.Limits[i], counters, diagnostics);
        }

        var reason = rule.Reason ?? rule.Action switch
        {
            RuleAction.Deny => tool is null ? "all tools are denied by policy" : $"\"{tool}\" is denied by policy",
            RuleAction.RequireApproval => "the call requires approval",
            _ => RuleModel.AllowedByPolicy,
        };
        return new RuleModel(rule.Id, rule.Action, reason, require, denyIf, limits, rule.ApprovalTimeout ?? TimeSpan.Zero);
    }

    private static LimitModel CompileLimit(LimitConfig limit, Dictionary<string, (CounterModel Model, LimitConfig First)> counters,
        DiagnosticBag diagnostics)
    {
        if (counters.TryGetValue(limit.Counter, out var existing))
        {
            var m = existing.Model;
            if (m.Max != limit.Max || m.WindowSeconds != limit.WindowSeconds || m.Scope != limit.Scope)
            {
                diagnostics.Add("$." + limit.Id, limit.Location,
                    $"counter \"{limit.Counter}\" is already declared at $.{existing.First.Id} (line {existing.First.Location.Line}) " +
                    $"with max {m.Max}, window {m.WindowSeconds}s, scope {Lower(m.Scope)}; limits sharing a counter must agree on max, window and scope");
            }
        }
        else
        {
            existing = (new CounterModel(limit.Counter, limit.Max, limit.WindowSeconds, limit.Scope), limit);
            counters.Add(limit.Counter, existing);
        }
        var reason = $"rate limit \"{limit.Counter}\" exceeded: {limit.Max} per {DescribeWindow(limit.WindowSeconds)}"
            + (limit.Scope == LimitScope.Global ? "" : " per " + Lower(limit.Scope));
        return new LimitModel(limit.Id, existing.Model, limit.IncrementFrom, limit.IncrementSegments is null ? null : Encode(limit.IncrementSegments), reason);
    }

    private static string Lower(LimitScope scope) => scope switch
    {
        LimitScope.Grant => "grant",
        LimitScope.Identity => "identity",
        LimitScope.Session => "session",
        _ => "global",
    };

    internal static string DescribeWindow(long seconds) => seconds switch
    {
        1 => "second",
        60 => "minute",
        3600 => "hour",
        86400 => "day",
        _ => seconds.ToString(CultureInfo.InvariantCulture) + "s",
    };

    private static ConditionModel CompileCondition(ConditionConfig condition, string? ruleReason, bool deny, DiagnosticBag diagnostics)
    {
        Regex? regex = null;
        var operand = default(Operand);
        Operand[] list = [];
        if (condition.Op == ConditionOp.Regex)
        {
            regex = CompileRegex(condition, diagnostics);
        }
        else if (condition.Value is { Kind: ConfigNodeKind.Array, Items: { } items })
        {
            list = new Operand[items.Count];
            for (var i = 0; i < list.Length; i++)
            {
                list[i] = ToOperand(items[i]);
            }
        }
        else if (condition.Value is { } value)
        {
            operand = ToOperand(value);
        }

        var description = $"{condition.Path} {PolicyConfigReader.OpName(condition.Op)} {condition.Value}";
        if (condition.Op == ConditionOp.Exists)
        {
            description = condition.Value?.Kind == ConfigNodeKind.False ? condition.Path + " is absent" : condition.Path + " is present";
        }
        var reason = ruleReason ?? (deny
            ? $"argument condition matched: {description}"
            : $"arguments must satisfy: {description}");
        return new ConditionModel(condition.Id, condition.Path, Encode(condition.Segments), condition.Op, operand, list, regex,
            description, reason);
    }

    private static Regex? CompileRegex(ConditionConfig condition, DiagnosticBag diagnostics)
    {
        if (TryCreateRegex(condition.Value?.Text ?? "", out var regex, out var error))
        {
            return regex;
        }
        diagnostics.Add("$." + condition.Id + ".value", condition.Location, error);
        return null;
    }

    /// <summary>
    /// Builds a condition regex on the linear-time (NonBacktracking) engine: matching time is linear in the input, so
    /// no pattern can backtrack catastrophically. Patterns that need backtracking constructs are rejected.
    /// </summary>
    public static bool TryCreateRegex(string pattern, [NotNullWhen(true)] out Regex? regex, out string error)
    {
        // Building a linear-time matcher is the costly part of loading a policy, and policies repeat patterns (and
        // reloads repeat policies): compiled regexes are immutable and thread-safe, so they are shared by pattern.
        if (s_regexes.TryGetValue(pattern, out regex))
        {
            error = "";
            return true;
        }
        try
        {
            regex = new Regex(pattern, RegexOptions.NonBacktracking | RegexOptions.CultureInvariant, RegexTimeout);
            if (s_regexes.Count < RegexCacheSize)
            {
                s_regexes.TryAdd(pattern, regex);
            }
            error = "";
            return true;
        }
        catch (NotSupportedException ex)
        {
            error = $"regex \"{pattern}\" uses a construct the linear-time regex engine does not support (backreferences, lookarounds, atomic groups): {ex.Message}";
        }
        catch (ArgumentException ex)
        {
            error = $"invalid regex \"{pattern}\": {ex.Message}";
        }
        regex = null;
        return false;
    }

    private static Operand ToOperand(ConditionValue value)
    {
        switch (value.Kind)
        {
            case ConfigNodeKind.String:
                return new Operand(OperandKind.String, Encoding.UTF8.GetBytes(value.Text!), 0, 0, false);
            case ConfigNodeKind.Number:
                var approx = double.Parse(value.Text!, NumberStyles.Float, CultureInfo.InvariantCulture);
                var exact = decimal.TryParse(value.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out var number);
                return new Operand(OperandKind.Number, null, number, approx, exact);
            case ConfigNodeKind.True:
                return new Operand(OperandKind.True, null, 0, 0, false);
            case ConfigNodeKind.False:
                return new Operand(OperandKind.False, null, 0, 0, false);
            default:
                return new Operand(OperandKind.Null, null, 0, 0, false);
        }
    }

    private static byte[][] Encode(IReadOnlyList<string> segments)
    {
        var result = new byte[segments.Count][];
        for (var i = 0; i < result.Length; i++)
        {
            result[i] = Encoding.UTF8.GetBytes(segments[i]);
        }
        return result;
    }
}
