using System.Diagnostics;
using System.Text.Json;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>
/// <see cref="SharedStdioConnector"/> (<c>"share": true</c>): the whole upstream conversation through one lane of a
/// shared server-everything (inherited), then what sharing adds, against tests/fixtures/mcp-servers/faulty.cjs (which
/// records every line it receives and the pid of every process started): one process and one initialize for all
/// lanes, colliding ids, server requests and notifications, a crash, and what disposing a lane or the connector does.
/// </summary>
public sealed class SharedStdioUpstreamTests : UpstreamConversationTests, IDisposable
{
    private readonly FaultyServer _faulty = new();

    protected override ServerConfig Server { get; } = EverythingServer.StartStdioConfig() with { Share = true };

    protected override bool ResponsesCarryCorrelation => false;

    public void Dispose() => _faulty.Dispose();

    private SharedStdioConnector Faulty()
    {
        var env = new Dictionary<string, string> { ["FAULTY_LOG"] = _faulty.LogFile, ["FAULTY_PIDS"] = _faulty.PidFile };
        var server = new ServerConfig("faulty", new SourceLocation(1, 1), UpstreamTransport.Stdio, "node", [FaultyServer.Script], env, null, null,
            new Dictionary<string, string>(), null) { Share = true };
        return (SharedStdioConnector)UpstreamConnectors.Create(server, TestLimits, Loggers);
    }

