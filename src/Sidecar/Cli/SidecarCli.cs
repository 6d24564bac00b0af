using System.CommandLine;

namespace Sidecar.Cli;

/// <summary>The <c>sidecar</c> command line. Exit codes: 0 success, 1 invalid input (e.g. policy errors), 2 usage errors.</summary>
public static class SidecarCli
{
    public static RootCommand Build()
    {
        var root = new RootCommand("Sidecar: an MCP policy gateway. Every tool call an agent makes passes the rules first.");
        root.Subcommands.Add(RunCommand.Create());
        root.Subcommands.Add(WrapCommand.Create());
        root.Subcommands.Add(ValidateCommand.Create());
        root.Subcommands.Add(ExplainCommand.Create());
        root.Subcommands.Add(AuditCommand.Create());
        root.Subcommands.Add(ToolsCommand.Create());
        root.Subcommands.Add(ToolsCommand.CreatePolicy());
        root.Subcommands.Add(ScanCommand.Create());
        root.Subcommands.Add(ApprovalsCommand.Create());
        root.Subcommands.Add(ReloadCommand.Create());
        return root;
    }

    public static async Task<int> InvokeAsync(string[] args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default)
    {
        var parse = Build().Parse(args);
        // SIGTERM and SIGINT are the commands' own: `run` stops its host (sessions closed, audit drained, audit_stop),
        // `wrap` answers what it owes first. System.CommandLine's handler would end the process 2 s after the signal,
        // whatever was still being written.
        var configuration = new InvocationConfiguration { Output = output, Error = error, ProcessTerminationTimeout = null };
        var exit = await parse.InvokeAsync(configuration, cancellationToken).ConfigureAwait(false);
        // A command line that does not parse (unknown option, missing argument, a value not among the allowed) is a
        // usage error: 2, not System.CommandLine's 1, which our commands mean as "refused" or "invalid input".
        return parse.Errors.Count > 0 && exit == 1 ? UsageError : exit;
    }

    private const int UsageError = 2;
}
