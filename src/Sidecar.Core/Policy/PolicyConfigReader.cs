using System.Globalization;
using Sidecar.Configuration;

namespace Sidecar.Policy;

/// <summary>
/// Reads a policy file (JSON) into a <see cref="PolicyConfig"/>. Every error is collected with its JSON path and
/// line; unknown fields and wrong types are errors. Semantic checks that need compilation (regexes, counters)
/// are done by <see cref="PolicyCompiler"/>.
/// </summary>
public static class PolicyConfigReader
{
    public const string SupportedVersion = "1";
    public static readonly TimeSpan DefaultApprovalTimeout = TimeSpan.FromMinutes(5);
    internal const long MaxWindowSeconds = 366L * 24 * 3600;
    internal const long MaxLimit = 1_000_000_000_000L;
    private static readonly TimeSpan MaxApprovalTimeout = TimeSpan.FromDays(7);

    public static PolicyConfig? Read(ReadOnlySpan<byte> utf8Json, DiagnosticBag diagnostics)
    {
        var errorsBefore = diagnostics.Items.Count;
        var root = ConfigJsonParser.Parse(utf8Json, diagnostics);
        if (root is null)
        {
            return null;
        }
        var config = Bind(root, diagnostics);
        // Parse-level errors (duplicate keys) don't stop binding, so that every error is reported; they still fail the load.
        return diagnostics.Items.Count > errorsBefore ? null : config;
    }

    /// <summary>Binds an already parsed document (JSON today; other front ends produce the same nodes).</summary>
    public static PolicyConfig? Bind(ConfigNode root, DiagnosticBag diagnostics)
    {
        var errorsBefore = diagnostics.Items.Count;
        if (root is not ConfigObject obj)
        {
            diagnostics.Add(root, $"a policy must be a JSON object, not {root.KindName}");
            return null;
        }

        var members = new MemberReader(obj, diagnostics);
        string version = SupportedVersion;
        if (members.Take("version") is { } versionNode)
        {
            if (versionNode is ConfigScalar { IsString: true, Text: SupportedVersion })
            {
                version = SupportedVersion;
            }
            else
            {
                diagnostics.Add(versionNode, $"unsupported policy version {Describe(versionNode)}; expected \"{SupportedVersion}\"");
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"version\" (use \"1\")");
        }

        var @default = PolicyDefault.Deny;
        if (members.Take("default") is { } defaultNode)
        {
            @default = ReadEnum(defaultNode, diagnostics, "default", PolicyDefault.Deny,
                ("deny", PolicyDefault.Deny), ("allow", PolicyDefault.Allow));
        }

        var mode = PolicyMode.Enforce;
        if (members.Take("mode") is { } modeNode)
        {
            mode = ReadEnum(modeNode, diagnostics, "mode", PolicyMode.Enforce,
                ("enforce", PolicyMode.Enforce), ("shadow", PolicyMode.Shadow));
        }

        var hide = new List<string>();
        if (members.Take("hide") is { } hideNode)
        {
            if (hideNode is ConfigArray arr)
            {
                foreach (var item in arr.Items)
                {
                    if (item is ConfigScalar { IsString: true, Text: { Length: > 0 } name })
                    {
                        if (hide.Contains(name))
                        {
                            diagnostics.Add(item, $"tool \"{name}\" is listed twice");
                        }
                        else
                        {
                            hide.Add(name);
                        }
                    }
                    else
                    {
                        diagnostics.Add(item, $"expected a tool name (a non-empty string), found {Describe(item)}");
                    }
                }
            }
            else
            {
                diagnostics.Add(hideNode, $"\"hide\" must be an array of tool names, not {hideNode.KindName}");
            }
        }

        RuleConfig? allTools = null;
        if (members.Take("all_tools") is { } allToolsNode)
        {
            allTools = ReadRule(allToolsNode, "all_tools", diagnostics);
        }

        var tools = new List<ToolRuleConfig>();
        if (members.Take("tools") is { } toolsNode)
        {
            if (toolsNode is ConfigObject toolsObj)
            {
                foreach (var member in toolsObj.Members)
                {
                    if (member.Name.Length == 0)
                    {
                        diagnostics.Add(member.Value.Path, member.NameLocation, "a tool name cannot be empty");
                        continue;
                    }
                    var rule = ReadRule(member.Value, member.Value.Path[2..], diagnostics);
                    if (rule is not null)
                    {
                        tools.Add(new ToolRuleConfig(member.Name, rule));
                    }
                }
            }
            else
            {
                diagnostics.Add(toolsNode, $"\"tools\" must be an object mapping tool names to rules, not {toolsNode.KindName}");
            }
        }

        var pins = members.Take("pins") is { } pinsNode ? ReadPins(pinsNode, diagnostics) : [];

        string? description = null;
        if (members.Take("description") is { } descriptionNode)
        {
            description = ReadString(descriptionNode, diagnostics);
        }

        members.ReportUnknown("version, default, mode, hide, all_tools, tools, pins, description");

        foreach (var name in hide)
        {
            foreach (var tool in tools)
            {
                if (tool.Tool == name && tool.Rule.Action != RuleAction.Deny)
                {
                    diagnostics.Add("$." + tool.Rule.Id, tool.Rule.Location,
                        $"tool \"{name}\" is in \"hide\" (always denied) but also has a rule that does not deny it; remove one of the two");
                }
            }
        }

        return diagnostics.Items.Count > errorsBefore
            ? null
            : new PolicyConfig(version, @default, mode, hide, allTools, tools, description, pins);
    }

