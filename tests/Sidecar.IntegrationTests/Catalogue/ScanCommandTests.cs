using System.Text.Json;
using Sidecar.Catalogue;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Policy;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Catalogue;

/// <summary>
/// <c>sidecar scan</c> against the real server-everything, over stdio (<c>-- node … stdio</c>) and over its Streamable
/// HTTP mode on loopback (<c>--upstream</c>): the starter policy names every tool the server lists, and
/// <c>sidecar validate</c> accepts it as written; a server that cannot be reached is one line on stderr and exit 1.
/// </summary>
public sealed class ScanCommandTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-scan-it-" + Guid.NewGuid().ToString("N"));

    public ScanCommandTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static async Task<(int Exit, string Output, string Error)> CliAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await Sidecar.Cli.SidecarCli.InvokeAsync(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    /// <summary>The server's tools as it lists them to a client of its own, to compare the scan with.</summary>
    private static async Task<List<string>> ToolNamesAsync(Configuration.ServerConfig server)
    {
        var connector = UpstreamConnectors.Create(server, Configuration.GatewayLimits.Default, null);
        try
        {
            return [.. (await UpstreamToolLister.ListAsync(connector, TimeSpan.FromSeconds(60))).Select(t => t.GetProperty("name").GetString()!)];
        }
        finally
        {
            (connector as IDisposable)?.Dispose();
        }
    }

    private async Task AssertStarterPolicyAsync(string file, IReadOnlyCollection<string> tools)
    {
        var (valid, validation, validationError) = await CliAsync("validate", file);
        Assert.True(valid == 0, validation + validationError);
        var policy = PolicyCompiler.LoadFile(file, "scanned");
        Assert.Equal(PolicyDefault.Deny, policy.Default);
        Assert.True(tools.Count >= 10, string.Join(", ", tools));
        Assert.Equal(tools.Order(StringComparer.Ordinal), policy.Config.Tools.Select(t => t.Tool).Order(StringComparer.Ordinal));
        Assert.All(policy.Config.Tools, t => Assert.Matches("^(read|write|execute|destructive|financial|other), (low|medium|high) risk", t.Rule.Description));
    }

    [Fact]
    public async Task Scan_of_a_stdio_command_prints_a_starter_policy_naming_every_tool_that_validates()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var server = EverythingServer.StartStdioConfig();
        var (exit, output, error) = await CliAsync("scan", "--", "node", McpServerFixtures.EverythingEntry, "stdio");
        Assert.True(exit == 0, error);
        Assert.Equal("", error);
        Assert.Contains("\"description\": \"Suggested starter policy for server-everything", output, StringComparison.Ordinal);
        var file = Path.Combine(_folder, "stdio.json");
        await File.WriteAllTextAsync(file, output);
        await AssertStarterPolicyAsync(file, await ToolNamesAsync(server));
    }

    [Fact]
    public async Task Scan_of_a_streamable_http_url_writes_the_starter_policy_with_o()
    {
        await using var everything = await EverythingServer.StartStreamableHttpAsync();
        var file = Path.Combine(_folder, "http.json");
        var (exit, output, error) = await CliAsync("scan", "--upstream", everything.Url.ToString(), "--transport", "streamable-http",
            "--header", "X-Scan: yes", "--name", "everything", "-o", file);
        Assert.True(exit == 0, error);
        Assert.StartsWith($"wrote {file} (", output, StringComparison.Ordinal);
        Assert.Contains("\"description\": \"Suggested starter policy for everything", await File.ReadAllTextAsync(file), StringComparison.Ordinal);
        await AssertStarterPolicyAsync(file, await ToolNamesAsync(everything.ToServerConfig()));
    }

    [Fact]
    public async Task A_server_that_cannot_be_reached_is_one_line_and_exit_1()
    {
        var url = $"http://127.0.0.1:{EverythingServer.FreeLoopbackPort()}/mcp";
        var file = Path.Combine(_folder, "never.json");
        var (exit, output, error) = await CliAsync("scan", "--upstream", url, "-o", file);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.StartsWith("sidecar scan: 127.0.0.1: ", error, StringComparison.Ordinal);
        Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.False(File.Exists(file));

        (exit, _, error) = await CliAsync("scan", "--", Path.Combine(_folder, "no-such-server"));
        Assert.Equal(1, exit);
        Assert.StartsWith("sidecar scan: no-such-server: cannot start upstream", error, StringComparison.Ordinal);
    }
}
