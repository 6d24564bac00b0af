using System.CommandLine;
using System.Text.Json;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Sessions;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar tools --config C [--server S] [--grant G] [--format table|json] [--pin]</c>: every tool of every upstream
/// (asked through a session of its own), its category and risk, what the policy does with it (the server's own, or the
/// one grant G gives it), its definition's hash and whether the policy pins it, and the tools the policy names that the
/// server does not have. With <c>--pin</c> (and <c>--server</c>) the current hash of every tool the policy does not
/// deny is written into that policy file's <c>pins</c>. <c>sidecar policy suggest --config C --server S [-o FILE]</c>:
/// a starter policy for one server from its tools' classes. Exit 0 done, 1 a server could not be listed or the config
/// is invalid, 2 usage.
/// </summary>
internal static class ToolsCommand
{
    private const int UsageError = 2;

    public static Command Create()
    {
        var config = ConfigOption();
        var server = new Option<string?>("--server", "-s") { Description = "Only this server (default: every server of the config)" };
        var grant = new Option<string?>("--grant", "-g") { Description = "Show the decisions under the policy this grant gives each server (default: each server's own policy, what anonymous use gets)" };
        var format = new Option<string>("--format") { Description = "table (default) or json", DefaultValueFactory = _ => "table" };
        format.AcceptOnlyFromAmong("table", "json");
        var pin = new Option<bool>("--pin") { Description = "Write the current hash of every tool the policy does not deny into the server's policy file (pins); needs --server" };
        var command = new Command("tools", "List every upstream tool with its category, risk and what the policy does with it");
        foreach (var option in new Option[] { config, server, grant, format, pin })
        {
            command.Options.Add(option);
        }
        command.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            var output = parse.InvocationConfiguration.Output;
            var pinning = parse.GetValue(pin);
            if (pinning && parse.GetValue(server) is null)
            {
                error.WriteLine("sidecar tools: --pin needs --server NAME (the server whose policy file gets the pins)");
                return UsageError;
            }
            if (LoadConfig(parse.GetValue(config), error) is not { } loaded)
            {
                return 1;
            }
            GrantConfig? grantConfig = null;
            if (parse.GetValue(grant) is { } grantName && !loaded.Grants.TryGetValue(grantName, out grantConfig))
            {
                error.WriteLine(loaded.Grants.Count == 0
                    ? $"sidecar tools: unknown grant \"{grantName}\": {loaded.File} has no grants"
                    : $"sidecar tools: unknown grant \"{grantName}\" (the config has: {string.Join(", ", loaded.Grants.Keys.Order(StringComparer.Ordinal))})");
                return UsageError;
            }
            if (Select(loaded, parse.GetValue(config)!, parse.GetValue(server), error) is not { } servers)
            {
                return 1;
            }
            var results = new List<(ServerConfig Server, string? PolicyFile, ServerCatalogue Catalogue)>();
            foreach (var s in servers)
            {
                var file = grantConfig is null ? s.PolicyPath : grantConfig.PolicyFor(s.Name);
                ServerCatalogue catalogue;
                try
                {
                    var policy = grantConfig is null ? SnapshotBuilder.LoadPolicy(s) : SnapshotBuilder.LoadGrantPolicy(grantConfig, s);
                    catalogue = await ToolCatalogue.ListAsync(s, policy, ListTimeout, cancellationToken).ConfigureAwait(false);
                }
                catch (ConfigValidationException ex)
                {
                    catalogue = new ServerCatalogue(s.Name, null, null, ex.Message);
                }
                if (catalogue.Error is { } failure)
                {
                    error.WriteLine($"sidecar tools: {s.Name}: {failure}");
                }
                results.Add((s, file, catalogue));
            }
            if (pinning)
            {
                var (s, file, catalogue) = results[0];
                return catalogue.Error is not null ? 1 : await PinAsync(s, file, grantConfig, catalogue, output, error, cancellationToken).ConfigureAwait(false);
            }
            if (parse.GetValue(format) == "json")
            {
                WriteJson(output, results.Select(r => r.Catalogue));
            }
            else
            {
                WriteTable(output, results, grantConfig);
            }
            return results.Exists(r => r.Catalogue.Error is not null) ? 1 : 0;
        });
        return command;
    }

    public static Command CreatePolicy()
    {
        var config = ConfigOption();
        var server = new Option<string>("--server", "-s") { Description = "The server to suggest a policy for", Required = true };
        var outputFile = StarterPolicy.OutputOption();
        var suggest = new Command("suggest", "Print a starter policy for a server: every tool with a rule from its class (read {}, write 30/min, execute 10/min, destructive and financial need approval, other denied for review)");
        suggest.Options.Add(config);
        suggest.Options.Add(server);
        suggest.Options.Add(outputFile);
        suggest.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            var path = parse.GetValue(config);
            if (LoadConfig(path, error) is not { } loaded || Select(loaded, path!, parse.GetValue(server), error) is not [var s])
            {
                return 1;
            }
            return await StarterPolicy.WriteAsync("policy suggest", s, parse.GetValue(outputFile), parse.InvocationConfiguration, cancellationToken).ConfigureAwait(false);
        });
        var command = new Command("policy", "Policy helpers");
        command.Subcommands.Add(suggest);
        return command;
    }

    /// <summary>How long listing one server's tools may take in all.</summary>
    internal static readonly TimeSpan ListTimeout = TimeSpan.FromSeconds(60);

    private static Option<string?> ConfigOption() => new("--config", "-c")
    {
        Description = "Config file (default: $SIDECAR_CONFIG)",
        DefaultValueFactory = _ => Environment.GetEnvironmentVariable("SIDECAR_CONFIG"),
    };

    /// <summary>The config, or null after its errors (or one clear line) on stderr.</summary>
    private static SidecarConfig? LoadConfig(string? path, TextWriter error)
    {
        if (path is null)
        {
            error.WriteLine("sidecar: --config is required (or set SIDECAR_CONFIG)");
            return null;
        }
        try
        {
            return SidecarConfigReader.LoadFile(path);
        }
        catch (ConfigValidationException ex)
        {
            foreach (var d in ex.Diagnostics)
            {
                error.WriteLine(d.ToString());
            }
            return null;
        }
    }

    /// <summary>The servers to list (all, or the one named), or null after one clear line on stderr.</summary>
    private static List<ServerConfig>? Select(SidecarConfig config, string path, string? name, TextWriter error)
    {
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

    /// <summary>
    /// <c>--pin</c>: the current hash of every tool the policy does not deny outright becomes the policy file's
    /// <c>pins</c> (replacing any it had), the rest of the file kept byte for byte; the result is validated before it
    /// replaces the file (written beside it, then renamed over it).
    /// </summary>
    private static async Task<int> PinAsync(ServerConfig server, string? file, GrantConfig? grant, ServerCatalogue catalogue, TextWriter output, TextWriter error,
        CancellationToken cancellationToken)
    {
        if (file is null)
        {
            error.WriteLine(grant is null
                ? $"sidecar tools: {server.Name} has no policy file to pin into (no \"policy\" for it in the config: everything is denied)"
                : $"sidecar tools: grant {grant.Name} has no policy file for {server.Name} to pin into (everything is denied to it)");
            return 1;
        }
        var pins = new List<KeyValuePair<string, string>>();
        var left = new List<string>();
        foreach (var entry in catalogue.Tools!)
        {
            if (entry.DeniedByRule)
            {
                left.Add(entry.Tool.Name);
            }
            else if (!pins.Exists(p => p.Key == entry.Tool.Name))
            {
                pins.Add(new(entry.Tool.Name, entry.Hash));
            }
        }
        byte[] updated;
        try
        {
            updated = PinWriter.Write(await File.ReadAllBytesAsync(file, cancellationToken).ConfigureAwait(false), pins);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or JsonException)
        {
            error.WriteLine($"sidecar tools: {file}: {ex.Message}");
            return 1;
        }
        var diagnostics = new DiagnosticBag(file);
        if (PolicyCompiler.Load(updated, server.Name, diagnostics) is null)
        {
            // Cannot happen for a file that loaded a moment ago; if it does, the file is left as it was.
            foreach (var d in diagnostics.Items)
            {
                error.WriteLine(d.ToString());
            }
            error.WriteLine($"sidecar tools: {file} would not be valid with the pins: left unchanged");
            return 1;
        }
        try
        {
            await ReplaceAsync(file, updated, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            error.WriteLine($"sidecar tools: cannot write {file}: {ex.Message}");
            return 1;
        }
        output.WriteLine($"pinned {pins.Count} tool{(pins.Count == 1 ? "" : "s")} of {server.Name} in {file}:");
        var width = pins.Count == 0 ? 0 : pins.Max(p => p.Key.Length);
        foreach (var (tool, hash) in pins)
        {
            output.WriteLine($"  {tool.PadRight(width)}  {hash}");
        }
        if (left.Count > 0)
        {
            output.WriteLine($"not pinned (the policy denies them): {string.Join(", ", left)}");
        }
        return 0;
    }

    /// <summary>Writes beside the file (its final target when it is a symlink) and renames over it, keeping its mode: a reader sees the old file or the new, never half of one.</summary>
    private static async Task ReplaceAsync(string file, byte[] content, CancellationToken cancellationToken)
    {
        var target = new FileInfo(file).ResolveLinkTarget(returnFinalTarget: true)?.FullName ?? Path.GetFullPath(file);
        var temp = Path.Combine(Path.GetDirectoryName(target)!, $".{Path.GetFileName(target)}.{Environment.ProcessId}.pin.tmp");
        try
        {
            await File.WriteAllBytesAsync(temp, content, cancellationToken).ConfigureAwait(false);
            if (!OperatingSystem.IsWindows())
            {
                File.SetUnixFileMode(temp, File.GetUnixFileMode(target));
            }
            File.Move(temp, target, overwrite: true);
        }
        finally
        {
            File.Delete(temp);
        }
    }

    private static void WriteTable(TextWriter output, List<(ServerConfig Server, string? PolicyFile, ServerCatalogue Catalogue)> results, GrantConfig? grant)
    {
        foreach (var (server, file, catalogue) in results)
        {
            var (entries, missing, error) = (catalogue.Tools, catalogue.Missing, catalogue.Error);
            var policy = grant is null
                ? $"policy {file ?? "none: everything denied"}"
                : $"grant {grant.Name}, policy {file ?? "none: everything denied"}";
            output.WriteLine($"{server.Name} ({server.TransportName}, {policy})");
            if (error is not null)
            {
                output.WriteLine($"  could not list its tools: {error}");
                continue;
            }
            var width = Math.Max(4, entries!.Count == 0 ? 0 : entries.Max(e => e.Tool.Name.Length));
            foreach (var entry in entries)
            {
                output.WriteLine($"  {entry.Tool.Name.PadRight(width)}  {ToolClassifier.Name(entry.Class.Category),-11}  {ToolClassifier.Name(entry.Class.Risk),-6}  {entry.Decision} ({entry.Rule}){(entry.Pinned ? ", pinned" : "")}");
            }
            foreach (var name in missing!)
            {
                output.WriteLine($"  {name.PadRight(width)}  (named by the policy, not offered by the server)");
            }
        }
    }

    private static void WriteJson(TextWriter output, IEnumerable<ServerCatalogue> catalogues)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(4096);
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            ToolCatalogue.WriteJson(json, catalogues);
        }
        output.WriteLine(System.Text.Encoding.UTF8.GetString(buffer.WrittenSpan));
    }
}
