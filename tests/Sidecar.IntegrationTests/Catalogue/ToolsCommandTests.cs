using System.Text;
using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Policy;

namespace Sidecar.IntegrationTests.Catalogue;

/// <summary>
/// <c>sidecar tools</c> and <c>sidecar policy suggest</c> against the real server-everything over stdio: every tool
/// with its class, what the policy does with it and its hash; the policy's tools the server lacks; a suggested policy
/// that names every tool and compiles; a server that cannot be reached is one clear line and exit 1.
/// </summary>
public sealed class ToolsCommandTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-tools-it-" + Guid.NewGuid().ToString("N"));

    public ToolsCommandTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private async Task<string> ConfigAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        await File.WriteAllTextAsync(Path.Combine(_folder, "p.json"), """
            { "version": "1", "default": "deny", "hide": ["get-env"],
              "tools": { "echo": {}, "get-sum": { "limits": [ { "counter": "s", "window": "minute", "max": 5 } ] },
                         "get-tiny-image": { "action": "require_approval" }, "not-there": {} } }
            """);
        var config = Path.Combine(_folder, "sidecar.json");
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" }, ["policy"] = "p.json" },
                ["down"] = new Dictionary<string, object> { ["url"] = $"http://127.0.0.1:{EverythingServer.FreeLoopbackPort()}/mcp", ["policy"] = "p.json" },
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

    [Fact]
    public async Task Tools_lists_every_tool_with_its_class_decision_and_hash()
    {
        var config = await ConfigAsync();
        var (exit, output, error) = await CliAsync("tools", "--config", config, "--server", "everything", "--format", "json");
        Assert.True(exit == 0, error);
        var server = Assert.Single(JsonDocument.Parse(output).RootElement.GetProperty("servers").EnumerateArray());
        Assert.Equal("everything", server.GetProperty("name").GetString());
        var tools = server.GetProperty("tools").EnumerateArray().ToDictionary(t => t.GetProperty("name").GetString()!);
        Assert.True(tools.Count >= 10);
        Assert.Equal("allowed", tools["echo"].GetProperty("decision").GetString());
        Assert.Equal("hidden", tools["get-env"].GetProperty("decision").GetString());
        Assert.Equal("limited 5 per minute", tools["get-sum"].GetProperty("decision").GetString());
        Assert.Equal("needs approval", tools["get-tiny-image"].GetProperty("decision").GetString());
        Assert.Equal("denied", tools["toggle-simulated-logging"].GetProperty("decision").GetString());
        Assert.Equal("default", tools["toggle-simulated-logging"].GetProperty("rule").GetString());
        Assert.All(tools.Values, t =>
        {
            Assert.Matches("^sha256:[0-9a-f]{64}$", t.GetProperty("hash").GetString());
            Assert.Contains(t.GetProperty("category").GetString(), new[] { "read", "write", "execute", "destructive", "financial", "other" });
            Assert.Contains(t.GetProperty("risk").GetString(), new[] { "low", "medium", "high" });
        });
        Assert.Equal(tools.Count, tools.Values.Select(t => t.GetProperty("hash").GetString()).Distinct().Count());
        Assert.Equal(["not-there"], server.GetProperty("missing").EnumerateArray().Select(m => m.GetString()));

        var (tableExit, table, _) = await CliAsync("tools", "--config", config, "--server", "everything");
        Assert.Equal(0, tableExit);
        Assert.Contains("not-there", table, StringComparison.Ordinal);
        Assert.Contains("hidden (hide)", table, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_server_that_cannot_be_reached_is_one_line_and_exit_1()
    {
        var config = await ConfigAsync();
        var (exit, output, error) = await CliAsync("tools", "--config", config, "--format", "json");
        Assert.Equal(1, exit);
        var servers = JsonDocument.Parse(output).RootElement.GetProperty("servers").EnumerateArray().ToList();
        Assert.True(servers.Single(s => s.GetProperty("name").GetString() == "everything").TryGetProperty("tools", out _));
        Assert.True(servers.Single(s => s.GetProperty("name").GetString() == "down").TryGetProperty("error", out _));
        Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries), l => l.StartsWith("sidecar tools: down: ", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Policy_suggest_names_every_tool_and_compiles()
    {
        var config = await ConfigAsync();
        var file = Path.Combine(_folder, "suggested.json");
        var (exit, _, error) = await CliAsync("policy", "suggest", "--config", config, "--server", "everything", "-o", file);
        Assert.True(exit == 0, error);
        var policy = PolicyCompiler.LoadFile(file, "everything");
        var (_, output, _) = await CliAsync("tools", "--config", config, "--server", "everything", "--format", "json");
        var names = JsonDocument.Parse(output).RootElement.GetProperty("servers")[0].GetProperty("tools").EnumerateArray().Select(t => t.GetProperty("name").GetString()!).ToList();
        var suggested = JsonDocument.Parse(await File.ReadAllTextAsync(file)).RootElement;
        Assert.Equal("deny", suggested.GetProperty("default").GetString());
        foreach (var name in names)
        {
            Assert.True(suggested.GetProperty("tools").TryGetProperty(name, out _), $"{name} is not in the suggested policy");
            Assert.NotEqual("default", policy.Resolve(name).Id);
        }
    }
}
