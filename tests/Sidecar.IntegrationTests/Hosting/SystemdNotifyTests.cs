using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Hosting;

/// <summary>
/// <c>sidecar run</c> under systemd's notify protocol, spoken by the test as systemd does: a Unix datagram socket in
/// <c>NOTIFY_SOCKET</c> and a watchdog interval in <c>WATCHDOG_USEC</c>. The gateway says READY once it listens,
/// pings the watchdog, says RELOADING and READY again around a SIGHUP reload, and STOPPING on SIGTERM.
/// </summary>
public sealed class SystemdNotifyTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-notify-it-" + Guid.NewGuid().ToString("N")[..12]);
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public SystemdNotifyTests() => Directory.CreateDirectory(_folder);

    public void Dispose()
    {
        _http.Dispose();
        Directory.Delete(_folder, recursive: true);
    }

    [Fact]
    public async Task The_gateway_says_ready_pings_the_watchdog_and_says_reloading_and_stopping()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var socketPath = Path.Combine(_folder, "notify");
        using var socket = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        socket.Bind(new UnixDomainSocketEndPoint(socketPath));
        var received = new List<string>();
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(90));
        var listening = Task.Run(async () =>
        {
            var buffer = new byte[4096];
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    var length = await socket.ReceiveAsync(buffer, SocketFlags.None, stop.Token);
                    lock (received)
                    {
                        received.Add(Encoding.UTF8.GetString(buffer, 0, length));
                    }
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        });
        List<string> Datagrams()
        {
            lock (received)
            {
                return [.. received];
            }
        }
        async Task WaitForAsync(Func<List<string>, bool> condition, string what)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
            while (!condition(Datagrams()))
            {
                Assert.True(DateTime.UtcNow < deadline, $"no {what}; got: {string.Join(" | ", Datagrams())}");
                await Task.Delay(50);
            }
        }

        var port = EverythingServer.FreeLoopbackPort();
        var config = Path.Combine(_folder, "sidecar.json");
        await File.WriteAllTextAsync(Path.Combine(_folder, "policy.json"), """{ "version": "1", "default": "deny", "tools": { "echo": {} } }""");
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["listen"] = $"127.0.0.1:{port}",
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
            },
            ["policy"] = "policy.json",
            ["audit"] = new Dictionary<string, object> { ["file"] = "audit.jsonl" },
        }));
        using var gateway = SidecarProcess.Start(config, new Dictionary<string, string> { ["NOTIFY_SOCKET"] = socketPath, ["WATCHDOG_USEC"] = "400000" });
        await gateway.WaitUntilReadyAsync(_http, port);

        await WaitForAsync(d => d.Any(m => m.StartsWith("READY=1", StringComparison.Ordinal)), "READY=1");
        var ready = Datagrams().First(m => m.StartsWith("READY=1", StringComparison.Ordinal));
        Assert.Contains($"MAINPID={gateway.Process.Id}", ready, StringComparison.Ordinal);
        await WaitForAsync(d => d.Count(m => m == "WATCHDOG=1") >= 2, "two watchdog pings");

        gateway.Signal("HUP");
        await WaitForAsync(d => d.Any(m => m.StartsWith("RELOADING=1", StringComparison.Ordinal)), "RELOADING=1");
        var reloading = Datagrams().First(m => m.StartsWith("RELOADING=1", StringComparison.Ordinal));
        Assert.Matches(@"MONOTONIC_USEC=\d+", reloading);
        await WaitForAsync(d => d.SkipWhile(m => !m.StartsWith("RELOADING=1", StringComparison.Ordinal)).Any(m => m.StartsWith("READY=1", StringComparison.Ordinal)),
            "READY=1 after the reload");

        await gateway.TerminateAsync();
        await WaitForAsync(d => d.Any(m => m.StartsWith("STOPPING=1", StringComparison.Ordinal)), "STOPPING=1");
        Assert.Equal(0, await gateway.WaitForExitAsync());
        stop.Cancel();
        await listening;
    }
}
