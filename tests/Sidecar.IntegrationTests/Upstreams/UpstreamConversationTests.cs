using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>
/// The same MCP conversation against the real server-everything over each transport: handshake, tools/list,
/// tools/call, concurrent calls completing out of order, a server-to-client request answered through SendAsync, and
/// server notifications. Each transport's class supplies the server config.
/// </summary>
public abstract class UpstreamConversationTests
{
    /// <summary>Shorter than production so failures show quickly; still far above what a healthy call needs.</summary>
    public static GatewayLimits TestLimits { get; } = GatewayLimits.Default with
    {
        UpstreamTimeout = TimeSpan.FromSeconds(15),
        ConnectTimeout = TimeSpan.FromSeconds(10),
    };

    protected TestLoggerFactory Loggers { get; } = new();

    /// <summary>The server config to connect to (the stdio config, or the class fixture's HTTP server).</summary>
    protected abstract ServerConfig Server { get; }

    /// <summary>True when a send's response comes back tagged with the send's correlation (Streamable HTTP).</summary>
    protected abstract bool ResponsesCarryCorrelation { get; }

    protected async Task<TestSession> OpenAsync(GatewayLimits? limits = null)
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var connector = UpstreamConnectors.Create(Server, limits ?? TestLimits, Loggers);
        try
        {
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            var connection = await connector.ConnectAsync(timeout.Token);
            return new TestSession(connector, new UpstreamTestClient(connection));
        }
        catch
        {
            (connector as IDisposable)?.Dispose();
            throw;
        }
    }

    [Fact]
    public async Task Initialize_then_tools_list_and_echo_call()
    {
        await using var session = await OpenAsync();
        var client = session.Client;

        var init = await client.InitializeAsync();
        var result = init.Root.GetProperty("result");
        Assert.Equal("2025-06-18", result.GetProperty("protocolVersion").GetString());
        Assert.Equal("mcp-servers/everything", result.GetProperty("serverInfo").GetProperty("name").GetString());

        var list = await client.RequestAsync("tools/list");
        var names = list.Root.GetProperty("result").GetProperty("tools").EnumerateArray()
            .Select(t => t.GetProperty("name").GetString()).ToList();
        Assert.Contains("echo", names);
        // Registered by the server when it handles notifications/initialized, for clients that declared sampling:
        // present only if tools/list reached the server after the initialized notification.
        Assert.Contains("trigger-sampling-request", names);

        var echo = await client.RequestAsync("tools/call", """{"name":"echo","arguments":{"message":"hello through the upstream"}}""");
        Assert.Contains("hello through the upstream", echo.ToolText());
        Assert.Equal(ResponsesCarryCorrelation ? echo.SentCorrelation : 0, echo.Correlation);
    }

    [Fact]
    public async Task Concurrent_calls_complete_out_of_order_and_are_matched_by_id_with_progress()
    {
        await using var session = await OpenAsync();
        var client = session.Client;
        await client.InitializeAsync();

        // The first call is held open by the test itself: the server's sampling request waits for our answer, so the
        // call sent first cannot finish before the ones sent after it, however fast or slow the machine is.
        var held = client.RequestAsync("tools/call",
            """{"name":"trigger-sampling-request","arguments":{"prompt":"hold the call","maxTokens":5}}""", TimeSpan.FromSeconds(60));
        var sampling = await client.WaitForServerRequestAsync(r => r.Method == "sampling/createMessage");
        var slow = client.RequestAsync("tools/call",
            """{"name":"trigger-long-running-operation","arguments":{"duration":0.9,"steps":3},"_meta":{"progressToken":"slow-op"}}""");
        var echoes = Enumerable.Range(0, 6)
            .Select(i => client.RequestAsync("tools/call", $$$"""{"name":"echo","arguments":{"message":"concurrent-{{{i}}}"}}"""))
            .ToArray();

        var echoed = await Task.WhenAll(echoes);
        Assert.False(held.IsCompleted, "the held call finished before its sampling request was answered");
        for (var i = 0; i < echoed.Length; i++)
        {
            Assert.Contains($"Echo: concurrent-{i}", echoed[i].ToolText());
            Assert.Equal(ResponsesCarryCorrelation ? echoed[i].SentCorrelation : 0, echoed[i].Correlation);
        }

        await client.RespondAsync(sampling,
            """{"role":"assistant","content":{"type":"text","text":"released by the test"},"model":"test-model","stopReason":"endTurn"}""");
        var released = await held;
        Assert.Contains("released by the test", released.ToolText());
        Assert.Equal(ResponsesCarryCorrelation ? released.SentCorrelation : 0, released.Correlation);

        var done = await slow;
        Assert.Contains("Long running operation completed", done.ToolText());

        // The server sent one progress notification per step, before the result.
        var progress = client.Notifications
            .Where(n => n.Method == "notifications/progress"
                && n.Root.GetProperty("params").GetProperty("progressToken").GetString() == "slow-op")
            .ToList();
        Assert.Equal(3, progress.Count);
        Assert.Equal([1, 2, 3], progress.Select(p => p.Root.GetProperty("params").GetProperty("progress").GetInt32()));
        Assert.All(progress, p => Assert.Equal(ResponsesCarryCorrelation ? done.SentCorrelation : 0, p.Correlation));
    }

    [Fact]
    public async Task Server_to_client_sampling_request_is_answered_through_SendAsync()
    {
        await using var session = await OpenAsync();
        var client = session.Client;
        await client.InitializeAsync();

        var call = client.RequestAsync("tools/call",
            """{"name":"trigger-sampling-request","arguments":{"prompt":"What is two plus two?","maxTokens":20}}""");
        var request = await client.WaitForServerRequestAsync(r => r.Method == "sampling/createMessage");
        Assert.Contains("What is two plus two?", request.Json);

        await client.RespondAsync(request,
            """{"role":"assistant","content":{"type":"text","text":"four, says the test client"},"model":"test-model","stopReason":"endTurn"}""");

        var result = await call;
        Assert.Contains("four, says the test client", result.ToolText());
        if (ResponsesCarryCorrelation)
        {
            // The server's request belongs to the tools/call: it came on that POST's response stream.
            Assert.Equal(result.SentCorrelation, request.Correlation);
        }
    }

    [Fact]
    public async Task Server_initiated_logging_notifications_arrive_uncorrelated()
    {
        await using var session = await OpenAsync();
        var client = session.Client;
        await client.InitializeAsync();
        await client.RequestAsync("tools/list"); // gives the Streamable HTTP GET stream time to open

        var toggle = await client.RequestAsync("tools/call", """{"name":"toggle-simulated-logging","arguments":{}}""");
        Assert.Contains("Started simulated", toggle.ToolText());

        // One message right away (not tied to any request), then one every 5 s.
        var log = await client.WaitForNotificationAsync(n => n.Method == "notifications/message", TimeSpan.FromSeconds(8));
        Assert.Equal(0, log.Correlation);
        Assert.Equal(JsonValueKind.String, log.Root.GetProperty("params").GetProperty("level").ValueKind);
    }

    [Fact]
    public async Task A_server_message_over_the_size_limit_is_dropped_with_a_warning_and_the_connection_goes_on()
    {
        // server-everything's initialize result is about 2 kB, its tools/list result about 8 kB.
        await using var session = await OpenAsync(TestLimits with { MaxMessageBytes = 4096 });
        var client = session.Client;
        await client.InitializeAsync();

        var list = client.RequestAsync("tools/list");
        if (ResponsesCarryCorrelation)
        {
            // The dropped message arrived on the request's own response stream: the send fails at once.
            var failed = await Assert.ThrowsAsync<UpstreamSendFailedException>(() => list);
            Assert.Contains("larger than 4096 bytes", failed.Error);
        }
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (!Loggers.Entries.Any(l => l.EventId.Id == 2002) && deadline.Elapsed < TimeSpan.FromSeconds(10))
        {
            await Task.Delay(20);
        }
        Assert.Contains(Loggers.Entries, l => l.EventId.Id == 2002 && l.Level == Microsoft.Extensions.Logging.LogLevel.Warning);
        Assert.False(list.IsCompletedSuccessfully);

        var echo = await client.RequestAsync("tools/call", """{"name":"echo","arguments":{"message":"still here"}}""");
        Assert.Contains("still here", echo.ToolText());
    }

    /// <summary>A connector and a client on one of its connections; disposes both.</summary>
    protected sealed class TestSession(IUpstreamConnector connector, UpstreamTestClient client) : IAsyncDisposable
    {
        public IUpstreamConnector Connector { get; } = connector;

        public UpstreamTestClient Client { get; } = client;

        public IUpstreamConnection Connection => Client.Connection;

        public async ValueTask DisposeAsync()
        {
            await Client.DisposeAsync();
            (Connector as IDisposable)?.Dispose();
        }
    }
}
