using System.CommandLine;
using System.Reflection;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Gateway;

namespace Sidecar.Cli;

/// <summary>
/// <c>sidecar run [--config sidecar.json]</c>: the gateway daemon. Without a config (and without SIDECAR_CONFIG) it
/// runs the embedded default: server-everything over stdio behind an example policy, in-memory limits.
/// </summary>
internal static class RunCommand
{
    public static Command Create()
    {
        var config = new Option<string?>("--config", "-c") { Description = "Config file (default: $SIDECAR_CONFIG, else the embedded example)" };
        var logLevel = new Option<LogLevel?>("--log-level") { Description = "Trace, Debug, Information, Warning, Error (default: the config's logging.level, else Information)" };
        var command = new Command("run", "Run the gateway");
        command.Options.Add(config);
        command.Options.Add(logLevel);
        command.SetAction(async (parse, cancellationToken) =>
        {
            GatewayHost.PreferInlineIo(); // read once, when the first socket is made: before anything below makes one
            var error = parse.InvocationConfiguration.Error;
            var path = parse.GetValue(config) ?? Environment.GetEnvironmentVariable("SIDECAR_CONFIG");
            SidecarConfig loaded;
            WebApplication app;
            try
            {
                path ??= WriteDefaults();
                loaded = SidecarConfigReader.LoadFile(path);
                // Building the gateway compiles every server's policy: an invalid one stops start-up before we listen.
                app = GatewayHost.Build(loaded, parse.GetValue(logLevel) ?? loaded.Logging.Level ?? LogLevel.Information);
            }
            catch (ConfigValidationException ex)
            {
                foreach (var d in ex.Diagnostics)
                {
                    error.WriteLine(d.ToString());
                }
                return 1;
            }
            catch (Audit.AuditSinkException ex)
            {
                error.WriteLine($"audit: {ex.Message}");
                return 1;
            }

            await using var _ = app.ConfigureAwait(false);
            try
            {
                await app.StartAsync(cancellationToken).ConfigureAwait(false);
            }
            catch (IOException ex)
            {
                // Kestrel could not bind (the port is taken, or the address is not this host's): one line, and the
                // audit writer never started, so the trail has no run for it.
                error.WriteLine($"sidecar: cannot listen on {loaded.Listen}: {(ex.InnerException ?? ex).Message}");
                return 1;
            }
            var logger = app.Services.GetService(typeof(ILoggerFactory)) is ILoggerFactory f ? f.CreateLogger("Sidecar") : null;
            logger?.LogInformation("Sidecar listening on http://{Listen} with config {Config}; endpoints /servers/{{name}}/mcp and /servers/{{name}}/sse; I/O {Io}",
                loaded.Listen, path, GatewayHost.InlineIo ? "inline on the socket threads" : "through the thread pool (" + GatewayHost.InlineCompletionsVariable + "=0)");
            await app.WaitForShutdownAsync(cancellationToken).ConfigureAwait(false);
            return 0;
        });
        return command;
    }

    /// <summary>Writes the embedded default config and policy to a private folder and returns the config's path.</summary>
    internal static string WriteDefaults()
    {
        var folder = Path.Combine(Path.GetTempPath(), $"sidecar-defaults-{Environment.UserName}");
        Directory.CreateDirectory(folder);
        foreach (var name in new[] { "sidecar.default.json", "everything.policy.json" })
        {
            using var resource = Assembly.GetExecutingAssembly().GetManifestResourceStream(name)
                ?? throw new InvalidOperationException($"embedded resource {name} is missing");
            using var file = File.Create(Path.Combine(folder, name));
            resource.CopyTo(file);
        }
        return Path.Combine(folder, "sidecar.default.json");
    }
}
