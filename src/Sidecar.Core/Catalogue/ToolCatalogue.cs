using System.Buffers;
using System.Security.Cryptography;
using System.Text.Json;
using Sidecar.Approvals;
using Sidecar.Policy;

namespace Sidecar.Catalogue;

/// <summary>One upstream tool in the catalogue: its class, what the policy does with it, and its definition's hash.</summary>
public sealed record CatalogueEntry(ToolDefinition Tool, ToolClassification Class, string Decision, string Rule, string Hash);

/// <summary>
/// The catalogue of one server (<c>sidecar tools</c>): each tool the server lists, classified
/// (<see cref="ToolClassifier"/>), with what the server's policy does with it (<c>allowed</c>, <c>denied</c>,
/// <c>hidden</c>, <c>limited N per window</c>, <c>needs approval</c>) and the SHA-256 of its definition, and the
/// tools the policy names that the server does not have.
/// </summary>
public static class ToolCatalogue
{
    /// <summary>The catalogue entries of <paramref name="tools"/> (each the JSON object the server listed) under <paramref name="policy"/>.</summary>
    public static List<CatalogueEntry> Describe(PolicyModel policy, IReadOnlyList<byte[]> tools)
    {
        var entries = new List<CatalogueEntry>(tools.Count);
        foreach (var json in tools)
        {
            using var document = JsonDocument.Parse(json);
            var root = document.RootElement;
            var tool = new ToolDefinition(root.GetProperty("name").GetString()!, Text(root, "description"), Annotations(root));
            var rule = policy.Resolve(tool.Name);
            entries.Add(new CatalogueEntry(tool, ToolClassifier.Classify(tool), DecisionOf(policy, rule), rule.Id, Hash(root)));
        }
        return entries;
    }

    /// <summary>Tools the policy names (rules and <c>hide</c>) that <paramref name="entries"/> do not have, in the policy's order.</summary>
    public static List<string> Missing(PolicyModel policy, IReadOnlyList<CatalogueEntry> entries)
    {
        var present = new HashSet<string>(StringComparer.Ordinal);
        foreach (var entry in entries)
        {
            present.Add(entry.Tool.Name);
        }
        var missing = new List<string>();
        foreach (var rule in policy.Config.Tools)
        {
            if (!present.Contains(rule.Tool))
            {
                missing.Add(rule.Tool);
            }
        }
        foreach (var hidden in policy.Config.Hide)
        {
            if (!present.Contains(hidden) && !missing.Contains(hidden))
            {
                missing.Add(hidden);
            }
        }
        return missing;
    }

    /// <summary>What the policy does with a tool whose rule is <paramref name="rule"/>, in a few words.</summary>
    public static string DecisionOf(PolicyModel policy, RuleModel rule)
    {
        if (ReferenceEquals(rule, policy.HiddenRule))
        {
            return "hidden";
        }
        if (rule.Action == RuleAction.Deny || policy.AllTools is { Action: RuleAction.Deny })
        {
            return "denied";
        }
        if (rule.Action == RuleAction.RequireApproval || policy.AllTools is { Action: RuleAction.RequireApproval })
        {
            return "needs approval";
        }
        var limits = new List<string>();
        foreach (var limit in rule.Limits)
        {
            limits.Add($"{limit.Counter.Max} per {PolicyCompiler.DescribeWindow(limit.Counter.WindowSeconds)}");
        }
        var conditions = rule.Require.Length + rule.DenyIf.Length > 0 ? " (with conditions)" : "";
        return limits.Count > 0 ? $"limited {string.Join(", ", limits)}{conditions}" : "allowed" + conditions;
    }

    /// <summary>
    /// <c>sha256:HEX</c> of the tool's definition: its <c>name</c>, <c>description</c>, <c>inputSchema</c> and
    /// <c>annotations</c>, in canonical JSON (<see cref="CanonicalArguments"/>), so that key order and whitespace do
    /// not change it but any change of the definition does.
    /// </summary>
    public static string Hash(JsonElement tool)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            foreach (var field in (ReadOnlySpan<string>)["name", "description", "inputSchema", "annotations"])
            {
                if (tool.TryGetProperty(field, out var value))
                {
                    json.WritePropertyName(field);
                    value.WriteTo(json);
                }
            }
            json.WriteEndObject();
        }
        return CanonicalArguments.TryHash(buffer.WrittenSpan, out var hex, out _)
            ? "sha256:" + hex
            : "sha256:" + Convert.ToHexStringLower(SHA256.HashData(buffer.WrittenSpan));
    }

    private static string? Text(JsonElement element, string name)
        => element.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() : null;

    private static ToolAnnotations? Annotations(JsonElement tool)
    {
        if (!tool.TryGetProperty("annotations", out var a) || a.ValueKind != JsonValueKind.Object)
        {
            return null;
        }
        static bool? Hint(JsonElement a, string name) => a.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
        return new ToolAnnotations(Hint(a, "readOnlyHint"), Hint(a, "destructiveHint"), Hint(a, "idempotentHint"), Hint(a, "openWorldHint"));
    }
}
