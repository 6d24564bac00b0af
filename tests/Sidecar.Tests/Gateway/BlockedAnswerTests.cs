using System.Text;
using Sidecar.Configuration;
using Sidecar.Tests.Audit;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Gateway;

/// <summary>The whole <c>error</c> of each blocked outcome a session answers, as the README's table documents it.</summary>
public sealed class BlockedAnswerTests
{
    private const string Policy = """
        { "version": "1", "default": "deny", "hide": ["secret_tool"], "tools": {
            "connectServer": { "action": "deny", "reason": "agents may not add servers" },
            "set_option": { "deny_if": [ { "path": "args.key", "op": "in", "value": ["mode"] } ], "reason": "network options are managed by the platform" },
            "send_request": { "require": [ { "path": "args.url", "op": "regex", "value": "^https://api\\.example\\.com/" } ], "reason": "only api.example.com" },
            "drop_flow": { "action": "require_approval" },
            "start_proxy": { "limits": [ { "counter": "start_proxy_rate", "window": "hour", "max": 1, "scope": "session" } ] } } }
        """;

    [Theory]
    [InlineData("connectServer", "{}", -32010,
        """{"code":-32010,"message":"Tool \"connectServer\" denied by policy: agents may not add servers","data":{"tool":"connectServer","server":"srv","decision":"deny","rule":"tools.connectServer","reason":"agents may not add servers"}}""")]
    [InlineData("secret_tool", "{}", -32010,
        """{"code":-32010,"message":"Tool \"secret_tool\" denied by policy: the tool is hidden by policy","data":{"tool":"secret_tool","server":"srv","decision":"deny","rule":"hide","reason":"the tool is hidden by policy"}}""")]
    [InlineData("unlisted", "{}", -32010,
        """{"code":-32010,"message":"Tool \"unlisted\" denied by policy: the tool is not allowed by policy (default deny)","data":{"tool":"unlisted","server":"srv","decision":"deny","rule":"default","reason":"the tool is not allowed by policy (default deny)"}}""")]
    [InlineData("set_option", """{"key":"mode"}""", -32010,
        """{"code":-32010,"message":"Tool \"set_option\" denied by policy: network options are managed by the platform","data":{"tool":"set_option","server":"srv","decision":"deny","rule":"tools.set_option.deny_if[0]","reason":"network options are managed by the platform"}}""")]
    [InlineData("send_request", """{"url":"https://evil.example.org/"}""", -32014,
        """{"code":-32014,"message":"Tool \"send_request\" was called with arguments the policy does not accept: only api.example.com","data":{"tool":"send_request","server":"srv","decision":"invalid_arguments","rule":"tools.send_request.require[0]","reason":"only api.example.com"}}""")]
    [InlineData("drop_flow", "{}", -32012,
        """{"code":-32012,"message":"Tool \"drop_flow\" requires approval: the call requires approval; no approver is configured on this gateway (no admin API), so the call was not made","data":{"tool":"drop_flow","server":"srv","decision":"require_approval","rule":"tools.drop_flow","reason":"the call requires approval"}}""")]
    public async Task Each_blocked_outcome_has_its_code_message_and_data(string tool, string arguments, int code, string error)
    {
        var (session, connector, pipeline) = SessionHarness.Create(AuditTest.Config(), Policy);
        var answer = await SessionHarness.CallAsync(session, Call(9, tool, arguments));
        Assert.Equal(9, answer.GetProperty("id").GetInt32());
        Assert.Equal(code, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal(error, answer.GetProperty("error").GetRawText());
        Assert.Equal(0, connector.Sent);
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task A_rate_limited_call_says_when_to_retry_and_what_is_left()
    {
        var (session, connector, pipeline) = SessionHarness.Create(AuditTest.Config(), Policy);
        var first = await SessionHarness.CallAsync(session, Call(1, "start_proxy", "{}"));
        Assert.True(first.TryGetProperty("result", out _), first.ToString());
        var limited = (await SessionHarness.CallAsync(session, Call(2, "start_proxy", "{}"))).GetProperty("error");
        Assert.Equal(-32011, limited.GetProperty("code").GetInt32());
        var data = limited.GetProperty("data");
        Assert.Equal(["tool", "server", "decision", "rule", "reason", "retryAfterMs", "remaining"], data.EnumerateObject().Select(p => p.Name));
        Assert.Equal(("start_proxy", "srv", "rate_limited", "tools.start_proxy.limits[0]"),
            (data.GetProperty("tool").GetString(), data.GetProperty("server").GetString(), data.GetProperty("decision").GetString(), data.GetProperty("rule").GetString()));
        Assert.InRange(data.GetProperty("retryAfterMs").GetInt64(), 3_500_000, 3_600_000); // one token an hour
        Assert.Equal(0, data.GetProperty("remaining").GetInt64());
        Assert.StartsWith("Tool \"start_proxy\" is rate limited: ", limited.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.Equal(1, connector.Sent);
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task With_blockedCalls_tool_result_the_same_details_are_an_isError_result()
    {
        var (session, _, pipeline) = SessionHarness.Create(AuditTest.Config(), Policy, BlockedCallStyle.ToolResult);
        var answer = await SessionHarness.CallAsync(session, Call(3, "connectServer", "{}"));
        Assert.False(answer.TryGetProperty("error", out _));
        var result = answer.GetProperty("result");
        Assert.True(result.GetProperty("isError").GetBoolean());
        Assert.Equal("Tool \"connectServer\" denied by policy: agents may not add servers", result.GetProperty("content")[0].GetProperty("text").GetString());
        Assert.Equal("""{"code":-32010,"tool":"connectServer","server":"srv","decision":"deny","rule":"tools.connectServer","reason":"agents may not add servers"}""",
            result.GetProperty("_meta").GetProperty("sidecar/decision").GetRawText());
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    private static byte[] Call(int id, string tool, string arguments)
        => Encoding.UTF8.GetBytes($$$"""{"jsonrpc":"2.0","id":{{{id}}},"method":"tools/call","params":{"name":"{{{tool}}}","arguments":{{{arguments}}}}}""");
}
