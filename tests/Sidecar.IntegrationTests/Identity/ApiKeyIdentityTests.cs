using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Identity;

/// <summary>
/// API-key identities and grants through the real daemon in front of server-everything: the official C# client per
/// key sees its grant's tools and decisions; bad credentials get 401 and reach nothing; sessions belong to their
/// identity; grant-scoped limits count per identity; the agent's Authorization never goes upstream.
/// </summary>
public sealed class ApiKeyIdentityTests : IAsyncLifetime
{
    private const string ReaderKey = "sk-reader-3f1e0c9a";
    private const string OpsKey = "sk-ops-77d2b4e1";
    private const string ReadonlyPolicy = """{ "version": "1", "default": "deny", "tools": { "get-sum": {} } }""";
    private const string OpsPolicy = """
        { "version": "1", "default": "deny",
          "tools": { "get-sum": {}, "echo": { "limits": [ { "counter": "echo_grant", "window": "hour", "max": 2, "scope": "grant" } ] } } }
        """;
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };
    private SidecarHost _sidecar = null!;

    private static string Sha256(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
            },
            ["identities"] = new Dictionary<string, object>
            {
                ["apiKeys"] = new Dictionary<string, object>
                {
                    ["ci-bot"] = new Dictionary<string, string> { ["sha256"] = Sha256(ReaderKey), ["grant"] = "readonly" },
                    ["ops-agent"] = new Dictionary<string, string> { ["sha256"] = Sha256(OpsKey), ["grant"] = "ops" },
                    ["ops-agent-2"] = new Dictionary<string, string> { ["sha256"] = Sha256(OpsKey + "-2"), ["grant"] = "ops" },
                },
            },
            ["grants"] = new Dictionary<string, object>
            {
                ["readonly"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["everything"] = "readonly.json" } },
                ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "ops.json" } },
            },
            ["limits"] = new Dictionary<string, object> { ["maxSessionsPerIdentity"] = 3 },
        });
        _sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["readonly.json"] = ReadonlyPolicy, ["ops.json"] = OpsPolicy });
    }

    public async Task DisposeAsync()
    {
        await _sidecar.DisposeAsync();
        _http.Dispose();
    }

    private Uri Url => _sidecar.McpUrl("everything");

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;

    private Task<McpClient> ClientAsync(string key)
    {
        var transport = new HttpClientTransport(new HttpClientTransportOptions
        {
            Endpoint = Url,
            TransportMode = HttpTransportMode.StreamableHttp,
            AdditionalHeaders = new Dictionary<string, string> { ["Authorization"] = "Bearer " + key },
        }, NullLoggerFactory.Instance);
        return McpClient.CreateAsync(transport, new McpClientOptions(), NullLoggerFactory.Instance, Timeout());
    }

    private Task<HttpResponseMessage> PostAsync(string body, string? session, string? authorization) =>
        RawMcp.PostAsync(_http, Url, body, session, configure: request =>
        {
            if (authorization is not null)
            {
                request.Headers.TryAddWithoutValidation("Authorization", authorization);
            }
        });

    private static Dictionary<string, object?> Args(params (string Name, object? Value)[] values) => values.ToDictionary(v => v.Name, v => v.Value);

    private async Task<List<JsonElement>> AuditAsync(string type, int atLeast)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            var events = new List<JsonElement>();
            if (File.Exists(_sidecar.AuditFile))
            {
                await using var stream = new FileStream(_sidecar.AuditFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
                using var reader = new StreamReader(stream);
                while (await reader.ReadLineAsync() is { } line)
                {
                    var e = JsonDocument.Parse(line).RootElement.Clone();
                    if (e.GetProperty("type").GetString() == type)
                    {
                        events.Add(e);
                    }
                }
            }
            if (events.Count >= atLeast || DateTime.UtcNow > deadline)
            {
                return events;
            }
            await Task.Delay(100);
        }
    }

    [Fact]
    public async Task Two_keys_with_different_grants_see_different_tools_and_get_different_decisions()
    {
        await using var reader = await ClientAsync(ReaderKey);
        await using var ops = await ClientAsync(OpsKey);
        Assert.Equal(["get-sum"], (await reader.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name));
        Assert.Equal(["echo", "get-sum"], (await ops.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).Order());

        var denied = await Assert.ThrowsAsync<McpProtocolException>(() => reader.CallToolAsync("echo", Args(("message", "no")), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)denied.ErrorCode);
        var echoed = await ops.CallToolAsync("echo", Args(("message", "yes")), cancellationToken: Timeout());
        Assert.Equal("Echo: yes", string.Concat(echoed.Content.OfType<TextContentBlock>().Select(t => t.Text)));

        var calls = await AuditAsync("tool_call", 2);
        var readerCall = Assert.Single(calls, c => c.GetProperty("identity").GetString() == "ci-bot");
        Assert.Equal("readonly", readerCall.GetProperty("grant").GetString());
        Assert.Equal("deny", readerCall.GetProperty("decision").GetString());
        var opsCall = Assert.Single(calls, c => c.GetProperty("identity").GetString() == "ops-agent");
        Assert.Equal("ops", opsCall.GetProperty("grant").GetString());
        Assert.Equal("allow", opsCall.GetProperty("decision").GetString());
    }

    [Theory]
    [InlineData(null, "missing_credentials")]
    [InlineData("Basic Y2ktYm90OnNlY3JldA==", "malformed_credentials")]
    [InlineData("Bearer ", "malformed_credentials")]
    [InlineData("Bearer sk-not-a-configured-key", "unknown_credentials")]
    public async Task Bad_credentials_get_401_with_a_bearer_challenge_and_reach_nothing(string? authorization, string reason)
    {
        foreach (var server in new[] { "everything", "no-such-server" })
        {
            using var response = await RawMcp.PostAsync(_http, _sidecar.McpUrl(server), RawMcp.InitializeBody, null, configure: request =>
            {
                if (authorization is not null)
                {
                    request.Headers.TryAddWithoutValidation("Authorization", authorization);
                }
            });
            Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
            Assert.Equal("Bearer", Assert.Single(response.Headers.WwwAuthenticate).Scheme);
            Assert.False(response.Headers.Contains("Mcp-Session-Id"));
            Assert.Contains(reason, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        Assert.Equal(0, _sidecar.Gateway.Engine.SessionCount);
        var failures = await AuditAsync("auth_failure", 2);
        Assert.Contains(failures, f => f.GetProperty("reason").GetString() == reason && f.GetProperty("server").GetString() == "everything");
        var trail = await File.ReadAllTextAsync(_sidecar.AuditFile);
        Assert.DoesNotContain("sk-not-a-configured-key", trail, StringComparison.Ordinal);
        Assert.DoesNotContain("Y2ktYm90", trail, StringComparison.Ordinal);
        Assert.True(_sidecar.Gateway.Engine.AuthFailures >= 2);
    }

    [Fact]
    public async Task A_session_belongs_to_the_identity_that_opened_it()
    {
        using var opened = await PostAsync(RawMcp.InitializeBody, null, "Bearer " + OpsKey);
        Assert.Equal(HttpStatusCode.OK, opened.StatusCode);
        var session = opened.Headers.GetValues("Mcp-Session-Id").Single();
        var call = """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1,"b":2}}}""";
        using (var other = await PostAsync(call, session, "Bearer " + ReaderKey))
        {
            Assert.Equal(HttpStatusCode.NotFound, other.StatusCode); // another identity: an unknown session
        }
        using (var none = await PostAsync(call, session, null))
        {
            Assert.Equal(HttpStatusCode.Unauthorized, none.StatusCode);
        }
        using var own = await PostAsync(call, session, "Bearer " + OpsKey);
        Assert.Equal(HttpStatusCode.OK, own.StatusCode);
        Assert.Contains("3", await own.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_grant_scoped_limit_counts_per_identity()
    {
        await using var first = await ClientAsync(OpsKey);
        await using var second = await ClientAsync(OpsKey + "-2");
        for (var i = 0; i < 2; i++)
        {
            await first.CallToolAsync("echo", Args(("message", $"first {i}")), cancellationToken: Timeout());
        }
        var limited = await Assert.ThrowsAsync<McpProtocolException>(() => first.CallToolAsync("echo", Args(("message", "third")), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32011, (int)limited.ErrorCode);
        // Same grant, another identity: its own bucket.
        await second.CallToolAsync("echo", Args(("message", "second 0")), cancellationToken: Timeout());
    }

    [Fact]
    public async Task An_identity_past_max_sessions_per_identity_gets_503()
    {
        for (var i = 0; i < 3; i++)
        {
            using var ok = await PostAsync(RawMcp.InitializeBody, null, "Bearer " + ReaderKey);
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
        }
        using var refused = await PostAsync(RawMcp.InitializeBody, null, "Bearer " + ReaderKey);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.Contains("limits.maxSessionsPerIdentity", await refused.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        using var other = await PostAsync(RawMcp.InitializeBody, null, "Bearer " + OpsKey); // another identity is not affected
        Assert.Equal(HttpStatusCode.OK, other.StatusCode);
    }

    [Fact]
    public async Task A_grants_policy_edited_on_disk_changes_that_grants_decisions_live()
    {
        await using var ops = await ClientAsync(OpsKey);
        await ops.CallToolAsync("get-sum", Args(("a", 1), ("b", 2)), cancellationToken: Timeout());
        var path = Path.Combine(_sidecar.Folder, "ops.json");
        await File.WriteAllTextAsync(path + ".tmp", """{ "version": "1", "default": "deny", "tools": { "get-sum": { "action": "deny", "reason": "sums are off for ops" } } }""");
        File.Move(path + ".tmp", path, overwrite: true);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(20);
        while (true)
        {
            try
            {
                await ops.CallToolAsync("get-sum", Args(("a", 1), ("b", 2)), cancellationToken: Timeout());
            }
            catch (McpProtocolException ex) when ((int)ex.ErrorCode == -32010)
            {
                Assert.Contains("sums are off for ops", ex.Message, StringComparison.Ordinal);
                break;
            }
            Assert.True(DateTime.UtcNow < deadline, "the grant's edited policy was never applied\n" + _sidecar.Log);
            await Task.Delay(100);
        }
        // The other grant's policy did not change.
        await using var reader = await ClientAsync(ReaderKey);
        await reader.CallToolAsync("get-sum", Args(("a", 1), ("b", 2)), cancellationToken: Timeout());
    }

    [Fact]
    public async Task The_agents_authorization_header_never_goes_upstream()
    {
        await using var upstream = await ResumableMcpServer.StartAsync();
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["remote"] = new Dictionary<string, object>
                {
                    ["url"] = upstream.Url.ToString(), ["transport"] = "streamable-http",
                    ["headers"] = new Dictionary<string, string> { ["Authorization"] = "Bearer upstream-credential" },
                },
            },
            ["identities"] = new Dictionary<string, object>
            {
                ["apiKeys"] = new Dictionary<string, object> { ["ops-agent"] = new Dictionary<string, string> { ["sha256"] = Sha256(OpsKey), ["grant"] = "ops" } },
            },
            ["grants"] = new Dictionary<string, object> { ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "ops.json" } } },
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["ops.json"] = OpsPolicy });
        using var opened = await RawMcp.PostAsync(_http, sidecar.McpUrl("remote"), RawMcp.InitializeBody, null,
            configure: r => r.Headers.TryAddWithoutValidation("Authorization", "Bearer " + OpsKey));
        Assert.Equal(HttpStatusCode.OK, opened.StatusCode);
        var session = opened.Headers.GetValues("Mcp-Session-Id").Single();
        using var call = await RawMcp.PostAsync(_http, sidecar.McpUrl("remote"),
            """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}""", session,
            configure: r => r.Headers.TryAddWithoutValidation("Authorization", "Bearer " + OpsKey));
        Assert.Equal(HttpStatusCode.OK, call.StatusCode);
        Assert.NotEmpty(upstream.AuthorizationHeaders);
        Assert.All(upstream.AuthorizationHeaders, h => Assert.Equal("Bearer upstream-credential", h)); // the server's own, never the agent's key
    }
}
