using System.Text;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Policy;

public class PolicyConfigReaderTests
{
    public static TheoryData<string> ExampleFiles()
    {
        var data = new TheoryData<string>();
        foreach (var file in Repo.ExamplePolicies)
        {
            data.Add(Path.GetFileName(file));
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(ExampleFiles))]
    public void Example_and_seed_policies_load_unchanged(string file)
    {
        var model = PolicyCompiler.LoadFile(Repo.PathOf("examples", "policies", file));
        Assert.Equal("1", model.Config.Version);
    }

    [Fact]
    public void There_are_four_seed_policies_and_the_product_example()
    {
        var names = Repo.ExamplePolicies.Select(Path.GetFileName).ToArray();
        Assert.Equal(4, names.Count(n => n!.StartsWith("seed-", StringComparison.Ordinal)));
        Assert.Contains("product-mitmproxy.json", names);
    }

    [Fact]
    public void Product_example_binds_every_field()
    {
        var model = PolicyCompiler.LoadFile(Repo.PathOf("examples", "policies", "product-mitmproxy.json"));
        var c = model.Config;
        Assert.Equal(PolicyDefault.Deny, c.Default);
        Assert.Equal(PolicyMode.Enforce, c.Mode);
        Assert.Equal(["clear_flows"], c.Hide);
        var all = Assert.Single(c.AllTools!.Limits);
        Assert.Equal(("all_calls", 60L, 600L, LimitScope.Identity), (all.Counter, all.WindowSeconds, all.Max, all.Scope));

        var tools = c.Tools.ToDictionary(t => t.Tool, t => t.Rule);
        Assert.Equal(7, tools.Count);
        Assert.Equal(RuleAction.Allow, tools["export_openapi_spec"].Action);
        var sp = Assert.Single(tools["start_proxy"].Limits);
        Assert.Equal(("start_proxy_rate", 60L, 10L, LimitScope.Grant), (sp.Counter, sp.WindowSeconds, sp.Max, sp.Scope));

        var deny = Assert.Single(tools["set_option"].DenyIf);
        Assert.Equal(ConditionOp.In, deny.Op);
        Assert.Equal(["key"], deny.Segments);
        Assert.Equal(5, deny.Value!.Items!.Count);
        Assert.Equal("network options are managed by the platform", tools["set_option"].Reason);

        var req = Assert.Single(tools["send_request"].Require);
        Assert.Equal((ConditionOp.Regex, "^https://api\\.example\\.com/"), (req.Op, req.Value!.Text));

        Assert.Equal(RuleAction.RequireApproval, tools["drop_flow"].Action);
        Assert.Equal(TimeSpan.FromMinutes(5), tools["drop_flow"].ApprovalTimeout);
        Assert.Equal((RuleAction.Deny, "agents may not add servers"), (tools["connectServer"].Action, tools["connectServer"].Reason));

        var spend = Assert.Single(tools["create_charge"].Limits);
        Assert.Equal(("daily_spend", 86400L, 100000L, "args.amount", LimitScope.Identity),
            (spend.Counter, spend.WindowSeconds, spend.Max, spend.IncrementFrom, spend.Scope));
    }

    [Fact]
    public void Defaults_fail_closed_and_enforce()
    {
        var model = Policies.Compile("""{ "version": "1" }""");
        Assert.Equal(PolicyDefault.Deny, model.Default);
        Assert.Equal(PolicyMode.Enforce, model.Mode);
    }

    [Theory]
    [InlineData("\"second\"", 1)]
    [InlineData("\"minute\"", 60)]
    [InlineData("\"hour\"", 3600)]
    [InlineData("\"day\"", 86400)]
    [InlineData("60", 60)]
    [InlineData("7", 7)]
    public void Windows_accept_names_and_seconds(string window, long seconds)
    {
        var model = Policies.Compile($$"""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": {{window}}, "max": 1 } ] } } }""");
        Assert.Equal(seconds, model.Counters[0].WindowSeconds);
    }

