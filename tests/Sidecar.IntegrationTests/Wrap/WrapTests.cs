using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Wrap;

/// <summary>
/// <c>sidecar wrap</c> as an MCP client runs it: the official C# SDK's <see cref="StdioClientTransport"/> spawns
/// <c>dotnet sidecar.dll wrap …</c>, which runs server-everything (or bridges to it over Streamable HTTP) under a policy.
/// </summary>
public sealed class WrapTests : IAsyncLifetime
{
    private const string Policy = """
        {
          "version": "1",
          "default": "deny",
          "hide": ["get-env"],
          "tools": {
            "echo": { "limits": [ { "counter": "echo_rate", "window": "hour", "max": 2, "scope": "session" } ] },
            "get-sum": { "deny_if": [ { "path": "args.a", "op": "gt", "value": 100 } ], "reason": "a is capped at 100" }
          }
        }
        """;

    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-wrap-" + Guid.NewGuid().ToString("N"));
    private readonly List<string> _stderr = [];

    private string PolicyFile => Path.Combine(_folder, "policy.json");

    private string AuditFile => Path.Combine(_folder, "audit.jsonl");

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        Directory.CreateDirectory(_folder);
        await File.WriteAllTextAsync(PolicyFile, Policy);
    }

    public Task DisposeAsync()
    {
        Directory.Delete(_folder, recursive: true);
        return Task.CompletedTask;
    }

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;

    private Task<McpClient> WrapAsync(params string[] arguments)
    {
        var transport = new StdioClientTransport(new StdioClientTransportOptions
        {
            Name = "sidecar-wrap",
            Command = "dotnet",
            Arguments = [typeof(Sidecar.Gateway.GatewayHost).Assembly.Location, "wrap", .. arguments],
            WorkingDirectory = _folder,
            StandardErrorLines = line =>
            {
                lock (_stderr)
                {
                    _stderr.Add(line);
                }
            },
        });
        return McpClient.CreateAsync(transport, new McpClientOptions(), NullLoggerFactory.Instance, Timeout());
    }

    private static Dictionary<string, object?> Args(params (string Name, object? Value)[] values) => values.ToDictionary(v => v.Name, v => v.Value);

    private static string Text(CallToolResult result) => string.Join("", result.Content.OfType<TextContentBlock>().Select(t => t.Text));

    private async Task<List<JsonElement>> AuditCallsAsync()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            var lines = File.Exists(AuditFile) ? await File.ReadAllLinesAsync(AuditFile) : [];
            var events = lines.Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
            if (events.Count > 0 && events[^1].GetProperty("type").GetString() == "audit_stop" || DateTime.UtcNow > deadline)
            {
                return events;
            }
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task The_csharp_sdk_drives_wrap_over_stdio_with_allowed_denied_and_rate_limited_calls()
    {
        await using (var client = await WrapAsync("-c", PolicyFile, "--audit", AuditFile, "--", "node", McpServerFixtures.EverythingEntry, "stdio"))
        {
            var tools = await client.ListToolsAsync(cancellationToken: Timeout());
            Assert.Equal(["echo", "get-sum"], tools.Select(t => t.Name).Order());

            Assert.Equal("Echo: one", Text(await client.CallToolAsync("echo", Args(("message", "one")), cancellationToken: Timeout())));
            Assert.Contains("3", Text(await client.CallToolAsync("get-sum", Args(("a", 1), ("b", 2)), cancellationToken: Timeout())), StringComparison.Ordinal);

            var denied = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-sum", Args(("a", 500), ("b", 1)), cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32010, (int)denied.ErrorCode);
            Assert.Contains("a is capped at 100", denied.Message, StringComparison.Ordinal);
            var hidden = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-env", Args(), cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32010, (int)hidden.ErrorCode);

            Assert.Equal("Echo: two", Text(await client.CallToolAsync("echo", Args(("message", "two")), cancellationToken: Timeout())));
            var limited = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("echo", Args(("message", "three")), cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32011, (int)limited.ErrorCode);
            Assert.Contains("echo_rate", limited.Message, StringComparison.Ordinal);
        }

        // The client closed stdin: wrap drained its audit trail and ended it.
        var events = await AuditCallsAsync();
        Assert.Equal("audit_start", events[0].GetProperty("type").GetString());
        Assert.Equal("audit_stop", events[^1].GetProperty("type").GetString());
        var calls = events.Where(e => e.GetProperty("type").GetString() == "tool_call").ToList();
        Assert.Equal(["allow", "allow", "deny", "deny", "allow", "rate_limited"], calls.Select(c => c.GetProperty("decision").GetString()));
        Assert.All(calls, c => Assert.Equal("server-everything", c.GetProperty("server").GetString()));
        var (code, _, error) = await Sidecar.IntegrationTests.Audit.GatewayAuditTests.VerifyAsync("--strict", AuditFile);
        Assert.True(code == 0, error);
        lock (_stderr)
        {
            Assert.DoesNotContain(_stderr, line => line.StartsWith("{\"jsonrpc\"", StringComparison.Ordinal));
        }
    }

    [Fact]
    public async Task Wrap_upstream_bridges_a_stdio_client_to_a_streamable_http_server()
    {
        await using var server = await EverythingServer.StartStreamableHttpAsync();
        await using (var client = await WrapAsync("-c", PolicyFile, "--audit", AuditFile, "--upstream", server.Url.ToString(), "--header", "X-Test: wrap"))
        {
            var tools = await client.ListToolsAsync(cancellationToken: Timeout());
            Assert.Equal(["echo", "get-sum"], tools.Select(t => t.Name).Order());
            Assert.Equal("Echo: over http", Text(await client.CallToolAsync("echo", Args(("message", "over http")), cancellationToken: Timeout())));
            var denied = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-sum", Args(("a", 500), ("b", 1)), cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32010, (int)denied.ErrorCode);
        }
        var calls = (await AuditCallsAsync()).Where(e => e.GetProperty("type").GetString() == "tool_call").ToList();
        Assert.Equal(["allow", "deny"], calls.Select(c => c.GetProperty("decision").GetString()));
        Assert.All(calls, c => Assert.Equal("127.0.0.1", c.GetProperty("server").GetString()));
    }

    [Fact]
    public async Task Wrap_takes_its_upstream_and_policy_from_a_config_file()
    {
        var config = Path.Combine(_folder, "sidecar.json");
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" }, ["policy"] = "policy.json" },
            },
            ["audit"] = new Dictionary<string, object> { ["file"] = new Dictionary<string, object> { ["path"] = "audit.jsonl" } },
        }));
        await using (var client = await WrapAsync("--config", config, "--server", "everything"))
        {
            Assert.Equal("Echo: from config", Text(await client.CallToolAsync("echo", Args(("message", "from config")), cancellationToken: Timeout())));
        }
        var call = Assert.Single(await AuditCallsAsync(), e => e.GetProperty("type").GetString() == "tool_call");
        Assert.Equal("everything", call.GetProperty("server").GetString());
    }
}
