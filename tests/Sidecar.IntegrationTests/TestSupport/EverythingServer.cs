using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using Sidecar.Configuration;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// A real <c>@modelcontextprotocol/server-everything</c> for tests, always on loopback.
/// </summary>
/// <remarks>
/// <para>
/// <see cref="StartStdioConfig"/> returns the <see cref="ServerConfig"/> of a stdio server (the connector under test
/// spawns the process). <see cref="StartSseAsync"/> and <see cref="StartStreamableHttpAsync"/> start an HTTP server on a
/// free 127.0.0.1 port and return once it accepts connections; dispose the returned instance to kill its process tree.
/// </para>
/// <para>
/// Every server runs as <c>node --require loopback.cjs …/server-everything/dist/index.js MODE</c> with the fixture
/// folder as its working directory: the preload forces every listener onto 127.0.0.1 (the server itself binds all
/// interfaces and has no host option). Every wait here is bounded. The server's stdout and stderr are kept
/// (<see cref="Output"/>, the last <see cref="MaxOutputLines"/> lines) for diagnostics and assertions.
/// </para>
/// </remarks>
public sealed class EverythingServer : IAsyncDisposable
{
    /// <summary>How many output lines <see cref="Output"/> keeps.</summary>
    public const int MaxOutputLines = 500;

    private static readonly TimeSpan s_startTimeout = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan s_stopTimeout = TimeSpan.FromSeconds(5);

    private readonly string _mode;
    private readonly Queue<string> _output = new();
    private Process? _process;

    private EverythingServer(string mode, int port)
    {
        _mode = mode;
        Port = port;
    }

    /// <summary>The 127.0.0.1 port the server listens on.</summary>
    public int Port { get; }

    /// <summary>The MCP URL: <c>http://127.0.0.1:PORT/sse</c> (legacy SSE) or <c>http://127.0.0.1:PORT/mcp</c> (Streamable HTTP).</summary>
    public Uri Url => new($"http://127.0.0.1:{Port}/{(_mode == "sse" ? "sse" : "mcp")}");

    /// <summary>The server process id (changes on <see cref="RestartAsync"/>).</summary>
    public int ProcessId => _process?.Id ?? 0;

    /// <summary>What the server printed so far (stdout and stderr, interleaved, last <see cref="MaxOutputLines"/> lines).</summary>
    public string Output
    {
        get
        {
            lock (_output)
            {
                return string.Join('\n', _output);
            }
        }
    }

    /// <summary>
    /// A stdio server config: <c>node --require loopback.cjs ENTRY stdio</c> in the fixture folder. The connector
    /// spawns it (a process per connection). Call <see cref="McpServerFixtures.EnsureInstalledAsync"/> first.
    /// </summary>
    public static ServerConfig StartStdioConfig(string name = "everything", IReadOnlyDictionary<string, string>? env = null) =>
        new(name, new SourceLocation(1, 1), UpstreamTransport.Stdio, "node",
            ["--require", McpServerFixtures.LoopbackPreload, McpServerFixtures.EverythingEntry, "stdio"],
            env ?? new Dictionary<string, string>(), McpServerFixtures.Directory, null,
            new Dictionary<string, string>(), null);

    /// <summary>Starts the legacy HTTP+SSE server (<c>GET /sse</c>, <c>POST /message</c>) on a free loopback port.</summary>
    public static Task<EverythingServer> StartSseAsync(CancellationToken cancellationToken = default) =>
        StartAsync("sse", cancellationToken);

    /// <summary>Starts the Streamable HTTP server (<c>/mcp</c>) on a free loopback port.</summary>
    public static Task<EverythingServer> StartStreamableHttpAsync(CancellationToken cancellationToken = default) =>
        StartAsync("streamableHttp", cancellationToken);

    /// <summary>A config pointing a connector at this server.</summary>
    public ServerConfig ToServerConfig(string name = "everything", IReadOnlyDictionary<string, string>? headers = null) =>
        new(name, new SourceLocation(1, 1), _mode == "sse" ? UpstreamTransport.Sse : UpstreamTransport.StreamableHttp,
            null, [], new Dictionary<string, string>(), null, Url, headers ?? new Dictionary<string, string>(), null);

