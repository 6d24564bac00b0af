using System.Text;
using Sidecar.Upstreams;

namespace Sidecar.Tests.Upstreams;

public class JsonRpcPeekTests
{
    private static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"result":{}}""", true)]
    [InlineData("""{"result":{"content":[]},"id":"a","jsonrpc":"2.0"}""", true)]
    [InlineData("""{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"x"}}""", true)]
    [InlineData("""{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":1,"progress":1}}""", false)]
    [InlineData("""{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage","params":{"result":1}}""", false)]
    [InlineData("""{"params":{"result":1},"jsonrpc":"2.0","method":"notifications/message"}""", false)]
    [InlineData("", false)]
    [InlineData("[]", false)]
    [InlineData("""{"jsonrpc":"2.0","id":1""", false)]
    public void IsResponse_finds_result_or_error_before_method(string json, bool expected) =>
        Assert.Equal(expected, JsonRpcPeek.IsResponse(Utf8(json)));

    [Fact]
    public void IsResponse_stops_at_result_without_reading_it_through()
    {
        // The result is cut off: only a reader that went through it would notice.
        Assert.True(JsonRpcPeek.IsResponse(Utf8("""{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"never end""")));
    }

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}""", true)]
    [InlineData("""{"method":"ping","jsonrpc":"2.0","id":"x"}""", true)]
    [InlineData("""{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"id":1}}""", false)]
    [InlineData("""{"jsonrpc":"2.0","id":1,"result":{}}""", false)]
    [InlineData("not json", false)]
    public void IsRequest_needs_both_method_and_id_at_the_top_level(string json, bool expected) =>
        Assert.Equal(expected, JsonRpcPeek.IsRequest(Utf8(json)));
}