    [Theory]
    [InlineData("\"30s\"", 30)]
    [InlineData("\"5m\"", 300)]
    [InlineData("\"1h\"", 3600)]
    [InlineData("\"2d\"", 172800)]
    [InlineData("90", 90)]
    public void Approval_timeouts_accept_durations(string value, int seconds)
    {
        var model = Policies.Compile($$"""{ "version": "1", "tools": { "t": { "action": "require_approval", "approval_timeout": {{value}} } } }""");
        Assert.Equal(TimeSpan.FromSeconds(seconds), model.Resolve("t").ApprovalTimeout);
    }

    [Fact]
    public void Escaped_tool_names_in_the_file_are_unescaped()
    {
        var model = Policies.Compile("""{ "version": "1", "tools": { "start\u005fproxy": {} } }""");
        Assert.Equal("tools.start_proxy", model.Resolve("start_proxy").Id);
    }

    [Fact]
    public void Every_error_is_reported_at_once_with_path_and_line()
    {
        var json = """
            {
              "version": "1",
              "default": "maybe",
              "tools": {
                "a": { "action": "nope" },
                "b": { "limits": [ { "counter": "c", "window": "fortnight", "max": 0 } ] },
                "c": { "require": [ { "path": "args.url", "op": "regex", "value": "(a)\\1" } ] },
                "d": { "deny_if": [ { "path": "x", "op": "eq", "value": 1 } ] },
                "e": { "whatever": true }
              },
              "extra": 1
            }
            """;
        var errors = Policies.Errors(json);
        Assert.Contains(errors, e => e.Path == "$.default" && e.Location.Line == 3);
        Assert.Contains(errors, e => e.Path == "$.tools.a.action" && e.Location.Line == 5);
        Assert.Contains(errors, e => e.Path == "$.tools.b.limits[0].window" && e.Location.Line == 6 && e.Message.Contains("fortnight"));
        Assert.Contains(errors, e => e.Path == "$.tools.b.limits[0].max" && e.Location.Line == 6);
        Assert.Contains(errors, e => e.Path == "$.tools.c.require[0].value" && e.Location.Line == 7 && e.Message.Contains("backreference"));
        Assert.Contains(errors, e => e.Path == "$.tools.d.deny_if[0].path" && e.Location.Line == 8);
        Assert.Contains(errors, e => e.Path == "$.tools.e.whatever" && e.Location.Line == 9 && e.Message.Contains("unknown field"));
        Assert.Contains(errors, e => e.Path == "$.extra" && e.Location.Line == 11);
        Assert.Equal(8, errors.Count);
        Assert.All(errors, e => Assert.StartsWith("test.json:", e.ToString(), StringComparison.Ordinal));
    }

