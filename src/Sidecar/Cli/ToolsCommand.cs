using System.CommandLine;
using System.Text.Json;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.Sessions;
using Sidecar.Upstreams;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar tools --config C [--server S] [--format table|json]</c>: every tool of every upstream (asked through a
/// session of its own), its category and risk, what the server's policy does with it, its definition's hash, and the
/// tools the policy names that the server does not have. <c>sidecar policy suggest --config C --server S [-o FILE]</c>:
/// a starter policy for one server from its tools' classes. Exit 0 done, 1 a server could not be listed or the config
/// is invalid, 2 usage.
/// </summary>
internal static class ToolsCommand
{
    private static readonly TimeSpan ListTimeout = TimeSpan.FromSeconds(60);

    public static Command Create()
    {
        var config = ConfigOption();
        var server = new Option<string?>("--server", "-s") { Description = "Only this server (default: every server of the config)" };
        var format = new Option<string>("--format") { Description = "table (default) or json", DefaultValueFactory = _ => "table" };
        format.AcceptOnlyFromAmong("table", "json");
        var command = new Command("tools", "List every upstream tool with its category, risk and what the policy does with it");
        command.Options.Add(config);
        command.Options.Add(server);
        command.Options.Add(format);
        command.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            if (Load(parse.GetValue(config), parse.GetValue(server), error) is not { } servers)
            {
                return 1;
            }
            var results = new List<(ServerConfig Server, ServerCatalogue Catalogue)>();
            foreach (var s in servers)
            {
                ServerCatalogue catalogue;
                try
                {
                    catalogue = await ToolCatalogue.ListAsync(s, SnapshotBuilder.LoadPolicy(s), ListTimeout, cancellationToken).ConfigureAwait(false);
                }
                catch (ConfigValidationException ex)
                {
                    catalogue = new ServerCatalogue(s.Name, null, null, ex.Message);
                }
                if (catalogue.Error is { } failure)
                {
                    error.WriteLine($"sidecar tools: {s.Name}: {failure}");
                }
                results.Add((s, catalogue));
            }
            var output = parse.InvocationConfiguration.Output;
            if (parse.GetValue(format) == "json")
            {
                WriteJson(output, results);
            }
            else
            {
                WriteTable(output, results);
            }
            return results.Exists(r => r.Catalogue.Error is not null) ? 1 : 0;
        });
        return command;
    }

    public static Command CreatePolicy()
    {
        var config = ConfigOption();
        var server = new Option<string>("--server", "-s") { Description = "The server to suggest a policy for", Required = true };
        var outputFile = new Option<string?>("--output", "-o") { Description = "Write the policy to this file instead of stdout" };
        var suggest = new Command("suggest", "Print a starter policy for a server: every tool with a rule from its class (read {}, write 30/min, execute 10/min, destructive and financial need approval, other denied for review)");
        suggest.Options.Add(config);
        suggest.Options.Add(server);
        suggest.Options.Add(outputFile);
        suggest.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            if (Load(parse.GetValue(config), parse.GetValue(server), error) is not [var s])
            {
                return 1;
            }
            byte[] policy;
            var catalogue = await ToolCatalogue.ListAsync(s, SnapshotBuilder.LoadPolicy(s), ListTimeout, cancellationToken).ConfigureAwait(false);
            if (catalogue.Error is { } failure)
            {
                error.WriteLine($"sidecar policy suggest: {s.Name}: {failure}");
                return 1;
            }
            policy = PolicySuggester.Suggest(catalogue.Tools!.Select(t => t.Tool), s.Name);
            if (parse.GetValue(outputFile) is { } file)
            {
                await File.WriteAllBytesAsync(file, policy, cancellationToken).ConfigureAwait(false);
                parse.InvocationConfiguration.Output.WriteLine($"wrote {file}");
            }
            else
            {
                parse.InvocationConfiguration.Output.Write(System.Text.Encoding.UTF8.GetString(policy));
            }
            return 0;
        });
        var command = new Command("policy", "Policy helpers");
        command.Subcommands.Add(suggest);
        return command;
    }

    private static Option<string?> ConfigOption() => new("--config", "-c")
    {
        Description = "Config file (default: $SIDECAR_CONFIG)",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SIDECAR_CONFIG"),
    };

    /// <summary>The servers to list (all, or the one named), or null after one clear line on stderr.</summary>
    private static List<ServerConfig>? Load(string? path, string? name, TextWriter error)
    {
        if (path is null)
        {
            error.WriteLine("sidecar: --config is required (or set SIDECAR_CONFIG)");
            return null;
        }
        SidecarConfig config;
        try
        {
            config = SidecarConfigReader.LoadFile(path);
        }
        catch (ConfigValidationException ex)
        {
            foreach (var d in ex.Diagnostics)
            {
                error.WriteLine(d.ToString());
            }
            return null;
        }
        if (name is null)
        {
            return [.. config.Servers];
        }
        if (config.Servers.FirstOrDefault(s => s.Name == name) is { } server)
        {
            return [server];
        }
        error.WriteLine($"sidecar: {path} has no server \"{name}\" (it has: {string.Join(", ", config.Servers.Select(s => s.Name))})");
        return null;
    }

    private static void WriteTable(TextWriter output, List<(ServerConfig Server, ServerCatalogue Catalogue)> results)
    {
        foreach (var (server, catalogue) in results)
        {
            var (entries, missing, error) = (catalogue.Tools, catalogue.Missing, catalogue.Error);
            output.WriteLine($"{server.Name} ({server.TransportName}, policy {server.PolicyPath ?? "none: everything denied"})");
            if (error is not null)
            {
                output.WriteLine($"  could not list its tools: {error}");
                continue;
            }
            var width = Math.Max(4, entries!.Count == 0 ? 0 : entries.Max(e => e.Tool.Name.Length));
            foreach (var entry in entries)
            {
                output.WriteLine($"  {entry.Tool.Name.PadRight(width)}  {ToolClassifier.Name(entry.Class.Category),-11}  {ToolClassifier.Name(entry.Class.Risk),-6}  {entry.Decision} ({entry.Rule})");
            }
            foreach (var name in missing!)
            {
                output.WriteLine($"  {name.PadRight(width)}  (named by the policy, not offered by the server)");
            }
        }
    }

    private static void WriteJson(TextWriter output, List<(ServerConfig Server, ServerCatalogue Catalogue)> results)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(4096);
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            ToolCatalogue.WriteJson(json, results.Select(r => r.Catalogue));
        }
        output.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan));
    }
}
