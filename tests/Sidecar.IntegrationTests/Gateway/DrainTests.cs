using System.Net;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// Graceful drain through <c>sidecar run</c> itself, stopped with SIGTERM as systemd and Kubernetes stop it, in
/// front of server-everything over stdio: calls in flight that finish within <c>limits.shutdownGrace</c> get their
/// real answers, a call past the grace gets -32016 with <c>data.reason</c> "shutting down" (not a reset), new
/// requests are refused while it drains, every answered call is in the audit trail, and the process exits 0.
/// </summary>
public sealed class DrainTests : IDisposable
{
    private const string Policy = """{ "version": "1", "default": "deny", "tools": { "echo": {}, "trigger-long-running-operation": {} } }""";
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-drain-it-" + Guid.NewGuid().ToString("N"));

    public DrainTests() => Directory.CreateDirectory(_folder);

    public void Dispose()
    {
        _http.Dispose();
        Directory.Delete(_folder, recursive: true);
    }

    private async Task<(SidecarProcess Gateway, int Port)> StartAsync(string grace)
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var port = EverythingServer.FreeLoopbackPort();
        var config = Path.Combine(_folder, "sidecar.json");
        await File.WriteAllTextAsync(Path.Combine(_folder, "policy.json"), Policy);
        await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["listen"] = $"127.0.0.1:{port}",
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
            },
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["shutdownGrace"] = grace },
            ["audit"] = new Dictionary<string, object> { ["file"] = "audit.jsonl", ["flushInterval"] = "20ms" },
        }));
        return (await SidecarProcess.StartAsync(_http, config, port), port);
    }

    private Uri Url(int port) => new($"http://127.0.0.1:{port}/servers/everything/mcp");

    private async Task<JsonElement> CallAsync(int port, string session, string id, string tool, string arguments)
    {
        using var response = await RawMcp.PostAsync(_http, Url(port), RawMcp.CallBody(id, tool, arguments), session);
        return await RawMcp.AnswerAsync(response);
    }

    private List<JsonElement> Trail() => [.. File.ReadAllLines(Path.Combine(_folder, "audit.jsonl")).Select(l => JsonDocument.Parse(l).RootElement.Clone())];

    [Fact]
    public async Task Sigterm_lets_calls_in_flight_finish_answers_the_rest_with_32016_and_exits_0()
    {
        var (gateway, port) = await StartAsync(grace: "3s");
        using var process = gateway;
        var session = await RawMcp.OpenSessionAsync(_http, Url(port));

        // Steady traffic: short calls one after another while the gateway is stopped.
        var answered = new List<JsonElement>();
        using var stopTraffic = new CancellationTokenSource();
        var traffic = Task.Run(async () =>
        {
            for (var i = 0; i < 10_000 && !stopTraffic.IsCancellationRequested; i++)
            {
                try
                {
                    var answer = await CallAsync(port, session, i.ToString(), "echo", $$"""{"message":"m{{i}}"}""");
                    if (answer.GetProperty("id").ValueKind == JsonValueKind.Null)
                    {
                        return; // refused while draining: never decided, so never recorded
                    }
                    answered.Add(answer);
                }
                catch (Exception ex) when (ex is HttpRequestException or InvalidOperationException or TaskCanceledException)
                {
                    return; // the gateway went away or refused: the traffic is over
                }
            }
        });
        var withinGrace = CallAsync(port, session, "\"short\"", "trigger-long-running-operation", """{"duration":1,"steps":2}""");
        var pastGrace = CallAsync(port, session, "\"long\"", "trigger-long-running-operation", """{"duration":30,"steps":3}""");
        await Task.Delay(300);

        var stopping = DateTime.UtcNow;
        await gateway.TerminateAsync();
        await Task.Delay(200);
        // While it drains, nothing new is taken: a new connection is refused (the listener is closed), and a request
        // on a connection already open gets 503 and -32016 (shutting down).
        try
        {
            using var refused = await RawMcp.PostAsync(_http, Url(port), RawMcp.InitializeBody, null);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
            var error = (await RawMcp.AnswerAsync(refused)).GetProperty("error");
            Assert.Equal(-32016, error.GetProperty("code").GetInt32());
            Assert.Equal("shutting down", error.GetProperty("data").GetProperty("reason").GetString());
        }
        catch (HttpRequestException ex) when (ex.InnerException is System.Net.Sockets.SocketException { SocketErrorCode: System.Net.Sockets.SocketError.ConnectionRefused })
        {
            // Not accepting: as it should.
        }

        var finished = await withinGrace;
        Assert.True(finished.TryGetProperty("result", out var result), finished.ToString());
        Assert.Contains("Long running operation completed", result.GetProperty("content")[0].GetProperty("text").GetString(), StringComparison.Ordinal);

        var cut = await pastGrace;
        var cutError = cut.GetProperty("error");
        Assert.Equal(-32016, cutError.GetProperty("code").GetInt32());
        Assert.Equal("shutting down", cutError.GetProperty("data").GetProperty("reason").GetString());
        var waited = DateTime.UtcNow - stopping;
        Assert.True(waited >= TimeSpan.FromSeconds(2.5), $"the long call was cut after {waited}, before the 3 s grace");

        var exit = await gateway.WaitForExitAsync();
        stopTraffic.Cancel();
        await traffic;
        Assert.True(exit == 0, $"exit {exit}; stderr:\n{gateway.Stderr}");

        // Every call the agent got an answer for is in the trail, with how it ended; the trail ends with audit_stop.
        var trail = Trail();
        var calls = trail.Where(e => e.GetProperty("type").GetString() == "tool_call").ToList();
        foreach (var answer in answered.Append(finished).Append(cut))
        {
            var id = answer.GetProperty("id").GetRawText();
            Assert.Contains(calls, c => c.GetProperty("requestId").GetRawText() == id);
        }
        Assert.Equal("ok", calls.Single(c => c.GetProperty("requestId").GetRawText() == "\"short\"").GetProperty("outcome").GetString());
        Assert.Equal("unknown", calls.Single(c => c.GetProperty("requestId").GetRawText() == "\"long\"").GetProperty("outcome").GetString());
        Assert.Equal("audit_stop", trail[^1].GetProperty("type").GetString());
        Assert.True(answered.Count > 0, "no traffic was answered before the stop");
    }

    [Fact]
    public async Task A_second_sigterm_ends_the_grace_at_once()
    {
        var (gateway, port) = await StartAsync(grace: "60s");
        using var process = gateway;
        var session = await RawMcp.OpenSessionAsync(_http, Url(port));
        var pastGrace = CallAsync(port, session, "\"long\"", "trigger-long-running-operation", """{"duration":50,"steps":5}""");
        await Task.Delay(300);

        await gateway.TerminateAsync();
        await Task.Delay(500);
        var second = DateTime.UtcNow;
        await gateway.TerminateAsync();

        var cut = await pastGrace;
        Assert.Equal(-32016, cut.GetProperty("error").GetProperty("code").GetInt32());
        var exit = await gateway.WaitForExitAsync();
        Assert.True(DateTime.UtcNow - second < TimeSpan.FromSeconds(20), "the second SIGTERM did not end the grace");
        Assert.True(exit == 0, $"exit {exit}; stderr:\n{gateway.Stderr}");
        var trail = Trail();
        Assert.Equal("audit_stop", trail[^1].GetProperty("type").GetString());
        Assert.Contains(trail, e => e.GetProperty("type").GetString() == "tool_call" && e.GetProperty("requestId").GetRawText() == "\"long\"");
    }

    [Fact]
    public async Task Logs_are_json_lines()
    {
        var (gateway, port) = await StartAsync(grace: "1s");
        using var process = gateway;
        var session = await RawMcp.OpenSessionAsync(_http, Url(port));
        await CallAsync(port, session, "1", "echo", """{"message":"a \u001b[31m red\nline"}""");
        await CallAsync(port, session, "2", "get-env", "{}"); // denied: a line with the tool's name
        await CallAsync(port, session, "3", "x\\nFAKE forged\\u001b[31m", "{}"); // a name that would forge a line, raw
        await gateway.TerminateAsync();
        Assert.Equal(0, await gateway.WaitForExitAsync());

        Assert.DoesNotContain('\u001b', gateway.Stderr);
        var lines = gateway.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length >= 5, gateway.Stderr);
        foreach (var line in lines)
        {
            var entry = JsonDocument.Parse(line).RootElement; // throws on a line that is not one JSON object
            Assert.Equal(JsonValueKind.Object, entry.ValueKind);
            foreach (var field in new[] { "time", "level", "category", "message" })
            {
                Assert.True(entry.TryGetProperty(field, out _), $"no {field} in {line}");
            }
        }
        Assert.Contains(lines, l => l.Contains("\"level\":\"information\"", StringComparison.Ordinal) && l.Contains("Stopping", StringComparison.Ordinal));
        Assert.Contains(lines, l => JsonDocument.Parse(l).RootElement.TryGetProperty("Tool", out var tool) && tool.GetString() == "get-env");
        Assert.Contains(lines, l => JsonDocument.Parse(l).RootElement.TryGetProperty("Tool", out var tool) && tool.GetString() == "x\nFAKE forged\u001b[31m");
        Assert.DoesNotContain(lines, l => l.StartsWith("FAKE", StringComparison.Ordinal));
    }
}