    [Theory]
    [InlineData("""{ "version": "1", "tools": [] }""", "$.tools", "must be an object")]
    [InlineData("""{ "version": "1", "hide": "x" }""", "$.hide", "array of tool names")]
    [InlineData("""{ "version": "1", "hide": [1] }""", "$.hide[0]", "tool name")]
    [InlineData("""{ "version": 1 }""", "$.version", "unsupported policy version 1")]
    [InlineData("""{ }""", "$", "missing required field \"version\"")]
    [InlineData("""[]""", "$", "must be a JSON object")]
    [InlineData("""{ "version": "1", "mode": "audit" }""", "$.mode", "\"enforce\", \"shadow\"")]
    [InlineData("""{ "version": "1", "tools": { "t": true } }""", "$.tools.t", "a rule must be an object")]
    [InlineData("""{ "version": "1", "tools": { "t": { "reason": 5 } } }""", "$.tools.t.reason", "expected a string")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": {} } } }""", "$.tools.t.limits", "array of limits")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "window": "minute", "max": 1 } ] } } }""", "$.tools.t.limits[0]", "\"counter\"")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "max": 1 } ] } } }""", "$.tools.t.limits[0]", "\"window\"")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": 60, "max": 1.5 } ] } } }""", "$.tools.t.limits[0].max", "whole number")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": 0, "max": 1 } ] } } }""", "$.tools.t.limits[0].window", "invalid window")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": 60, "max": 1, "scope": "team" } ] } } }""", "$.tools.t.limits[0].scope", "invalid scope")]
    [InlineData("""{ "version": "1", "tools": { "t": { "limits": [ { "counter": "c", "window": 60, "max": 1, "increment_from": "amount" } ] } } }""", "$.tools.t.limits[0].increment_from", "must start with \"args.\"")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "lt", "value": "5" } ] } } }""", "$.tools.t.require[0].value", "takes a number")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "in", "value": [] } ] } } }""", "$.tools.t.require[0].value", "non-empty array")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "in", "value": [{}] } ] } } }""", "$.tools.t.require[0].value[0]", "list values")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "eq" } ] } } }""", "$.tools.t.require[0]", "missing required field \"value\"")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "regex", "value": "[" } ] } } }""", "$.tools.t.require[0].value", "invalid regex")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "regex", "value": "(?=x)" } ] } } }""", "$.tools.t.require[0].value", "linear-time")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args..a", "op": "exists" } ] } } }""", "$.tools.t.require[0].path", "empty segment")]
    [InlineData("""{ "version": "1", "tools": { "t": { "require": [ { "path": "args.a", "op": "exists", "value": 1 } ] } } }""", "$.tools.t.require[0].value", "true or false")]
    [InlineData("""{ "version": "1", "tools": { "t": { "action": "require_approval", "approval_timeout": "soon" } } }""", "$.tools.t.approval_timeout", "invalid approval_timeout")]
    [InlineData("""{ "version": "1", "tools": { "t": { "approval_timeout": "5m" } } }""", "$.tools.t.approval_timeout", "only to rules")]
    [InlineData("""{ "version": "1", "tools": { "t": { "action": "deny", "limits": [ { "counter": "c", "window": 60, "max": 1 } ] } } }""", "$.tools.t", "always denies")]
    [InlineData("""{ "version": "1", "hide": ["t"], "tools": { "t": {} } }""", "$.tools.t", "is in \"hide\"")]
    [InlineData("""{ "version": "1", "tools": { "t": {}, "t": {} } }""", "$.tools.t", "duplicate key")]
    [InlineData("""{ "version": "1", "tools": { "a": { "limits": [ { "counter": "c", "window": 60, "max": 1 } ] }, "b": { "limits": [ { "counter": "c", "window": 60, "max": 2 } ] } } }""", "$.tools.b.limits[0]", "must agree")]
    [InlineData("""{ "version": "1", /* no */ }""", "$", "invalid JSON")]
    [InlineData("""{ "version": "1", }""", "$", "invalid JSON")]
    [InlineData("", "$", "empty")]
    public void Invalid_policies_name_the_path(string json, string path, string message)
    {
        var errors = Policies.Errors(json);
        Assert.Contains(errors, e => e.Path == path && e.Message.Contains(message, StringComparison.Ordinal));
    }

    [Fact]
    public void Too_many_limits_for_one_call_is_an_error()
    {
        var limits = string.Join(",", Enumerable.Range(0, 5).Select(i => $$"""{ "counter": "t{{i}}", "window": 60, "max": 5 }"""));
        var allLimits = string.Join(",", Enumerable.Range(0, 4).Select(i => $$"""{ "counter": "a{{i}}", "window": 60, "max": 5 }"""));
        var errors = Policies.Errors($$"""{ "version": "1", "all_tools": { "limits": [{{allLimits}}] }, "tools": { "t": { "limits": [{{limits}}] } } }""");
        Assert.Contains(errors, e => e.Message.Contains("at most 8", StringComparison.Ordinal));
    }

    [Fact]
    public void Invalid_json_reports_line_and_column()
    {
        var errors = Policies.Errors("{\n  \"version\": \"1\",\n  \"tools\": { \"a\": {} \n}");
        var e = Assert.Single(errors);
        Assert.True(e.Location.Line >= 3, e.ToString());
    }

    [Fact]
    public void Utf8_bom_is_accepted()
    {
        var bytes = Encoding.UTF8.GetPreamble().Concat(Encoding.UTF8.GetBytes("""{ "version": "1" }""")).ToArray();
        var diagnostics = new DiagnosticBag();
        Assert.NotNull(PolicyCompiler.Load(bytes, "x", diagnostics));
    }

    [Fact]
    public void Missing_file_is_a_validation_error()
    {
        var ex = Assert.Throws<ConfigValidationException>(() => PolicyCompiler.LoadFile("/nonexistent/policy.json"));
        Assert.Contains("cannot read policy file", ex.Message, StringComparison.Ordinal);
    }
}
