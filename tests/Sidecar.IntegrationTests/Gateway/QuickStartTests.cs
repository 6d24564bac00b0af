using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The README's quick start, replayed: the same requests against the embedded default policy must get exactly the
/// answer the README prints (plain JSON, not an event stream), and the session limits new users meet.
/// </summary>
public sealed partial class QuickStartTests : IAsyncLifetime
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public Task InitializeAsync() => McpServerFixtures.EnsureInstalledAsync();

    public Task DisposeAsync()
    {
        _http.Dispose();
        return Task.CompletedTask;
    }

    private static string Config(object? limits = null) => JsonSerializer.Serialize(new Dictionary<string, object?>
    {
        // The embedded default, with server-everything from the test fixtures instead of npx.
        ["mcpServers"] = new Dictionary<string, object>
        {
            ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" }, ["policy"] = "everything.policy.json" },
        },
        ["limits"] = limits ?? new Dictionary<string, object>(),
    });

    private static Dictionary<string, string> DefaultPolicy() => new()
    {
        ["everything.policy.json"] = File.ReadAllText(Repo.PathOf("src", "Sidecar", "Defaults", "everything.policy.json")),
    };

    [GeneratedRegex("""-d '(?<body>\{"jsonrpc":"2\.0","id":2,"method":"tools/call".*?)'\n(?<answer>.*?)\n```""", RegexOptions.Singleline)]
    private static partial Regex QuickStartCall();

    [Fact]
    public async Task The_quick_start_call_gets_exactly_the_answer_the_readme_shows()
    {
        var readme = await File.ReadAllTextAsync(Repo.PathOf("README.md"));
        var quickStart = readme[readme.IndexOf("## Quick start", StringComparison.Ordinal)..];
        var match = QuickStartCall().Match(quickStart);
        Assert.True(match.Success, "the README's quick start has no tools/call with its answer");
        var expected = match.Groups["answer"].Value.Trim();

        await using var sidecar = await SidecarHost.StartAsync(Config(), DefaultPolicy());
        var url = sidecar.McpUrl("everything");
        var session = await RawMcp.OpenSessionAsync(_http, url);
        using var response = await RawMcp.PostAsync(_http, url, match.Groups["body"].Value, session);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Equal("application/json", response.Content.Headers.ContentType?.MediaType);
        Assert.Equal(expected, await response.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Sessions_past_max_sessions_per_server_get_503_with_retry_after_and_existing_ones_keep_working()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(new Dictionary<string, object> { ["maxSessionsPerServer"] = 2 }), DefaultPolicy());
        var url = sidecar.McpUrl("everything");
        var first = await RawMcp.OpenSessionAsync(_http, url);
        await RawMcp.OpenSessionAsync(_http, url);

        using var refused = await RawMcp.PostAsync(_http, url, RawMcp.InitializeBody, null);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        Assert.True(refused.Headers.RetryAfter?.Delta > TimeSpan.Zero, "Retry-After is missing");
        var error = JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.Contains("limits.maxSessionsPerServer", error.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Contains("Refused a new session for everything: 2 sessions are open (limits.maxSessionsPerServer is 2", sidecar.Log.ToString(), StringComparison.Ordinal);
        Assert.Equal(1, sidecar.Gateway.Engine.SessionsRefused);

        using var call = await RawMcp.PostAsync(_http, url, """{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"message":"still here"}}}""", first);
        Assert.Equal(HttpStatusCode.OK, call.StatusCode);
        Assert.Contains("still here", await call.Content.ReadAsStringAsync(), StringComparison.Ordinal);

        // Closing one makes room again.
        using var delete = new HttpRequestMessage(HttpMethod.Delete, url);
        delete.Headers.Add("Mcp-Session-Id", first);
        using (var deleted = await _http.SendAsync(delete))
        {
            Assert.Equal(HttpStatusCode.OK, deleted.StatusCode);
        }
        await RawMcp.OpenSessionAsync(_http, url);
    }

    [Fact]
    public void A_stdio_server_defaults_to_64_sessions_and_an_http_server_to_1024()
    {
        var limits = Sidecar.Configuration.GatewayLimits.Default;
        Assert.Equal(64, limits.SessionsPerServer(Sidecar.Configuration.UpstreamTransport.Stdio));
        Assert.Equal(1024, limits.SessionsPerServer(Sidecar.Configuration.UpstreamTransport.StreamableHttp));
        Assert.Equal(1024, limits.SessionsPerServer(Sidecar.Configuration.UpstreamTransport.Sse));
    }
}
