using System.CommandLine;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar approvals list|approve|deny</c>: the calls a policy holds for a person's approval, through the admin
/// API (<c>GET /v1/approvals</c>, <c>POST /v1/approvals/{id}/approve|deny</c>). Exit 0 done, 1 refused (401, 404
/// unknown id, 409 already decided or expired) or unreachable, 2 usage.
/// </summary>
internal static class ApprovalsCommand
{
    /// <summary>Arguments are cut to about this many characters in the text list; <c>--format json</c> has them whole.</summary>
    internal const int ArgumentsWidth = 80;

    public static Command Create()
    {
        var command = new Command("approvals", "List the tool calls waiting for approval, and approve or deny them (through the admin API)");
        command.Subcommands.Add(CreateList());
        command.Subcommands.Add(CreateDecide("approve", "Approve a pending call: the gateway forwards it", "approved"));
        command.Subcommands.Add(CreateDecide("deny", "Deny a pending call: the agent gets a refusal", "denied"));
        return command;
    }

    private static Command CreateList()
    {
        var all = new Option<bool>("--all") { Description = "Also the recently decided ones (approved, denied, expired, used), not only the pending" };
        var format = new Option<string>("--format") { Description = "text: one line per approval; json: the admin API's answer as is", DefaultValueFactory = _ => "text" };
        format.AcceptOnlyFromAmong("text", "json");
        var admin = new AdminOptions();
        var command = new Command("list", "List pending approvals: id, status, server/tool, identity (grant), expiry and arguments");
        command.Options.Add(all);
        command.Options.Add(format);
        admin.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            using var client = AdminClient.Connect(parse, admin, error);
            if (client is null)
            {
                return AdminClient.Usage;
            }
            var everything = parse.GetValue(all);
            if (await client.SendAsync(HttpMethod.Get, everything ? "v1/approvals?status=all" : "v1/approvals", null, error, cancellationToken).ConfigureAwait(false)
                is not { } response)
            {
                return AdminClient.Refused;
            }
            if (!response.IsSuccess)
            {
                return AdminClient.Refuse(response, error);
            }
            if (parse.GetValue(format) == "json")
            {
                var text = Encoding.UTF8.GetString(response.Body);
                output.Write(text);
                if (!text.EndsWith('\n'))
                {
                    output.WriteLine();
                }
                return AdminClient.Ok;
            }
            List<string[]> rows;
            try
            {
                rows = ReadRows(response.Body);
            }
            catch (JsonException ex)
            {
                error.WriteLine(AdminClient.Messages.NotJson("an approvals list", ex.Message.ReplaceLineEndings(" ")));
                return AdminClient.Refused;
            }
            if (rows.Count == 0)
            {
                output.WriteLine(everything ? "no approvals" : "no pending approvals");
                return AdminClient.Ok;
            }
            WriteColumns(output, rows);
            return AdminClient.Ok;
        });
        return command;
    }

    private static Command CreateDecide(string verb, string description, string done)
    {
        var id = new Argument<string>("id") { Description = "The approval's id, as `approvals list` shows it" };
        var reason = new Option<string?>("--reason", "-r") { Description = "Why: recorded with the decision (and, for deny, told to the agent)", HelpName = "TEXT" };
        var by = new Option<string?>("--by") { Description = "Who decides, as recorded (default: the OS user name)", HelpName = "NAME" };
        var admin = new AdminOptions();
        var command = new Command(verb, description);
        command.Arguments.Add(id);
        command.Options.Add(reason);
        command.Options.Add(by);
        admin.AddTo(command);
        command.SetAction(async (parse, cancellationToken) =>
        {
            var output = parse.InvocationConfiguration.Output;
            var error = parse.InvocationConfiguration.Error;
            var approval = parse.GetValue(id)!;
            if (approval.Length == 0)
            {
                error.WriteLine($"{verb}: the approval id is empty");
                return AdminClient.Usage;
            }
            using var client = AdminClient.Connect(parse, admin, error);
            if (client is null)
            {
                return AdminClient.Usage;
            }
            var body = DecisionBody(parse.GetValue(reason), parse.GetValue(by) ?? Environment.UserName);
            if (await client.SendAsync(HttpMethod.Post, $"v1/approvals/{Uri.EscapeDataString(approval)}/{verb}", body, error, cancellationToken).ConfigureAwait(false)
                is not { } response)
            {
                return AdminClient.Refused;
            }
            if (!response.IsSuccess)
            {
                return AdminClient.Refuse(response, error);
            }
            output.WriteLine($"{done} {Describe(response.Body, approval)}");
            return AdminClient.Ok;
        });
        return command;
    }

    /// <summary><c>{ "reason": …, "by": … }</c>, each only when given.</summary>
    internal static byte[] DecisionBody(string? reason, string? by)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            if (reason is not null)
            {
                writer.WriteString("reason", reason);
            }
            if (!string.IsNullOrEmpty(by))
            {
                writer.WriteString("by", by);
            }
            writer.WriteEndObject();
        }
        return buffer.ToArray();
    }

    /// <summary><c>ID (server/tool for identity)</c> from the decided approval; the id alone when the answer does not say.</summary>
    private static string Describe(byte[] body, string id)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            var approval = doc.RootElement;
            var target = Target(approval);
            var identity = AdminClient.Text(approval, "identity");
            var shown = AdminClient.Printable(AdminClient.Text(approval, "id") ?? id);
            return target is null ? shown : $"{shown} ({target}{(identity is null ? "" : " for " + AdminClient.Printable(identity))})";
        }
        catch (JsonException)
        {
            return AdminClient.Printable(id);
        }
    }

    private static string? Target(JsonElement approval)
        => (AdminClient.Text(approval, "server"), AdminClient.Text(approval, "tool")) switch
        {
            (null, null) => null,
            (var server, var tool) => AdminClient.Printable($"{server ?? "?"}/{tool ?? "?"}"),
        };

    /// <summary>Each approval as columns: id, status, server/tool, identity (grant), when, arguments.</summary>
    internal static List<string[]> ReadRows(byte[] body)
    {
        using var doc = JsonDocument.Parse(body);
        if (doc.RootElement.ValueKind != JsonValueKind.Object
            || !doc.RootElement.TryGetProperty("approvals", out var approvals) || approvals.ValueKind != JsonValueKind.Array)
        {
            throw new JsonException("expected an object with an \"approvals\" array");
        }
        var rows = new List<string[]>();
        foreach (var approval in approvals.EnumerateArray())
        {
            var status = AdminClient.Text(approval, "status") ?? "?";
            var identity = AdminClient.Text(approval, "identity");
            var grant = AdminClient.Text(approval, "grant");
            var who = (identity ?? "-") + (grant is null ? "" : $" ({grant})");
            string when;
            if (status == "pending" || AdminClient.Text(approval, "decidedAt") is not { } decidedAt)
            {
                when = $"expires {AdminClient.Text(approval, "expiresAt") ?? "?"}";
            }
            else
            {
                when = $"decided {decidedAt}{(AdminClient.Text(approval, "decidedBy") is { } decidedBy ? " by " + decidedBy : "")}";
            }
            var arguments = approval.ValueKind == JsonValueKind.Object && approval.TryGetProperty("arguments", out var a) ? Compact(a) : "";
            rows.Add([
                AdminClient.Printable(AdminClient.Text(approval, "id") ?? "?"),
                AdminClient.Printable(status),
                Target(approval) ?? "?",
                AdminClient.Printable(who),
                AdminClient.Printable(when),
                AdminClient.Printable(Cut(arguments, ArgumentsWidth)),
            ]);
        }
        return rows;
    }

    /// <summary>A JSON value on one line, non-ASCII kept readable (control characters stay escaped).</summary>
    internal static string Compact(JsonElement value)
    {
        using var buffer = new MemoryStream();
        using (var writer = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            value.WriteTo(writer);
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    /// <summary>At most <paramref name="width"/> characters, the last one <c>…</c> when cut; a surrogate pair is never split.</summary>
    internal static string Cut(string text, int width)
    {
        if (text.Length <= width)
        {
            return text;
        }
        var keep = width - 1;
        if (char.IsHighSurrogate(text[keep - 1]))
        {
            keep--;
        }
        return string.Concat(text.AsSpan(0, keep), "…");
    }

    /// <summary>Columns padded to the widest of each, two spaces apart; the last (arguments) not padded.</summary>
    private static void WriteColumns(TextWriter output, List<string[]> rows)
    {
        var widths = new int[rows[0].Length - 1];
        foreach (var row in rows)
        {
            for (var i = 0; i < widths.Length; i++)
            {
                widths[i] = Math.Max(widths[i], row[i].Length);
            }
        }
        var line = new StringBuilder();
        foreach (var row in rows)
        {
            line.Clear();
            for (var i = 0; i < widths.Length; i++)
            {
                line.Append(row[i].PadRight(widths[i])).Append("  ");
            }
            line.Append(row[^1]);
            output.WriteLine(line.ToString().TrimEnd());
        }
    }
}
