using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// A real <c>redis-server</c> (the Debian package) on a loopback port, with no persistence, that a test can stop and
/// start again on the same port. Installed with apt on first use when missing (root only), as <c>.ci/run</c> does.
/// </summary>
public sealed class RedisServer : IAsyncDisposable
{
    private const string Binary = "/usr/bin/redis-server";
    private static readonly SemaphoreSlim s_install = new(1, 1);
    private Process? _process;

    private RedisServer(int port, string? password)
    {
        Port = port;
        Password = password;
    }

    public int Port { get; }

    public string? Password { get; }

    /// <summary>The StackExchange.Redis connection string for it.</summary>
    public string Connection => $"127.0.0.1:{Port}" + (Password is null ? "" : $",password={Password}");

    public static async Task<RedisServer> StartAsync(string? password = null)
    {
        await EnsureInstalledAsync();
        var server = new RedisServer(EverythingServer.FreeLoopbackPort(), password);
        await server.StartAgainAsync();
        return server;
    }

    /// <summary>Starts it (again) on its port; returns once it answers PING.</summary>
    public async Task StartAgainAsync()
    {
        var start = new ProcessStartInfo(Binary) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var arg in new[] { "--port", Port.ToString(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "yes" })
        {
            start.ArgumentList.Add(arg);
        }
        if (Password is not null)
        {
            start.ArgumentList.Add("--requirepass");
            start.ArgumentList.Add(Password);
        }
        _process = Process.Start(start)!;
        _process.OutputDataReceived += (_, _) => { };
        _process.ErrorDataReceived += (_, _) => { };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (DateTime.UtcNow < deadline)
        {
            if (await CommandAsync("PING") is "+PONG")
            {
                return;
            }
            await Task.Delay(50);
        }
        throw new InvalidOperationException($"redis-server did not start on 127.0.0.1:{Port}");
    }

    /// <summary>Kills it (SIGKILL: as abrupt as a crash) and waits for it to be gone.</summary>
    public async Task KillAsync()
    {
        if (_process is { HasExited: false } process)
        {
            process.Kill();
            await process.WaitForExitAsync();
        }
        _process = null;
    }

    /// <summary>Sends one command (inline protocol) and returns the first line of the answer; null when nothing answers.</summary>
    public async Task<string?> CommandAsync(params string[] words)
    {
        try
        {
            using var client = new TcpClient();
            await client.ConnectAsync("127.0.0.1", Port);
            await using var stream = client.GetStream();
            var request = new StringBuilder();
            if (Password is not null)
            {
                request.Append($"*2\r\n$4\r\nAUTH\r\n${Encoding.UTF8.GetByteCount(Password)}\r\n{Password}\r\n");
            }
            request.Append('*').Append(words.Length).Append("\r\n");
            foreach (var word in words)
            {
                request.Append('$').Append(Encoding.UTF8.GetByteCount(word)).Append("\r\n").Append(word).Append("\r\n");
            }
            await stream.WriteAsync(Encoding.UTF8.GetBytes(request.ToString()));
            using var reader = new StreamReader(stream, Encoding.UTF8);
            if (Password is not null)
            {
                await reader.ReadLineAsync(); // +OK of AUTH
            }
            var line = await reader.ReadLineAsync();
            if (line is not null && line.StartsWith('$') && line != "$-1")
            {
                return await reader.ReadLineAsync();
            }
            return line;
        }
        catch (SocketException)
        {
            return null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    private static async Task EnsureInstalledAsync()
    {
        if (File.Exists(Binary))
        {
            return;
        }
        await s_install.WaitAsync();
        try
        {
            if (!File.Exists(Binary) && Environment.UserName == "root" && File.Exists("/usr/bin/apt-get"))
            {
                await Commands.RunAsync("/usr/bin/apt-get", "update", "-qq");
                await Commands.RunAsync("/usr/bin/apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server");
            }
        }
        finally
        {
            s_install.Release();
        }
        Assert.True(File.Exists(Binary), "redis-server is missing: apt-get install redis-server (.ci/run installs it)");
    }

    public async ValueTask DisposeAsync() => await KillAsync();
}
