using System.Text;
using Sidecar.Decisions;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Catalogue;

/// <summary>
/// What the presets' conditions actually decide, through the real compiler and decision engine: network options,
/// privileged ports, and URLs that reach loopback, private or link-local addresses however they are spelled
/// (userinfo, case, decimal and hex hosts, IPv6 forms).
/// </summary>
public sealed class PresetBehaviourTests
{
    private static DecisionOutcome Decide(string preset, string tool, string arguments)
    {
        var policy = PolicyCompiler.LoadFile(Repo.PathOf("presets", preset, "policy.json"), preset);
        var engine = new DecisionEngine(new RateLimitStore());
        engine.Decide(policy, new CallContext("agent", "grant", "session"), tool, Encoding.UTF8.GetBytes(arguments), approved: false, out var decision);
        return decision.Outcome;
    }

    [Theory]
    [InlineData("http://127.0.0.1/admin")]
    [InlineData("http://localhost:8080/")]
    [InlineData("HTTP://LOCALHOST/")]
    [InlineData("https://user:pw@127.0.0.1/")]
    [InlineData("https://evil.example@10.0.0.5/")]
    [InlineData("http://192.168.1.1/")]
    [InlineData("http://172.16.0.1/")]
    [InlineData("http://169.254.169.254/latest/meta-data")]
    [InlineData("http://0.0.0.0:9000/")]
    [InlineData("http://2130706433/")]
    [InlineData("http://0x7f000001/")]
    [InlineData("http://[::1]/")]
    [InlineData("http://[::ffff:127.0.0.1]/")]
    [InlineData("http://[fd00::1]/")]
    [InlineData("http://[fe80::1]/")]
    public void Send_request_refuses_internal_addresses(string url)
        => Assert.NotEqual(DecisionOutcome.Allow, Decide("mitmproxy-addon", "send_request", $$"""{"url":"{{url}}"}"""));

    [Theory]
    [InlineData("https://api.example.com/v1/items")]
    [InlineData("http://example.org/")]
    [InlineData("https://172.32.0.1/")]
    public void Send_request_allows_public_addresses(string url)
        => Assert.Equal(DecisionOutcome.Allow, Decide("mitmproxy-addon", "send_request", $$"""{"url":"{{url}}"}"""));

    [Theory]
    [InlineData("listen_port", DecisionOutcome.Deny)]
    [InlineData("ssl_insecure", DecisionOutcome.Deny)]
    [InlineData("console_eventlog_verbosity", DecisionOutcome.Allow)]
    public void Set_option_refuses_the_network_options(string key, DecisionOutcome expected)
        => Assert.Equal(expected, Decide("mitmproxy-addon", "set_option", $$"""{"key":"{{key}}","value":"x"}"""));

    [Theory]
    [InlineData("https://agents.example.com/mcp", DecisionOutcome.Allow)]
    [InlineData("http://agents.example.com/mcp", DecisionOutcome.InvalidArguments)]
    [InlineData("https://localhost/mcp", DecisionOutcome.Deny)]
    [InlineData("https://me@192.168.0.2/mcp", DecisionOutcome.Deny)]
    public void Connect_server_takes_only_public_https(string url, DecisionOutcome expected)
        => Assert.Equal(expected, Decide("mcp-agent-proxy", "connectServer", $$"""{"serverUrl":"{{url}}"}"""));

    [Theory]
    [InlineData(80, DecisionOutcome.Deny)]
    [InlineData(8080, DecisionOutcome.Allow)]
    public void Start_proxy_takes_no_privileged_port(int port, DecisionOutcome expected)
        => Assert.Equal(expected, Decide("mitmproxy-mcp", "start_proxy", $$"""{"port":{{port}}}"""));

    [Fact]
    public void Drop_flow_needs_a_person()
        => Assert.Equal(DecisionOutcome.RequireApproval, Decide("mitmproxy-addon", "drop_flow", """{"flow_id":"f-1"}"""));
}
