using System.Text;
using System.Text.Json;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Gateway;

public class ToolListFilterTests
{
    private static readonly Sidecar.Policy.PolicyModel Policy = Policies.Compile("""
        { "version": "1", "default": "allow", "hide": ["secret"], "tools": { "nope": { "action": "deny" }, "ask": { "action": "require_approval" } } }
        """);

    private static JsonElement Filter(string response, string rawId, out int removed)
    {
        var filtered = ToolListFilter.Filter(Encoding.UTF8.GetBytes(response), Policy, Encoding.UTF8.GetBytes(rawId), out removed);
        Assert.NotNull(filtered);
        return JsonDocument.Parse(filtered).RootElement.Clone();
    }

    [Fact]
    public void Hidden_and_denied_tools_are_removed_and_everything_else_kept()
    {
        var root = Filter("""
            {"jsonrpc":"2.0","id":7,"result":{"tools":[
              {"name":"a","inputSchema":{"type":"object"}},
              {"name":"secret","inputSchema":{"type":"object"}},
              {"name":"nope","inputSchema":{"type":"object"}},
              {"name":"ask","inputSchema":{"type":"object"}},
              {"name":5},
              {"description":"no name"},
              "not an object"
            ],"nextCursor":"page-2","_meta":{"x":1}}}
            """, "7", out var removed);
        var names = root.GetProperty("result").GetProperty("tools").EnumerateArray().Select(t => t.GetProperty("name").GetString()!).ToArray();
        Assert.Equal(new[] { "a", "ask" }, names);
        Assert.Equal(5, removed);
        Assert.Equal("page-2", root.GetProperty("result").GetProperty("nextCursor").GetString());
        Assert.Equal(1, root.GetProperty("result").GetProperty("_meta").GetProperty("x").GetInt32());
        Assert.Equal(7, root.GetProperty("id").GetInt32());
    }

    [Fact]
    public void Escaped_names_are_filtered_by_their_value()
    {
        var root = Filter("""{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"s\u0065cret"},{"name":"a"}]}}""", "1", out _);
        Assert.Single(root.GetProperty("result").GetProperty("tools").EnumerateArray());
    }

    [Fact]
    public void The_agents_own_id_is_written_back()
    {
        var root = Filter("""{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}""", "\"req-1\"", out _);
        Assert.Equal("req-1", root.GetProperty("id").GetString());
    }

    [Fact]
    public void A_response_without_a_tools_array_is_left_alone()
        => Assert.Null(ToolListFilter.Filter(Encoding.UTF8.GetBytes("""{"jsonrpc":"2.0","id":1,"result":{}}"""), Policy, "1"u8, out _));
}
