using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// Sidecar at the HTTP level, with hand-made bodies an SDK would never send. What reaches the upstream is checked at
/// the upstream: the stdio server runs behind a wrapper that records every line it receives.
/// </summary>
public sealed class GatewayHttpTests(GatewayFixture fixture) : IClassFixture<GatewayFixture>, IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    private static string Marker() => "m-" + Guid.NewGuid().ToString("N");

    private bool UpstreamSaw(string marker) => fixture.RecordedLines().Any(line => line.Contains(marker, StringComparison.Ordinal));

    /// <summary>An initialized Streamable HTTP session opened by hand.</summary>
    private Task<string> OpenSessionAsync(string server = "stdio", string version = "2025-06-18") => RawMcp.OpenSessionAsync(_http, fixture.Sidecar.McpUrl(server), version);

    /// <summary>A session in the one protocol version with JSON-RPC batches.</summary>
    private Task<string> OpenBatchSessionAsync() => OpenSessionAsync(version: "2025-03-26");

    private Task<HttpResponseMessage> PostAsync(string server, string body, string? session,
        string contentType = "application/json", string accept = "application/json, text/event-stream", Action<HttpRequestMessage>? configure = null)
        => RawMcp.PostAsync(_http, fixture.Sidecar.McpUrl(server), body, session, contentType, accept, configure);

    /// <summary>
    /// The JSON-RPC messages of a response: one JSON body, a JSON array, or the data of SSE events. Session-wide
    /// notifications the server may send meanwhile (e.g. tools/list_changed) are left out unless asked for.
    /// </summary>
    private static async Task<List<JsonElement>> MessagesAsync(HttpResponseMessage response, bool withNotifications = false)
    {
        var text = await response.Content.ReadAsStringAsync();
        var result = new List<JsonElement>();
        if (response.Content.Headers.ContentType?.MediaType == "text/event-stream")
        {
            foreach (var line in text.Split('\n'))
            {
                if (line.StartsWith("data: ", StringComparison.Ordinal))
                {
                    var message = JsonDocument.Parse(line[6..]).RootElement.Clone();
                    if (withNotifications || message.TryGetProperty("id", out _))
                    {
                        result.Add(message);
                    }
                }
            }
            return result;
        }
        var root = JsonDocument.Parse(text).RootElement.Clone();
        if (root.ValueKind == JsonValueKind.Array)
        {
            result.AddRange(root.EnumerateArray());
        }
        else
        {
            result.Add(root);
        }
        return result;
    }

    private static int ErrorCode(JsonElement message) => message.GetProperty("error").GetProperty("code").GetInt32();

    private static string Call(object id, string tool, string arguments)
        => "{\"jsonrpc\":\"2.0\",\"id\":" + JsonSerializer.Serialize(id) + ",\"method\":\"tools/call\",\"params\":{\"name\":\"" + tool + "\",\"arguments\":" + arguments + "}}";

    [Fact]
    public async Task Allowed_call_reaches_the_upstream_exactly_once()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        using var response = await PostAsync("stdio", Call(1, "echo", $$"""{"message":"{{marker}}"}"""), session);
        var messages = await MessagesAsync(response);
        Assert.Contains(marker, messages.Single().GetProperty("result").GetRawText(), StringComparison.Ordinal);
        Assert.Single(fixture.RecordedLines(), line => line.Contains(marker, StringComparison.Ordinal));
    }

    [Fact]
    public async Task A_call_without_arguments_is_decided_on_an_empty_object()
    {
        var session = await OpenSessionAsync();
        var id = Random.Shared.Next(100_000, 999_999);
        // get-sum's rule is deny_if args.a > 100: with no arguments nothing matches, so the server gets the call.
        using var response = await PostAsync("stdio", "{\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"method\":\"tools/call\",\"params\":{\"name\":\"get-sum\"}}", session);
        var message = (await MessagesAsync(response)).Single();
        var code = message.TryGetProperty("error", out var error) ? error.GetProperty("code").GetInt32() : 0;
        Assert.True(code is not (-32010 or -32014), message.GetRawText());
        Assert.Contains(fixture.RecordedLines(), line => line.Contains($"\"id\":{id},", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Duplicate_name_keys_are_refused_before_the_upstream()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var body = """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","name":"get-env","arguments":{"message":"MARKER"}}}""".Replace("MARKER", marker, StringComparison.Ordinal);
        using var response = await PostAsync("stdio", body, session);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(-32600, ErrorCode((await MessagesAsync(response)).Single()));
        Assert.False(UpstreamSaw(marker));
    }

    [Fact]
    public async Task Duplicate_keys_deep_inside_arguments_are_refused()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var body = """{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":1,"b":2,"x":{"m":"MARKER","m":1},"a":500}}}""".Replace("MARKER", marker, StringComparison.Ordinal);
        using var response = await PostAsync("stdio", body, session);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.False(UpstreamSaw(marker));
    }

    [Theory]
    [InlineData("get\\u002denv")]
    [InlineData("get-\\u0065nv")]
    [InlineData("\\u0067\\u0065\\u0074\\u002d\\u0065\\u006e\\u0076")]
    public async Task Escaped_names_are_decided_on_what_the_upstream_would_read(string escapedName)
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        using var response = await PostAsync("stdio", Call(4, escapedName, $$"""{"m":"{{marker}}"}"""), session);
        var message = (await MessagesAsync(response)).Single();
        Assert.Equal(-32010, ErrorCode(message));
        Assert.Equal("hide", message.GetProperty("error").GetProperty("data").GetProperty("rule").GetString());
        Assert.False(UpstreamSaw(marker));
    }

    [Fact]
    public async Task A_denied_call_inside_a_batch_is_answered_but_never_forwarded()
    {
        var session = await OpenBatchSessionAsync();
        var allowed = Marker();
        var denied = Marker();
        var batch = $"[{Call(5, "echo", $$"""{"message":"{{allowed}}"}""")},{Call(6, "get-tiny-image", $$"""{"m":"{{denied}}"}""")}]";
        using var response = await PostAsync("stdio", batch, session);
        var messages = await MessagesAsync(response);
        Assert.Equal(2, messages.Count);
        var byId = messages.ToDictionary(m => m.GetProperty("id").GetInt32());
        Assert.Contains(allowed, byId[5].GetProperty("result").GetRawText(), StringComparison.Ordinal);
        Assert.Equal(-32010, ErrorCode(byId[6]));
        Assert.True(UpstreamSaw(allowed));
        Assert.False(UpstreamSaw(denied));
        Assert.DoesNotContain(fixture.RecordedLines(), line => line.TrimStart().StartsWith('['));
    }

    [Fact]
    public async Task A_call_sent_as_a_notification_never_runs()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var body = """{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"message":"MARKER"}}}""".Replace("MARKER", marker, StringComparison.Ordinal);
        using var response = await PostAsync("stdio", body, session);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var batch = """[{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo","arguments":{"message":"MARKER"}}}]""".Replace("MARKER", marker, StringComparison.Ordinal);
        using var inBatch = await PostAsync("stdio", batch, await OpenBatchSessionAsync());
        Assert.Equal(HttpStatusCode.Accepted, inBatch.StatusCode);
        Assert.False(UpstreamSaw(marker));
    }

    [Theory]
    [InlineData("2025-06-18")]
    [InlineData("2025-11-25")]
    public async Task A_batch_is_refused_in_a_session_whose_version_has_no_batches(string version)
    {
        var session = await OpenSessionAsync(version: version);
        var marker = Marker();
        using var response = await PostAsync("stdio", $"[{Call(5, "echo", $$"""{"message":"{{marker}}"}""")}]", session);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        var error = (await MessagesAsync(response)).Single().GetProperty("error");
        Assert.Equal(-32600, error.GetProperty("code").GetInt32());
        Assert.Contains("batches", error.GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(UpstreamSaw(marker));
    }

    [Fact]
    public async Task Newlines_in_a_body_cannot_smuggle_a_second_message_to_a_stdio_server()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        // Pretty-printed JSON whose arguments hold, on lines of their own, a complete call of a hidden tool: a server
        // splitting on newlines would run it if the gateway forwarded the newlines.
        var body = "{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"message\":\"" + marker + "\",\"x\":\n" +
                   "{\"jsonrpc\":\"2.0\",\"id\":99,\"method\":\"tools/call\",\"params\":{\"name\":\"get-env\",\"arguments\":{}}}\n}}}";
        using var response = await PostAsync("stdio", body, session);
        var message = (await MessagesAsync(response)).Single();
        Assert.Contains(marker, message.GetProperty("result").GetRawText(), StringComparison.Ordinal);
        var lines = fixture.RecordedLines().Where(l => l.Contains(marker, StringComparison.Ordinal) || l.Contains("\"id\":99", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(lines);
        Assert.StartsWith("{\"jsonrpc\":\"2.0\",\"id\":7", line, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"", -32700)]
    [InlineData("{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",}}", -32700)]
    [InlineData("{\"jsonrpc\":\"1.0\",\"id\":8,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\"}}", -32600)]
    [InlineData("[]", -32600)]
    [InlineData("42", -32600)]
    public async Task Malformed_bodies_get_json_rpc_errors(string body, int code)
    {
        var session = await OpenSessionAsync();
        using var response = await PostAsync("stdio", body, session);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Equal(code, ErrorCode((await MessagesAsync(response)).Single()));
    }

    [Fact]
    public async Task Invalid_utf8_and_deep_nesting_are_refused()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var bytes = Encoding.UTF8.GetBytes(Call(9, "echo", "{\"message\":\"" + marker + "\u00ff\"}")).ToList();
        var index = bytes.IndexOf(0xC3);
        bytes[index] = 0xFF; // an invalid UTF-8 lead byte
        using var request = new HttpRequestMessage(HttpMethod.Post, fixture.Sidecar.McpUrl("stdio")) { Content = new ByteArrayContent([.. bytes]) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
        request.Headers.Add("Mcp-Session-Id", session);
        using var invalid = await _http.SendAsync(request);
        Assert.Equal(HttpStatusCode.BadRequest, invalid.StatusCode);

        var deep = string.Concat(Enumerable.Repeat("{\"a\":", 100)) + "1" + new string('}', 100);
        using var nested = await PostAsync("stdio", Call(10, "echo", $$"""{"message":"{{marker}}","deep":{{deep}}}"""), session);
        Assert.Equal(HttpStatusCode.BadRequest, nested.StatusCode);
        Assert.Equal(-32600, ErrorCode((await MessagesAsync(nested)).Single()));
        Assert.False(UpstreamSaw(marker));
    }

    [Fact]
    public async Task Oversize_bodies_are_refused()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var body = Call(11, "echo", $$"""{"message":"{{marker}}","pad":"{{new string('x', 70_000)}}"}""");
        using var response = await PostAsync("stdio", body, session);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, response.StatusCode);
        Assert.False(UpstreamSaw(marker));
    }

    [Theory]
    [InlineData("stdio")]
    [InlineData("sse")]
    [InlineData("http")]
    public async Task Every_progress_notification_reaches_the_agent_before_the_result(string server)
    {
        var session = await OpenSessionAsync(server);
        var body = """{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"trigger-long-running-operation","arguments":{"duration":0.6,"steps":3},"_meta":{"progressToken":"tok-1"}}}""";
        using var response = await PostAsync(server, body, session);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        var all = await MessagesAsync(response, withNotifications: true);
        // Session-wide notifications (e.g. tools/list_changed) may share the stream; the call's own traffic is what counts.
        var messages = all.Where(m => !m.TryGetProperty("method", out var method) || method.GetString() == "notifications/progress").ToList();
        Assert.True(4 == messages.Count, string.Join("\n", all.Select(m => m.GetRawText())));
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal("notifications/progress", messages[i].GetProperty("method").GetString());
            Assert.Equal(i + 1, messages[i].GetProperty("params").GetProperty("progress").GetInt32());
            Assert.Equal("tok-1", messages[i].GetProperty("params").GetProperty("progressToken").GetString());
        }
        Assert.Equal(12, messages[3].GetProperty("id").GetInt32());
    }

    [Fact]
    public async Task String_and_numeric_ids_are_echoed_verbatim()
    {
        var session = await OpenSessionAsync();
        using var text = await PostAsync("stdio", Call("req-\u00e9-1", "echo", """{"message":"a"}"""), session);
        Assert.Equal("req-\u00e9-1", (await MessagesAsync(text)).Single().GetProperty("id").GetString());
        using var big = await PostAsync("stdio", """{"jsonrpc":"2.0","id":12345678901,"method":"ping"}""", session);
        Assert.Contains("\"id\":12345678901", await big.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_reused_id_in_flight_is_refused()
    {
        var session = await OpenSessionAsync();
        var marker = Marker();
        var slow = PostAsync("stdio", """{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"name":"trigger-long-running-operation","arguments":{"duration":1,"steps":1},"_meta":{"progressToken":""" + "\"" + marker + "\"}}}", session);
        // Once the upstream has the first call, the gateway holds id 77 as in flight (it is registered before forwarding).
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!UpstreamSaw(marker))
        {
            Assert.True(DateTime.UtcNow < deadline, "the upstream never received the first call");
            await Task.Delay(20);
        }
        using var second = await PostAsync("stdio", Call(77, "echo", """{"message":"again"}"""), session);
        Assert.Equal(-32600, ErrorCode((await MessagesAsync(second)).Single()));
        using var first = await slow;
        Assert.Contains("completed", await first.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Http_level_errors()
    {
        using (var unknownServer = await PostAsync("nope", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", null))
        {
            Assert.Equal(HttpStatusCode.NotFound, unknownServer.StatusCode);
        }
        using (var unknownSession = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", "0123456789abcdef0123456789abcdef"))
        {
            Assert.Equal(HttpStatusCode.NotFound, unknownSession.StatusCode);
        }
        using (var noSession = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", null))
        {
            Assert.Equal(HttpStatusCode.BadRequest, noSession.StatusCode);
        }
        using (var wrongType = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", null, contentType: "text/plain"))
        {
            Assert.Equal(HttpStatusCode.UnsupportedMediaType, wrongType.StatusCode);
        }
        using (var wrongAccept = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", null, accept: "text/html"))
        {
            Assert.Equal(HttpStatusCode.NotAcceptable, wrongAccept.StatusCode);
        }
        using (var badVersion = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", await OpenSessionAsync(),
                   configure: r => r.Headers.Add("MCP-Protocol-Version", "1999-01-01")))
        {
            Assert.Equal(HttpStatusCode.BadRequest, badVersion.StatusCode);
        }
    }

    [Theory]
    [InlineData("Origin", "http://evil.example")]
    [InlineData("Origin", "null")]
    [InlineData("Host", "evil.example")]
    [InlineData("Host", "rebind.127.0.0.1.nip.io:8787")]
    public async Task Dns_rebinding_is_refused(string header, string value)
    {
        using var response = await PostAsync("stdio",
            """{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}""",
            null, configure: r =>
            {
                if (header == "Host")
                {
                    r.Headers.Host = value;
                }
                else
                {
                    r.Headers.Add(header, value);
                }
            });
        Assert.Equal(HttpStatusCode.Forbidden, response.StatusCode);
    }

    [Fact]
    public async Task Loopback_origins_are_accepted()
    {
        using var response = await PostAsync("stdio",
            """{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}""",
            null, configure: r => r.Headers.Add("Origin", "http://localhost:3000"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Fact]
    public async Task A_second_GET_stream_on_a_session_gets_409_while_the_first_is_open()
    {
        var session = await OpenSessionAsync();
        HttpRequestMessage Get()
        {
            var request = new HttpRequestMessage(HttpMethod.Get, fixture.Sidecar.McpUrl("stdio"));
            request.Headers.Add("Mcp-Session-Id", session);
            request.Headers.TryAddWithoutValidation("Accept", "text/event-stream");
            return request;
        }
        using var firstRequest = Get();
        using var first = await _http.SendAsync(firstRequest, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, first.StatusCode);
        Assert.Equal("text/event-stream", first.Content.Headers.ContentType?.MediaType);

        using var secondRequest = Get();
        using var second = await _http.SendAsync(secondRequest);
        Assert.Equal(HttpStatusCode.Conflict, second.StatusCode);
        Assert.Contains("only one stream per session", await second.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Deleting_a_session_ends_it()
    {
        var session = await OpenSessionAsync();
        using var delete = new HttpRequestMessage(HttpMethod.Delete, fixture.Sidecar.McpUrl("stdio"));
        delete.Headers.Add("Mcp-Session-Id", session);
        using (var deleted = await _http.SendAsync(delete))
        {
            Assert.Equal(HttpStatusCode.OK, deleted.StatusCode);
        }
        using var after = await PostAsync("stdio", """{"jsonrpc":"2.0","id":1,"method":"ping"}""", session);
        Assert.Equal(HttpStatusCode.NotFound, after.StatusCode);
    }

    [Fact]
    public async Task A_crashed_stdio_server_gives_a_clear_error_and_is_respawned()
    {
        // "crashy" dies right after receiving its 4th line: initialize, initialized, call 1, call 2.
        var session = await OpenSessionAsync("crashy");
        using (var first = await PostAsync("crashy", Call(1, "echo", """{"message":"one"}"""), session))
        {
            Assert.Contains("one", await first.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using (var second = await PostAsync("crashy", Call(2, "echo", """{"message":"two"}"""), session))
        {
            var message = (await MessagesAsync(second)).Single();
            Assert.True(message.TryGetProperty("error", out _), message.GetRawText() + "\n" + string.Join("\n", File.ReadAllLines(fixture.CrashRecordFile)));
            Assert.Equal(-32016, ErrorCode(message));
            Assert.Contains("went away", message.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        }
        // The next call respawns the server and replays the agent's initialize before forwarding.
        using (var third = await PostAsync("crashy", Call(3, "echo", """{"message":"three"}"""), session))
        {
            Assert.Contains("three", await third.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        var lines = File.ReadAllLines(fixture.CrashRecordFile);
        Assert.Equal(2, lines.Count(l => l.Contains("\"method\":\"initialize\"", StringComparison.Ordinal)));
        Assert.Contains(lines, l => l.Contains("sidecar-reinitialize-1", StringComparison.Ordinal));
    }

    [Fact]
    public async Task An_unreachable_upstream_gives_a_clear_error()
    {
        using var response = await PostAsync("down",
            """{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}}""", null);
        var message = (await MessagesAsync(response)).Single();
        Assert.Equal(-32016, ErrorCode(message));
        Assert.Contains("down", message.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(response.Headers.Contains("Mcp-Session-Id"));
    }

    [Fact]
    public async Task Legacy_sse_endpoint_announces_its_message_endpoint()
    {
        using var request = new HttpRequestMessage(HttpMethod.Get, fixture.Sidecar.SseUrl("stdio"));
        request.Headers.Accept.ParseAdd("text/event-stream");
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType?.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        Assert.Equal("event: endpoint", await reader.ReadLineAsync());
        var data = await reader.ReadLineAsync();
        Assert.Matches("^data: /servers/stdio/message\\?sessionId=[0-9a-f]{32}$", data);
    }
}
