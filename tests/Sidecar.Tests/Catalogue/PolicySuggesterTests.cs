using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.Policy;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Catalogue;

public sealed class PolicySuggesterTests
{
    /// <summary>The seed recommendations, as notes/servers.md writes them.</summary>
    public static TheoryData<string, string, string> SeedRules() => new()
    {
        { "mitmproxy-mcp", "start_proxy", """{ "limits": [ { "counter": "start_proxy_rate", "window": "minute", "max": 10, "scope": "grant" } ] }""" },
        { "mitmproxy-mcp", "export_openapi_spec", "{}" },
        { "mcp-agent-proxy", "connectServer", """{ "limits": [ { "counter": "connectserver_rate", "window": "minute", "max": 30, "scope": "grant" } ] }""" },
        { "mcp-server-icon", "start_web_server", """{ "limits": [ { "counter": "start_web_server_rate", "window": "minute", "max": 10, "scope": "grant" } ] }""" },
    };

    [Theory]
    [MemberData(nameof(SeedRules))]
    public void Seed_recommendations_come_out_exactly_but_for_the_description(string server, string tool, string seedRule)
    {
        var policy = JsonNode.Parse(PolicySuggester.Suggest(FixtureServers()[server], server))!;
        var rule = policy["tools"]![tool]!.AsObject();
        Assert.StartsWith(ToolClassifier.Name(ToolClassifier.Classify(new ToolDefinition(tool)).Category), (string)rule["description"]!, StringComparison.Ordinal);
        rule.Remove("description");
        Assert.Equal(Compact(seedRule), rule.ToJsonString());
    }

    [Theory]
    [InlineData("mitmproxy-mcp")]
    [InlineData("mitmproxy-addon")]
    [InlineData("mcp-agent-proxy")]
    [InlineData("mcp-server-icon")]
    public void Every_tool_appears_and_the_policy_validates(string server)
    {
        var tools = FixtureServers()[server];
        var bytes = PolicySuggester.Suggest(tools, server);
        var diagnostics = new DiagnosticBag("suggested.json");
        var model = PolicyCompiler.Load(bytes, server, diagnostics);
        Assert.True(model is not null, string.Join("\n", diagnostics.Items));
        Assert.Empty(diagnostics.Items);
        Assert.Equal(PolicyDefault.Deny, model.Config.Default);
        Assert.Equal("1", model.Config.Version);
        Assert.Equal(tools.Select(t => t.Name), model.Config.Tools.Select(t => t.Tool));
        foreach (var t in model.Config.Tools)
        {
            var c = ToolClassifier.Classify(tools.Single(x => x.Name == t.Tool));
            Assert.StartsWith($"{ToolClassifier.Name(c.Category)}, {ToolClassifier.Name(c.Risk)} risk", t.Rule.Description, StringComparison.Ordinal);
            var expectedAction = c.Category switch
            {
                ToolCategory.Destructive or ToolCategory.Financial => RuleAction.RequireApproval,
                ToolCategory.Other => RuleAction.Deny,
                _ => RuleAction.Allow,
            };
            Assert.Equal(expectedAction, t.Rule.Action);
        }
    }

    [Fact]
    public void Each_class_gets_its_rule()
    {
        var bytes = PolicySuggester.Suggest(
        [
            new ToolDefinition("get_flows"),
            new ToolDefinition("set_option"),
            new ToolDefinition("send_request"),
            new ToolDefinition("drop_flow"),
            new ToolDefinition("create_refund"),
            new ToolDefinition("aks", "Azure Kubernetes Service"),
            new ToolDefinition("get_flows", "listed twice"),
        ]);
        var text = Encoding.UTF8.GetString(bytes);
        Assert.StartsWith("{\n  \"version\": \"1\",\n  \"default\": \"deny\",", text, StringComparison.Ordinal);
        Assert.EndsWith("}\n", text, StringComparison.Ordinal);
        var tools = JsonNode.Parse(bytes)!["tools"]!.AsObject();
        Assert.Equal(6, tools.Count);
        Assert.Equal("""{"limits":[{"counter":"set_option_rate","window":"minute","max":30,"scope":"grant"}]}""", Without(tools["set_option"]!));
        Assert.Equal("""{"limits":[{"counter":"send_request_rate","window":"minute","max":10,"scope":"grant"}]}""", Without(tools["send_request"]!));
        Assert.Equal("""{"action":"require_approval"}""", Without(tools["drop_flow"]!));
        Assert.Equal("""{"action":"require_approval"}""", Without(tools["create_refund"]!));
        Assert.Equal($$"""{"action":"deny","reason":"{{PolicySuggester.ReviewReason}}"}""", Without(tools["aks"]!));
        Assert.Equal("{}", Without(tools["get_flows"]!));
    }

    private static string Without(JsonNode rule)
    {
        var copy = rule.DeepClone().AsObject();
        copy.Remove("description");
        return copy.ToJsonString();
    }

    private static string Compact(string json) => JsonNode.Parse(json)!.ToJsonString();

    internal static Dictionary<string, List<ToolDefinition>> FixtureServers()
    {
        using var doc = JsonDocument.Parse(File.ReadAllBytes(Repo.PathOf("tests", "Sidecar.Tests", "Catalogue", "fixtures", "servers.json")));
        var servers = new Dictionary<string, List<ToolDefinition>>(StringComparer.Ordinal);
        foreach (var server in doc.RootElement.GetProperty("servers").EnumerateArray())
        {
            servers[server.GetProperty("name").GetString()!] = server.GetProperty("tools").EnumerateArray()
                .Select(t => new ToolDefinition(t.GetProperty("name").GetString()!, t.GetProperty("description").GetString()))
                .ToList();
        }
        return servers;
    }
}
