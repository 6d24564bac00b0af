using System.Net;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Sessions;

namespace Sidecar.IntegrationTests.Catalogue;

/// <summary>
/// Tool pinning end to end against the real server-everything over stdio: <c>sidecar tools --pin</c> writes the hash of
/// every tool the policy does not deny into the policy file and keeps the rest of it byte for byte; the catalogue
/// shows what is pinned; the real daemon then hides and denies (rule <c>pin</c>) a tool whose pin no longer matches,
/// audits the mismatch, and serves it again once it is pinned again.
/// </summary>
public sealed class ToolPinningTests : IAsyncLifetime
{
    // The rest of the file, kept byte for byte by --pin: odd spacing, a description, a hidden tool, a deny rule.
    private const string PolicyText = "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"description\":   \"pinned by the test\",\n" +
        "  \"hide\": [\"get-env\"],\n  \"tools\": {\n    \"echo\": {},\n    \"get-sum\": { \"limits\": [ { \"counter\": \"s\", \"window\": \"minute\", \"max\": 50 } ] },\n" +
        "    \"get-tiny-image\": { \"action\": \"require_approval\" },\n    \"toggle-simulated-logging\": { \"action\": \"deny\", \"reason\": \"no\" }\n  }\n}\n";

    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(20);
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public Task InitializeAsync() => McpServerFixtures.EnsureInstalledAsync();

    public Task DisposeAsync()
    {
        _http.Dispose();
        return Task.CompletedTask;
    }