    /// <summary>The prefix of a pin: <c>sha256:</c>, then 64 lowercase hex digits.</summary>
    public const string PinPrefix = "sha256:";

    /// <summary>
    /// <c>pins</c>: tool name → <c>"sha256:&lt;64 lowercase hex&gt;"</c>, exactly as <c>sidecar tools</c> prints a
    /// definition's hash (lowercase only: a pin is compared as text, and one spelling keeps it exact).
    /// </summary>
    private static List<ToolPinConfig> ReadPins(ConfigNode node, DiagnosticBag diagnostics)
    {
        var pins = new List<ToolPinConfig>();
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"pins\" must be an object mapping tool names to \"{PinPrefix}<64 lowercase hex digits>\", not {node.KindName}");
            return pins;
        }
        foreach (var member in obj.Members)
        {
            if (member.Name.Length == 0)
            {
                diagnostics.Add(member.Value.Path, member.NameLocation, "a tool name cannot be empty");
                continue;
            }
            if (member.Value is not ConfigScalar { IsString: true, Text: { } hash })
            {
                diagnostics.Add(member.Value, $"a pin must be a string \"{PinPrefix}<64 lowercase hex digits>\", not {Describe(member.Value)}");
                continue;
            }
            if (!IsPin(hash))
            {
                diagnostics.Add(member.Value,
                    $"invalid pin \"{hash}\" for tool \"{member.Name}\"; expected \"{PinPrefix}\" and 64 lowercase hex digits, as sidecar tools prints the tool's hash");
                continue;
            }
            pins.Add(new ToolPinConfig(member.Name, hash, member.NameLocation));
        }
        return pins;
    }

    /// <summary>True for <c>sha256:</c> followed by exactly 64 lowercase hex digits.</summary>
    public static bool IsPin(string text)
    {
        if (text.Length != PinPrefix.Length + 64 || !text.StartsWith(PinPrefix, StringComparison.Ordinal))
        {
            return false;
        }
        foreach (var c in text.AsSpan(PinPrefix.Length))
        {
            if (!char.IsAsciiDigit(c) && c is not (>= 'a' and <= 'f'))
            {
                return false;
            }
        }
        return true;
    }

    private static RuleConfig? ReadRule(ConfigNode node, string id, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"a rule must be an object (use {{}} to allow the tool), not {node.KindName}");
            return null;
        }

        var members = new MemberReader(obj, diagnostics);
        var action = RuleAction.Allow;
        if (members.Take("action") is { } actionNode)
        {
            action = ReadEnum(actionNode, diagnostics, "action", RuleAction.Allow,
                ("allow", RuleAction.Allow), ("deny", RuleAction.Deny), ("require_approval", RuleAction.RequireApproval));
        }

        string? reason = members.Take("reason") is { } reasonNode ? ReadString(reasonNode, diagnostics) : null;
        string? description = members.Take("description") is { } descNode ? ReadString(descNode, diagnostics) : null;
        var require = ReadList(members.Take("require"), "conditions", ReadCondition, diagnostics);
        var denyIf = ReadList(members.Take("deny_if"), "conditions", ReadCondition, diagnostics);
        var limits = ReadList(members.Take("limits"), "limits", ReadLimit, diagnostics);

        TimeSpan? approvalTimeout = null;
        if (members.Take("approval_timeout") is { } timeoutNode)
        {
            if (TryReadDuration(timeoutNode, out var timeout) && timeout > TimeSpan.Zero && timeout <= MaxApprovalTimeout)
            {
                approvalTimeout = timeout;
            }
            else
            {
                diagnostics.Add(timeoutNode,
                    $"invalid approval_timeout {Describe(timeoutNode)}; expected a duration such as \"30s\", \"5m\", \"1h\" or a number of seconds, at most 7 days");
            }
            if (action != RuleAction.RequireApproval)
            {
                diagnostics.Add(timeoutNode, "approval_timeout applies only to rules with \"action\": \"require_approval\"");
            }
        }

        members.ReportUnknown("action, reason, require, deny_if, limits, approval_timeout, description");

        if (action == RuleAction.Deny && (require.Count > 0 || denyIf.Count > 0 || limits.Count > 0))
        {
            diagnostics.Add(obj, "a rule with \"action\": \"deny\" always denies; its require, deny_if and limits would never apply — remove them");
        }
        if (action == RuleAction.RequireApproval && approvalTimeout is null)
        {
            approvalTimeout = DefaultApprovalTimeout;
        }

        return new RuleConfig(id, obj.Location, action, reason, require, denyIf, limits, approvalTimeout, description);
    }

    /// <summary>Reads an optional array, item by item; items with errors are reported and left out.</summary>
    private static List<T> ReadList<T>(ConfigNode? node, string what, Func<ConfigNode, DiagnosticBag, T?> readItem, DiagnosticBag diagnostics)
        where T : class
    {
        var result = new List<T>();
        if (node is null)
        {
            return result;
        }
        if (node is not ConfigArray arr)
        {
            diagnostics.Add(node, $"expected an array of {what}, not {node.KindName}");
            return result;
        }
        foreach (var item in arr.Items)
        {
            if (readItem(item, diagnostics) is { } value)
            {
                result.Add(value);
            }
        }
        return result;
    }

    private static ConditionConfig? ReadCondition(ConfigNode node, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"a condition must be an object like {{ \"path\": \"args.x\", \"op\": \"eq\", \"value\": 1 }}, not {node.KindName}");
            return null;
        }
        var members = new MemberReader(obj, diagnostics);
        var errorsBefore = diagnostics.Items.Count;

        string? path = null;
        IReadOnlyList<string>? segments = null;
        if (members.Take("path") is { } pathNode)
        {
            path = ReadString(pathNode, diagnostics);
            if (path is not null)
            {
                segments = ParseArgsPath(pathNode, path, diagnostics);
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"path\" (e.g. \"args.url\")");
        }

        ConditionOp op = ConditionOp.Eq;
        var opNode = members.Take("op");
        if (opNode is null)
        {
            diagnostics.Add(obj, "missing required field \"op\" (eq, neq, in, not_in, lt, lte, gt, gte, regex, contains, exists)");
        }
        else
        {
            op = ReadEnum(opNode, diagnostics, "op", ConditionOp.Eq,
                ("eq", ConditionOp.Eq), ("neq", ConditionOp.Neq), ("in", ConditionOp.In), ("not_in", ConditionOp.NotIn),
                ("lt", ConditionOp.Lt), ("lte", ConditionOp.Lte), ("gt", ConditionOp.Gt), ("gte", ConditionOp.Gte),
                ("regex", ConditionOp.Regex), ("contains", ConditionOp.Contains), ("exists", ConditionOp.Exists));
        }

        var valueNode = members.Take("value");
        members.ReportUnknown("path, op, value");

        ConditionValue? value = null;
        if (opNode is not null)
        {
            value = ReadOperand(op, valueNode, obj, diagnostics);
        }

        return diagnostics.Items.Count > errorsBefore || path is null || segments is null
            ? null
            : new ConditionConfig(obj.Path[2..], obj.Location, path, segments, op, value);
    }

    private static ConditionValue? ReadOperand(ConditionOp op, ConfigNode? node, ConfigObject condition, DiagnosticBag diagnostics)
    {
        if (node is null)
        {
            if (op == ConditionOp.Exists)
            {
                return new ConditionValue(ConfigNodeKind.True, null, null);
            }
            diagnostics.Add(condition, $"missing required field \"value\" for op \"{OpName(op)}\"");
            return null;
        }
        switch (op)
        {
            case ConditionOp.Exists:
                if (node is ConfigScalar { IsBoolean: true })
                {
                    return ToValue(node);
                }
                diagnostics.Add(node, $"op \"exists\" takes true or false, not {Describe(node)}");
                return null;
            case ConditionOp.In or ConditionOp.NotIn:
                if (node is ConfigArray arr && arr.Items.Count > 0)
                {
                    var ok = true;
                    foreach (var item in arr.Items)
                    {
                        if (item is not ConfigScalar)
                        {
                            diagnostics.Add(item, $"list values must be strings, numbers, booleans or null, not {item.KindName}");
                            ok = false;
                        }
                    }
                    return ok ? ToValue(node) : null;
                }
                diagnostics.Add(node, $"op \"{OpName(op)}\" takes a non-empty array of values, not {Describe(node)}");
                return null;
            case ConditionOp.Lt or ConditionOp.Lte or ConditionOp.Gt or ConditionOp.Gte:
                if (node is ConfigScalar { IsNumber: true })
                {
                    return ToValue(node);
                }
                diagnostics.Add(node, $"op \"{OpName(op)}\" takes a number, not {Describe(node)}");
                return null;
            case ConditionOp.Regex:
                if (node is ConfigScalar { IsString: true, Text: { } pattern })
                {
                    if (PolicyCompiler.TryCreateRegex(pattern, out _, out var regexError))
                    {
                        return ToValue(node);
                    }
                    diagnostics.Add(node, regexError);
                    return null;
                }
                diagnostics.Add(node, $"op \"regex\" takes a regular expression string, not {Describe(node)}");
                return null;
            default:
                if (node is ConfigScalar)
                {
                    return ToValue(node);
                }
                diagnostics.Add(node, $"op \"{OpName(op)}\" takes a string, number, boolean or null, not {node.KindName}");
                return null;
        }
    }

    private static ConditionValue ToValue(ConfigNode node) => node switch
    {
        ConfigArray arr => new ConditionValue(ConfigNodeKind.Array, null, arr.Items.ConvertAll(ToValue)),
        ConfigScalar s => new ConditionValue(s.Kind, s.Text, null),
        _ => throw new InvalidOperationException("objects are not condition values"),
    };

    private static LimitConfig? ReadLimit(ConfigNode node, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"a limit must be an object like {{ \"counter\": \"c\", \"window\": \"minute\", \"max\": 10 }}, not {node.KindName}");
            return null;
        }
        var members = new MemberReader(obj, diagnostics);
        var errorsBefore = diagnostics.Items.Count;

        string? counter = null;
        if (members.Take("counter") is { } counterNode)
        {
            counter = ReadString(counterNode, diagnostics);
            if (counter is { Length: 0 })
            {
                diagnostics.Add(counterNode, "a counter name cannot be empty");
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"counter\" (a name; limits naming the same counter share it)");
        }

        long max = 0;
        if (members.Take("max") is { } maxNode)
        {
            if (!TryReadWholeNumber(maxNode, out max) || max < 1 || max > MaxLimit)
            {
                diagnostics.Add(maxNode, $"\"max\" must be a whole number from 1 to {MaxLimit}, not {Describe(maxNode)}");
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"max\"");
        }

        long window = 0;
        if (members.Take("window") is { } windowNode)
        {
            if (!TryReadWindow(windowNode, out window))
            {
                diagnostics.Add(windowNode,
                    $"invalid window {Describe(windowNode)}; expected \"second\", \"minute\", \"hour\", \"day\" or a whole number of seconds from 1 to {MaxWindowSeconds}");
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"window\" (\"second\", \"minute\", \"hour\", \"day\" or a number of seconds)");
        }

        var scope = LimitScope.Grant;
        if (members.Take("scope") is { } scopeNode)
        {
            scope = ReadEnum(scopeNode, diagnostics, "scope", LimitScope.Grant,
                ("grant", LimitScope.Grant), ("identity", LimitScope.Identity), ("session", LimitScope.Session), ("global", LimitScope.Global));
        }

        string? incrementFrom = null;
        IReadOnlyList<string>? incrementSegments = null;
        if (members.Take("increment_from") is { } incNode)
        {
            incrementFrom = ReadString(incNode, diagnostics);
            if (incrementFrom is not null)
            {
                incrementSegments = ParseArgsPath(incNode, incrementFrom, diagnostics);
            }
        }

        members.ReportUnknown("counter, max, window, scope, increment_from");
        return diagnostics.Items.Count > errorsBefore || counter is null
            ? null
            : new LimitConfig(obj.Path[2..], obj.Location, counter, max, window, scope, incrementFrom, incrementSegments);
    }

    /// <summary><c>args.a.b</c> → [a, b]. Paths address the tool call's arguments object.</summary>
    private static List<string>? ParseArgsPath(ConfigNode node, string path, DiagnosticBag diagnostics)
    {
        if (!path.StartsWith("args.", StringComparison.Ordinal) || path.Length == 5)
        {
            diagnostics.Add(node, $"path \"{path}\" must start with \"args.\" and name an argument, e.g. \"args.url\"");
            return null;
        }
        var segments = new List<string>(path[5..].Split('.'));
        if (segments.Contains(""))
        {
            diagnostics.Add(node, $"path \"{path}\" has an empty segment");
            return null;
        }
        return segments;
    }

    internal static bool TryReadWindow(ConfigNode node, out long seconds)
    {
        seconds = 0;
        if (node is ConfigScalar { IsString: true } s)
        {
            seconds = s.Text switch
            {
                "second" => 1,
                "minute" => 60,
                "hour" => 3600,
                "day" => 86400,
                _ => 0,
            };
            return seconds > 0;
        }
        return TryReadWholeNumber(node, out seconds) && seconds >= 1 && seconds <= MaxWindowSeconds;
    }

    /// <summary>A number of seconds, or a string: <c>"90s"</c>, <c>"5m"</c>, <c>"1h"</c>, <c>"2d"</c>, <c>"250ms"</c>.</summary>
    internal static bool TryReadDuration(ConfigNode node, out TimeSpan duration)
    {
        duration = default;
        if (node is ConfigScalar { IsNumber: true } n)
        {
            if (double.TryParse(n.Text, NumberStyles.Float, CultureInfo.InvariantCulture, out var secs) && secs > 0 && secs < 1e9)
            {
                duration = TimeSpan.FromSeconds(secs);
                return true;
            }
            return false;
        }
        return node is ConfigScalar { IsString: true, Text: { } text } && TryParseDuration(text, out duration);
    }

    public static bool TryParseDuration(string text, out TimeSpan duration)
    {
        duration = default;
        var unitStart = 0;
        while (unitStart < text.Length && (char.IsAsciiDigit(text[unitStart]) || text[unitStart] == '.'))
        {
            unitStart++;
        }
        if (unitStart == 0 || !double.TryParse(text.AsSpan(0, unitStart), NumberStyles.Float, CultureInfo.InvariantCulture, out var amount))
        {
            return false;
        }
        double? seconds = text[unitStart..] switch
        {
            "ms" => amount / 1000,
            "s" or "" => amount,
            "m" => amount * 60,
            "h" => amount * 3600,
            "d" => amount * 86400,
            _ => null,
        };
        if (seconds is not { } s || s <= 0 || s > 1e9)
        {
            return false;
        }
        duration = TimeSpan.FromSeconds(s);
        return true;
    }

    private static bool TryReadWholeNumber(ConfigNode node, out long value)
    {
        value = 0;
        return node is ConfigScalar { IsNumber: true } n
            && long.TryParse(n.Text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out value);
    }

    internal static string? ReadString(ConfigNode node, DiagnosticBag diagnostics)
    {
        if (node is ConfigScalar { IsString: true } s)
        {
            return s.Text;
        }
        diagnostics.Add(node, $"expected a string, found {Describe(node)}");
        return null;
    }

    private static T ReadEnum<T>(ConfigNode node, DiagnosticBag diagnostics, string field, T fallback, params (string Name, T Value)[] choices)
    {
        if (node is ConfigScalar { IsString: true } s)
        {
            foreach (var (name, value) in choices)
            {
                if (s.Text == name)
                {
                    return value;
                }
            }
        }
        var names = new string[choices.Length];
        for (var i = 0; i < choices.Length; i++)
        {
            names[i] = "\"" + choices[i].Name + "\"";
        }
        diagnostics.Add(node, $"invalid {field} {Describe(node)}; expected one of {string.Join(", ", names)}");
        return fallback;
    }

    internal static string OpName(ConditionOp op) => op switch
    {
        ConditionOp.Eq => "eq",
        ConditionOp.Neq => "neq",
        ConditionOp.In => "in",
        ConditionOp.NotIn => "not_in",
        ConditionOp.Lt => "lt",
        ConditionOp.Lte => "lte",
        ConditionOp.Gt => "gt",
        ConditionOp.Gte => "gte",
        ConditionOp.Regex => "regex",
        ConditionOp.Contains => "contains",
        _ => "exists",
    };

    internal static string Describe(ConfigNode node) => node switch
    {
        ConfigScalar { IsString: true } s => "\"" + s.Text + "\"",
        ConfigScalar { IsNumber: true } n => n.Text!,
        ConfigScalar { Kind: ConfigNodeKind.True } => "true",
        ConfigScalar { Kind: ConfigNodeKind.False } => "false",
        _ => node.KindName,
    };

    /// <summary>Hands out an object's members by name and reports the ones nobody asked for.</summary>
    internal sealed class MemberReader(ConfigObject obj, DiagnosticBag diagnostics)
    {
        private readonly HashSet<string> _taken = new(StringComparer.Ordinal);

        public ConfigNode? Take(string name)
        {
            _taken.Add(name);
            return obj[name];
        }

        public void ReportUnknown(string known)
        {
            foreach (var member in obj.Members)
            {
                if (!_taken.Contains(member.Name))
                {
                    diagnostics.Add(member.Value.Path, member.NameLocation, $"unknown field \"{member.Name}\" (known fields: {known})");
                }
            }
        }
    }
}
