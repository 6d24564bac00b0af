using System.CommandLine;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar scan -- COMMAND [ARGS…]</c> or <c>sidecar scan --upstream URL [--header 'Name: value']… [--transport
/// sse|streamable-http]</c>: asks a server that is in no config yet for its tools and prints a starter policy for it
/// (<c>-o FILE</c> writes it instead), as <c>sidecar policy suggest</c> does for a configured one. The upstream is
/// named exactly as <c>sidecar wrap</c> names it (<see cref="UpstreamArguments"/>). Exit 0 done, 1 the server could
/// not be listed, 2 usage.
/// </summary>
internal static class ScanCommand
{
    public static Command Create()
    {
        var upstream = new Option<string?>("--upstream") { Description = "Scan a remote server instead of running a command: its URL (…/sse: legacy SSE; else Streamable HTTP)" };
        var headers = new Option<string[]>("--header", "-H") { Description = "A header for --upstream, 'Name: value' (repeatable)", Arity = ArgumentArity.ZeroOrMore, AllowMultipleArgumentsPerToken = false };
        var transport = new Option<string?>("--transport") { Description = "sse or streamable-http, for an --upstream URL the path does not tell" };
        var name = new Option<string?>("--name") { Description = "The server's name in the policy's description (default: from the command or the URL)" };
        var outputFile = StarterPolicy.OutputOption();
        var command = new Argument<string[]>("command") { Description = "After --: the stdio server to run and its arguments", Arity = ArgumentArity.ZeroOrMore };
        var scan = new Command("scan", "Print a starter policy for a server that is not in a config yet: every tool with a rule from its class");
        foreach (var option in new Option[] { upstream, headers, transport, name, outputFile })
        {
            scan.Options.Add(option);
        }
        scan.Arguments.Add(command);
        scan.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            Configuration.ServerConfig server;
            try
            {
                server = Parse(parse.GetValue(upstream), parse.GetValue(headers) ?? [], parse.GetValue(transport), parse.GetValue(name), parse.GetValue(command) ?? []);
            }
            catch (UsageException ex)
            {
                error.WriteLine($"sidecar scan: {ex.Message}");
                return 2;
            }
            return await StarterPolicy.WriteAsync("scan", server, parse.GetValue(outputFile), parse.InvocationConfiguration, cancellationToken).ConfigureAwait(false);
        });
        return scan;
    }

    /// <summary>The server to scan, or <see cref="UsageException"/>.</summary>
    internal static Configuration.ServerConfig Parse(string? upstream, string[] headers, string? transport, string? name, string[] command)
    {
        var arguments = new UpstreamArguments(upstream, headers, transport, name, command);
        if (arguments.Count != 1)
        {
            throw new UsageException("give exactly one upstream: -- COMMAND [ARGS…] or --upstream URL");
        }
        return arguments.ToServer(null);
    }
}
