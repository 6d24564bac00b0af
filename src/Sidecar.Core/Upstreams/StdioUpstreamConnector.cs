using System.ComponentModel;
using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;

namespace Sidecar.Upstreams;

/// <summary>
/// Opens stdio upstream sessions: every <see cref="ConnectAsync"/> spawns a new server process
/// (<c>command</c>, <c>args</c>, <c>cwd</c>; the gateway's environment with <c>env</c> laid over it), so each agent
/// session gets a server process of its own. See <see cref="StdioUpstreamConnection"/> for the framing.
/// </summary>
public sealed class StdioUpstreamConnector : IUpstreamConnector
{
    private readonly ServerConfig _server;
    private readonly GatewayLimits _limits;
    private readonly ILogger _logger;

    public StdioUpstreamConnector(ServerConfig server, GatewayLimits limits, ILoggerFactory? loggers)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(limits);
        if (server.Transport != UpstreamTransport.Stdio || string.IsNullOrEmpty(server.Command))
        {
            throw new ArgumentException($"server '{server.Name}' is not a stdio server with a command", nameof(server));
        }
        _server = server;
        _limits = limits;
        _logger = loggers?.CreateLogger(UpstreamLog.Category) ?? NullLogger.Instance;
    }

    public string Name => _server.Name;

    public string Transport => "stdio";

    /// <summary>
    /// Starts the server process. Spawning blocks for as long as fork and exec take (milliseconds): it runs on the
    /// thread pool, never on the I/O thread that asked (which would stall every other connection meanwhile).
    /// </summary>
    public ValueTask<IUpstreamConnection> ConnectAsync(CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        return new ValueTask<IUpstreamConnection>(Task.Run(Spawn, cancellationToken));
    }

    private IUpstreamConnection Spawn()
    {
        var command = _server.Command!;
        if (_server.Cwd is { } cwd && !Directory.Exists(cwd))
        {
            throw new UpstreamException($"cannot start upstream '{Name}': working directory '{cwd}' does not exist");
        }

        var start = new ProcessStartInfo
        {
            FileName = command,
            UseShellExecute = false,
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            CreateNoWindow = true,
            WorkingDirectory = _server.Cwd ?? string.Empty,
        };
        foreach (var arg in _server.Args)
        {
            start.ArgumentList.Add(arg);
        }
        foreach (var (name, value) in _server.Env)
        {
            start.Environment[name] = value; // on top of the inherited environment
        }

        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        try
        {
            if (!process.Start())
            {
                throw new UpstreamException($"cannot start upstream '{Name}': command '{command}' did not start a process");
            }
        }
        catch (Win32Exception ex)
        {
            process.Dispose();
            // The message names the command only: args and env may hold secrets.
            throw new UpstreamException($"cannot start upstream '{Name}': command '{command}' could not be run ({ex.Message})", ex);
        }
        catch (Exception ex) when (ex is InvalidOperationException or IOException or PlatformNotSupportedException)
        {
            process.Dispose();
            throw new UpstreamException($"cannot start upstream '{Name}': command '{command}' could not be run ({ex.Message})", ex);
        }

        UpstreamLog.ProcessStarted(_logger, Name, process.Id, command);
        return new StdioUpstreamConnection(Name, process, _limits, _logger);
    }

    public override string ToString() => _server.ToString();
}
