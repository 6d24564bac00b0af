using System.Net;
using System.Net.Sockets;
using Sidecar.Cli;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>`sidecar run` on a port that is taken: one clear line, exit 1, and no run in the audit trail.</summary>
public sealed class StartupFailureTests
{
    [Fact]
    public async Task A_port_in_use_gets_one_line_exit_1_and_leaves_no_audit_start()
    {
        using var taken = new TcpListener(IPAddress.Loopback, 0);
        taken.Start();
        var port = ((IPEndPoint)taken.LocalEndpoint).Port;
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-port-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            var config = Path.Combine(folder, "sidecar.json");
            await File.WriteAllTextAsync(config, $$"""
                { "listen": "127.0.0.1:{{port}}", "mcpServers": { "e": { "command": "node", "args": ["none.js"] } }, "audit": { "file": "audit.jsonl" } }
                """);
            var output = new StringWriter();
            var error = new StringWriter();
            var exit = await SidecarCli.InvokeAsync(["run", "--config", config], output, error);

            Assert.Equal(1, exit);
            var line = Assert.Single(error.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Equal($"sidecar: cannot listen on 127.0.0.1:{port}: Address already in use", line.TrimEnd('\r'));
            var trail = Path.Combine(folder, "audit.jsonl");
            Assert.True(!File.Exists(trail) || new FileInfo(trail).Length == 0, "the trail has an entry: " + (File.Exists(trail) ? await File.ReadAllTextAsync(trail) : ""));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
