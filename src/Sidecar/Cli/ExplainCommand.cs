using System.CommandLine;
using System.Text;
using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Policy;
using Sidecar.RateLimiting;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar explain --policy P --tool T [--args JSON]</c>: what would this call get, and which rule decides it.
/// Runs the same engine as the gateway, against fresh counters.
/// </summary>
internal static class ExplainCommand
{
    public static Command Create()
    {
        var policy = new Option<string>("--policy", "-p") { Description = "Policy file", Required = true };
        var tool = new Option<string>("--tool", "-t") { Description = "Tool name", Required = true };
        var args = new Option<string?>("--args", "-a") { Description = "The call's arguments as a JSON object, e.g. '{\"key\":\"mode\"}'" };
        var identity = new Option<string?>("--identity") { Description = "Calling identity (scope of identity and grant limits)" };
        var grant = new Option<string?>("--grant") { Description = "Grant the identity holds" };
        var session = new Option<string?>("--session") { Description = "MCP session id (scope of session limits)" };
        var approved = new Option<bool>("--approved") { Description = "Decide as if a required approval had been granted" };
        var repeat = new Option<int>("--repeat", "-n") { Description = "Decide this many identical calls in a row and explain the last (shows rate limits)", DefaultValueFactory = _ => 1 };
        var json = new Option<bool>("--json") { Description = "Print the decision as JSON" };

        var command = new Command("explain", "Show the decision a tool call would get, and the rule that makes it");
        foreach (var option in new Option[] { policy, tool, args, identity, grant, session, approved, repeat, json })
        {
            command.Options.Add(option);
        }
        command.SetAction(parse =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            PolicyModel model;
            var policyPath = parse.GetValue(policy)!;
            try
            {
                model = PolicyCompiler.LoadFile(policyPath);
            }
            catch (ConfigValidationException ex)
            {
                foreach (var d in ex.Diagnostics)
                {
                    error.WriteLine(d.ToString());
                }
                return 1;
            }

            var argumentBytes = Encoding.UTF8.GetBytes(parse.GetValue(args) ?? "{}");
            if (!IsJsonObject(argumentBytes, out var problem))
            {
                error.WriteLine($"--args: {problem}");
                return 2;
            }
            var count = parse.GetValue(repeat);
            if (count < 1)
            {
                error.WriteLine("--repeat must be at least 1");
                return 2;
            }

            var toolName = parse.GetValue(tool)!;
            var engine = new DecisionEngine(new RateLimitStore());
            var context = new CallContext(parse.GetValue(identity), parse.GetValue(grant), parse.GetValue(session));
            Decision decision = default;
            for (var i = 0; i < count; i++)
            {
                engine.Decide(model, context, toolName, argumentBytes, parse.GetValue(approved), out decision);
            }

            if (parse.GetValue(json))
            {
                WriteJson(output, toolName, count, decision);
            }
            else
            {
                WriteText(output, toolName, count, decision);
            }
            return 0;
        });
        return command;
    }

    private static bool IsJsonObject(byte[] bytes, out string problem)
    {
        try
        {
            using var doc = JsonDocument.Parse(bytes, new JsonDocumentOptions { AllowDuplicateProperties = false });
            problem = "must be a JSON object";
            return doc.RootElement.ValueKind == JsonValueKind.Object;
        }
        catch (JsonException ex)
        {
            problem = "invalid JSON: " + ex.Message;
            return false;
        }
    }

    private static void WriteText(TextWriter output, string tool, int count, in Decision decision)
    {
        output.WriteLine($"tool:      {tool}{(count > 1 ? $" (call {count} of {count})" : "")}");
        output.WriteLine($"decision:  {decision.Outcome.ToWireName()}{(decision.Enforced ? "" : " (shadow mode: recorded, not enforced)")}");
        output.WriteLine($"rule:      {decision.Rule}");
        output.WriteLine($"reason:    {decision.Reason}");
        if (decision.Remaining >= 0)
        {
            output.WriteLine($"remaining: {decision.Remaining}");
        }
        if (decision.RetryAfterMs >= 0)
        {
            output.WriteLine($"retry in:  {decision.RetryAfterMs} ms");
        }
        if (decision.Outcome == DecisionOutcome.RequireApproval)
        {
            output.WriteLine($"timeout:   {decision.ApprovalTimeout}");
        }
    }

    private static void WriteJson(TextWriter output, string tool, int count, in Decision decision)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            writer.WriteStartObject();
            writer.WriteString("tool", tool);
            writer.WriteNumber("call", count);
            writer.WriteString("decision", decision.Outcome.ToWireName());
            writer.WriteBoolean("enforced", decision.Enforced);
            writer.WriteString("rule", decision.Rule);
            writer.WriteString("reason", decision.Reason);
            if (decision.Remaining >= 0)
            {
                writer.WriteNumber("remaining", decision.Remaining);
            }
            if (decision.RetryAfterMs >= 0)
            {
                writer.WriteNumber("retryAfterMs", decision.RetryAfterMs);
            }
            if (decision.Outcome == DecisionOutcome.RequireApproval)
            {
                writer.WriteNumber("approvalTimeoutMs", (long)decision.ApprovalTimeout.TotalMilliseconds);
            }
            writer.WriteEndObject();
        }
        output.WriteLine(Encoding.UTF8.GetString(buffer.ToArray()));
    }
}
