using System.Text;
using Sidecar.Decisions;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Decisions;

public class DecisionEngineTests
{
    private readonly ManualTimeProvider _time = new();
    private readonly DecisionEngine _engine;
    private static readonly CallContext Alice = new("alice", "ops", "s1");
    private static readonly CallContext Bob = new("bob", "ops", "s2");

    public DecisionEngineTests() => _engine = new DecisionEngine(new RateLimitStore(_time));

    private static PolicyModel Product => PolicyCompiler.LoadFile(Repo.PathOf("examples", "policies", "product-mitmproxy.json"), "mitmproxy");

    private Decision Decide(PolicyModel policy, string tool, string args = "{}", CallContext? context = null, bool approved = false)
    {
        _engine.Decide(policy, context ?? Alice, tool, Encoding.UTF8.GetBytes(args), approved, out var decision);
        return decision;
    }

    [Fact]
    public void Named_tool_with_empty_rule_is_allowed()
    {
        var d = Decide(Product, "export_openapi_spec");
        Assert.Equal(DecisionOutcome.Allow, d.Outcome);
        Assert.Equal("tools.export_openapi_spec", d.Rule);
        Assert.True(d.Enforced);
        Assert.False(d.Blocks);
    }

    [Fact]
    public void An_allowed_call_never_carries_the_rules_refusal_text_as_its_reason()
    {
        // set_option's reason explains its deny_if; an allowed set_option must not be recorded with it.
        var allowed = Decide(Product, "set_option", """{"key":"anticache","value":true}""");
        Assert.Equal(DecisionOutcome.Allow, allowed.Outcome);
        Assert.Equal("allowed by policy", allowed.Reason);
        var denied = Decide(Product, "set_option", """{"key":"mode"}""");
        Assert.Equal(DecisionOutcome.Deny, denied.Outcome);
        Assert.Equal("network options are managed by the platform", denied.Reason);

        var open = PolicyCompiler.Load("""{ "version": "1", "default": "allow" }"""u8, "t", new Sidecar.Configuration.DiagnosticBag())!;
        Assert.Equal("allowed by the policy default", Decide(open, "anything").Reason);
    }

    [Fact]
    public void Unnamed_tool_falls_to_default_deny()
    {
        var d = Decide(Product, "get_flows");
        Assert.Equal((DecisionOutcome.Deny, "default"), (d.Outcome, d.Rule));
        Assert.True(d.Blocks);
    }

