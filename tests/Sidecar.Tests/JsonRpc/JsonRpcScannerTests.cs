using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

public class JsonRpcScannerTests
{
    private const string ToolsCall =
        """{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"read_file","arguments":{"path":"/etc/hosts","n":[1,2,{"x":null}]},"_meta":{"progressToken":"t"}}}""";

    [Fact]
    public void Request_is_classified_with_all_ranges()
    {
        byte[] m = Utf8(ToolsCall);
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Null(s.Error);
        Assert.Equal(-1, s.ErrorOffset);
        Assert.Equal(JsonRpcMessageKind.Request, s.Kind);
        Assert.Equal(JsonRpcIdKind.Number, s.IdKind);
        Assert.Equal("7", Text(m, s.Id));
        Assert.Equal(McpMethod.ToolsCall, s.Method);
        Assert.Equal("\"tools/call\"", Text(m, s.MethodName));
        Assert.Equal("""{"name":"read_file","arguments":{"path":"/etc/hosts","n":[1,2,{"x":null}]},"_meta":{"progressToken":"t"}}""", Text(m, s.Params));
        Assert.Equal("\"read_file\"", Text(m, s.Name));
        Assert.False(s.NameEscaped);
        Assert.Equal("read_file", Name(m, s));
        Assert.Equal("""{"path":"/etc/hosts","n":[1,2,{"x":null}]}""", Text(m, s.Arguments));
        Assert.True(s.Uri.IsEmpty);
        Assert.Equal(0, s.BatchLength);
    }

    [Fact]
    public void Notification_is_classified()
    {
        JsonRpcScan s = Scan("""{"jsonrpc":"2.0","method":"notifications/initialized"}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Notification, s.Kind);
        Assert.Equal(JsonRpcIdKind.None, s.IdKind);
        Assert.True(s.Id.IsEmpty);
        Assert.Equal(McpMethod.NotificationsInitialized, s.Method);
        Assert.True(s.Params.IsEmpty);
    }

    [Fact]
    public void Response_and_error_response_are_classified()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","id":"abc","result":{"tools":[]}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Response, s.Kind);
        Assert.Equal("\"abc\"", Text(m, s.Id));
        Assert.Equal(McpMethod.None, s.Method);

        s = Scan("""{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"nope"}}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.ErrorResponse, s.Kind);

        s = Scan("""{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse"}}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.ErrorResponse, s.Kind);
        Assert.Equal(JsonRpcIdKind.Null, s.IdKind);

        s = Scan("""{"result":null,"id":0,"jsonrpc":"2.0"}""");
        Assert.Equal(JsonRpcMessageKind.Response, s.Kind);
    }

    [Theory]
    [InlineData("1", JsonRpcIdKind.Number)]
    [InlineData("0", JsonRpcIdKind.Number)]
    [InlineData("-42", JsonRpcIdKind.Number)]
    [InlineData("1.5", JsonRpcIdKind.Number)]
    [InlineData("-1.25e-7", JsonRpcIdKind.Number)]
    [InlineData("123456789012345678901234567890123456789", JsonRpcIdKind.Number)]
    [InlineData("\"\"", JsonRpcIdKind.String)]
    [InlineData("\"req-1\"", JsonRpcIdKind.String)]
    [InlineData("\"a\\\"b\\u0041\"", JsonRpcIdKind.String)]
    [InlineData("\"日本\"", JsonRpcIdKind.String)]
    public void Ids_have_kind_and_exact_raw_range(string id, JsonRpcIdKind kind)
    {
        byte[] m = Utf8($$"""{ "jsonrpc" : "2.0" , "id" :  {{id}}  , "method" : "ping" }""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(kind, s.IdKind);
        Assert.Equal(id, Text(m, s.Id));
        Assert.Equal(JsonRpcMessageKind.Request, s.Kind);
    }

