using System.Buffers;
using System.Text;
using Sidecar.Configuration;
using Sidecar.JsonRpc;
using Sidecar.Protocol;
using Sidecar.Sessions;
using Sidecar.Tests.TestSupport;
using static Sidecar.Tests.TestSupport.EngineHarness;

namespace Sidecar.Tests.Sessions;

/// <summary><see cref="SessionEngine.Check"/>: what is refused before any session sees it, and with which code.</summary>
public sealed class CheckTests
{
    private static readonly GatewayOptions Options = new(GatewayLimits.Default, BlockedCallStyle.Error);

    private static Refusal? Check(string json, GatewayOptions? options = null) => Check(Encoding.UTF8.GetBytes(json), options);

    private static Refusal? Check(byte[] body, GatewayOptions? options = null)
        => SessionEngine.Check(new ReadOnlySequence<byte>(body), options ?? Options, out _);

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping" """, "Parse error: Message is not valid JSON.")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping"} trailing""", "Parse error: Message is not valid JSON.")]
    [InlineData("not json at all", "Parse error: Message is not valid JSON.")]
    public void Malformed_JSON_is_refused_with_32700(string json, string message)
        => Assert.Equal(new Refusal(RefusalKind.Invalid, ErrorCodes.ParseError, message), Check(json));

    [Fact]
    public void Invalid_UTF8_is_refused_with_32700()
    {
        byte[] body = [.. """{"jsonrpc":"2.0","id":1,"method":"p"""u8, 0xC3, 0x28, .. "\"}"u8];
        Assert.Equal(new Refusal(RefusalKind.Invalid, ErrorCodes.ParseError, "Parse error: Message is not valid UTF-8."), Check(body));
    }

    [Theory]
    [InlineData("""{"jsonrpc":"1.0","id":1,"method":"ping"}""", "Invalid Request: Member 'jsonrpc' must be the string \"2.0\".")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}""", "Invalid Request: An object contains a duplicate property name.")]
    [InlineData("""{"jsonrpc":"2.0","id":null,"method":"ping"}""", "Invalid Request: A request id must not be null.")]
    [InlineData("""{"jsonrpc":"2.0","id":{"x":1},"method":"ping"}""", "Invalid Request: Member 'id' must be a string, a number or null.")]
    [InlineData("""[]""", "Invalid Request: Batch is empty.")]
    [InlineData("""42""", "Invalid Request: Message must be a JSON object or a batch array.")]
    public void An_invalid_request_is_refused_with_32600(string json, string message)
        => Assert.Equal(new Refusal(RefusalKind.Invalid, ErrorCodes.InvalidRequest, message), Check(json));

    [Fact]
    public async Task A_batch_of_non_objects_is_answered_element_by_element_as_JSON_RPC_says()
    {
        // JSON-RPC 2.0's own example: [1] is answered with one -32600 (id null) per element, not refused as a whole.
        Assert.Null(Check("[1,2]"));
        await using var h = EngineHarness.Create();
        var session = await h.OpenInitializedAsync(Sidecar.Protocol.McpProtocol.V20250326);
        var sink = new MessageSink(acceptsRelatedMessages: false);
        var (expected, refused) = await h.SendAsync(session, "[1,2]", sink);
        Assert.Null(refused);
        Assert.Equal(2, expected);
        for (var i = 0; i < 2; i++)
        {
            var answer = System.Text.Json.JsonDocument.Parse((await SessionHarness.ReadAsync(sink)).Payload).RootElement;
            Assert.Equal(System.Text.Json.JsonValueKind.Null, answer.GetProperty("id").ValueKind);
            Assert.Equal(ErrorCodes.InvalidRequest, answer.GetProperty("error").GetProperty("code").GetInt32());
        }
    }

    [Fact]
    public void A_message_over_maxMessageBytes_is_refused_as_too_large()
    {
        var big = Call(1, "echo", $$"""{"text":"{{new string('a', 1100)}}"}""");
        Assert.Equal(new Refusal(RefusalKind.TooLarge, ErrorCodes.InvalidRequest, "Invalid Request: Message exceeds the maximum size."), Check(big, Limit(1024)));
        var size = Encoding.UTF8.GetByteCount(big);
        Assert.Equal(RefusalKind.TooLarge, Check(big, Limit(size - 1))?.Kind);
        Assert.Null(Check(big, Limit(size)));
    }

    private static GatewayOptions Limit(int maxMessageBytes) => new(GatewayLimits.Default with { MaxMessageBytes = maxMessageBytes }, BlockedCallStyle.Error);

    [Fact]
    public void A_tools_call_sent_as_a_notification_is_refused_with_32600()
        => Assert.Equal(new Refusal(RefusalKind.Invalid, ErrorCodes.InvalidRequest, SessionMessages.CallAsNotification),
            Check("""{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{}}}"""));

    [Fact]
    public void Other_notifications_and_responses_pass()
    {
        Assert.Null(Check(Notification("notifications/initialized")));
        Assert.Null(Check("""{"jsonrpc":"2.0","id":"s-1","result":{"roots":[]}}"""));
        Assert.Null(Check("""{"jsonrpc":"2.0","id":"s-2","error":{"code":-1,"message":"no"}}"""));
    }

    [Fact]
    public async Task A_request_with_invalid_params_passes_Check_and_the_session_answers_32602_with_its_id()
    {
        var json = """{"jsonrpc":"2.0","id":"bad-params","method":"tools/call","params":{"name":42}}""";
        var body = new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(json));
        Assert.Null(SessionEngine.Check(body, Options, out var scan));
        Assert.Equal(ScanStatus.InvalidParams, scan.Status);
        Assert.Equal(JsonRpcMessageKind.Request, scan.Kind);

        await using var h = Create();
        var session = await h.OpenInitializedAsync();
        var sink = NewSink();
        var (expected, refused) = await h.Engine.ReceiveAsync(h.Engine.Current, session, body, scan, sink, CancellationToken.None);
        Assert.Null(refused);
        Assert.Equal(1, expected);
        var answer = await AnswerAsync(sink);
        Assert.Equal("\"bad-params\"", answer.GetProperty("id").GetRawText());
        Assert.Equal(ErrorCodes.InvalidParams, answer.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal("Invalid params: tools/call requires 'params.name' to be a string.", answer.GetProperty("error").GetProperty("message").GetString());
        Assert.Empty(h.Upstream.SentWith("tools/call"));
        Assert.Empty(h.AuditCalls());
    }

    [Fact]
    public void A_notification_with_invalid_params_is_refused_with_32602()
        => Assert.Equal(new Refusal(RefusalKind.Invalid, ErrorCodes.InvalidParams, "Invalid params: tools/call requires 'params' to be an object."),
            Check("""{"jsonrpc":"2.0","method":"tools/call"}"""));
}
