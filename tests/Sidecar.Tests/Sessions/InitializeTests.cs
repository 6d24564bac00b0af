using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>A session's <c>initialize</c>: once per session, its negotiated version, and its replay after an upstream restart.</summary>
public sealed class InitializeTests
{
    [Fact]
    public async Task An_initialize_the_upstream_refuses_leaves_the_session_uninitialized_so_the_agent_can_try_again()
    {
        await using var h = Create();
        var refuse = true;
        h.Upstream.Respond = m => m.Method == "initialize" && refuse ? ScriptedUpstream.Error(m, -32602, "unsupported protocol version") : h.Upstream.DefaultAnswer(m);
        var session = h.Open(SessionTransport.Stdio);
        var refused = await h.RequestAsync(session, Initialize(1));
        Assert.Equal(-32602, refused.GetProperty("error").GetProperty("code").GetInt32());
        Assert.False(session.IsInitialized);

        refuse = false;
        var accepted = await h.RequestAsync(session, Initialize(2));
        Assert.True(accepted.TryGetProperty("result", out _), accepted.GetRawText()); // not "already initialized"
        Assert.True(session.IsInitialized);
        Assert.Equal(2, h.Upstream.SentWith("initialize").Count);
    }

    [Fact]
    public async Task The_session_speaks_the_version_the_upstreams_initialize_result_gives()
    {
        await using var h = Create();
        h.Upstream.ProtocolVersion = McpProtocol.V20250326; // the agent asked for 2025-06-18 (InitializeParams)
        var session = h.Open();
        Assert.Null(session.ProtocolVersion);
        Assert.False(session.IsInitialized);
        var answer = await h.RequestAsync(session, Initialize(1));
        Assert.Equal(1, answer.GetProperty("id").GetInt32());
        Assert.Equal(McpProtocol.V20250326, session.ProtocolVersion);
        Assert.True(session.IsInitialized);
        Assert.Equal(InitializeParams, Assert.Single(h.Upstream.SentWith("initialize")).Root.GetProperty("params").GetRawText());
    }

    [Fact]
    public async Task An_initialize_answered_without_protocolVersion_leaves_the_version_unknown()
    {
        await using var h = Create();
        h.Upstream.Respond = m => m.Method == "initialize" ? ScriptedUpstream.Result(m, """{"capabilities":{}}""") : h.Upstream.DefaultAnswer(m);
        var session = h.Open();
        await h.RequestAsync(session, Initialize(1));
        Assert.Null(session.ProtocolVersion);
    }

    [Fact]
    public async Task A_second_initialize_in_a_session_is_refused_with_32600_and_not_forwarded()
    {
        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Initialize("\"second\""));
        Assert.Equal("\"second\"", answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.InvalidRequest, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.AlreadyInitialized, answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Single(h.Upstream.SentWith("initialize"));
        Assert.Equal(McpProtocol.V20250618, session.ProtocolVersion);
    }

    [Fact]
    public async Task Server_discover_in_a_session_gets_32601_and_is_not_forwarded()
    {
        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Request(2, "server/discover", "{}"));
        Assert.Equal(2, answer.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.MethodNotFound, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.DiscoverInSession, answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Empty(h.Upstream.SentWith("server/discover"));
    }

    [Fact]
    public async Task After_the_upstream_dies_the_next_request_reconnects_and_replays_the_agents_initialize_first()
    {
        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        var sink = NewSink();
        await h.SendAsync(session, Notification("notifications/initialized"), sink);
        await h.Upstream.WaitForAsync(m => m.Method == "notifications/initialized", "the agent's notifications/initialized");
        var first = h.Upstream.Latest;
        first.Crash("the server process exited with code 1");

        var answer = await h.RequestAsync(session, Request(2, "tools/list"));
        Assert.Equal(2, answer.GetProperty("id").GetInt32());
        Assert.True(answer.TryGetProperty("result", out _), answer.ToString());

        Assert.Equal(2, h.Upstream.Connections.Count);
        Assert.True(first.Disposed);
        var replayed = h.Upstream.Sent.Where(m => m.Connection == 2).ToList();
        Assert.Equal(["initialize", "notifications/initialized", "tools/list"], replayed.Select(m => m.Method));
        var initialize = replayed[0].Root;
        Assert.Equal("\"sidecar-reinitialize-1\"", initialize.GetProperty("id").GetRawText());
        Assert.Equal(InitializeParams, initialize.GetProperty("params").GetRawText()); // the agent's own, byte for byte
        Assert.Equal("2", replayed[2].IdToken); // the agent's request as it sent it
        Assert.Equal(McpProtocol.V20250618, session.ProtocolVersion);
        // The replayed initialize's answer is the gateway's: the agent saw only its own answer.
        Assert.Empty(Drain(sink));
    }

    [Fact]
    public async Task A_session_never_initialized_reconnects_without_a_replay()
    {
        await using var h = Create();
        var session = h.Open();
        await h.RequestAsync(session, Request(1, "ping"));
        h.Upstream.Latest.Crash("gone");
        await h.RequestAsync(session, Request(2, "ping"));
        Assert.Equal(["ping"], h.Upstream.Sent.Where(m => m.Connection == 2).Select(m => m.Method));
    }

    [Fact]
    public async Task If_the_restarted_upstream_refuses_the_replayed_initialize_the_request_gets_32016()
    {
        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        h.Upstream.Respond = m => m.Method == "initialize" ? ScriptedUpstream.Error(m, -32602, "unsupported") : h.Upstream.DefaultAnswer(m);
        h.Upstream.Latest.Crash("gone");
        var answer = await h.RequestAsync(session, Request(2, "ping"));
        Assert.Equal(2, answer.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.UpstreamUnavailable, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.Unavailable("srv", "the restarted upstream refused initialize"), answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Empty(h.Upstream.SentWith("ping"));
    }
}
