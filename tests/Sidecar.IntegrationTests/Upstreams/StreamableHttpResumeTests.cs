using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.JsonRpc;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>
/// MCP 2025-11-25 resumability (SEP-1699) against a server of our own (<see cref="ResumableMcpServer"/>): a POST's
/// event stream closed before the answer is resumed with <c>GET</c> + <c>Last-Event-ID</c>, and its priming events
/// (an id, a retry, empty data) are skipped silently. Each test starts its own server, so what it records is the
/// test's alone.
/// </summary>
public sealed class StreamableHttpResumeTests : IAsyncLifetime
{
    /// <summary>A failure bound only: a healthy resumption takes a retry interval (200 ms) and a round trip.</summary>
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(20);

    private readonly TestLoggerFactory _loggers = new();
    private ResumableMcpServer _server = null!;
    private IUpstreamConnector? _connector;

    public async Task InitializeAsync() => _server = await ResumableMcpServer.StartAsync();

    public async Task DisposeAsync()
    {
        (_connector as IDisposable)?.Dispose();
        await _server.DisposeAsync();
    }

    private async Task<UpstreamTestClient> OpenAsync()
    {
        _connector = UpstreamConnectors.Create(_server.ToServerConfig(), UpstreamConversationTests.TestLimits, _loggers);
        using var timeout = new CancellationTokenSource(s_bound);
        var client = new UpstreamTestClient(await _connector.ConnectAsync(timeout.Token));
        await client.InitializeAsync("2025-11-25");
        return client;
    }

    private static string Call(string tool, string arguments, string? progressToken = null) => progressToken is null
        ? $$"""{"name":"{{tool}}","arguments":{{arguments}}}"""
        : $$$"""{"name":"{{{tool}}}","arguments":{{{arguments}}},"_meta":{"progressToken":"{{{progressToken}}}"}}""";

    [Fact]
    public async Task A_call_whose_stream_closes_before_the_answer_gets_it_on_the_resumed_GET()
    {
        await using var client = await OpenAsync();

        var answer = await client.RequestAsync("tools/call", Call("slow_echo", """{"message":"resumed"}""", "p-1"), s_bound);

        Assert.Equal("Echo: resumed", answer.ToolText());
        Assert.Equal(answer.SentCorrelation, answer.Correlation); // routed to the original send
        var progress = await client.WaitForNotificationAsync(n => n.Method == "notifications/progress", s_bound);
        Assert.Equal(answer.SentCorrelation, progress.Correlation);

        var resumed = Assert.Single(_server.Resumptions);
        Assert.Equal("s1-1", resumed.LastEventId); // the progress event's: the last id the POST stream sent
        Assert.Equal(["s1-0", "s1-1", "s1-2", "s1-3"], _server.SentEventIds); // priming, progress | priming, answer
        Assert.Equal(ResumableMcpServer.SessionId, resumed.SessionId);
        Assert.Equal("2025-11-25", resumed.ProtocolVersion);
        Assert.Contains("text/event-stream", resumed.Accept, StringComparison.Ordinal);
        // The server asked for retry: 200 before closing; the GET came no sooner (a lower bound: waiting is ours to do).
        Assert.True(Stopwatch.GetElapsedTime(_server.ClosedAt["s1-1"], resumed.Timestamp) >= TimeSpan.FromMilliseconds(150),
            "the GET came before the retry interval was over");
    }

    [Fact]
    public async Task Priming_events_with_only_an_id_and_a_retry_are_skipped_silently()
    {
        await using var client = await OpenAsync();

        // closes: 0 keeps the stream open: priming event, progress, answer, all on the POST stream.
        var answer = await client.RequestAsync("tools/call", Call("slow_echo", """{"message":"primed","closes":0}""", "p-2"), s_bound);
        Assert.Equal("Echo: primed", answer.ToolText());
        AssertOnlyValidMessages(client);

        // And with a resumption, whose GET stream starts with a priming event of its own.
        var resumed = await client.RequestAsync("tools/call", Call("slow_echo", """{"message":"primed twice"}"""), s_bound);
        Assert.Equal("Echo: primed twice", resumed.ToolText());
        AssertOnlyValidMessages(client);
    }

    /// <summary>
    /// Nothing but valid JSON-RPC messages reached the session (an empty one is what the gateway logged as "Dropped an
    /// invalid message from upstream"), and the transport logged no warning either.
    /// </summary>
    private void AssertOnlyValidMessages(UpstreamTestClient client)
    {
        foreach (var message in client.Events.Where(e => e.Kind == UpstreamEventKind.Message))
        {
            Assert.True(JsonRpcScanner.Scan(Encoding.UTF8.GetBytes(message.Json), out var scan) == ScanStatus.Ok,
                $"an invalid message was delivered ({scan.Error}): '{message.Json}'");
        }
        Assert.DoesNotContain(_loggers.Entries, e => e.Level >= LogLevel.Warning);
    }

    [Fact]
    public async Task A_stream_resumed_and_closed_again_is_resumed_with_the_newest_id()
    {
        await using var client = await OpenAsync();

        var answer = await client.RequestAsync("tools/call", Call("slow_echo", """{"message":"twice","closes":2}"""), s_bound);

        Assert.Equal("Echo: twice", answer.ToolText());
        Assert.Equal(answer.SentCorrelation, answer.Correlation);
        Assert.Equal(["s1-0", "s1-1"], _server.Resumptions.Select(r => r.LastEventId));
    }

