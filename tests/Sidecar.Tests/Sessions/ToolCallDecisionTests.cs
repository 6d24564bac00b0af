using System.Buffers;
using System.Text;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary>What a session does with a decided <c>tools/call</c>: forward, shadow, block; refunds; timeouts.</summary>
public sealed class ToolCallDecisionTests
{
    private const string Policy = """
        { "version": "1", "default": "deny", "tools": {
            "echo": {},
            "drop_table": { "action": "deny", "reason": "never in production" },
            "limited": { "limits": [ { "counter": "limited_rate", "window": "hour", "max": 1, "scope": "session" } ] } } }
        """;

    private const string ShadowPolicy = """
        { "version": "1", "mode": "shadow", "default": "deny", "tools": {
            "echo": {},
            "drop_table": { "action": "deny", "reason": "never in production" } } }
        """;

    [Theory]
    [InlineData(Policy, "echo", nameof(CallVerdict.Forward))]
    [InlineData(Policy, "drop_table", nameof(CallVerdict.Blocked))]
    [InlineData(Policy, "unlisted", nameof(CallVerdict.Blocked))]
    [InlineData(ShadowPolicy, "echo", nameof(CallVerdict.Forward))]
    [InlineData(ShadowPolicy, "drop_table", nameof(CallVerdict.Shadow))]
    [InlineData(ShadowPolicy, "unlisted", nameof(CallVerdict.Shadow))]
    public async Task ToolCalls_Decide_gives_the_verdict(string policy, string tool, string expected)
    {
        var verdict = Enum.Parse<CallVerdict>(expected);
        await using var h = Create(policy);
        var message = Encoding.UTF8.GetBytes(Call(1, tool));
        var scan = SessionHarness.Scan(message);
        var snapshot = h.Engine.Current;
        var result = h.Engine.Calls.Decide(snapshot.Find("srv")!, Sidecar.Identity.Caller.Anonymous, snapshot.Options, new ReadOnlySequence<byte>(message), scan,
            new CallContext(null, null, "s1"), new ReadOnlySequence<byte>("1"u8.ToArray()), out var decision, out var named, out var auditId, out _);
        Assert.Equal(verdict, result);
        Assert.Equal(verdict == CallVerdict.Forward ? null : tool, named);
        Assert.Equal(verdict is CallVerdict.Forward or CallVerdict.Shadow, auditId != 0); // a forwarded call's record awaits its completion
        if (verdict != CallVerdict.Forward)
        {
            Assert.Equal(DecisionOutcome.Deny, decision.Outcome);
            Assert.Equal(verdict == CallVerdict.Blocked, decision.Enforced);
        }
    }