    [Fact]
    public void Default_allow_lets_unnamed_tools_through()
    {
        var policy = Policies.Compile("""{ "version": "1", "default": "allow", "tools": { "x": { "action": "deny" } } }""");
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "anything").Outcome);
        Assert.Equal("default", Decide(policy, "anything").Rule);
        Assert.Equal(DecisionOutcome.Deny, Decide(policy, "x").Outcome);
        Assert.Equal("\"x\" is denied by policy", Decide(policy, "x").Reason);
    }

    [Fact]
    public void Hidden_tools_are_denied_even_with_default_allow()
    {
        var policy = Policies.Compile("""{ "version": "1", "default": "allow", "hide": ["clear_flows"] }""");
        var d = Decide(policy, "clear_flows");
        Assert.Equal((DecisionOutcome.Deny, "hide"), (d.Outcome, d.Rule));
        Assert.False(policy.IsVisible("clear_flows"));
        Assert.True(policy.IsVisible("get_flows"));
        Assert.False(Product.IsVisible("connectServer"));
        Assert.False(Product.IsVisible("get_flows"));
        Assert.True(Product.IsVisible("drop_flow"));
    }

    [Fact]
    public void Deny_action_gives_its_reason()
    {
        var d = Decide(Product, "connectServer");
        Assert.Equal((DecisionOutcome.Deny, "tools.connectServer", "agents may not add servers"), (d.Outcome, d.Rule, d.Reason));
    }

    [Theory]
    [InlineData("""{"key":"mode"}""", DecisionOutcome.Deny)]
    [InlineData("""{"key":"listen\u005fhost"}""", DecisionOutcome.Deny)]
    [InlineData("""{"key":"console_eventlog_verbosity","value":"debug"}""", DecisionOutcome.Allow)]
    [InlineData("""{"key":"Mode"}""", DecisionOutcome.Allow)]
    [InlineData("""{}""", DecisionOutcome.Allow)]
    [InlineData("""{"key":["mode"]}""", DecisionOutcome.Allow)]
    public void Deny_if_conditions_deny_matching_arguments(string args, DecisionOutcome expected)
    {
        var d = Decide(Product, "set_option", args);
        Assert.Equal(expected, d.Outcome);
        if (expected == DecisionOutcome.Deny)
        {
            Assert.Equal(("tools.set_option.deny_if[0]", "network options are managed by the platform"), (d.Rule, d.Reason));
        }
    }

    [Theory]
    [InlineData("""{"url":"https://api.example.com/v1"}""", DecisionOutcome.Allow)]
    [InlineData("""{"url":"https:\/\/api.example.com\/v1"}""", DecisionOutcome.Allow)]
    [InlineData("""{"url":"https://api.example.com.evil.io/"}""", DecisionOutcome.InvalidArguments)]
    [InlineData("""{"url":"http://api.example.com/"}""", DecisionOutcome.InvalidArguments)]
    [InlineData("""{"url":42}""", DecisionOutcome.InvalidArguments)]
    [InlineData("""{}""", DecisionOutcome.InvalidArguments)]
    public void Require_conditions_reject_arguments_that_fail_them(string args, DecisionOutcome expected)
    {
        var d = Decide(Product, "send_request", args);
        Assert.Equal(expected, d.Outcome);
        if (expected != DecisionOutcome.Allow)
        {
            Assert.Equal("tools.send_request.require[0]", d.Rule);
            Assert.Contains("args.url", d.Reason, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Approval_is_required_until_granted()
    {
        var d = Decide(Product, "drop_flow");
        Assert.Equal((DecisionOutcome.RequireApproval, "tools.drop_flow"), (d.Outcome, d.Rule));
        Assert.Equal(TimeSpan.FromMinutes(5), d.ApprovalTimeout);
        Assert.Equal(DecisionOutcome.Allow, Decide(Product, "drop_flow", approved: true).Outcome);
    }

    [Fact]
    public void Fourth_call_is_rate_limited_when_max_is_three()
    {
        var policy = Policies.Compile("""{ "version": "1", "tools": { "echo": { "limits": [ { "counter": "echo_rate", "window": "minute", "max": 3 } ] } } }""");
        for (var i = 0; i < 3; i++)
        {
            var ok = Decide(policy, "echo");
            Assert.Equal(DecisionOutcome.Allow, ok.Outcome);
            Assert.Equal(2 - i, ok.Remaining);
        }
        var limited = Decide(policy, "echo");
        Assert.Equal((DecisionOutcome.RateLimited, "tools.echo.limits[0]"), (limited.Outcome, limited.Rule));
        Assert.Equal(20_000, limited.RetryAfterMs);
        Assert.Equal(0, limited.Remaining);
        Assert.Contains("echo_rate", limited.Reason, StringComparison.Ordinal);

        _time.Advance(TimeSpan.FromSeconds(20));
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "echo").Outcome);
    }

    [Theory]
    [InlineData("grant", false, false)]
    [InlineData("identity", false, true)]
    [InlineData("session", false, false)]
    [InlineData("global", true, true)]
    public void Scopes_partition_counters(string scope, bool sharedAcrossIdentities, bool sharedAcrossGrantsOfOneIdentity)
    {
        var policy = Policies.Compile($$"""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": "hour", "max": 1, "scope": "{{scope}}" } ] } } }""");
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "t", context: Alice).Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "t", context: Alice).Outcome);
        Assert.Equal(sharedAcrossIdentities ? DecisionOutcome.RateLimited : DecisionOutcome.Allow, Decide(policy, "t", context: Bob).Outcome);
        var aliceOtherGrantOtherSession = new CallContext("alice", "admin", scope == "session" ? "s1" : "s9");
        var expected = sharedAcrossGrantsOfOneIdentity || scope == "session" ? DecisionOutcome.RateLimited : DecisionOutcome.Allow;
        Assert.Equal(expected, Decide(policy, "t", context: aliceOtherGrantOtherSession).Outcome);
    }

    [Fact]
    public void Tools_naming_the_same_counter_share_it()
    {
        var policy = Policies.Compile("""
            { "version": "1", "tools": {
                "a": { "limits": [ { "counter": "writes", "window": "hour", "max": 2 } ] },
                "b": { "limits": [ { "counter": "writes", "window": "hour", "max": 2 } ] } } }
            """);
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "a").Outcome);
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "b").Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "a").Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "b").Outcome);
    }

    [Fact]
    public void Increment_from_spends_the_argument()
    {
        var policy = Product;
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "create_charge", """{"amount": 60000}""").Outcome);
        var over = Decide(policy, "create_charge", """{"amount": 40001}""");
        Assert.Equal(DecisionOutcome.RateLimited, over.Outcome);
        Assert.Equal(40000, over.Remaining);
        var exact = Decide(policy, "create_charge", """{"amount": 39999.5}""");
        Assert.Equal(DecisionOutcome.Allow, exact.Outcome);
        Assert.Equal(0, exact.Remaining);
    }

    [Theory]
    [InlineData("""{}""")]
    [InlineData("""{"amount": "100"}""")]
    [InlineData("""{"amount": -5}""")]
    [InlineData("""{"amount": null}""")]
    public void Increment_from_must_be_a_non_negative_number(string args)
    {
        var d = Decide(Product, "create_charge", args);
        Assert.Equal((DecisionOutcome.InvalidArguments, "tools.create_charge.limits[0]"), (d.Outcome, d.Rule));
        Assert.Contains("args.amount", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void An_amount_above_max_can_never_pass()
    {
        var d = Decide(Product, "create_charge", """{"amount": 1e30}""");
        Assert.Equal(DecisionOutcome.RateLimited, d.Outcome);
        Assert.Equal(-1, d.RetryAfterMs);
        Assert.Contains("can ever allow", d.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public void All_tools_limits_apply_to_every_allowed_call_and_are_all_or_nothing()
    {
        var policy = Policies.Compile("""
            { "version": "1",
              "all_tools": { "limits": [ { "counter": "all", "window": "hour", "max": 3, "scope": "identity" } ] },
              "tools": { "a": {}, "b": { "limits": [ { "counter": "b", "window": "hour", "max": 1 } ] } } }
            """);
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "b").Outcome);      // all: 2 left, b: 0 left
        var limited = Decide(policy, "b");
        Assert.Equal((DecisionOutcome.RateLimited, "tools.b.limits[0]"), (limited.Outcome, limited.Rule));
        // The refused call gave back the all_tools token it took first: two more calls fit.
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "a").Outcome);
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "a").Outcome);
        var all = Decide(policy, "a");
        Assert.Equal((DecisionOutcome.RateLimited, "all_tools.limits[0]"), (all.Outcome, all.Rule));
        // Denied tools spend nothing.
        Assert.Equal(DecisionOutcome.Deny, Decide(policy, "zzz").Outcome);
    }

    [Fact]
    public void All_tools_conditions_apply_before_the_tools_own()
    {
        var policy = Policies.Compile("""
            { "version": "1", "default": "allow",
              "all_tools": { "deny_if": [ { "path": "args.path", "op": "contains", "value": ".." } ], "reason": "no path traversal" } }
            """);
        var d = Decide(policy, "read_file", """{"path":"/etc/../etc/passwd"}""");
        Assert.Equal((DecisionOutcome.Deny, "all_tools.deny_if[0]", "no path traversal"), (d.Outcome, d.Rule, d.Reason));
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "read_file", """{"path":"/etc/hosts"}""").Outcome);
    }

    [Fact]
    public void Refund_returns_every_token_of_a_failed_call()
    {
        var policy = Policies.Compile("""
            { "version": "1",
              "all_tools": { "limits": [ { "counter": "all", "window": "hour", "max": 1 } ] },
              "tools": { "a": { "limits": [ { "counter": "a", "window": "hour", "max": 1 } ] } } }
            """);
        var d = Decide(policy, "a");
        Assert.Equal(DecisionOutcome.Allow, d.Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "a").Outcome);
        _engine.Refund(ref d);
        _engine.Refund(ref d); // idempotent
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "a").Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "a").Outcome);
    }

    [Fact]
    public void Copied_charges_refund_exactly_the_tokens_taken()
    {
        var policy = Policies.Compile("""
            { "version": "1",
              "all_tools": { "limits": [ { "counter": "all", "window": "hour", "max": 1 } ] },
              "tools": { "a": { "limits": [ { "counter": "a", "window": "hour", "max": 1 } ] }, "free": {} } }
            """);
        Assert.Null(DecisionEngine.CopyCharges(Decide(Policies.Compile("""{ "version": "1", "tools": { "free": {} } }"""), "free")));
        var charges = DecisionEngine.CopyCharges(Decide(policy, "a"));
        Assert.Equal(2, charges!.Length);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "a").Outcome);
        _engine.Refund(charges);
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "a").Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(policy, "a").Outcome);
    }

    [Fact]
    public void Shadow_mode_decides_but_does_not_block()
    {
        var policy = Policies.Compile("""{ "version": "1", "mode": "shadow", "tools": { "x": { "action": "deny", "reason": "no" } } }""");
        var d = Decide(policy, "x");
        Assert.Equal(DecisionOutcome.Deny, d.Outcome);
        Assert.False(d.Enforced);
        Assert.False(d.Blocks);
    }

    [Fact]
    public void Counters_survive_a_policy_reload_in_the_same_space()
    {
        const string json = """{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": "hour", "max": 1 } ] } } }""";
        Assert.Equal(DecisionOutcome.Allow, Decide(Policies.Compile(json, "srv"), "t").Outcome);
        Assert.Equal(DecisionOutcome.RateLimited, Decide(Policies.Compile(json, "srv"), "t").Outcome);
        Assert.Equal(DecisionOutcome.Allow, Decide(Policies.Compile(json, "other-server"), "t").Outcome);
    }

    [Theory]
    [InlineData("[1,2]")]
    [InlineData("\"str\"")]
    [InlineData("{\"url\":")]
    [InlineData("{\"url\":\"\\ud800\"}")]
    public void Malformed_arguments_never_throw(string args)
    {
        var d = Decide(Product, "send_request", args);
        Assert.Equal(DecisionOutcome.InvalidArguments, d.Outcome);
        Assert.True(d.Blocks);
    }

    [Fact]
    public void A_call_without_arguments_is_decided_as_an_empty_object()
    {
        var policy = Policies.Compile("""
            { "version": "1", "tools": {
                "a": { "deny_if": [ { "path": "args.mode", "op": "not_in", "value": ["safe"] } ] },
                "b": { "require": [ { "path": "args.x", "op": "exists", "value": false } ] },
                "c": { "limits": [ { "counter": "spend", "window": "day", "max": 10, "increment_from": "args.amount" } ] },
                "d": { "deny_if": [ { "path": "args.x", "op": "eq", "value": 1 } ] } } }
            """);
        DecisionOutcome Outcome(string tool)
        {
            _engine.Decide(policy, Alice, tool, ReadOnlySpan<byte>.Empty, false, out var d);
            return d.Outcome;
        }
        Assert.Equal(DecisionOutcome.Deny, Outcome("a"));              // args.mode is absent: not_in holds
        Assert.Equal(DecisionOutcome.Allow, Outcome("b"));
        Assert.Equal(DecisionOutcome.InvalidArguments, Outcome("c"));  // nothing to spend
        Assert.Equal(DecisionOutcome.Allow, Outcome("d"));
    }

    [Theory]
    [InlineData("{\"amount\":")]
    [InlineData("{\"amount\" 5}")]
    [InlineData("[5]")]
    public void Malformed_arguments_on_a_spend_limit_are_refused_and_spend_nothing(string args)
    {
        var policy = Policies.Compile("""
            { "version": "1",
              "all_tools": { "limits": [ { "counter": "calls", "window": "day", "max": 1 } ] },
              "tools": { "c": { "limits": [ { "counter": "spend", "window": "day", "max": 10, "increment_from": "args.amount" } ] } } }
            """);
        var d = Decide(policy, "c", args);
        Assert.Equal(DecisionOutcome.InvalidArguments, d.Outcome);
        Assert.Equal(0, d.ChargeCount);
        // The all_tools token taken before the failure was given back.
        Assert.Equal(DecisionOutcome.Allow, Decide(policy, "c", """{"amount": 3}""").Outcome);
    }

    [Fact]
    public void Typical_decision_allocates_nothing()
    {
        var policy = Product;
        var args = Encoding.UTF8.GetBytes("""{"url":"https://api.example.com/v1/items?limit=10","method":"GET","headers":{"accept":"application/json"}}""");
        var setOption = Encoding.UTF8.GetBytes("""{"key":"console_eventlog_verbosity","value":"info"}""");
        var engine = new DecisionEngine(new RateLimitStore());
        void Block()
        {
            for (var i = 0; i < 1000; i++)
            {
                engine.Decide(policy, Alice, "send_request", args, false, out _);
                engine.Decide(policy, Alice, "set_option", setOption, false, out _);
                engine.Decide(policy, Alice, "start_proxy", ReadOnlySpan<byte>.Empty, false, out _);
                engine.Decide(policy, Alice, "get_flows", ReadOnlySpan<byte>.Empty, false, out _);
            }
        }
        // The warm-up runs the very block that is measured: every path it takes (allowed, denied, and rate limited
        // once all_tools' 600-a-minute runs out) has run before, so one-time work (JIT, lazy init) is not counted.
        Block();
        var before = GC.GetAllocatedBytesForCurrentThread();
        Block();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }
}
