using System.Buffers;
using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.Policy;

namespace Sidecar.Benchmarks;

/// <summary>
/// A realistic 50-tool policy, written as JSON (as a user would) and compiled with <see cref="PolicyCompiler.Load"/>.
/// Every limit has <c>max</c> 10^12 per day, so no benchmark is ever rate-limited.
/// </summary>
public static class Policies
{
    /// <summary>The largest <c>max</c> a limit may have: 10^12 per day, one token every 86.4 µs of wall time.</summary>
    public const long HugeMax = 1_000_000_000_000;

    public const string CounterSpace = "bench-server";

    private static readonly string[] Verbs = ["get", "list", "create", "update", "delete", "search"];
    private static readonly string[] Nouns = ["issue", "user", "file", "flow", "ticket", "invoice", "report"];

    /// <summary>Compiles <see cref="RealisticJson"/>; throws with every diagnostic if it does not compile.</summary>
    public static PolicyModel Realistic()
    {
        var diagnostics = new DiagnosticBag("bench-policy.json");
        return PolicyCompiler.Load(RealisticJson(), CounterSpace, diagnostics)
            ?? throw new InvalidOperationException("benchmark policy does not compile:" + Environment.NewLine + diagnostics);
    }

    /// <summary>
    /// <see cref="Realistic"/> with <c>pins</c> for 20 of its tools, the typical call's among them (all pinned to
    /// <see cref="Pin"/>): the pin check's full path on the call (pinned, seen, compared).
    /// </summary>
    public static PolicyModel RealisticPinned()
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(RealisticJson())!.AsObject();
        var pins = new System.Text.Json.Nodes.JsonObject();
        foreach (var (name, _) in json["tools"]!.AsObject().Take(20))
        {
            pins[name] = Pin;
        }
        json["pins"] = pins;
        var diagnostics = new DiagnosticBag("bench-policy-pinned.json");
        return PolicyCompiler.Load(System.Text.Encoding.UTF8.GetBytes(json.ToJsonString()), CounterSpace, diagnostics)
            ?? throw new InvalidOperationException("pinned benchmark policy does not compile:" + Environment.NewLine + diagnostics);
    }

    /// <summary>The hash every tool of <see cref="RealisticPinned"/> is pinned to (and seen with).</summary>
    public const string Pin = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// <summary>
    /// 50 tools: 8 hand-written ones (the README's shapes: <c>{}</c>, deny with a reason, <c>deny_if</c> with <c>in</c>,
    /// <c>require</c> with <c>regex</c>, <c>lt</c> and <c>eq</c>, <c>increment_from</c>, approval) and 42 generated
    /// verb_noun tools (get/list allowed, create limited per session, update with a <c>deny_if in</c>, delete denied,
    /// search with a <c>deny_if regex</c>); an <c>all_tools</c> limit per identity; 3 hidden tools.
    /// </summary>
    public static byte[] RealisticJson()
    {
        var buffer = new ArrayBufferWriter<byte>(16 * 1024);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteString("version", "1");
            w.WriteString("default", "deny");
            w.WriteString("mode", "enforce");
            w.WriteStartArray("hide");
            w.WriteStringValue("clear_flows");
            w.WriteStringValue("debug_dump");
            w.WriteStringValue("raw_sql");
            w.WriteEndArray();

            w.WriteStartObject("all_tools");
            WriteLimits(w, ("all_calls", "identity", null));
            w.WriteEndObject();

            w.WriteStartObject("tools");

            // The typical call's tool: 2 conditions (deny_if in, require regex) + its own limit (+ all_tools = 2 limits).
            w.WriteStartObject(Payloads.TypicalTool);
            w.WriteString("reason", "requests go to api.example.com over https, read-mostly");
            WriteConditions(w, "deny_if", ("args.method", "in", Strings("DELETE", "PUT", "PATCH", "TRACE")));
            WriteConditions(w, "require", ("args.url", "regex", @"^https://api\.example\.com/"));
            WriteLimits(w, ("send_request_rate", "grant", null));
            w.WriteEndObject();

            w.WriteStartObject("set_option");
            w.WriteString("reason", "network options are managed by the platform");
            WriteConditions(w, "deny_if", ("args.key", "in", Strings("listen_host", "listen_port", "mode", "server", "ssl_insecure")));
            w.WriteEndObject();

            w.WriteStartObject("fetch_url");
            WriteConditions(w, "require", ("args.url", "regex", @"^https://(docs|api)\.example\.com/[\w./-]*$"));
            w.WriteEndObject();

            w.WriteStartObject("create_charge");
            WriteConditions(w, "require", ("args.amount", "lt", 10_000), ("args.currency", "eq", "EUR"));
            WriteLimits(w, ("daily_spend", "identity", "args.amount"));
            w.WriteEndObject();

            w.WriteStartObject("resize_image");
            WriteConditions(w, "require", ("args.width", "lt", 8192), ("args.height", "lt", 8192), ("args.format", "eq", "png"));
            w.WriteEndObject();

            w.WriteStartObject("connectServer");
            w.WriteString("action", "deny");
            w.WriteString("reason", "agents may not add servers");
            w.WriteEndObject();

            w.WriteStartObject("drop_flow");
            w.WriteString("action", "require_approval");
            w.WriteString("approval_timeout", "5m");
            w.WriteEndObject();

            w.WriteStartObject("export_openapi_spec");
            w.WriteEndObject();

            foreach (var verb in Verbs)
            {
                foreach (var noun in Nouns)
                {
                    w.WriteStartObject(verb + "_" + noun);
                    switch (verb)
                    {
                        case "create":
                            WriteLimits(w, ("create_" + noun + "_rate", "session", null));
                            break;
                        case "update":
                            w.WriteString("reason", "ownership and permissions are managed by admins");
                            WriteConditions(w, "deny_if", ("args.field", "in", Strings("owner", "permissions", "visibility")));
                            break;
                        case "delete":
                            w.WriteString("action", "deny");
                            w.WriteString("reason", "agents may not delete " + noun + "s");
                            break;
                        case "search":
                            WriteConditions(w, "deny_if", ("args.query", "regex", @"(?i)\b(drop|truncate)\s+table\b"));
                            break;
                    }
                    w.WriteEndObject();
                }
            }

            w.WriteEndObject(); // tools
            w.WriteEndObject();
        }
        return buffer.WrittenSpan.ToArray();
    }

    private static string[] Strings(params string[] values) => values;

    private static void WriteConditions(Utf8JsonWriter w, string kind, params (string Path, string Op, object Value)[] conditions)
    {
        w.WriteStartArray(kind);
        foreach (var (path, op, value) in conditions)
        {
            w.WriteStartObject();
            w.WriteString("path", path);
            w.WriteString("op", op);
            w.WritePropertyName("value");
            switch (value)
            {
                case string s:
                    w.WriteStringValue(s);
                    break;
                case int n:
                    w.WriteNumberValue(n);
                    break;
                case string[] list:
                    w.WriteStartArray();
                    foreach (var item in list)
                    {
                        w.WriteStringValue(item);
                    }
                    w.WriteEndArray();
                    break;
                default:
                    throw new ArgumentException("unsupported condition value " + value, nameof(conditions));
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }

    private static void WriteLimits(Utf8JsonWriter w, params (string Counter, string Scope, string? IncrementFrom)[] limits)
    {
        w.WriteStartArray("limits");
        foreach (var (counter, scope, incrementFrom) in limits)
        {
            w.WriteStartObject();
            w.WriteString("counter", counter);
            w.WriteString("window", "day");
            w.WriteNumber("max", HugeMax);
            w.WriteString("scope", scope);
            if (incrementFrom is not null)
            {
                w.WriteString("increment_from", incrementFrom);
            }
            w.WriteEndObject();
        }
        w.WriteEndArray();
    }
}
