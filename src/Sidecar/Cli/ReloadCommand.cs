using System.CommandLine;
using System.Net;
using System.Text.Json;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar reload</c>: asks the running gateway to read its config and policies again (<c>POST /v1/reload</c> on
/// the admin API). Exit 0 applied or unchanged; 1 refused (every error on stderr, the gateway keeps its running
/// config) or unreachable; 2 usage.
/// </summary>
internal static class ReloadCommand
{
    public static Command Create()
    {
        var admin = new AdminOptions();
        var command = new Command("reload", "Make the running gateway read its config and policies again; an invalid one is refused with every error and changes nothing");
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
            if (await client.SendAsync(HttpMethod.Post, "v1/reload", null, error, cancellationToken).ConfigureAwait(false) is not { } response)
            {
                return AdminClient.Refused;
            }
            if (response.Status == HttpStatusCode.UnprocessableContent && ReadErrors(response.Body) is { Count: > 0 } errors)
            {
                foreach (var line in errors)
                {
                    error.WriteLine(line);
                }
                error.WriteLine($"reload refused: {errors.Count} error{(errors.Count == 1 ? "" : "s")}; the gateway keeps its running config");
                return AdminClient.Refused;
            }
            if (!response.IsSuccess)
            {
                return AdminClient.Refuse(response, error);
            }
            output.WriteLine(Result(response.Body) == "unchanged" ? "reload: nothing changed" : "reload applied");
            return AdminClient.Ok;
        });
        return command;
    }

    private static string? Result(byte[] body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            return AdminClient.Text(doc.RootElement, "result");
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>The <c>errors</c> of a refused reload, each as <c>file:line:column: path: message</c> (what is known of it).</summary>
    internal static List<string>? ReadErrors(byte[] body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body);
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("errors", out var errors) || errors.ValueKind != JsonValueKind.Array)
            {
                return null;
            }
            var lines = new List<string>();
            foreach (var e in errors.EnumerateArray())
            {
                var location = new List<string>(3);
                foreach (var name in (ReadOnlySpan<string>)["file", "line", "column"])
                {
                    if (AdminClient.Text(e, name) is { Length: > 0 } part)
                    {
                        location.Add(part);
                    }
                }
                var parts = new List<string>(3);
                if (location.Count > 0)
                {
                    parts.Add(string.Join(':', location));
                }
                if (AdminClient.Text(e, "path") is { Length: > 0 } path)
                {
                    parts.Add(path);
                }
                parts.Add(AdminClient.Text(e, "message") ?? (e.ValueKind == JsonValueKind.String ? e.GetString()! : "invalid config"));
                lines.Add(AdminClient.Printable(string.Join(": ", parts)));
            }
            return lines;
        }
        catch (JsonException)
        {
            return null;
        }
    }
}
