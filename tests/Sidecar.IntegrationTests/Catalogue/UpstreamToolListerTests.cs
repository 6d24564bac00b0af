using System.Text.Json;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Catalogue;

/// <summary>
/// The catalogue's view of a server: every tool of the real server-everything, over stdio and Streamable HTTP,
/// through a session of its own; an unreachable server is an <see cref="UpstreamException"/>, not a hang.
/// </summary>
public sealed class UpstreamToolListerTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(30);

    private static async Task<List<JsonElement>> ListAsync(ServerConfig server)
    {
        var connector = UpstreamConnectors.Create(server, GatewayLimits.Default, null);
        try
        {
            var tools = await UpstreamToolLister.ListAsync(connector, Bound);
            return [.. tools];
        }
        finally
        {
            (connector as IDisposable)?.Dispose();
        }
    }

    private static void AssertEverythingTools(List<JsonElement> tools)
    {
        var names = tools.Select(t => t.GetProperty("name").GetString()).ToList();
        Assert.Contains("echo", names);
        Assert.Contains("get-sum", names);
        Assert.Contains("trigger-long-running-operation", names);
        Assert.Equal(names.Count, names.Distinct().Count());
        var echo = tools.Single(t => t.GetProperty("name").GetString() == "echo");
        Assert.Equal(JsonValueKind.Object, echo.GetProperty("inputSchema").ValueKind);
        Assert.False(string.IsNullOrEmpty(echo.GetProperty("description").GetString()));
    }

    [Fact]
    public async Task Every_tool_of_a_stdio_server_is_listed()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var server = new ServerConfig("everything", default, UpstreamTransport.Stdio, "node", [McpServerFixtures.EverythingEntry, "stdio"],
            new Dictionary<string, string>(), null, null, new Dictionary<string, string>(), null);
        AssertEverythingTools(await ListAsync(server));
    }

    [Fact]
    public async Task Every_tool_of_a_streamable_http_server_is_listed()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        await using var http = await EverythingServer.StartStreamableHttpAsync();
        var server = new ServerConfig("everything", default, UpstreamTransport.StreamableHttp, null, [], new Dictionary<string, string>(), null,
            http.Url, new Dictionary<string, string>(), null);
        AssertEverythingTools(await ListAsync(server));
    }

    [Fact]
    public async Task An_unreachable_server_is_an_upstream_exception()
    {
        var server = new ServerConfig("down", default, UpstreamTransport.StreamableHttp, null, [], new Dictionary<string, string>(), null,
            new Uri($"http://127.0.0.1:{EverythingServer.FreeLoopbackPort()}/mcp"), new Dictionary<string, string>(), null);
        await Assert.ThrowsAsync<UpstreamException>(() => ListAsync(server));
    }
}