    [Fact]
    public async Task An_allowed_call_is_forwarded_and_answered_by_the_upstream()
    {
        await using var h = Create(Policy);
        h.Upstream.Respond = m => m.Method == "tools/call" ? ScriptedUpstream.Result(m, """{"content":[{"type":"text","text":"hi"}]}""") : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Call(2, "echo", """{"message":"hi"}"""));
        Assert.Equal("hi", answer.GetProperty("result").GetProperty("content")[0].GetProperty("text").GetString());
        Assert.Equal("""{"message":"hi"}""", Assert.Single(h.Upstream.SentWith("tools/call")).Root.GetProperty("params").GetProperty("arguments").GetRawText());
        var record = Assert.Single(h.AuditCalls());
        Assert.Equal(("echo", "allow", true, "ok"),
            (record.GetProperty("tool").GetString(), record.GetProperty("decision").GetString(), record.GetProperty("enforced").GetBoolean(), record.GetProperty("outcome").GetString()));
        Assert.Equal(session.Id, record.GetProperty("session").GetString());
    }

    [Fact]
    public async Task A_blocked_call_is_answered_by_the_gateway_and_never_forwarded()
    {
        await using var h = Create(Policy);
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Call(3, "drop_table"));
        Assert.Equal(3, answer.GetProperty("id").GetInt32());
        Assert.Equal(ErrorCodes.PolicyDenied, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal("Tool \"drop_table\" denied by policy: never in production", answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Empty(h.Upstream.SentWith("tools/call"));
        var record = Assert.Single(h.AuditCalls());
        Assert.Equal(("deny", true, "blocked", ErrorCodes.PolicyDenied),
            (record.GetProperty("decision").GetString(), record.GetProperty("enforced").GetBoolean(), record.GetProperty("outcome").GetString(), record.GetProperty("errorCode").GetInt32()));
    }

    [Fact]
    public async Task In_shadow_mode_a_call_the_policy_would_block_is_forwarded_and_the_audit_says_what_it_would_have_got()
    {
        await using var h = Create(ShadowPolicy);
        h.Upstream.Respond = m => m.Method == "tools/call" ? ScriptedUpstream.Result(m, """{"content":[],"ran":true}""") : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var answer = await h.RequestAsync(session, Call(4, "drop_table", """{"table":"users"}"""));
        Assert.Equal(4, answer.GetProperty("id").GetInt32());
        Assert.True(answer.GetProperty("result").GetProperty("ran").GetBoolean());
        Assert.Single(h.Upstream.SentWith("tools/call"));
        var record = Assert.Single(h.AuditCalls());
        Assert.Equal("drop_table", record.GetProperty("tool").GetString());
        Assert.Equal("deny", record.GetProperty("decision").GetString());
        Assert.False(record.GetProperty("enforced").GetBoolean());
        Assert.Equal("tools.drop_table", record.GetProperty("rule").GetString());
        Assert.Equal("never in production", record.GetProperty("reason").GetString());
        Assert.Equal("ok", record.GetProperty("outcome").GetString());
        Assert.Equal(4, record.GetProperty("requestId").GetInt32());
    }

    [Fact]
    public async Task A_call_answered_with_a_JSON_RPC_error_gets_its_tokens_back_and_a_successful_one_does_not()
    {
        await using var h = Create(Policy);
        h.Upstream.Respond = m => m.Method == "tools/call" && m.Root.GetProperty("params").GetProperty("arguments").TryGetProperty("fail", out _)
            ? ScriptedUpstream.Error(m, -32603, "the tool crashed")
            : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();

        var failed = await h.RequestAsync(session, Call(1, "limited", """{"fail":true}"""));
        Assert.Equal(-32603, failed.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal("the tool crashed", failed.GetProperty("error").GetProperty("message").GetString());

        // One call an hour, but the failed one was refunded: this one goes through.
        var succeeded = await h.RequestAsync(session, Call(2, "limited"));
        Assert.True(succeeded.TryGetProperty("result", out _), succeeded.ToString());

        // The successful call kept its token: the next is rate limited and never leaves.
        var limited = await h.RequestAsync(session, Call(3, "limited"));
        Assert.Equal(ErrorCodes.RateLimited, limited.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(2, h.Upstream.SentWith("tools/call").Count);

        var outcomes = h.AuditCalls().Select(r => (r.GetProperty("requestId").GetInt32(), r.GetProperty("outcome").GetString())).Order().ToArray();
        Assert.Equal([(1, "error"), (2, "ok"), (3, "blocked")], outcomes);
    }

    [Fact]
    public async Task A_call_that_times_out_gets_32017_and_the_upstream_is_told_to_cancel_it()
    {
        await using var h = Create(Policy, GatewayLimits.Default with { UpstreamTimeout = TimeSpan.FromSeconds(2) });
        h.Upstream.Respond = m => m.Method == "tools/call" ? null : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var sink = await h.StartAsync(session, Call("\"call-7\"", "limited"));
        await h.Upstream.WaitForAsync(m => m.Method == "tools/call", "the call");

        session.ExpireOverdue(Environment.TickCount64 - 1); // not overdue yet
        Assert.Equal(1, session.Pending);
        Assert.Empty(Drain(sink));

        session.ExpireOverdue(Environment.TickCount64 + 2_001);
        var answer = await AnswerAsync(sink);
        Assert.Equal("\"call-7\"", answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.UpstreamTimeout, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(SessionMessages.Timeout("srv", 2), answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal("Upstream server \"srv\" did not answer within 2 s", answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Equal(0, session.Pending);

        var cancelled = (await h.Upstream.WaitForAsync(m => m.Method == "notifications/cancelled", "notifications/cancelled")).Root.GetProperty("params");
        Assert.Equal("\"call-7\"", cancelled.GetProperty("requestId").GetRawText());
        Assert.Equal(SessionMessages.CancelledTimeout, cancelled.GetProperty("reason").GetString());

        var record = Assert.Single(h.AuditCalls());
        Assert.Equal(("upstream_timeout", ErrorCodes.UpstreamTimeout), (record.GetProperty("outcome").GetString(), record.GetProperty("errorCode").GetInt32()));

        // No refund (the server may still run it): the one-an-hour call is spent.
        var next = await h.RequestAsync(session, Call(8, "limited"));
        Assert.Equal(ErrorCodes.RateLimited, next.GetProperty("error").GetProperty("code").GetInt32());
    }

    [Fact]
    public async Task A_forwarded_call_whose_upstream_dies_is_refunded()
    {
        await using var h = Create(Policy);
        h.Upstream.Respond = m => m.Method == "tools/call" ? null : h.Upstream.DefaultAnswer(m);
        var session = await h.OpenInitializedAsync();
        var sink = await h.StartAsync(session, Call(1, "limited"));
        await h.Upstream.WaitForAsync(m => m.Method == "tools/call", "the call");
        h.Upstream.Latest.Crash("killed");
        Assert.Equal(ErrorCodes.UpstreamUnavailable, (await AnswerAsync(sink)).GetProperty("error").GetProperty("code").GetInt32());

        h.Upstream.Respond = h.Upstream.DefaultAnswer;
        var again = await h.RequestAsync(session, Call(2, "limited"));
        Assert.True(again.TryGetProperty("result", out _), again.ToString());
    }
}
