using Sidecar.Configuration;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>
/// Where the server's own messages (server-to-client requests, progress, session-wide notifications) go: the call
/// they belong to, the agent's stream, or the backlog until a stream opens.
/// </summary>
public sealed class RoutingTests
{
    private const string RootsRequest = """{"jsonrpc":"2.0","id":"srv-1","method":"roots/list"}""";
    private const string ListChanged = """{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}""";

    private static EngineHarness Holding(GatewayLimits? limits = null)
    {
        var h = Create(limits: limits);
        h.Upstream.Respond = m => m.Method == "tools/call" ? null : h.Upstream.DefaultAnswer(m);
        return h;
    }

    /// <summary>Starts a held call whose sink (an SSE response) can carry related messages.</summary>
    private static async Task<(MessageSink Sink, SentMessage Sent)> StartCallAsync(EngineHarness h, McpSession session, int id)
    {
        var sink = new MessageSink(acceptsRelatedMessages: true);
        var (expected, refused) = await h.SendAsync(session, Call(id, "echo"), sink);
        Assert.Null(refused);
        Assert.Equal(1, expected);
        return (sink, await h.Upstream.WaitForAsync(m => m.Method == "tools/call" && m.IdToken == id.ToString(System.Globalization.CultureInfo.InvariantCulture), "the call"));
    }

    [Fact]
    public async Task A_server_request_during_the_only_call_in_flight_goes_on_that_calls_stream_and_a_list_change_on_the_agents()
    {
        await using var h = Holding();
        var session = await h.OpenInitializedAsync();
        var stream = new MessageSink(acceptsRelatedMessages: true);
        Assert.True(session.AttachStream(stream));
        var (call, _) = await StartCallAsync(h, session, 2);

        h.Upstream.Latest.Say(RootsRequest);
        h.Upstream.Latest.Say(ListChanged);
        Assert.Equal("srv-1", (await NextAsync(call)).GetProperty("id").GetString());
        Assert.Equal("notifications/tools/list_changed", (await NextAsync(stream)).GetProperty("method").GetString());
        Assert.Empty(Drain(call));
        Assert.Empty(Drain(stream));
    }

    [Fact]
    public async Task A_message_tagged_with_a_requests_correlation_goes_to_that_request_among_several()
    {
        await using var h = Holding();
        var session = await h.OpenInitializedAsync();
        var (first, _) = await StartCallAsync(h, session, 2);
        var (second, sent) = await StartCallAsync(h, session, 3);

        h.Upstream.Latest.Say("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}""", sent.Correlation);
        Assert.Equal("notifications/progress", (await NextAsync(second)).GetProperty("method").GetString());
        Assert.Empty(Drain(first));
    }

    [Fact]
    public async Task With_no_stream_and_no_call_server_messages_wait_and_come_in_order_when_a_stream_opens()
    {
        await using var h = Holding();
        var session = await h.OpenInitializedAsync();
        h.Upstream.Latest.Say(ListChanged);
        h.Upstream.Latest.Say(RootsRequest);
        // Upstream messages are handled in order: once the ping is answered, the two before it have been routed.
        await h.RequestAsync(session, Request(9, "ping"));

        var stream = new MessageSink(acceptsRelatedMessages: true);
        Assert.True(session.AttachStream(stream));
        Assert.Equal("notifications/tools/list_changed", (await NextAsync(stream)).GetProperty("method").GetString());
        Assert.Equal("srv-1", (await NextAsync(stream)).GetProperty("id").GetString());
        Assert.False(session.AttachStream(new MessageSink(acceptsRelatedMessages: true))); // one stream at a time
    }

    [Fact]
    public async Task Progress_for_a_call_pushes_its_deadline_back()
    {
        await using var h = Holding(GatewayLimits.Default with { UpstreamTimeout = TimeSpan.FromSeconds(30) });
        var session = await h.OpenInitializedAsync();
        var (call, sent) = await StartCallAsync(h, session, 2);
        var sentBy = Environment.TickCount64; // the call's deadline is at most sentBy + 30 s
        await Task.Delay(100); // so that "now" at the progress is clearly later than the send

        h.Upstream.Latest.Say("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"p","progress":1}}""", sent.Correlation);
        await NextAsync(call);

        session.ExpireOverdue(sentBy + 30_000 + 20); // past the first deadline, before the pushed-back one
        Assert.Equal(1, session.Pending);
        Assert.Empty(Drain(call));
        session.ExpireOverdue(Environment.TickCount64 + 30_001);
        Assert.Equal(0, session.Pending);
        Assert.Equal(Sidecar.Protocol.ErrorCodes.UpstreamTimeout, (await AnswerAsync(call)).GetProperty("error").GetProperty("code").GetInt32());
    }

    [Fact]
    public async Task An_agent_that_goes_away_abandons_its_requests_and_the_upstream_is_told()
    {
        await using var h = Holding();
        var session = await h.OpenInitializedAsync();
        var (call, _) = await StartCallAsync(h, session, 4);
        session.Abandon(call);
        Assert.Equal(0, session.Pending);
        var cancelled = (await h.Upstream.WaitForAsync(m => m.Method == "notifications/cancelled", "notifications/cancelled")).Root.GetProperty("params");
        Assert.Equal(4, cancelled.GetProperty("requestId").GetInt32());
        Assert.Equal(SessionMessages.CancelledClientGone, cancelled.GetProperty("reason").GetString());
        var record = Assert.Single(h.AuditCalls());
        Assert.Equal("cancelled", record.GetProperty("outcome").GetString());
    }
}
