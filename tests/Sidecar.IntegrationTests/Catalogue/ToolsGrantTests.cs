using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Catalogue;

/// <summary>
/// <c>sidecar tools --grant G</c> against the real server-everything over stdio: the decisions under the policy the
/// grant gives each server (its own, <c>"*"</c>'s, or none: everything denied), not the server's own policy; an
/// unknown grant is one clear line and exit 2.
/// </summary>
public sealed class ToolsGrantTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-tools-grant-it-" + Guid.NewGuid().ToString("N"));

    public ToolsGrantTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private async Task<string> ConfigAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        await File.WriteAllTextAsync(Path.Combine(_folder, "own.json"), """{ "version": "1", "default": "allow" }""");
        await File.WriteAllTextAsync(Path.Combine(_folder, "readonly.json"), """{ "version": "1", "default": "deny", "tools": { "echo": {} } }""");
        await File.WriteAllTextAsync(Path.Combine(_folder, "ops.json"), """{ "version": "1", "default": "deny", "tools": { "get-sum": { "action": "require_approval" } } }""");
        var config = Path.Combine(_folder, "sidecar.json");
        Dictionary<string, object> Everything() => new() { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" }, ["policy"] = "own.json" };
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { ["everything"] = Everything(), ["second"] = Everything() },
            ["identities"] = new Dictionary<string, object>
            {
                ["apiKeys"] = new Dictionary<string, object>
                {
                    ["reader"] = new Dictionary<string, string> { ["sha256"] = new string('a', 64), ["grant"] = "readonly" },
                    ["ops"] = new Dictionary<string, string> { ["sha256"] = new string('b', 64), ["grant"] = "ops" },
                },
            },
            ["grants"] = new Dictionary<string, object>
            {
                ["readonly"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["everything"] = "readonly.json" } },
                ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "ops.json" } },
            },
        }));
        return config;
    }

    private static async Task<(int Exit, string Output, string Error)> CliAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await Sidecar.Cli.SidecarCli.InvokeAsync(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    private static Dictionary<string, Dictionary<string, (string Decision, string Rule)>> Decisions(string json)
        => JsonDocument.Parse(json).RootElement.GetProperty("servers").EnumerateArray().ToDictionary(
            s => s.GetProperty("name").GetString()!,
            s => s.GetProperty("tools").EnumerateArray().ToDictionary(t => t.GetProperty("name").GetString()!,
                t => (t.GetProperty("decision").GetString()!, t.GetProperty("rule").GetString()!)));

    [Fact]
    public async Task Tools_shows_the_decisions_of_the_policy_a_grant_gives_each_server()
    {
        var config = await ConfigAsync();

        var (exit, output, error) = await CliAsync("tools", "--config", config, "--format", "json");
        Assert.True(exit == 0, error);
        var own = Decisions(output);
        Assert.Equal(("allowed", "default"), own["everything"]["get-sum"]);

        (exit, output, error) = await CliAsync("tools", "--config", config, "--grant", "readonly", "--format", "json");
        Assert.True(exit == 0, error);
        var readonlyGrant = Decisions(output);
        Assert.Equal(("allowed", "tools.echo"), readonlyGrant["everything"]["echo"]);
        Assert.Equal(("denied", "default"), readonlyGrant["everything"]["get-sum"]);
        // No policy for "second" in the grant (and no "*"): everything there is denied to it.
        Assert.All(readonlyGrant["second"].Values, d => Assert.Equal(("denied", "default"), d));

        (exit, output, error) = await CliAsync("tools", "--config", config, "--server", "second", "--grant", "ops");
        Assert.True(exit == 0, error);
        Assert.StartsWith($"second (stdio, grant ops, policy {Path.Combine(_folder, "ops.json")})", output, StringComparison.Ordinal);
        Assert.Contains("needs approval (tools.get-sum)", output, StringComparison.Ordinal);
        Assert.DoesNotContain("everything (", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Pin_with_a_grant_writes_the_grants_policy_file_for_the_server()
    {
        var config = await ConfigAsync();
        var own = await File.ReadAllTextAsync(Path.Combine(_folder, "own.json"));
        var (exit, output, error) = await CliAsync("tools", "--config", config, "--server", "everything", "--grant", "readonly", "--pin");
        Assert.True(exit == 0, error);
        Assert.StartsWith($"pinned 1 tool of everything in {Path.Combine(_folder, "readonly.json")}:", output, StringComparison.Ordinal);
        var pins = JsonDocument.Parse(await File.ReadAllTextAsync(Path.Combine(_folder, "readonly.json"))).RootElement.GetProperty("pins");
        Assert.Equal(["echo"], pins.EnumerateObject().Select(p => p.Name));
        Assert.Equal(own, await File.ReadAllTextAsync(Path.Combine(_folder, "own.json")));

        (exit, _, error) = await CliAsync("tools", "--config", config, "--server", "second", "--grant", "readonly", "--pin");
        Assert.Equal(1, exit);
        Assert.Equal("sidecar tools: grant readonly has no policy file for second to pin into (everything is denied to it)", error.Trim());
    }

    [Fact]
    public async Task An_unknown_grant_is_one_line_and_exit_2()
    {
        var config = await ConfigAsync();
        var (exit, output, error) = await CliAsync("tools", "--config", config, "--grant", "admin");
        Assert.Equal(2, exit);
        Assert.Equal("", output);
        Assert.Equal("sidecar tools: unknown grant \"admin\" (the config has: ops, readonly)", error.Trim());
    }
}
