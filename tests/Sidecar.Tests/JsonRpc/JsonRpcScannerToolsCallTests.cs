using System.Buffers;
using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

public class JsonRpcScannerToolsCallTests
{
    [Fact]
    public void Escaped_name_is_flagged_and_unescaped_by_TryCopyName()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"start\u005fproxy","arguments":{}}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.True(s.NameEscaped);
        Assert.Equal("\"start\\u005fproxy\"", Text(m, s.Name));
        Assert.Equal("start_proxy", Name(m, s));
        ReadOnlySequence<byte> sequence = Split(m, 40, 62, 70);
        Span<char> buffer = stackalloc char[32];
        Assert.True(JsonRpcScanner.TryCopyName(sequence, s, buffer, out int written));
        Assert.Equal("start_proxy", new string(buffer[..written]));
    }

    [Theory]
    [InlineData("\"read_file\"", "read_file")]
    [InlineData("\"\"", "")]
    [InlineData("\"\\\"q\\\\\"", "\"q\\")]
    [InlineData("\"caf\\u00e9 \\ud83d\\ude00\"", "café 😀")]
    [InlineData("\"日本語\"", "日本語")]
    [InlineData("\"\\/\\b\\f\\n\\r\\t\"", "/\b\f\n\r\t")]
    public void TryCopyName_unescapes(string token, string expected)
    {
        byte[] m = Utf8($$$"""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{{{token}}}}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(expected, Name(m, s));
        Span<char> buffer = stackalloc char[64];
        for (int cut = 0; cut <= m.Length; cut++)
        {
            Assert.True(JsonRpcScanner.TryCopyName(Split(m, cut), s, buffer, out int written));
            Assert.Equal(expected, new string(buffer[..written]));
        }
    }

    [Fact]
    public void TryCopyName_fails_without_name_or_room()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read_file"}}""");
        JsonRpcScan s = Scan(m);
        Span<char> small = stackalloc char[8];
        Assert.False(JsonRpcScanner.TryCopyName(m, s, small, out int written));
        Assert.Equal(0, written);
        Span<char> exact = stackalloc char[9];
        Assert.True(JsonRpcScanner.TryCopyName(m, s, exact, out written));
        Assert.Equal(9, written);

        byte[] e = Utf8("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"read\u005ffile"}}""");
        JsonRpcScan se = Scan(e);
        Assert.False(JsonRpcScanner.TryCopyName(e, se, small, out written));
        Assert.True(JsonRpcScanner.TryCopyName(e, se, exact, out written));
        Assert.Equal("read_file", new string(exact[..written]));

        JsonRpcScan none = Scan("""{"jsonrpc":"2.0","id":1,"method":"ping"}""");
        Assert.False(JsonRpcScanner.TryCopyName(m, none, exact, out _));
    }

    [Fact]
    public void Long_escaped_name_uses_pooled_buffers()
    {
        string name = string.Concat(Enumerable.Repeat("ab\\u0063", 200));
        byte[] m = Utf8($$$"""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"{{{name}}}"}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        string expected = string.Concat(Enumerable.Repeat("abc", 200));
        Assert.Equal(expected, Name(m, s) ?? NameLarge(m, s));
        char[] buffer = new char[1000];
        Assert.True(JsonRpcScanner.TryCopyName(Chunks(m, 7), s, buffer, out int written));
        Assert.Equal(expected, new string(buffer, 0, written));

        static string? NameLarge(byte[] m, JsonRpcScan s)
        {
            char[] buffer = new char[1000];
            return JsonRpcScanner.TryCopyName(m, s, buffer, out int written) ? new string(buffer, 0, written) : null;
        }
    }

    [Fact]
    public void Arguments_before_name_and_params_before_method()
    {
        byte[] m = Utf8("""{"params":{"arguments":{"cmd":"rm -rf /","name":"decoy"},"name":"shell"},"id":"z","method":"tools/call","jsonrpc":"2.0"}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Request, s.Kind);
        Assert.Equal(McpMethod.ToolsCall, s.Method);
        Assert.Equal("shell", Name(m, s));
        Assert.Equal("""{"cmd":"rm -rf /","name":"decoy"}""", Text(m, s.Arguments));
        Assert.Equal("""{"arguments":{"cmd":"rm -rf /","name":"decoy"},"name":"shell"}""", Text(m, s.Params));
    }

    [Fact]
    public void Nested_name_members_do_not_count()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"name":"decoy"},"arguments":{"params":{"name":"x"}},"name":"real"}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal("real", Name(m, s));

        // Only a nested name: the call has no name at all.
        s = Scan("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"name":"decoy"}}}""");
        Assert.Equal(ScanStatus.InvalidParams, s.Status);
    }

    [Fact]
    public void Empty_arguments_and_whitespace_ranges_are_exact()
    {
        byte[] m = Utf8("""{ "jsonrpc" : "2.0", "id" : 1, "method" : "tools/call", "params" : { "name" : "n" , "arguments" : { } } }""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal("{ }", Text(m, s.Arguments));
        Assert.Equal("""{ "name" : "n" , "arguments" : { } }""", Text(m, s.Params));
        Assert.Equal("\"n\"", Text(m, s.Name));
    }

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":["read_file",{}]}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":null}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":1}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["read_file"]}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":{"v":"read_file"}}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":"{}"}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":null}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"arguments":{},"Name":"x"}}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"tools/call","params":{"arguments":{}}}""")]
    public void Bad_tools_call_params_are_invalid_params(string json)
    {
        JsonRpcScan s = Scan(json);
        Assert.Equal(ScanStatus.InvalidParams, s.Status);
        Assert.NotEqual(JsonRpcMessageKind.Invalid, s.Kind);
        Assert.Equal(McpMethod.ToolsCall, s.Method);
        Assert.InRange(s.ErrorOffset, 0, json.Length - 1);
    }

    [Fact]
    public void Tools_call_as_notification_exposes_its_name()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_everything","arguments":{"really":true}}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Notification, s.Kind);
        Assert.Equal(McpMethod.ToolsCall, s.Method);
        Assert.Equal("delete_everything", Name(m, s));
        Assert.Equal("""{"really":true}""", Text(m, s.Arguments));

        JsonRpcScan bad = Scan("""{"jsonrpc":"2.0","method":"tools/call","params":{"name":3}}""");
        Assert.Equal(ScanStatus.InvalidParams, bad.Status);
        Assert.Equal(JsonRpcMessageKind.Notification, bad.Kind);
    }

    [Fact]
    public void Escaped_member_names_are_recognised()
    {
        byte[] m = Utf8("""{"\u006asonrpc":"2.0","i\u0064":1,"me\u0074hod":"tools/call","param\u0073":{"n\u0061me":"x","argument\u0073":{"k":1}}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Request, s.Kind);
        Assert.Equal("x", Name(m, s));
        Assert.Equal("""{"k":1}""", Text(m, s.Arguments));
    }
}
