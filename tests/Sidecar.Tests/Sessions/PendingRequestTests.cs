using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>The pending-request table: ids in flight, the agent's id token put back, answers matched, connections' generations.</summary>
public sealed class PendingRequestTests
{
    /// <summary>An upstream that holds every request to "slow" (answered later by the test) and answers the rest.</summary>
    private static EngineHarness WithSlowMethod()
    {
        var h = Create();
        h.Upstream.Respond = m => m.Method == "slow" ? null : h.Upstream.DefaultAnswer(m);
        return h;
    }

    [Theory]
    [InlineData("5", "5")]
    [InlineData("5", "5.0")] // the same number: a JavaScript server would answer both as 5
    [InlineData("\"x\"", "\"x\"")]
    [InlineData("\"x\"", "\"\\u0078\"")] // the same string once unescaped
    public async Task A_request_whose_id_is_in_flight_is_refused_with_32600_without_reaching_upstream(string first, string duplicate)
    {
        await using var h = WithSlowMethod();
        var session = await h.OpenInitializedAsync();
        var held = await h.StartAsync(session, Request(first, "slow"));
        await h.Upstream.WaitForAsync(m => m.Method == "slow", "the held request");
        var sent = h.Upstream.Sent.Count;

        var answer = await h.RequestAsync(session, Request(duplicate, "ping"));
        Assert.Equal(duplicate, answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.InvalidRequest, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.DuplicateId, answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(sent, h.Upstream.Sent.Count);
        Assert.Equal(1, session.Pending);

        // The first request is still the one in flight: its answer reaches its own sink.
        var slow = h.Upstream.SentWith("slow")[0];
        h.Upstream.Latest.Say(ScriptedUpstream.Result(slow, """{"done":true}"""));
        var late = await AnswerAsync(held);
        Assert.Equal(first, late.GetProperty("id").GetRawText());
        Assert.True(late.GetProperty("result").GetProperty("done").GetBoolean());
        Assert.Equal(0, session.Pending);

        // Once answered, the id is free again.
        Assert.True((await h.RequestAsync(session, Request(duplicate, "ping"))).TryGetProperty("result", out _));
    }

    [Theory]
    [InlineData("\"a\\\"b\\u0041\"", "\"a\\\"bA\"")] // a string with escapes, answered in another spelling
    [InlineData("\"\\u00e9t\\u00e9\"", "\"été\"")]
    [InlineData("1.0", "1")] // a JavaScript server answers 1.0 as 1
    [InlineData("1e2", "100")]
    [InlineData("-0", "0")]
    public async Task The_agents_own_id_token_is_echoed_whatever_spelling_the_upstream_answers_with(string agentId, string upstreamId)
    {
        await using var h = Create();
        h.Upstream.Respond = m => m.Method == "ping" ? $$$"""{"jsonrpc":"2.0","id":{{{upstreamId}}},"result":{"pong":1}}""" : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Request(agentId, "ping"));
        Assert.Equal(agentId, answer.GetProperty("id").GetRawText());
        Assert.Equal(1, answer.GetProperty("result").GetProperty("pong").GetInt32());
        // Forwarded as the agent sent it.
        Assert.Equal(agentId, Assert.Single(h.Upstream.SentWith("ping")).IdToken);
    }

    [Fact]
    public async Task An_upstream_answer_for_no_pending_request_is_dropped()
    {
        await using var h = WithSlowMethod();
        var session = await h.OpenInitializedAsync();
        var stream = new MessageSink(acceptsRelatedMessages: true);
        Assert.True(session.AttachStream(stream));
        var held = await h.StartAsync(session, Request(2, "slow"));
        var connection = h.Upstream.Latest;
        connection.Say("""{"jsonrpc":"2.0","id":999,"result":{}}"""); // never asked
        connection.Say("""{"jsonrpc":"2.0","id":1,"result":{}}"""); // initialize, answered already
        connection.Say("""{"jsonrpc":"2.0","id":"2","result":{}}"""); // a string, not the number 2
        connection.Say("""{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"marker"}}""");

        // Upstream messages are handled in order: once the marker is out, the answers before it were dropped.
        var marker = await NextAsync(stream);
        Assert.Equal("marker", marker.GetProperty("params").GetProperty("data").GetString());
        Assert.Empty(Drain(stream));
        Assert.Empty(Drain(held));
        Assert.Equal(1, session.Pending);
    }

    [Fact]
    public async Task A_connection_that_dies_fails_its_requests_with_32016()
    {
        await using var h = WithSlowMethod();
        var session = await h.OpenInitializedAsync();
        var held = await h.StartAsync(session, Request("\"a\"", "slow"));
        h.Upstream.Latest.Crash("the server process exited with code 137");
        var answer = await AnswerAsync(held);
        Assert.Equal("\"a\"", answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.UpstreamUnavailable, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.WentAway("srv", "the server process exited with code 137"), answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(0, session.Pending);
    }

    [Fact]
    public async Task A_connection_that_dies_late_fails_only_its_own_generations_requests()
    {
        await using var h = WithSlowMethod();
        var session = h.Open();
        var onFirst = await h.StartAsync(session, Request(1, "slow"));
        var first = h.Upstream.Latest;
        // The first connection is over, but its pump learns it only later (its event stream is still open).
        first.Crash("first connection died", endEvents: false);

        var onSecond = await h.StartAsync(session, Request(2, "slow"));
        var second = await h.Upstream.WaitForAsync(m => m.Connection == 2 && m.IdToken == "2", "the request on the new connection");
        Assert.Equal(2, session.Pending);

        first.EndEvents();
        var failed = await AnswerAsync(onFirst);
        Assert.Equal(1, failed.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.UpstreamUnavailable, failed.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.WentAway("srv", "first connection died"), failed.GetProperty("error").GetProperty("message").GetString());

        // The request of the new connection was left alone: its answer still reaches the agent.
        h.Upstream.Latest.Say(ScriptedUpstream.Result(second, """{"from":"second"}"""));
        var answered = await AnswerAsync(onSecond);
        Assert.Equal(2, answered.GetProperty("id").GetInt32());
        Assert.Equal("second", answered.GetProperty("result").GetProperty("from").GetString());
    }

    [Fact]
    public async Task A_send_that_fails_upstream_fails_that_request_with_32016()
    {
        await using var h = WithSlowMethod();
        var session = await h.OpenInitializedAsync();
        var held = await h.StartAsync(session, Request(3, "slow"));
        var sent = await h.Upstream.WaitForAsync(m => m.Method == "slow", "the held request");
        Assert.NotEqual(0, sent.Correlation);
        var other = await h.StartAsync(session, Request(4, "slow"));
        await h.Upstream.WaitForAsync(m => m.IdToken == "4", "the second held request");

        h.Upstream.Latest.FailSend(sent.Correlation, "HTTP 502 from the upstream");
        var answer = await AnswerAsync(held);
        Assert.Equal(3, answer.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.UpstreamUnavailable, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.Failed("srv", "HTTP 502 from the upstream"), answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(1, session.Pending);
        Assert.Empty(Drain(other));
    }
}
