using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Configuration;
using Sidecar.Sessions;
using Sidecar.Upstreams;

namespace Sidecar.Tests.Configuration;

/// <summary><c>"share": true</c> on a server in <c>mcpServers</c>: read, refused where it means nothing, its session cap, and reload.</summary>
public sealed class ShareConfigTests
{
    private static (SidecarConfig? Config, DiagnosticBag Diagnostics) Read(string servers, string rest = "")
    {
        var json = $$"""
            {
              "mcpServers": {
                {{servers}}
              }{{rest}}
            }
            """;
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, _ => null);
        return (config, diagnostics);
    }

    [Fact]
    public void Share_is_read_and_is_off_by_default()
    {
        var (config, diagnostics) = Read("""
            "shared": { "command": "node", "args": ["s.js"], "share": true },
            "own": { "command": "node", "args": ["s.js"] },
            "off": { "command": "node", "share": false }
            """);
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.True(config!.Servers.Single(s => s.Name == "shared").Share);
        Assert.False(config.Servers.Single(s => s.Name == "own").Share);
        Assert.False(config.Servers.Single(s => s.Name == "off").Share);
    }

    [Theory]
    [InlineData("""{ "url": "http://127.0.0.1:3000/mcp", "share": true }""")]
    [InlineData("""{ "url": "http://127.0.0.1:3000/sse", "share": true }""")]
    [InlineData("""{ "url": "http://127.0.0.1:3000/x", "transport": "streamable-http", "share": true }""")]
    public void Share_on_an_http_server_is_an_error_with_its_path_and_line(string server)
    {
        var (config, diagnostics) = Read($"\"icons\":\n{server}");
        Assert.Null(config);
        var error = Assert.Single(diagnostics.Items);
        Assert.Equal("$.mcpServers.icons.share", error.Path);
        Assert.Equal(4, error.Location.Line);
        Assert.Contains("\"share\" applies to \"command\" (stdio) servers only", error.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("\"yes\"", "a string")]
    [InlineData("1", "a number")]
    [InlineData("null", "null")]
    public void Share_that_is_not_a_boolean_is_an_error(string value, string kind)
    {
        var (config, diagnostics) = Read($$"""
            "everything": {
              "command": "node",
              "share": {{value}}
            }
            """);
        Assert.Null(config);
        var error = Assert.Single(diagnostics.Items);
        Assert.Equal("$.mcpServers.everything.share", error.Path);
        Assert.Equal(5, error.Location.Line);
        Assert.Contains($"\"share\" must be true or false, not {kind}", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_shared_stdio_server_may_hold_1024_sessions_by_default_and_an_unshared_one_64()
    {
        var (config, diagnostics) = Read("""
            "shared": { "command": "node", "share": true },
            "own": { "command": "node" },
            "http": { "url": "http://127.0.0.1:3000/mcp" }
            """);
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        var limits = config!.Limits;
        Assert.Equal(1024, limits.SessionsPerServer(config.Servers.Single(s => s.Name == "shared")));
        Assert.Equal(64, limits.SessionsPerServer(config.Servers.Single(s => s.Name == "own")));
        Assert.Equal(1024, limits.SessionsPerServer(config.Servers.Single(s => s.Name == "http")));

        var snapshot = SnapshotBuilder.Build(config, null, NullLoggerFactory.Instance, out var errors);
        Assert.Empty(errors);
        Assert.Equal(1024, snapshot!.Find("shared")!.MaxSessions);
        Assert.Equal(64, snapshot.Find("own")!.MaxSessions);
        Retire(snapshot);
    }

    [Fact]
    public void A_configured_maxSessionsPerServer_applies_to_shared_servers_too()
    {
        var (config, diagnostics) = Read("""
            "shared": { "command": "node", "share": true }
            """, """, "limits": { "maxSessionsPerServer": 200 }""");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal(200, config!.Limits.SessionsPerServer(config.Servers.Single()));
    }

    [Fact]
    public void A_shared_server_gets_the_shared_connector_and_an_unshared_one_a_process_per_session()
    {
        var (config, _) = Read("""
            "shared": { "command": "node", "share": true },
            "own": { "command": "node" }
            """);
        using var shared = (SharedStdioConnector)UpstreamConnectors.Create(config!.Servers.Single(s => s.Name == "shared"), config.Limits, null);
        Assert.Equal("shared", shared.Name);
        Assert.Equal(0, shared.Spawned); // nothing runs before the first session
        Assert.IsType<StdioUpstreamConnector>(UpstreamConnectors.Create(config.Servers.Single(s => s.Name == "own"), config.Limits, null));
    }

    /// <summary>README, Reload: "a changed server definition applies to new sessions" — share is part of the definition.</summary>
    [Fact]
    public void On_reload_a_changed_share_is_a_new_connector_and_an_unchanged_one_keeps_its_connector()
    {
        var (before, _) = Read("""
            "a": { "command": "node", "args": ["s.js"] },
            "b": { "command": "node", "args": ["s.js"], "share": true }
            """);
        var (after, _) = Read("""
            "a": { "command": "node", "args": ["s.js"], "share": true },
            "b": { "command": "node", "args": ["s.js"], "share": true }
            """);
        Assert.False(before!.Servers[0].SameUpstream(after!.Servers[0]));
        Assert.True(before.Servers[1].SameUpstream(after.Servers[1]));

        var first = SnapshotBuilder.Build(before, null, NullLoggerFactory.Instance, out _)!;
        var second = SnapshotBuilder.Build(after, first, NullLoggerFactory.Instance, out var errors)!;
        Assert.Empty(errors);
        Assert.NotSame(first.Find("a")!.Upstream, second.Find("a")!.Upstream);
        Assert.IsType<StdioUpstreamConnector>(first.Find("a")!.Upstream.Connector);
        Assert.IsType<SharedStdioConnector>(second.Find("a")!.Upstream.Connector);
        Assert.Equal(1024, second.Find("a")!.MaxSessions);
        Assert.Same(first.Find("b")!.Upstream, second.Find("b")!.Upstream);
        Retire(first);
        Retire(second);
    }

    private static void Retire(GatewaySnapshot snapshot)
    {
        foreach (var server in snapshot.Servers.Values)
        {
            server.Upstream.Retire();
        }
    }
}