    private static string Config() => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["mcpServers"] = new Dictionary<string, object>
        {
            ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" }, ["policy"] = "policy.json" },
        },
        ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "20s" },
    });

    private static async Task<(int Exit, string Output, string Error)> CliAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await Sidecar.Cli.SidecarCli.InvokeAsync(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    private static async Task<Dictionary<string, JsonElement>> CatalogueAsync(string config)
    {
        var (exit, output, error) = await CliAsync("tools", "--config", config, "--server", "everything", "--format", "json");
        Assert.True(exit == 0, error);
        return JsonDocument.Parse(output).RootElement.GetProperty("servers")[0].GetProperty("tools").EnumerateArray()
            .ToDictionary(t => t.GetProperty("name").GetString()!, t => t.Clone());
    }

    private async Task<JsonElement> RequestAsync(SidecarHost sidecar, string session, string body)
    {
        using var response = await RawMcp.PostAsync(_http, sidecar.McpUrl("everything"), body, session);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        return await RawMcp.AnswerAsync(response);
    }

    private async Task<List<string>> ListAsync(SidecarHost sidecar, string session, int id)
        => [.. (await RequestAsync(sidecar, session, $$"""{"jsonrpc":"2.0","id":{{id}},"method":"tools/list"}""")).GetProperty("result").GetProperty("tools")
            .EnumerateArray().Select(t => t.GetProperty("name").GetString()!)];

    private Task<JsonElement> CallEchoAsync(SidecarHost sidecar, string session, int id)
        => RequestAsync(sidecar, session, RawMcp.CallBody(id.ToString(System.Globalization.CultureInfo.InvariantCulture), "echo", """{"message":"hi"}"""));

    private static async Task<List<JsonElement>> AuditAsync(SidecarHost sidecar, Func<JsonElement, bool> match)
    {
        var deadline = DateTime.UtcNow + s_bound;
        while (true)
        {
            List<JsonElement> events = [];
            if (File.Exists(sidecar.AuditFile))
            {
                await using var stream = new FileStream(sidecar.AuditFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                using var reader = new StreamReader(stream, Encoding.UTF8);
                events = [.. (await reader.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    .Select(l => JsonDocument.Parse(l).RootElement.Clone()).Where(match)];
            }
            if (events.Count > 0 || DateTime.UtcNow > deadline)
            {
                return events;
            }
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Pin_writes_every_tool_the_policy_does_not_deny_and_keeps_the_rest_of_the_file()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = PolicyText });
        var policyFile = Path.Combine(sidecar.Folder, "policy.json");
        var before = await CatalogueAsync(sidecar.ConfigFile);
        Assert.All(before.Values, t => Assert.False(t.GetProperty("pinned").GetBoolean()));

        var (exit, output, error) = await CliAsync("tools", "--config", sidecar.ConfigFile, "--server", "everything", "--pin");
        Assert.True(exit == 0, error);
        Assert.StartsWith($"pinned 3 tools of everything in {policyFile}:", output, StringComparison.Ordinal);
        Assert.Contains($"echo            {before["echo"].GetProperty("hash").GetString()}", output, StringComparison.Ordinal);
        Assert.Contains("not pinned (the policy denies them): ", output, StringComparison.Ordinal);

        var written = await File.ReadAllTextAsync(policyFile);
        var end = PolicyText.LastIndexOf('}');
        Assert.Equal(PolicyText[..(end - 3)], written[..(end - 3)]);   // everything up to the end of "tools"…
        Assert.EndsWith("\n  }\n}\n", written, StringComparison.Ordinal); // …and the closing braces as they were
        var pins = JsonDocument.Parse(written).RootElement.GetProperty("pins").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString());
        Assert.Equal(["echo", "get-sum", "get-tiny-image"], pins.Keys.Order(StringComparer.Ordinal));
        Assert.All(pins, p => Assert.Equal(before[p.Key].GetProperty("hash").GetString(), p.Value));
        var (valid, validation, _) = await CliAsync("validate", policyFile);
        Assert.True(valid == 0, validation);

        var after = await CatalogueAsync(sidecar.ConfigFile);
        Assert.All(after, t => Assert.Equal(pins.ContainsKey(t.Key), t.Value.GetProperty("pinned").GetBoolean()));
        Assert.Equal(("allowed", "tools.echo"), (after["echo"].GetProperty("decision").GetString(), after["echo"].GetProperty("rule").GetString()));
        Assert.Equal("needs approval", after["get-tiny-image"].GetProperty("decision").GetString());

        // Pinning again changes nothing: the same bytes.
        Assert.Equal(0, (await CliAsync("tools", "--config", sidecar.ConfigFile, "--server", "everything", "--pin")).Exit);
        Assert.Equal(written, await File.ReadAllTextAsync(policyFile));

        // --pin without --server is a usage error and writes nothing.
        var (usage, _, usageError) = await CliAsync("tools", "--config", sidecar.ConfigFile, "--pin");
        Assert.Equal(2, usage);
        Assert.Contains("--pin needs --server", usageError, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_tool_whose_pin_no_longer_matches_is_hidden_denied_with_rule_pin_audited_and_served_again_once_pinned_again()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = PolicyText });
        var policyFile = Path.Combine(sidecar.Folder, "policy.json");
        Assert.Equal(0, (await CliAsync("tools", "--config", sidecar.ConfigFile, "--server", "everything", "--pin")).Exit);
        Assert.Equal(ReloadStatus.Applied, (await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api)).Status);

        var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
        Assert.Contains("echo", await ListAsync(sidecar, session, 1));
        Assert.True((await CallEchoAsync(sidecar, session, 2)).TryGetProperty("result", out _));

        // The definition the file pins is no longer the server's: the same as a server changing its tool under the pin.
        var pinned = JsonDocument.Parse(await File.ReadAllTextAsync(policyFile)).RootElement.GetProperty("pins").GetProperty("echo").GetString()!;
        var other = "sha256:" + new string('0', 64);
        await File.WriteAllTextAsync(policyFile, (await File.ReadAllTextAsync(policyFile)).Replace(pinned, other, StringComparison.Ordinal));
        Assert.Equal(ReloadStatus.Applied, (await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api)).Status);

        // Denied at once (the definition seen before the reload is kept), hidden from the next list.
        var denied = (await CallEchoAsync(sidecar, session, 3)).GetProperty("error");
        Assert.Equal(-32010, denied.GetProperty("code").GetInt32());
        Assert.Equal(("deny", "pin", "tool definition changed since it was pinned"),
            (denied.GetProperty("data").GetProperty("decision").GetString(), denied.GetProperty("data").GetProperty("rule").GetString(),
             denied.GetProperty("data").GetProperty("reason").GetString()));
        var listed = await ListAsync(sidecar, session, 4);
        Assert.DoesNotContain("echo", listed);
        Assert.Contains("get-sum", listed);
        Assert.Contains("get-sum", await ListAsync(sidecar, session, 5));

        var catalogue = await CatalogueAsync(sidecar.ConfigFile);
        Assert.Equal(("denied", "pin", true), (catalogue["echo"].GetProperty("decision").GetString(), catalogue["echo"].GetProperty("rule").GetString(),
            catalogue["echo"].GetProperty("pinned").GetBoolean()));

        var mismatch = Assert.Single(await AuditAsync(sidecar, e => e.GetProperty("type").GetString() == "tool_pin_mismatch"));
        Assert.Equal(("everything", "echo", other, pinned),
            (mismatch.GetProperty("server").GetString(), mismatch.GetProperty("tool").GetString(), mismatch.GetProperty("pinned").GetString(),
             mismatch.GetProperty("observed").GetString()));
        var call = Assert.Single(await AuditAsync(sidecar, e => e.GetProperty("type").GetString() == "tool_call" && e.GetProperty("requestId").GetInt32() == 3));
        Assert.Equal(("echo", "deny", "pin", "blocked"), (call.GetProperty("tool").GetString(), call.GetProperty("decision").GetString(),
            call.GetProperty("rule").GetString(), call.GetProperty("outcome").GetString()));

        // Pinned again: served again.
        Assert.Equal(0, (await CliAsync("tools", "--config", sidecar.ConfigFile, "--server", "everything", "--pin")).Exit);
        Assert.Equal(ReloadStatus.Applied, (await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api)).Status);
        Assert.True((await CallEchoAsync(sidecar, session, 6)).TryGetProperty("result", out _));
        Assert.Contains("echo", await ListAsync(sidecar, session, 7));
    }
}