    [Fact]
    public async Task A_stream_with_an_event_id_that_breaks_is_resumed_too()
    {
        await using var client = await OpenAsync();

        var call = client.RequestAsync("tools/call", Call("slow_echo", """{"message":"after a reset","abort":true}""", "p-4"), s_bound);
        await client.WaitForNotificationAsync(n => n.Method == "notifications/progress", s_bound); // all sent is read
        _server.BreakHeldStreams();
        var answer = await call;

        Assert.Equal("Echo: after a reset", answer.ToolText());
        Assert.Equal("s1-1", Assert.Single(_server.Resumptions).LastEventId);
    }

    [Fact]
    public async Task A_stream_the_server_refuses_to_resume_fails_the_request_at_once()
    {
        await using var client = await OpenAsync();

        var failed = await Assert.ThrowsAsync<UpstreamSendFailedException>(
            () => client.RequestAsync("tools/call", Call("slow_echo", """{"message":"forgotten","forget":true}"""), s_bound));

        Assert.Contains("could not be resumed: HTTP 400", failed.Error, StringComparison.Ordinal);
        Assert.Single(_server.Resumptions); // a refusal is not retried
        Assert.False(client.Connection.Completion.IsCompleted, "a refused resumption does not end the session");
    }

    [Fact]
    public async Task A_stream_without_event_ids_that_closes_early_fails_the_request_and_is_not_resumed()
    {
        await using var client = await OpenAsync();

        var failed = await Assert.ThrowsAsync<UpstreamSendFailedException>(
            () => client.RequestAsync("tools/call", Call("no_id_echo", """{"message":"lost"}""", "p-3"), s_bound));

        Assert.Contains("closed", failed.Error, StringComparison.Ordinal);
        Assert.Empty(_server.Resumptions);
        Assert.False(client.Connection.Completion.IsCompleted, "one failed call does not end the connection");
        var after = await client.RequestAsync("tools/call", Call("echo", """{"message":"still here"}"""), s_bound);
        Assert.Equal("Echo: still here", after.ToolText());
    }

    [Fact]
    public async Task A_disposed_connection_never_resumes()
    {
        var client = await OpenAsync();
        await client.SendRawAsync("""{"jsonrpc":"2.0","id":"never","method":"tools/call","params":{"name":"slow_echo","arguments":{"message":"x","retry":1500}}}""");
        await _server.WaitForEarlyCloseAsync(s_bound);

        await client.DisposeAsync();
        await Task.Delay(2500); // past the 1.5 s the server asked the client to wait

        Assert.Empty(_server.Resumptions);
    }

    [Fact]
    public async Task Through_the_gateway_a_call_whose_stream_closes_early_is_answered()
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["resumable"] = new Dictionary<string, object> { ["url"] = _server.Url.ToString(), ["transport"] = "streamable-http" },
            },
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "15s" },
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = """{ "version": "1", "default": "allow" }""" });
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(30) };
        var url = sidecar.McpUrl("resumable");
        var session = await RawMcp.OpenSessionAsync(http, url);

        using (var response = await RawMcp.PostAsync(http, url,
            """{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"slow_echo","arguments":{"message":"via sidecar"},"_meta":{"progressToken":"g-1"}}}""", session))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            var answer = (await MessagesAsync(response)).Single(m => m.TryGetProperty("id", out _));
            Assert.True(answer.TryGetProperty("result", out var result), answer.GetRawText());
            Assert.Equal("Echo: via sidecar", result.GetProperty("content")[0].GetProperty("text").GetString());
        }
        Assert.Equal("s1-1", Assert.Single(_server.Resumptions).LastEventId);

        // A stream that cannot be resumed fails the call at once, not at the gateway's timeout.
        using (var response = await RawMcp.PostAsync(http, url,
            """{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"no_id_echo","arguments":{"message":"lost"}}}""", session))
        {
            var answer = (await MessagesAsync(response)).Single(m => m.TryGetProperty("id", out _));
            Assert.Equal(-32016, answer.GetProperty("error").GetProperty("code").GetInt32());
        }

        string log;
        lock (sidecar.Log)
        {
            log = sidecar.Log.ToString();
        }
        Assert.DoesNotContain("Dropped an invalid message", log, StringComparison.Ordinal);
    }

    /// <summary>The JSON-RPC messages of an agent-side response: one JSON body, or the data of its SSE events.</summary>
    private static async Task<List<JsonElement>> MessagesAsync(HttpResponseMessage response)
    {
        var text = await response.Content.ReadAsStringAsync();
        if (response.Content.Headers.ContentType?.MediaType != "text/event-stream")
        {
            return [JsonDocument.Parse(text).RootElement.Clone()];
        }
        return [.. text.Split('\n')
            .Where(line => line.StartsWith("data:", StringComparison.Ordinal) && line.Length > 5 && line[5..].Trim().Length > 0)
            .Select(line => JsonDocument.Parse(line[5..]).RootElement.Clone())];
    }
}
