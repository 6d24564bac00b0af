using System.Buffers;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Sidecar.Catalogue;

/// <summary>
/// Writes a starter policy for one server's tools (PRODUCT.md "Catalogue, scan and suggested policies"): what
/// <c>sidecar scan</c> and <c>sidecar policy suggest</c> print. Pure: tools in, UTF-8 JSON out.
/// </summary>
/// <remarks>
/// <para><c>"version": "1"</c>, <c>"default": "deny"</c>, and a rule for every tool, in the order the server listed
/// them, each with its category and risk in <c>description</c>:</para>
/// <list type="bullet">
/// <item><c>read</c> → <c>{}</c> (allowed).</item>
/// <item><c>write</c> → 30 calls a minute; <c>execute</c> → 10 a minute. The counter is
/// <c>&lt;lowercased tool name&gt;_rate</c>, <c>window: "minute"</c>, <c>scope: "grant"</c>, written in that member
/// order (counter, window, max, scope) so the seed recommendations come out exactly.</item>
/// <item><c>destructive</c> and <c>financial</c> → <c>"action": "require_approval"</c>.</item>
/// <item><c>other</c> → <c>"action": "deny"</c> with a reason asking for review.</item>
/// </list>
/// <para>A name the server lists twice gets one rule (the first definition's): a JSON object cannot hold the same
/// member twice and the policy reader would refuse it.</para>
/// </remarks>
public static class PolicySuggester
{
    /// <summary>Calls a minute a suggested <c>write</c> rule allows.</summary>
    public const int WritesPerMinute = 30;

    /// <summary>Calls a minute a suggested <c>execute</c> rule allows.</summary>
    public const int ExecutesPerMinute = 10;

    /// <summary>The reason a suggested rule gives for denying a tool the classifier could not place.</summary>
    public const string ReviewReason = "unclassified tool: review what it does and write a rule for it before allowing it";

    private static readonly JsonWriterOptions s_options = new()
    {
        Indented = true,
        IndentSize = 2,
        // A file for people to read and edit: quotes in descriptions stay \" rather than \u0022.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
    };

    /// <summary>The starter policy for <paramref name="tools"/>, as UTF-8 JSON with a trailing newline.</summary>
    /// <param name="serverName">Named in the policy's own description when given.</param>
    public static byte[] Suggest(IEnumerable<ToolDefinition> tools, string? serverName = null)
    {
        var buffer = new ArrayBufferWriter<byte>(4096);
        Write(buffer, tools, serverName);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>Writes the starter policy for <paramref name="tools"/> into <paramref name="output"/>.</summary>
    public static void Write(IBufferWriter<byte> output, IEnumerable<ToolDefinition> tools, string? serverName = null)
    {
        ArgumentNullException.ThrowIfNull(output);
        ArgumentNullException.ThrowIfNull(tools);
        using (var json = new Utf8JsonWriter(output, s_options))
        {
            json.WriteStartObject();
            json.WriteString("version"u8, "1"u8);
            json.WriteString("default"u8, "deny"u8);
            json.WriteString("description"u8, serverName is null
                ? "Suggested starter policy: review every rule before use"
                : $"Suggested starter policy for {serverName}: review every rule before use");
            json.WriteStartObject("tools"u8);
            var seen = new HashSet<string>(StringComparer.Ordinal);
            foreach (var tool in tools)
            {
                if (seen.Add(tool.Name))
                {
                    WriteRule(json, tool.Name, ToolClassifier.Classify(tool));
                }
            }
            json.WriteEndObject();
            json.WriteEndObject();
        }
        output.Write("\n"u8);
    }

    private static void WriteRule(Utf8JsonWriter json, string name, ToolClassification c)
    {
        json.WriteStartObject(name);
        json.WriteString("description"u8, $"{ToolClassifier.Name(c.Category)}, {ToolClassifier.Name(c.Risk)} risk ({c.Basis})");
        switch (c.Category)
        {
            case ToolCategory.Read:
                break;
            case ToolCategory.Write:
                WriteLimit(json, name, WritesPerMinute);
                break;
            case ToolCategory.Execute:
                WriteLimit(json, name, ExecutesPerMinute);
                break;
            case ToolCategory.Destructive:
            case ToolCategory.Financial:
                json.WriteString("action"u8, "require_approval"u8);
                break;
            default:
                json.WriteString("action"u8, "deny"u8);
                json.WriteString("reason"u8, ReviewReason);
                break;
        }
        json.WriteEndObject();
    }

    private static void WriteLimit(Utf8JsonWriter json, string name, int perMinute)
    {
        json.WriteStartArray("limits"u8);
        json.WriteStartObject();
        json.WriteString("counter"u8, CounterName(name));
        json.WriteString("window"u8, "minute"u8);
        json.WriteNumber("max"u8, perMinute);
        json.WriteString("scope"u8, "grant"u8);
        json.WriteEndObject();
        json.WriteEndArray();
    }

    /// <summary>The counter a suggested limit uses: <c>connectServer</c> → <c>connectserver_rate</c>.</summary>
    public static string CounterName(string toolName) => toolName.ToLowerInvariant() + "_rate";
}