    private static async Task<EverythingServer> StartAsync(string mode, CancellationToken cancellationToken)
    {
        await McpServerFixtures.EnsureInstalledAsync().ConfigureAwait(false);
        Exception? last = null;
        for (var attempt = 0; attempt < 3; attempt++)
        {
            var server = new EverythingServer(mode, FreeLoopbackPort());
            try
            {
                await server.LaunchAsync(cancellationToken).ConfigureAwait(false);
                return server;
            }
            catch (IOException ex)
            {
                // The port was taken between picking and binding: try another.
                last = ex;
                await server.DisposeAsync().ConfigureAwait(false);
            }
            catch
            {
                await server.DisposeAsync().ConfigureAwait(false);
                throw;
            }
        }
        throw new InvalidOperationException($"could not start server-everything ({mode})", last);
    }

    /// <summary>Kills the server and starts a fresh one on the same port (every session it had is gone).</summary>
    public async Task RestartAsync(CancellationToken cancellationToken = default)
    {
        await StopAsync().ConfigureAwait(false);
        await LaunchAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Kills the server's process tree and waits (bounded) for it to exit.</summary>
    public async Task StopAsync()
    {
        var process = Interlocked.Exchange(ref _process, null);
        if (process is null)
        {
            return;
        }
        try
        {
            process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already exited.
        }
        using (var timeout = new CancellationTokenSource(s_stopTimeout))
        {
            try
            {
                await process.WaitForExitAsync(timeout.Token).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // Leave it to the OS; the test will report the port as busy if it matters.
            }
        }
        process.Dispose();
    }

    private async Task LaunchAsync(CancellationToken cancellationToken)
    {
        var start = new ProcessStartInfo("node")
        {
            WorkingDirectory = McpServerFixtures.Directory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--require");
        start.ArgumentList.Add(McpServerFixtures.LoopbackPreload);
        start.ArgumentList.Add(McpServerFixtures.EverythingEntry);
        start.ArgumentList.Add(_mode);
        start.Environment["PORT"] = Port.ToString(System.Globalization.CultureInfo.InvariantCulture);

        var process = new Process { StartInfo = start, EnableRaisingEvents = true };
        process.OutputDataReceived += (_, e) => Append(e.Data);
        process.ErrorDataReceived += (_, e) => Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        _process = process;

        var deadline = Stopwatch.StartNew();
        while (true)
        {
            cancellationToken.ThrowIfCancellationRequested();
            if (process.HasExited)
            {
                await process.WaitForExitAsync(cancellationToken).ConfigureAwait(false); // flush the output
                var output = Output;
                var message = $"server-everything ({_mode}) exited with code {process.ExitCode} before listening on 127.0.0.1:{Port}:\n{output}";
                throw output.Contains("EADDRINUSE", StringComparison.Ordinal) || output.Contains("already in use", StringComparison.Ordinal)
                    ? new IOException(message)
                    : new InvalidOperationException(message);
            }
            if (await AcceptsAsync(Port).ConfigureAwait(false))
            {
                return;
            }
            if (deadline.Elapsed > s_startTimeout)
            {
                throw new TimeoutException($"server-everything ({_mode}) did not listen on 127.0.0.1:{Port} within {s_startTimeout}:\n{Output}");
            }
            await Task.Delay(50, cancellationToken).ConfigureAwait(false);
        }
    }

    private void Append(string? line)
    {
        if (line is null)
        {
            return;
        }
        lock (_output)
        {
            _output.Enqueue(line);
            while (_output.Count > MaxOutputLines)
            {
                _output.Dequeue();
            }
        }
    }

    private static async Task<bool> AcceptsAsync(int port)
    {
        using var client = new TcpClient(AddressFamily.InterNetwork);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(1));
        try
        {
            await client.ConnectAsync(IPAddress.Loopback, port, timeout.Token).ConfigureAwait(false);
            return true;
        }
        catch (Exception ex) when (ex is SocketException or OperationCanceledException)
        {
            return false;
        }
    }

    /// <summary>A port that was free on 127.0.0.1 a moment ago.</summary>
    public static int FreeLoopbackPort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        return port;
    }

    public async ValueTask DisposeAsync() => await StopAsync().ConfigureAwait(false);

    public override string ToString() => $"server-everything {_mode} on {Url} (pid {ProcessId})";
}
