using System.CommandLine;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Gateway;
using Sidecar.RateLimiting;
using Sidecar.Sessions;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar wrap -c POLICY -- COMMAND [ARGS…]</c> (or <c>--upstream URL [--header 'Name: value']</c>, or
/// <c>--config C --server NAME</c>): Sidecar as the stdio server an MCP client spawns. It speaks MCP on its own stdin
/// and stdout, runs the command (or reaches the URL) as its upstream, and enforces the policy exactly as the daemon
/// does, through the same session engine. stdout carries only MCP; logs go to stderr.
/// </summary>
internal static class WrapCommand
{
    public static Command Create()
    {
        var policy = new Option<string?>("--policy", "-c") { Description = "Policy file for the wrapped server" };
        var upstream = new Option<string?>("--upstream") { Description = "Bridge to a remote server instead of running a command: its URL (…/sse: legacy SSE; else Streamable HTTP)" };
        var headers = new Option<string[]>("--header", "-H") { Description = "A header for --upstream, 'Name: value' (repeatable)", Arity = ArgumentArity.ZeroOrMore, AllowMultipleArgumentsPerToken = false };
        var config = new Option<string?>("--config") { Description = "Take the upstream, its policy, limits and audit settings from this config file (with --server)" };
        var server = new Option<string?>("--server") { Description = "The server of --config to wrap" };
        var name = new Option<string?>("--name") { Description = "The server's name in errors and audit (default: from the command, the URL or --server)" };
        var audit = new Option<string?>("--audit") { Description = "Audit file (default: $XDG_STATE_HOME/sidecar/wrap-NAME.jsonl, else ~/.local/state/sidecar/)" };
        var logLevel = new Option<LogLevel>("--log-level") { Description = "Trace, Debug, Information, Warning, Error (logs go to stderr)", DefaultValueFactory = _ => LogLevel.Warning };
        var command = new Argument<string[]>("command") { Description = "After --: the stdio server to run and its arguments", Arity = ArgumentArity.ZeroOrMore };
        var wrap = new Command("wrap", "Run as a stdio MCP server in front of a command or URL, enforcing a policy");
        foreach (var option in new Option[] { policy, upstream, headers, config, server, name, audit, logLevel })
        {
            wrap.Options.Add(option);
        }
        wrap.Arguments.Add(command);
        wrap.SetAction(async (parse, cancellationToken) =>
        {
            var error = parse.InvocationConfiguration.Error;
            var request = new WrapRequest(parse.GetValue(policy), parse.GetValue(upstream), parse.GetValue(headers) ?? [], parse.GetValue(config),
                parse.GetValue(server), parse.GetValue(name), parse.GetValue(audit), parse.GetValue(command) ?? []);
            SidecarConfig loaded;
            try
            {
                loaded = request.ToConfig();
            }
            catch (UsageException ex)
            {
                error.WriteLine($"sidecar wrap: {ex.Message}");
                return 2;
            }
            catch (ConfigValidationException ex)
            {
                foreach (var d in ex.Diagnostics)
                {
                    error.WriteLine(d.ToString());
                }
                return 1;
            }
            return await RunAsync(loaded, request.Audit is null, parse.GetValue(logLevel), error, cancellationToken).ConfigureAwait(false);
        });
        return wrap;
    }

    private static async Task<int> RunAsync(SidecarConfig config, bool defaultAudit, LogLevel level, TextWriter error, CancellationToken cancellationToken)
    {
        using var loggers = LoggerFactory.Create(logging =>
        {
            logging.SetMinimumLevel(level);
            GatewayHost.AddStderrLogging(logging, config.Logging.Format);
        });
        var snapshot = SnapshotBuilder.Build(config, null, loggers, out var errors);
        if (snapshot is null)
        {
            foreach (var d in errors)
            {
                error.WriteLine(d.ToString());
            }
            return 1;
        }
        AuditPipeline? pipeline;
        try
        {
            pipeline = OpenAudit(config, defaultAudit, loggers);
        }
        catch (AuditSinkException ex)
        {
            error.WriteLine($"sidecar wrap: audit: {ex.Message}");
            return 1;
        }
        pipeline?.Start();
        var engine = new SessionEngine(snapshot, pipeline?.Recorder ?? AuditRecorder.Disabled, new RateLimitStore(), loggers);
        using var stopping = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        Action<PosixSignalContext> stop = context =>
        {
            context.Cancel = true; // stop reading, drain audit, then exit
            stopping.Cancel();
        };
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, stop);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, stop);
        try
        {
            var server = snapshot.Servers.Values.Single();
            engine.TryOpen(snapshot, server, SessionTransport.Stdio, out var session);
            var input = PipeReader.Create(Console.OpenStandardInput(), new StreamPipeReaderOptions(leaveOpen: true));
            var output = PipeWriter.Create(Console.OpenStandardOutput(), new StreamPipeWriterOptions(leaveOpen: true));
            await new StdioAgent(engine, session!).RunAsync(input, output, stopping.Token).ConfigureAwait(false);
            await output.CompleteAsync().ConfigureAwait(false);
            return 0;
        }
        finally
        {
            await engine.DisposeAsync().ConfigureAwait(false);
            if (pipeline is not null)
            {
                await pipeline.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    /// <summary>
    /// The audit pipeline. The default file is per server name; when another wrap of the same server holds it (an MCP
    /// client can run several), this one writes beside it with its process id instead of failing to start.
    /// </summary>
    private static AuditPipeline? OpenAudit(SidecarConfig config, bool defaultAudit, ILoggerFactory loggers)
    {
        try
        {
            return AuditSetup.Create(config, loggers);
        }
        catch (AuditSinkException) when (defaultAudit && config.Audit.File is { } file)
        {
            var alternative = Path.ChangeExtension(file.Path, $"{Environment.ProcessId}.jsonl");
            loggers.CreateLogger("Sidecar.Wrap").LogWarning("The audit file {File} is in use by another wrap; writing {Alternative}", file.Path, alternative);
            return AuditSetup.Create(config with { Audit = config.Audit with { File = file with { Path = alternative } } }, loggers);
        }
    }
}
