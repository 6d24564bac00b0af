using System.Text;
using Sidecar.Decisions;
using Sidecar.RateLimiting;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Policy;

/// <summary>Each operator against present, absent and wrongly typed arguments. deny_if and require fail closed on type mismatches.</summary>
public class ConditionTests
{
    private static DecisionOutcome RequireOutcome(string op, string value, string args, string path = "args.v")
    {
        var policy = Policies.Compile($$"""{ "version": "1", "tools": { "t": { "require": [ { "path": "{{path}}", "op": "{{op}}", "value": {{value}} } ] } } }""");
        new DecisionEngine(new RateLimitStore()).Decide(policy, default, "t", Encoding.UTF8.GetBytes(args), false, out var d);
        return d.Outcome;
    }

    private static bool Holds(string op, string value, string args, string path = "args.v")
        => RequireOutcome(op, value, args, path) == DecisionOutcome.Allow;

    private static DecisionOutcome DenyIfOutcome(string op, string value, string args)
    {
        var policy = Policies.Compile($$"""{ "version": "1", "tools": { "t": { "deny_if": [ { "path": "args.v", "op": "{{op}}", "value": {{value}} } ] } } }""");
        new DecisionEngine(new RateLimitStore()).Decide(policy, default, "t", Encoding.UTF8.GetBytes(args), false, out var d);
        return d.Outcome;
    }

    [Theory]
    [InlineData("eq", "\"a\"", """{"v":"a"}""", true)]
    [InlineData("eq", "\"a\"", """{"v":"\u0061"}""", true)]
    [InlineData("eq", "\"a\"", """{"v":"A"}""", false)]
    [InlineData("eq", "\"1\"", """{"v":1}""", false)]
    [InlineData("eq", "1", """{"v":1.0}""", true)]
    [InlineData("eq", "1", """{"v":1e0}""", true)]
    [InlineData("eq", "0.3", """{"v":0.30}""", true)]
    [InlineData("eq", "true", """{"v":true}""", true)]
    [InlineData("eq", "true", """{"v":"true"}""", false)]
    [InlineData("eq", "null", """{"v":null}""", true)]
    [InlineData("eq", "null", """{}""", false)]
    [InlineData("neq", "\"a\"", """{"v":"b"}""", true)]
    [InlineData("neq", "\"a\"", """{"v":"a"}""", false)]
    [InlineData("neq", "\"a\"", """{}""", true)]
    [InlineData("in", "[\"a\", 2, null]", """{"v":2}""", true)]
    [InlineData("in", "[\"a\", 2, null]", """{"v":"b"}""", false)]
    [InlineData("not_in", "[\"a\", 2]", """{"v":"b"}""", true)]
    [InlineData("not_in", "[\"a\", 2]", """{"v":"a"}""", false)]
    [InlineData("not_in", "[\"a\"]", """{}""", true)]
    [InlineData("lt", "10", """{"v":9.99}""", true)]
    [InlineData("lt", "10", """{"v":10}""", false)]
    [InlineData("lte", "10", """{"v":10}""", true)]
    [InlineData("gt", "10", """{"v":10.000000000000000001}""", true)]
    [InlineData("gt", "10", """{"v":1e400}""", true)]
    [InlineData("gte", "-1", """{"v":-1}""", true)]
    [InlineData("gte", "-1", """{"v":-1.5}""", false)]
    [InlineData("regex", "\"^ab+c$\"", """{"v":"abbbc"}""", true)]
    [InlineData("regex", "\"^ab+c$\"", """{"v":"abd"}""", false)]
    [InlineData("regex", "\"^é\"", """{"v":"\u00e9t\u00e9"}""", true)]
    [InlineData("contains", "\"..\"", """{"v":"a/../b"}""", true)]
    [InlineData("contains", "\"..\"", """{"v":"a/\u002e\u002e/b"}""", true)]
    [InlineData("contains", "\"..\"", """{"v":"a/b"}""", false)]
    [InlineData("contains", "\"x\"", """{"v":["a","x"]}""", true)]
    [InlineData("contains", "\"x\"", """{"v":["a",{"x":1}]}""", false)]
    [InlineData("contains", "3", """{"v":[1,2,3.0]}""", true)]
    [InlineData("exists", "true", """{"v":null}""", true)]
    [InlineData("exists", "true", """{"w":1}""", false)]
    [InlineData("exists", "false", """{"w":1}""", true)]
    [InlineData("exists", "false", """{"v":1}""", false)]
    public void Operators(string op, string value, string args, bool holds)
        => Assert.Equal(holds, Holds(op, value, args));

    [Theory]
    [InlineData("args.a.b", """{"a":{"b":"x"}}""", true)]
    [InlineData("args.a.b", """{"a":{"c":{"b":"x"}, "b":"x"}}""", true)]
    [InlineData("args.a.b", """{"a":{"c":{"b":"x"}}}""", false)]
    [InlineData("args.a.1", """{"a":["y","x"]}""", true)]
    [InlineData("args.a.2", """{"a":["y","x"]}""", false)]
    [InlineData("args.a.b", """{"a":"x"}""", false)]
    public void Paths_walk_objects_and_arrays(string path, string args, bool holds)
        => Assert.Equal(holds, Holds("eq", "\"x\"", args, path));

    [Theory]
    [InlineData("lt", "5", """{"v":"3"}""")]
    [InlineData("regex", "\".*\"", """{"v":3}""")]
    [InlineData("contains", "\"a\"", """{"v":5}""")]
    public void Type_mismatches_fail_closed_both_ways(string op, string value, string args)
    {
        Assert.Equal(DecisionOutcome.InvalidArguments, RequireOutcome(op, value, args));
        Assert.Equal(DecisionOutcome.Deny, DenyIfOutcome(op, value, args));
    }

    [Fact]
    public void Absent_arguments_do_not_trigger_deny_if()
        => Assert.Equal(DecisionOutcome.Allow, DenyIfOutcome("eq", "\"x\"", "{}"));

    [Fact]
    public void Policies_share_compiled_regexes_by_pattern()
    {
        var pattern = "^https://shared-" + Guid.NewGuid().ToString("N") + "\\.example/";
        Assert.True(Sidecar.Policy.PolicyCompiler.TryCreateRegex(pattern, out var first, out _));
        Assert.True(Sidecar.Policy.PolicyCompiler.TryCreateRegex(pattern, out var second, out _));
        Assert.Same(first, second);
        Assert.False(Sidecar.Policy.PolicyCompiler.TryCreateRegex("(a)\\1", out _, out var error));
        Assert.Contains("linear-time", error, StringComparison.Ordinal);
    }

    [Fact]
    public void Regex_runs_in_linear_time_on_hostile_input()
    {
        // (a+)+$ on "aaaa...!" is the classic catastrophic-backtracking case; the linear engine shrugs it off.
        var args = "{\"v\":\"" + new string('a', 100_000) + "!\"}";
        Assert.False(Holds("regex", "\"^(a+)+$\"", args));
    }
}
