using System.Buffers;
using System.Security.Cryptography;
using System.Text.Json;
using Sidecar.Approvals;
using Sidecar.Policy;

namespace Sidecar.Catalogue;

/// <summary>One server's part of the catalogue: its tools and the policy's tools it lacks, or why it could not be listed.</summary>
public sealed record ServerCatalogue(string Name, IReadOnlyList<CatalogueEntry>? Tools, IReadOnlyList<string>? Missing, string? Error);

/// <summary>
/// One upstream tool in the catalogue: its class, what the policy does with it, its definition's hash, and whether the
/// policy pins it (<see cref="Pin"/>: the hash it is pinned to). A pinned tool whose hash differs is <c>denied</c> by
/// rule <c>pin</c>.
/// </summary>
public sealed record CatalogueEntry(ToolDefinition Tool, ToolClassification Class, string Decision, string Rule, string Hash, string? Pin = null)
{
    public bool Pinned => Pin is not null;

    /// <summary>Whether the policy's rules deny the tool outright (hidden, <c>action: deny</c>, the default): such a tool is never pinned.</summary>
    public bool DeniedByRule { get; init; }
}

/// <summary>
/// The catalogue of one server (<c>sidecar tools</c>): each tool the server lists, classified
/// (<see cref="ToolClassifier"/>), with what the server's policy does with it (<c>allowed</c>, <c>denied</c>,
/// <c>hidden</c>, <c>limited N per window</c>, <c>needs approval</c>; <c>denied</c> by rule <c>pin</c> when the policy
/// pins it to another hash), the SHA-256 of its definition and whether the policy pins it, and the tools the policy
/// names that the server does not have.
/// </summary>
public static class ToolCatalogue
{
    /// <summary>
    /// Lists <paramref name="server"/>'s tools through a session of its own and describes them under
    /// <paramref name="policy"/>; a server that cannot be listed gets <see cref="ServerCatalogue.Error"/>.
    /// </summary>
    public static async Task<ServerCatalogue> ListAsync(Configuration.ServerConfig server, PolicyModel policy, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var connector = Upstreams.UpstreamConnectors.Create(server, Configuration.GatewayLimits.Default, null);
        try
        {
            var entries = Describe(policy, await UpstreamToolLister.ListAsync(connector, timeout, cancellationToken).ConfigureAwait(false));
            return new ServerCatalogue(server.Name, entries, Missing(policy, entries), null);
        }
        catch (Upstreams.UpstreamException ex)
        {
            return new ServerCatalogue(server.Name, null, null, ex.Message);
        }
        finally
        {
            (connector as IDisposable)?.Dispose();
        }
    }

    /// <summary>
    /// The catalogue as JSON (<c>sidecar tools --format json</c>, <c>GET /v1/tools</c>): <c>{ "servers": [ { "name",
    /// "tools": [ { "name", "category", "risk", "decision", "rule", "hash", "pinned" } ], "missing": [ … ] } ] }</c>;
    /// a server that could not be listed has <c>"error"</c> instead.
    /// </summary>
    public static void WriteJson(Utf8JsonWriter json, IEnumerable<ServerCatalogue> servers)
    {
        json.WriteStartObject();
        json.WriteStartArray("servers"u8);
        foreach (var server in servers)
        {
            json.WriteStartObject();
            json.WriteString("name"u8, server.Name);
            if (server.Error is { } error)
            {
                json.WriteString("error"u8, error);
                json.WriteEndObject();
                continue;
            }
            json.WriteStartArray("tools"u8);
            foreach (var entry in server.Tools!)
            {
                json.WriteStartObject();
                json.WriteString("name"u8, entry.Tool.Name);
                json.WriteString("category"u8, ToolClassifier.Name(entry.Class.Category));
                json.WriteString("risk"u8, ToolClassifier.Name(entry.Class.Risk));
                json.WriteString("decision"u8, entry.Decision);
                json.WriteString("rule"u8, entry.Rule);
                json.WriteString("hash"u8, entry.Hash);
                json.WriteBoolean("pinned"u8, entry.Pinned);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartArray("missing"u8);
            foreach (var name in server.Missing!)
            {
                json.WriteStringValue(name);
            }
            json.WriteEndArray();
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    /// <summary>The catalogue entries of <paramref name="tools"/> (each the JSON object the server listed) under <paramref name="policy"/>.</summary>
    public static List<CatalogueEntry> Describe(PolicyModel policy, IReadOnlyList<JsonElement> tools)
    {
        var entries = new List<CatalogueEntry>(tools.Count);
        foreach (var root in tools)
        {
            var tool = Definition(root);
            var rule = policy.Resolve(tool.Name);
            var hash = Hash(root);
            var denied = DeniesOutright(policy, rule);
            policy.TryGetPin(tool.Name, out var pin);
            // As the gateway decides: a rule that denies outright first, then a pin the definition no longer matches.
            var (decision, ruleId) = !denied && pin is not null && pin != hash ? ("denied", PolicyModel.PinRule) : (DecisionOf(policy, rule), rule.Id);
            entries.Add(new CatalogueEntry(tool, ToolClassifier.Classify(tool), decision, ruleId, hash, pin) { DeniedByRule = denied });
        }
        return entries;
    }

    /// <summary>What the classifier reads of a tool the server listed (a JSON object with a string <c>name</c>).</summary>
    public static ToolDefinition Definition(JsonElement tool)
        => new(tool.GetProperty("name").GetString()!, Text(tool, "description"), Annotations(tool));

    /// <summary>Whether <paramref name="rule"/> (or <c>all_tools</c>) denies every call outright: hidden, <c>action: deny</c>, or the default.</summary>
    public static bool DeniesOutright(PolicyModel policy, RuleModel rule)
        => rule.Action == RuleAction.Deny || policy.AllTools is { Action: RuleAction.Deny };

    /// <summary>Tools the policy names (rules, <c>hide</c> and <c>pins</c>) that <paramref name="entries"/> do not have, in the policy's order.</summary>
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
        foreach (var pin in policy.Config.Pins)
        {
            if (!present.Contains(pin.Tool) && !missing.Contains(pin.Tool))
            {
                missing.Add(pin.Tool);
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
        if (DeniesOutright(policy, rule))
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
