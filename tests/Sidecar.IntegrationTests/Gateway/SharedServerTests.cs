using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// README, the config file: <c>"share": true</c> runs one process for all sessions of a stdio server, "request ids
/// are mapped per session so that answers, progress and cancellations reach the right agent, and a crash fails only
/// the calls in flight". A real gateway on loopback, agents on <c>/servers/NAME/mcp</c> (the official C# client, and
/// raw HTTP where the wire itself is the point), real server processes: tests/fixtures/mcp-servers/faulty.cjs (it
/// records the pid of every process started and every line it receives) and server-everything.
/// </summary>
public sealed class SharedServerTests : IDisposable
{
    private const string AllowAll = """{ "version": "1", "default": "allow" }""";

    private readonly FaultyServer _faulty = new();
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };

    public void Dispose()
    {
        _http.Dispose();
        _faulty.Dispose();
    }

    private static CancellationToken Timeout(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    private static IReadOnlyDictionary<string, object?> Args(params (string Key, object? Value)[] pairs) => pairs.ToDictionary(p => p.Key, p => p.Value);

    private static string Text(CallToolResult result) => string.Join("\n", result.Content.OfType<TextContentBlock>().Select(c => c.Text));

    private static Task<SidecarHost> StartAsync(string name, Dictionary<string, object> server)
    {
        server["share"] = true;
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { [name] = server },
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "30s" },
        });
        return SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = AllowAll });
    }

    private Task<SidecarHost> StartFaultyAsync() => StartAsync(FaultyServer.Name, _faulty.ServerConfig());

    private static async Task<McpClient> ConnectAsync(SidecarHost host, string server, int n)
    {
        var transport = new HttpClientTransport(
            new HttpClientTransportOptions { Endpoint = host.McpUrl(server), TransportMode = HttpTransportMode.StreamableHttp, Name = "agent-" + n },
            NullLoggerFactory.Instance);
        var options = new McpClientOptions { ClientInfo = new Implementation { Name = "agent-" + n, Version = "1.0" } };
        return await McpClient.CreateAsync(transport, options, NullLoggerFactory.Instance, Timeout());
    }

    private List<JsonElement> ReceivedWith(string method) => [.. _faulty.Received().Where(m => FaultyServer.Method(m) == method)];

    [Fact]
    public async Task Eight_sessions_are_served_by_one_process_and_every_answer_reaches_its_own_caller()
    {
        await using var host = await StartFaultyAsync();
        var clients = await Task.WhenAll(Enumerable.Range(0, 8).Select(n => ConnectAsync(host, FaultyServer.Name, n)));
        try
        {
            // Every session sends six calls at once, with arguments of its own; the early calls are answered last, and
            // every session's client numbers its requests the same way, so the ids of different agents collide.
            await Task.WhenAll(clients.Select((client, s) => Task.Run(async () =>
            {
                await Task.WhenAll(Enumerable.Range(0, 6).Select(async c =>
                {
                    var message = $"session {s} call {c}";
                    var result = await client.CallToolAsync("ok", Args(("message", message), ("delayMs", ((6 - c) * 40) + (s * 5))), cancellationToken: Timeout());
                    Assert.NotEqual(true, result.IsError);
                    Assert.Equal("ok: " + message, Text(result));
                }));
            })));

            var pid = Assert.Single(_faulty.Pids());
            Assert.True(Processes.IsAlive(pid));
            Assert.Single(ReceivedWith("initialize"));            // the first session's; the others were answered from it
            Assert.Single(ReceivedWith("notifications/initialized"));
            var ids = _faulty.CallsOf("ok").Select(m => m.GetProperty("id").GetRawText()).ToList();
            Assert.Equal(48, ids.Count);
            Assert.Equal(48, ids.Distinct().Count());             // the process never saw two calls with one id
            Assert.All(clients, c => Assert.Equal("faulty", c.ServerInfo?.Name));
        }
        finally
        {
            foreach (var client in clients)
            {
                await client.DisposeAsync();
            }
        }
        // Sessions closing leave the shared process running for the next ones.
        Assert.True(Processes.IsAlive(Assert.Single(_faulty.Pids())));
    }

    /// <summary>
    /// Three agents call server-everything's long-running tool at once with the same request id and the same
    /// progress token, each with a different number of steps: each stream carries exactly its own progress, under
    /// its own token, then its own result.
    /// </summary>
    [Fact]
    public async Task Progress_reaches_the_session_whose_call_it_is()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var everything = new Dictionary<string, object>
        {
            ["command"] = "node",
            ["args"] = new[] { "--require", McpServerFixtures.LoopbackPreload, McpServerFixtures.EverythingEntry, "stdio" },
            ["cwd"] = McpServerFixtures.Directory,
        };
        await using var host = await StartAsync("everything", everything);
        var url = host.McpUrl("everything");
        int[] steps = [2, 3, 4];
        var sessions = new List<string>();
        foreach (var _ in steps)
        {
            sessions.Add(await RawMcp.OpenSessionAsync(_http, url));
        }

        var calls = steps.Select(async (n, i) =>
        {
            var body = """{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"trigger-long-running-operation","arguments":{"duration":DURATION,"steps":STEPS},"_meta":{"progressToken":"tok"}}}"""
                .Replace("DURATION", (n * 0.3).ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
                .Replace("STEPS", n.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
            using var response = await RawMcp.PostAsync(_http, url, body, sessions[i]);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            return (n, Text: await response.Content.ReadAsStringAsync());
        }).ToList();

        foreach (var (n, text) in await Task.WhenAll(calls))
        {
            var messages = text.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal))
                .Select(l => JsonDocument.Parse(l[6..]).RootElement.Clone()).ToList();
            var progress = messages.Where(m => m.TryGetProperty("method", out var method) && method.GetString() == "notifications/progress").ToList();
            Assert.True(progress.Count == n, $"{n} steps, {progress.Count} progress notifications:\n{text}");
            for (var step = 0; step < n; step++)
            {
                var p = progress[step].GetProperty("params");
                Assert.Equal("tok", p.GetProperty("progressToken").GetString());
                Assert.Equal(step + 1, p.GetProperty("progress").GetInt32());
                Assert.Equal(n, p.GetProperty("total").GetInt32());
            }
            var answer = Assert.Single(messages, m => m.TryGetProperty("id", out _));
            Assert.Equal(12, answer.GetProperty("id").GetInt32());
            Assert.Contains($"Steps: {n}.", answer.GetRawText(), StringComparison.Ordinal);
        }
    }

    /// <summary>Two agents with a call of the same id in flight: the one that cancels cancels its own call upstream.</summary>
    [Fact]
    public async Task An_agents_cancellation_reaches_the_process_for_its_own_call()
    {
        await using var host = await StartFaultyAsync();
        var url = host.McpUrl(FaultyServer.Name);
        var first = await RawMcp.OpenSessionAsync(_http, url);
        var second = await RawMcp.OpenSessionAsync(_http, url);
        var hangs = new List<Task<HttpResponseMessage>> { RawMcp.PostAsync(_http, url, RawMcp.CallBody("\"h\"", "hang"), first) };
        await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang"), "the first session's hang call");
        hangs.Add(RawMcp.PostAsync(_http, url, RawMcp.CallBody("\"h\"", "hang"), second));
        await _faulty.WaitForAsync(_ => _faulty.CallsOf("hang").Count == 2, "the second session's hang call");
        var upstreamIds = _faulty.CallsOf("hang").Select(m => m.GetProperty("id").GetRawText()).ToList();

        using (var cancel = await RawMcp.PostAsync(_http, url, """{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"h","reason":"changed my mind"}}""", second))
        {
            Assert.Equal(HttpStatusCode.Accepted, cancel.StatusCode);
        }

        var cancelled = await _faulty.WaitForAsync(m => FaultyServer.Method(m) == "notifications/cancelled", "the cancellation");
        Assert.Equal(upstreamIds[1], cancelled.GetProperty("params").GetProperty("requestId").GetRawText());
        Assert.NotEqual(upstreamIds[0], upstreamIds[1]);
        await host.StopAsync(); // ends the calls still held
        foreach (var hang in hangs)
        {
            (await hang).Dispose();
        }
    }

    [Fact]
    public async Task Killing_the_shared_process_fails_only_the_calls_in_flight_and_every_session_goes_on_with_a_new_one()
    {
        await using var host = await StartFaultyAsync();
        var clients = await Task.WhenAll(Enumerable.Range(0, 4).Select(n => ConnectAsync(host, FaultyServer.Name, n)));
        await using var idle = await ConnectAsync(host, FaultyServer.Name, 99); // has no call in flight when the process dies
        try
        {
            for (var s = 0; s < clients.Length; s++)
            {
                Assert.Equal($"ok: before {s}", Text(await clients[s].CallToolAsync("ok", Args(("message", $"before {s}")), cancellationToken: Timeout())));
            }
            var pid = Assert.Single(_faulty.Pids());

            var hanging = clients.Select(c => c.CallToolAsync("hang", Args(), cancellationToken: Timeout(60)).AsTask()).ToArray();
            await _faulty.WaitForAsync(_ => _faulty.CallsOf("hang").Count == clients.Length, $"{clients.Length} hang calls");
            using (var process = Process.GetProcessById(pid))
            {
                process.Kill();
            }

            foreach (var call in hanging)
            {
                var ex = await Assert.ThrowsAsync<McpProtocolException>(() => call);
                Assert.Equal(-32016, (int)ex.ErrorCode);
            }

            // Every session carries on, on one new process.
            for (var s = 0; s < clients.Length; s++)
            {
                Assert.Equal($"ok: after {s}", Text(await clients[s].CallToolAsync("ok", Args(("message", $"after {s}")), cancellationToken: Timeout())));
            }
            Assert.Equal("ok: idle", Text(await idle.CallToolAsync("ok", Args(("message", "idle")), cancellationToken: Timeout())));
            var pids = _faulty.Pids();
            Assert.Equal(2, pids.Count);
            Assert.NotEqual(pid, pids[1]);
            Assert.True(Processes.IsAlive(pids[1]));
            // Each process was initialized once: one session's replayed initialize (an agent's own params) reached the
            // new process, and the other sessions' replays were answered from it.
            var initializes = ReceivedWith("initialize");
            Assert.Equal(2, initializes.Count);
            Assert.StartsWith("agent-", initializes[1].GetProperty("params").GetProperty("clientInfo").GetProperty("name").GetString(), StringComparison.Ordinal);
        }
        finally
        {
            foreach (var client in clients)
            {
                await client.DisposeAsync();
            }
        }
    }
}
