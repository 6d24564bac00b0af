using System.CommandLine;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.Upstreams;

namespace Sidecar.Cli;

/// <summary>
/// What <c>sidecar scan</c> and <c>sidecar policy suggest</c> share: list one server's tools through a session of
/// their own (<see cref="UpstreamToolLister"/>), turn them into a starter policy (<see cref="PolicySuggester"/>), and
/// print it on stdout or write it to <c>-o FILE</c>. No policy is read: a server whose own policy is broken can still
/// be given a suggestion.
/// </summary>
internal static class StarterPolicy
{
    public static Option<string?> OutputOption() => new("--output", "-o") { Description = "Write the policy to this file instead of stdout" };

    /// <summary>Exit 0 written, 1 the server could not be listed or the file not written (one line on stderr).</summary>
    public static async Task<int> WriteAsync(string command, ServerConfig server, string? outputFile, InvocationConfiguration io, CancellationToken cancellationToken)
    {
        IReadOnlyList<System.Text.Json.JsonElement> tools;
        var connector = UpstreamConnectors.Create(server, GatewayLimits.Default, null);
        try
        {
            tools = await UpstreamToolLister.ListAsync(connector, ToolsCommand.ListTimeout, cancellationToken).ConfigureAwait(false);
        }
        catch (UpstreamException ex)
        {
            io.Error.WriteLine($"sidecar {command}: {server.Name}: {ex.Message}");
            return 1;
        }
        finally
        {
            (connector as IDisposable)?.Dispose();
        }
        var policy = PolicySuggester.Suggest(tools.Select(ToolCatalogue.Definition), server.Name);
        if (outputFile is null)
        {
            io.Output.Write(System.Text.Encoding.UTF8.GetString(policy));
            return 0;
        }
        try
        {
            await File.WriteAllBytesAsync(outputFile, policy, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            io.Error.WriteLine($"sidecar {command}: cannot write {outputFile}: {ex.Message}");
            return 1;
        }
        io.Output.WriteLine($"wrote {outputFile} ({tools.Count} tool{(tools.Count == 1 ? "" : "s")} of {server.Name})");
        return 0;
    }
}