    public static TheoryData<string, McpMethod> AllMethods => new()
    {
        { "initialize", McpMethod.Initialize },
        { "ping", McpMethod.Ping },
        { "server/discover", McpMethod.ServerDiscover },
        { "tools/list", McpMethod.ToolsList },
        { "tools/call", McpMethod.ToolsCall },
        { "prompts/list", McpMethod.PromptsList },
        { "prompts/get", McpMethod.PromptsGet },
        { "resources/list", McpMethod.ResourcesList },
        { "resources/templates/list", McpMethod.ResourcesTemplatesList },
        { "resources/read", McpMethod.ResourcesRead },
        { "resources/subscribe", McpMethod.ResourcesSubscribe },
        { "resources/unsubscribe", McpMethod.ResourcesUnsubscribe },
        { "completion/complete", McpMethod.CompletionComplete },
        { "logging/setLevel", McpMethod.LoggingSetLevel },
        { "sampling/createMessage", McpMethod.SamplingCreateMessage },
        { "elicitation/create", McpMethod.ElicitationCreate },
        { "roots/list", McpMethod.RootsList },
        { "tasks/get", McpMethod.TasksGet },
        { "tasks/list", McpMethod.TasksList },
        { "tasks/result", McpMethod.TasksResult },
        { "tasks/cancel", McpMethod.TasksCancel },
        { "tasks/update", McpMethod.TasksUpdate },
        { "subscriptions/listen", McpMethod.SubscriptionsListen },
        { "notifications/initialized", McpMethod.NotificationsInitialized },
        { "notifications/cancelled", McpMethod.NotificationsCancelled },
        { "notifications/progress", McpMethod.NotificationsProgress },
        { "notifications/message", McpMethod.NotificationsMessage },
        { "notifications/roots/list_changed", McpMethod.NotificationsRootsListChanged },
        { "notifications/tools/list_changed", McpMethod.NotificationsToolsListChanged },
        { "notifications/prompts/list_changed", McpMethod.NotificationsPromptsListChanged },
        { "notifications/resources/list_changed", McpMethod.NotificationsResourcesListChanged },
        { "notifications/resources/updated", McpMethod.NotificationsResourcesUpdated },
        { "notifications/elicitation/complete", McpMethod.NotificationsElicitationComplete },
        { "notifications/tasks/status", McpMethod.NotificationsTasksStatus },
    };

    [Theory]
    [MemberData(nameof(AllMethods))]
    public void Every_known_method_maps_plain_and_fully_escaped(string method, McpMethod expected)
    {
        Assert.Equal(expected, Scan($$$"""{"jsonrpc":"2.0","id":1,"method":"{{{method}}}","params":{"name":"x"}}""").Method);
        string escaped = string.Concat(method.Select(c => $"\\u{(int)c:x4}"));
        Assert.Equal(expected, Scan($$$"""{"jsonrpc":"2.0","id":1,"method":"{{{escaped}}}","params":{"name":"x"}}""").Method);
        Assert.Equal(expected, McpMethods.Parse(Utf8(method)));
        Assert.Equal(method, McpMethods.GetName(expected));
    }

    [Fact]
    public void Method_table_covers_every_enum_value()
    {
        HashSet<McpMethod> covered = [.. AllMethods.Select(row => (McpMethod)row[1])];
        foreach (McpMethod m in Enum.GetValues<McpMethod>())
        {
            Assert.True(m is McpMethod.None or McpMethod.Other || covered.Contains(m), m.ToString());
        }

        Assert.Null(McpMethods.GetName(McpMethod.Other));
        Assert.Null(McpMethods.GetName(McpMethod.None));
    }

