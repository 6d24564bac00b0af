using Sidecar.Policy;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Catalogue;

/// <summary>The reviewed policies in <c>presets/</c>: one per server in notes/servers.md (mirrored by fixtures/servers.json).</summary>
public sealed class PresetTests
{
    public static TheoryData<string, int> Presets() => new()
    {
        { "mitmproxy-mcp", 25 },
        { "mitmproxy-addon", 20 },
        { "mcp-agent-proxy", 5 },
        { "mcp-server-icon", 5 },
    };

    [Theory]
    [MemberData(nameof(Presets))]
    public void Preset_compiles_and_names_exactly_the_servers_tools(string preset, int toolCount)
    {
        var model = PolicyCompiler.LoadFile(Repo.PathOf("presets", preset, "policy.json"), preset);
        var tools = PolicySuggesterTests.FixtureServers()[preset].Select(t => t.Name).ToArray();
        Assert.Equal(toolCount, tools.Length);
        Assert.Equal(PolicyDefault.Deny, model.Config.Default);
        var named = model.Config.Tools.Select(t => t.Tool).Concat(model.Config.Hide).ToHashSet(StringComparer.Ordinal);
        Assert.Equal(Array.Empty<string>(), tools.Where(t => !named.Contains(t)).ToArray());
        Assert.Equal(Array.Empty<string>(), named.Where(n => !tools.Contains(n)).ToArray());
        Assert.All(model.Config.Tools, t => Assert.False(string.IsNullOrWhiteSpace(t.Rule.Description), t.Tool));
    }

    [Theory]
    [MemberData(nameof(Presets))]
    public void Readme_mentions_every_tool(string preset, int toolCount)
    {
        var readme = File.ReadAllText(Repo.PathOf("presets", preset, "README.md"));
        var tools = PolicySuggesterTests.FixtureServers()[preset].Select(t => t.Name).ToArray();
        Assert.Equal(toolCount, tools.Length);
        Assert.Equal(Array.Empty<string>(), tools.Where(t => !readme.Contains($"`{t}`", StringComparison.Ordinal)).ToArray());
    }

    [Fact]
    public void There_is_a_preset_for_every_server_and_nothing_else()
    {
        var dirs = Directory.GetDirectories(Repo.PathOf("presets")).Select(Path.GetFileName).Order(StringComparer.Ordinal);
        Assert.Equal(PolicySuggesterTests.FixtureServers().Keys.Order(StringComparer.Ordinal), dirs);
    }
}
