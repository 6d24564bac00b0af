using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>What /healthz and /readyz say, word for word, with audit on and off.</summary>
public sealed class HealthTests : IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    [Theory]
    [InlineData("""{ "file": "audit.jsonl", "bufferEvents": 4096 }""", "; audit queue 0 of 4096 places taken, 0 calls shed, 0 records dropped")]
    [InlineData("""{ "enabled": false }""", "; audit off")]
    public async Task Healthz_is_ok_and_readyz_counts_servers_sessions_requests_and_the_audit_queue(string audit, string auditPart)
    {
        var config = $$"""
            { "mcpServers": { "a": { "command": "node", "args": ["none.js"] }, "b": { "url": "http://127.0.0.1:9/mcp" } },
              "limits": { "maxInFlight": 300 }, "audit": {{audit}} }
            """;
        await using var host = await SidecarHost.StartAsync(config);
        Assert.Equal("ok", await _http.GetStringAsync(new Uri(host.BaseUrl, "/healthz")));
        Assert.Equal("ready: 2 servers, 0 sessions, 0 of 300 requests in flight" + auditPart,
            await _http.GetStringAsync(new Uri(host.BaseUrl, "/readyz")));
    }
}