    [Theory]
    [InlineData("\"tools\\/call\"", McpMethod.ToolsCall)]
    [InlineData("\"tools\\u002fcall\"", McpMethod.ToolsCall)]
    [InlineData("\"tools\\u002Fcall\"", McpMethod.ToolsCall)]
    [InlineData("\"\\u0074ools/call\"", McpMethod.ToolsCall)]
    [InlineData("\"Tools/Call\"", McpMethod.Other)]
    [InlineData("\"TOOLS/CALL\"", McpMethod.Other)]
    [InlineData("\"tools/call \"", McpMethod.Other)]
    [InlineData("\" tools/call\"", McpMethod.Other)]
    [InlineData("\"tools/call\\u0000\"", McpMethod.Other)]
    [InlineData("\"tools//call\"", McpMethod.Other)]
    [InlineData("\"\"", McpMethod.Other)]
    [InlineData("\"rpc.discover\"", McpMethod.Other)]
    [InlineData("\"ping\\n\"", McpMethod.Other)]
    public void Method_matching_uses_unescaped_case_sensitive_text(string method, McpMethod expected)
    {
        byte[] m = Utf8($$$"""{"jsonrpc":"2.0","id":1,"method":{{{method}}},"params":{"name":"n"}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(expected, s.Method);
        Assert.Equal(method, Text(m, s.MethodName));
    }

    [Fact]
    public void Long_escaped_method_is_other()
    {
        string method = string.Concat(Enumerable.Repeat("\\u0061", 500));
        JsonRpcScan s = Scan($$"""{"jsonrpc":"2.0","id":1,"method":"{{method}}"}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(McpMethod.Other, s.Method);
    }

    [Theory]
    [InlineData("\"2\\u002e0\"")]
    [InlineData("\"\\u0032.0\"")]
    [InlineData("\"2.0\"")]
    public void Jsonrpc_version_may_be_escaped(string version)
        => Assert.Equal(ScanStatus.Ok, Scan($$"""{"jsonrpc":{{version}},"method":"ping","id":1}""").Status);

    [Theory]
    [InlineData("""{"method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":"1.0","method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":"2.0 ","method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":"2","method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":2.0,"method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":null,"method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":["2.0"],"method":"ping","id":1}""")]
    [InlineData("""{"JSONRPC":"2.0","method":"ping","id":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":1,"id":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":null,"id":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":{"a":1},"id":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":true}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":{}}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":[1]}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":null}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":1,"params":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":1,"params":"x"}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":1,"params":null}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","id":1,"result":1}""")]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","error":{}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"result":1,"error":{}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1}""")]
    [InlineData("""{"jsonrpc":"2.0"}""")]
    [InlineData("""{"jsonrpc":"2.0","result":1}""")]
    [InlineData("""{"jsonrpc":"2.0","id":true,"result":1}""")]
    [InlineData("""{}""")]
    public void Envelope_violations_are_invalid_request(string json)
    {
        JsonRpcScan s = Scan(json);
        Assert.Equal(ScanStatus.InvalidRequest, s.Status);
        Assert.Equal(JsonRpcMessageKind.Invalid, s.Kind);
        Assert.NotNull(s.Error);
        Assert.InRange(s.ErrorOffset, 0, json.Length - 1);
    }

    [Fact]
    public void Invalid_request_keeps_the_id_for_the_error_response()
    {
        byte[] m = Utf8("""{"jsonrpc":"1.0","method":"ping","id":"x-1"}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.InvalidRequest, s.Status);
        Assert.Equal(JsonRpcIdKind.String, s.IdKind);
        Assert.Equal("\"x-1\"", Text(m, s.Id));
        Assert.Equal(m.AsSpan().IndexOf("\"1.0\""u8), s.ErrorOffset);
    }

    [Fact]
    public void Unknown_members_are_ignored()
    {
        JsonRpcScan s = Scan("""{"x":{"method":"tools/call","id":[]},"jsonrpc":"2.0","method":"ping","id":1,"params":[1,{"name":5}],"extra":[{"result":1}]}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Request, s.Kind);
        Assert.Equal(McpMethod.Ping, s.Method);
        Assert.True(s.Name.IsEmpty);
    }

    [Fact]
    public void Array_params_are_recorded_but_not_searched()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","method":"x","id":1,"params":[{"name":"n","arguments":{}}]}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal("""[{"name":"n","arguments":{}}]""", Text(m, s.Params));
        Assert.True(s.Name.IsEmpty);
        Assert.True(s.Arguments.IsEmpty);
    }

    [Fact]
    public void Uri_is_extracted()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","method":"resources/read","id":1,"params":{"uri":"file:///a\/b"}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(McpMethod.ResourcesRead, s.Method);
        Assert.Equal("\"file:///a\\/b\"", Text(m, s.Uri));

        s = Scan("""{"jsonrpc":"2.0","method":"resources/read","id":1,"params":{"uri":{"a":1}}}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.True(s.Uri.IsEmpty);
    }

    [Fact]
    public void Name_of_other_methods_is_extracted_when_a_string()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","method":"prompts/get","id":1,"params":{"arguments":{"a":"b"},"name":"greet"}}""");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal("greet", Name(m, s));
        Assert.Equal("""{"a":"b"}""", Text(m, s.Arguments));

        s = Scan("""{"jsonrpc":"2.0","method":"prompts/get","id":1,"params":{"name":7,"arguments":[1]}}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.True(s.Name.IsEmpty);
        Assert.True(s.Arguments.IsEmpty);
    }

    [Fact]
    public void Options_validate_their_values()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new JsonRpcScannerOptions { MaxDepth = 0 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new JsonRpcScannerOptions { MaxMessageBytes = -1 });
        Assert.Throws<ArgumentOutOfRangeException>(() => new JsonRpcScannerOptions { MaxBatchLength = -1 });
        JsonRpcScannerOptions d = JsonRpcScannerOptions.Default;
        Assert.Equal(4 * 1024 * 1024, d.MaxMessageBytes);
        Assert.Equal(64, d.MaxDepth);
        Assert.Equal(100, d.MaxBatchLength);
        Assert.Equal(ScanStatus.Ok, Scan("""{"jsonrpc":"2.0","method":"ping"}""", new JsonRpcScannerOptions { MaxDepth = int.MaxValue }).Status);
    }
}
