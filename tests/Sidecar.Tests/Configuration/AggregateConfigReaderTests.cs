using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Tests.Configuration;

/// <summary><c>aggregate</c> in sidecar.json: which servers <c>/mcp</c> serves and the separator of its names.</summary>
public sealed class AggregateConfigReaderTests
{
    private static (SidecarConfig? Config, string Errors) Read(string fields, string servers = """ "a": { "command": "node" }, "b_x": { "command": "node" } """)
    {
        var json = $$"""{ "mcpServers": { {{servers}} }, "policy": "p.json" {{fields}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, _ => null);
        return (config, string.Join("\n", diagnostics.Items));
    }

    [Fact]
    public void By_default_every_server_is_aggregated_with_a_double_underscore()
    {
        var (config, errors) = Read("");
        Assert.True(config is not null, errors);
        Assert.Null(config.Aggregate.Servers);
        Assert.Equal("__", config.Aggregate.Separator);
        Assert.True(config.Aggregate.Includes("a"));
        Assert.True(config.Aggregate.Includes("b_x"));
    }

    [Fact]
    public void A_server_whose_name_holds_the_separator_is_left_out_unless_named()
    {
        var (config, errors) = Read("", servers: """ "a": { "command": "node" }, "b__x": { "command": "node" } """);
        Assert.True(config is not null, errors); // a valid config: it is only not aggregated
        Assert.True(config.Aggregate.Includes("a"));
        Assert.False(config.Aggregate.Includes("b__x"));

        (config, errors) = Read(""", "aggregate": { "servers": ["b__x"] }""", servers: """ "a": { "command": "node" }, "b__x": { "command": "node" } """);
        Assert.Null(config);
        Assert.Contains("$.aggregate.servers[0]", errors, StringComparison.Ordinal);
        Assert.Contains("contains the aggregated endpoint's separator", errors, StringComparison.Ordinal);
    }

    [Fact]
    public void Servers_and_separator_are_read()
    {
        var (config, errors) = Read(""", "aggregate": { "servers": ["b_x"], "separator": "." }""");
        Assert.True(config is not null, errors);
        Assert.Equal(["b_x"], config.Aggregate.Servers);
        Assert.Equal(".", config.Aggregate.Separator);
        Assert.False(config.Aggregate.Includes("a"));
        Assert.True(config.Aggregate.Includes("b_x"));
    }

    [Theory]
    [InlineData("""{ "servers": ["nope"] }""", "$.aggregate.servers[0]", "not in mcpServers")]
    [InlineData("""{ "servers": ["a", "a"] }""", "$.aggregate.servers[1]", "twice")]
    [InlineData("""{ "servers": "a" }""", "$.aggregate.servers", "must be an array")]
    [InlineData("""{ "separator": "" }""", "$.aggregate.separator", "invalid aggregate.separator")]
    [InlineData("""{ "separator": "/" }""", "$.aggregate.separator", "invalid aggregate.separator")]
    [InlineData("""{ "separator": "_________" }""", "$.aggregate.separator", "invalid aggregate.separator")]
    [InlineData("""{ "separator": "_" }""", "$.aggregate.servers", "")]
    [InlineData("""{ "prefix": "x" }""", "$.aggregate.prefix", "unknown field")]
    [InlineData("""[]""", "$.aggregate", "must be an object")]
    public void Mistakes_are_reported_with_their_path(string aggregate, string path, string message)
    {
        var (config, errors) = Read($", \"aggregate\": {aggregate}");
        if (message.Length == 0)
        {
            // "_" is a valid separator; "b_x" then holds it, and (not named) is simply left out.
            Assert.True(config is not null, errors);
            Assert.False(config.Aggregate.Includes("b_x"));
            return;
        }
        Assert.Null(config);
        Assert.Contains(path, errors, StringComparison.Ordinal);
        Assert.Contains(message, errors, StringComparison.Ordinal);
    }
}