    private static async Task<UpstreamTestClient> LaneAsync(SharedStdioConnector connector)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        return new UpstreamTestClient(await connector.ConnectAsync(timeout.Token));
    }

    private const string InitializeParams = """{"protocolVersion":"2025-06-18","capabilities":{"roots":{}},"clientInfo":{"name":"lane","version":"1"}}""";

    private List<JsonElement> ReceivedWith(string method) => [.. _faulty.Received().Where(m => FaultyServer.Method(m) == method)];

    [Fact]
    public async Task Every_lane_initializes_but_the_process_sees_one_initialize_and_one_initialized()
    {
        using var connector = Faulty();
        await using var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await using var c = await LaneAsync(connector);

        var first = await a.RequestRawAsync("\"a-init\"", $$"""{"jsonrpc":"2.0","id":"a-init","method":"initialize","params":{{InitializeParams}}}""");
        await a.NotifyAsync("notifications/initialized");
        // The same id in two lanes, and an escaped string id that must come back exactly as sent.
        var second = await b.RequestRawAsync("7", $$"""{"jsonrpc":"2.0","id":7,"method":"initialize","params":{{InitializeParams}}}""");
        await b.NotifyAsync("notifications/initialized");
        var third = await c.RequestRawAsync("\"\\u0037\"", $$"""{"jsonrpc":"2.0","id":"\u0037","method":"initialize","params":{{InitializeParams}}}""");
        await c.NotifyAsync("notifications/initialized");

        Assert.Equal("\"a-init\"", first.Root.GetProperty("id").GetRawText());
        Assert.Equal("7", second.Root.GetProperty("id").GetRawText());
        Assert.Contains("\"id\":\"\\u0037\"", third.Json, StringComparison.Ordinal);
        var result = first.Root.GetProperty("result").GetRawText();
        Assert.Equal("faulty", first.Root.GetProperty("result").GetProperty("serverInfo").GetProperty("name").GetString());
        Assert.Equal(result, second.Root.GetProperty("result").GetRawText());
        Assert.Equal(result, third.Root.GetProperty("result").GetRawText());

        // Every lane's ping reaches the process (with an id of its own): so do the initialized notifications, if sent.
        await Task.WhenAll(a.RequestAsync("ping"), b.RequestAsync("ping"), c.RequestAsync("ping"));
        await _faulty.WaitForAsync(m => FaultyServer.Method(m) == "ping" && ReceivedWith("ping").Count == 3, "three pings");
        Assert.Single(ReceivedWith("initialize"));
        Assert.Single(ReceivedWith("notifications/initialized"));
        Assert.Single(_faulty.Pids());
        Assert.Equal(1, connector.Spawned);
    }

    [Fact]
    public async Task Lanes_using_the_same_ids_at_once_each_get_their_own_answers_and_the_process_sees_distinct_ids()
    {
        using var connector = Faulty();
        var lanes = new List<UpstreamTestClient>();
        for (var i = 0; i < 4; i++)
        {
            lanes.Add(await LaneAsync(connector));
        }
        await lanes[0].InitializeAsync();

        // Each lane sends ids 1..10 (the same ids as every other lane), the early ones slowest, all at once.
        var calls = lanes.SelectMany((lane, l) => Enumerable.Range(1, 10).Select(async call =>
        {
            var answer = await lane.RequestRawAsync(call.ToString(System.Globalization.CultureInfo.InvariantCulture),
                $$$$"""{"jsonrpc":"2.0","id":{{{{call}}}},"method":"tools/call","params":{"name":"ok","arguments":{"message":"lane {{{{l}}}} call {{{{call}}}}","delayMs":{{{{(10 - call) * 20}}}}}}}""");
            return (l, call, answer);
        })).ToList();

        foreach (var (l, call, answer) in await Task.WhenAll(calls))
        {
            Assert.Equal($"ok: lane {l} call {call}", answer.ToolText());
        }
        var ids = _faulty.CallsOf("ok").Select(m => m.GetProperty("id").GetInt64()).ToList();
        Assert.Equal(40, ids.Count);
        Assert.Equal(40, ids.Distinct().Count());
        foreach (var lane in lanes)
        {
            await lane.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_lanes_cancellation_names_the_upstream_id_of_its_own_call_not_another_lanes_with_the_same_id()
    {
        using var connector = Faulty();
        await using var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await a.InitializeAsync();
        const string Hang = """{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"hang","arguments":{}}}""";
        _ = a.RequestRawAsync("5", Hang, TimeSpan.FromSeconds(60));
        var first = await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang"), "lane a's hang call");
        _ = b.RequestRawAsync("5", Hang, TimeSpan.FromSeconds(60));
        await _faulty.WaitForAsync(_ => _faulty.CallsOf("hang").Count == 2, "lane b's hang call");
        var second = _faulty.CallsOf("hang")[1];
        Assert.NotEqual(first.GetProperty("id").GetRawText(), second.GetProperty("id").GetRawText());

        await b.NotifyAsync("notifications/cancelled", """{"requestId":5,"reason":"the agent gave up"}""");
        await b.NotifyAsync("notifications/cancelled", """{"requestId":6,"reason":"not in flight: never sent"}""");
        await b.RequestAsync("ping"); // after the cancellations on the same stdin

        var cancelled = Assert.Single(ReceivedWith("notifications/cancelled"));
        Assert.Equal(second.GetProperty("id").GetRawText(), cancelled.GetProperty("params").GetProperty("requestId").GetRawText());
        Assert.Equal("the agent gave up", cancelled.GetProperty("params").GetProperty("reason").GetString());
    }

    [Fact]
    public async Task A_server_request_goes_to_the_only_lane_with_a_call_in_flight_and_its_answer_goes_back()
    {
        using var connector = Faulty();
        await using var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await a.InitializeAsync();
        await b.InitializeAsync();

        var call = a.RequestAsync("tools/call", """{"name":"ask","arguments":{}}""");
        var roots = await a.WaitForServerRequestAsync(r => r.Method == "roots/list");
        await a.RespondAsync(roots, """{"roots":[{"uri":"file:///lane-a","name":"a"}]}""");

        Assert.Contains("file:///lane-a", (await call).ToolText(), StringComparison.Ordinal);
        Assert.DoesNotContain(b.Events, e => e.Method == "roots/list");
    }

    [Fact]
    public async Task A_server_request_while_two_lanes_have_calls_in_flight_is_refused_with_an_error_the_server_reads()
    {
        using var connector = Faulty();
        await using var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await a.InitializeAsync();
        await b.InitializeAsync();

        var hang = b.RequestAsync("tools/call", """{"name":"hang","arguments":{}}""", TimeSpan.FromSeconds(60));
        await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang"), "the hang call");
        var asked = await a.RequestAsync("tools/call", """{"name":"ask","arguments":{}}""");

        var text = asked.ToolText();
        Assert.StartsWith("asked: {\"error\":{\"code\":-32603,", text, StringComparison.Ordinal);
        Assert.Contains("cannot route this roots/list request", text, StringComparison.Ordinal);
        Assert.Contains("\\\"share\\\": true", text, StringComparison.Ordinal);
        Assert.DoesNotContain(a.Events, e => e.Method == "roots/list");
        Assert.DoesNotContain(b.Events, e => e.Method == "roots/list");
        Assert.False(hang.IsCompleted);
        Assert.Contains(Loggers.Entries, e => e.EventId.Id == 2019);
    }

    [Fact]
    public async Task A_notification_that_belongs_to_no_request_reaches_every_lane()
    {
        using var connector = Faulty();
        await using var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await using var c = await LaneAsync(connector);
        await a.InitializeAsync();

        await b.RequestAsync("tools/call", """{"name":"announce","arguments":{}}""");

        foreach (var lane in new[] { a, b, c })
        {
            await lane.WaitForNotificationAsync(n => n.Method == "notifications/tools/list_changed");
        }
    }

    [Fact]
    public async Task Concurrent_connects_start_one_process()
    {
        using var connector = Faulty();
        var lanes = await Task.WhenAll(Enumerable.Range(0, 8).Select(_ => Task.Run(() => LaneAsync(connector))));
        await lanes[3].InitializeAsync();
        Assert.Equal(1, connector.Spawned);
        Assert.Single(_faulty.Pids());
        foreach (var lane in lanes)
        {
            await lane.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_crash_fails_every_lane_and_the_next_connect_starts_a_new_process_that_is_initialized_again()
    {
        using var connector = Faulty();
        var a = await LaneAsync(connector);
        var b = await LaneAsync(connector);
        await a.InitializeAsync();
        await b.InitializeAsync();
        var hangA = a.RequestAsync("tools/call", """{"name":"hang","arguments":{}}""", TimeSpan.FromSeconds(60));
        var hangB = b.RequestAsync("tools/call", """{"name":"hang","arguments":{}}""", TimeSpan.FromSeconds(60));
        await _faulty.WaitForAsync(_ => _faulty.CallsOf("hang").Count == 2, "both hang calls");
        var pid = Assert.Single(_faulty.Pids());

        using (var process = Process.GetProcessById(pid))
        {
            process.Kill();
        }

        foreach (var lane in new[] { a, b })
        {
            var ex = await Assert.ThrowsAsync<UpstreamException>(() => lane.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
            Assert.Matches("^upstream process exited with code [0-9-]+$", ex.Message);
            await Assert.ThrowsAsync<UpstreamException>(async () => await lane.SendRawAsync("""{"jsonrpc":"2.0","id":99,"method":"ping"}"""));
        }
        await Assert.ThrowsAsync<InvalidOperationException>(() => hangA);
        await Assert.ThrowsAsync<InvalidOperationException>(() => hangB);
        Assert.Contains(Loggers.Entries, e => e.EventId.Id == 2018 && e.Message.Contains("2 sessions", StringComparison.Ordinal));

        await using var again = await LaneAsync(connector);
        var init = await again.InitializeAsync();
        Assert.True(init.Root.TryGetProperty("result", out _), init.Json);
        Assert.Equal("ok: back", (await again.RequestAsync("tools/call", """{"name":"ok","arguments":{"message":"back"}}""")).ToolText());
        Assert.Equal(2, connector.Spawned);
        Assert.Equal(2, _faulty.Pids().Count);
        Assert.NotEqual(pid, _faulty.Pids()[1]);
        Assert.Equal(2, ReceivedWith("initialize").Count); // one per process
        await a.DisposeAsync();
        await b.DisposeAsync();
    }

    [Fact]
    public async Task Disposing_a_lane_keeps_the_process_for_the_others_and_disposing_the_connector_stops_it()
    {
        var connector = Faulty();
        var a = await LaneAsync(connector);
        await using var b = await LaneAsync(connector);
        await a.InitializeAsync();
        var pid = Assert.Single(_faulty.Pids());
        var late = a.RequestAsync("tools/call", """{"name":"ok","arguments":{"message":"too late","delayMs":300}}""");

        await a.DisposeAsync();
        await a.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(5)); // a lane's own end is not a failure
        await Assert.ThrowsAnyAsync<Exception>(() => late);

        await Task.Delay(500); // the answer to the disposed lane's call arrives, and goes nowhere
        Assert.Equal("ok: still here", (await b.RequestAsync("tools/call", """{"name":"ok","arguments":{"message":"still here"}}""")).ToolText());
        Assert.DoesNotContain(b.Events, e => e.Json.Contains("too late", StringComparison.Ordinal));
        Assert.True(Processes.IsAlive(pid));
        Assert.Equal(1, connector.Spawned);

        connector.Dispose();
        await Processes.WaitForExitAsync(pid, TimeSpan.FromSeconds(10), "the shared process after its connector was disposed");
        await Assert.ThrowsAsync<UpstreamException>(() => b.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(5)));
        await Assert.ThrowsAsync<UpstreamException>(async () => await connector.ConnectAsync(CancellationToken.None));
    }
}
