using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Audit;

/// <summary>
/// How a forwarded call ended, as the trail says it (README, the audit trail: <c>outcome</c>
/// <c>upstream_unavailable</c>, <c>upstream_timeout</c>, <c>cancelled</c> "the agent went away", <c>unknown</c>
/// "still in flight at shutdown"): a real gateway over HTTP in front of tests/fixtures/mcp-servers/faulty.cjs, then
/// the JSONL file it wrote, checked with <c>sidecar audit verify</c>.
/// </summary>
public sealed class AuditOutcomeTests : IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };
    private readonly FaultyServer _faulty = new();

    public void Dispose()
    {
        _http.Dispose();
        _faulty.Dispose();
    }

    private Task<HttpResponseMessage> PostCallAsync(SidecarHost host, string session, string rawId, string tool, CancellationToken cancellationToken = default)
        => PostCallAsync(host.McpUrl(FaultyServer.Name), session, rawId, tool, cancellationToken);

    private Task<HttpResponseMessage> PostCallAsync(Uri url, string session, string rawId, string tool, CancellationToken cancellationToken = default)
    {
        var request = new HttpRequestMessage(HttpMethod.Post, url)
        {
            Content = new StringContent(RawMcp.CallBody(rawId, tool), System.Text.Encoding.UTF8, "application/json"),
        };
        request.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
        request.Headers.Add("Mcp-Session-Id", session);
        return _http.SendAsync(request, cancellationToken);
    }

    private async Task<JsonElement> CallAsync(SidecarHost host, string session, string rawId, string tool)
    {
        using var response = await PostCallAsync(host, session, rawId, tool);
        return await RawMcp.AnswerAsync(response);
    }

    private static List<JsonElement> ReadEvents(string file)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        var text = reader.ReadToEnd();
        var end = text.LastIndexOf('\n');
        return end < 0 ? [] : text[..end].Split('\n').Select(line => JsonDocument.Parse(line).RootElement.Clone()).ToList();
    }

    private static JsonElement? FindCall(List<JsonElement> events, string rawId)
        => events.Where(e => e.GetProperty("type").GetString() == "tool_call" && e.GetProperty("requestId").GetRawText() == rawId)
            .Select(e => (JsonElement?)e).SingleOrDefault();

    /// <summary>Stops the gateway (the trail drained and closed), checks the chain, and returns the events.</summary>
    private static async Task<List<JsonElement>> StopAndVerifyAsync(SidecarHost host)
    {
        await host.StopAsync();
        var (code, output, error) = await GatewayAuditTests.VerifyAsync(host.AuditFile);
        Assert.True(code == 0, output + error);
        var events = ReadEvents(host.AuditFile);
        Assert.Equal("audit_stop", events[^1].GetProperty("type").GetString());
        return events;
    }

    /// <summary>The fields every record of an allowed, forwarded call of the faulty server carries.</summary>
    private static JsonElement AssertForwardedCall(List<JsonElement> events, string rawId, string session, string tool, string outcome)
    {
        var found = FindCall(events, rawId);
        Assert.True(found is not null, $"no record of call {rawId} in:\n{string.Join('\n', events.Select(e => e.GetRawText()))}");
        var record = found.Value;
        Assert.Equal(FaultyServer.Name, record.GetProperty("server").GetString());
        Assert.Equal(session, record.GetProperty("session").GetString());
        Assert.Equal(tool, record.GetProperty("tool").GetString());
        Assert.Equal("allow", record.GetProperty("decision").GetString());
        Assert.True(record.GetProperty("enforced").GetBoolean());
        Assert.Equal("tools." + tool, record.GetProperty("rule").GetString());
        Assert.True(outcome == record.GetProperty("outcome").GetString(), record.GetRawText());
        return record;
    }

    [Fact]
    public async Task A_call_the_upstream_never_answers_is_recorded_as_upstream_timeout()
    {
        var host = await _faulty.StartGatewayAsync(upstreamTimeout: "2s");
        try
        {
            var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));
            var answer = await CallAsync(host, session, "31", "hang");
            Assert.Equal(-32017, answer.GetProperty("error").GetProperty("code").GetInt32());

            var record = AssertForwardedCall(await StopAndVerifyAsync(host), "31", session, "hang", "upstream_timeout");
            Assert.Equal(-32017, record.GetProperty("errorCode").GetInt32());
            // upstreamMs is "from the decision to the answer": the gateway's answer, which cannot come before the timeout
            // (a lower bound only; the clock's granularity allows a little less than 2000).
            Assert.True(record.GetProperty("upstreamMs").GetDouble() >= 1900, record.GetRawText());
        }
        finally
        {
            await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task Calls_whose_upstream_dies_mid_call_or_exits_at_once_on_respawn_are_recorded_as_upstream_unavailable()
    {
        var host = await _faulty.StartGatewayAsync();
        try
        {
            var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));
            var died = await CallAsync(host, session, "\"d-1\"", "die");
            Assert.Equal(-32016, died.GetProperty("error").GetProperty("code").GetInt32());
            // The next message respawns the server, which now exits at once.
            _faulty.ExitAtOnceFromNowOn();
            var respawned = await CallAsync(host, session, "\"o-2\"", "ok");
            Assert.True(respawned.TryGetProperty("error", out var error), respawned.GetRawText());
            Assert.Equal(-32016, error.GetProperty("code").GetInt32());
            Assert.Equal(2, _faulty.Pids().Count);

            var events = await StopAndVerifyAsync(host);
            var first = AssertForwardedCall(events, "\"d-1\"", session, "die", "upstream_unavailable");
            Assert.Equal(-32016, first.GetProperty("errorCode").GetInt32());
            Assert.True(first.TryGetProperty("upstreamMs", out _), first.GetRawText());
            var second = AssertForwardedCall(events, "\"o-2\"", session, "ok", "upstream_unavailable");
            Assert.Equal(-32016, second.GetProperty("errorCode").GetInt32());
        }
        finally
        {
            await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_call_the_agent_abandons_mid_call_is_recorded_as_cancelled()
    {
        var host = await _faulty.StartGatewayAsync(upstreamTimeout: "10m");
        try
        {
            var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));
            using var abort = new CancellationTokenSource();
            var call = PostCallAsync(host, session, "\"c-1\"", "hang", abort.Token);
            await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang") && FaultyServer.HasId(m, "\"c-1\""), "the hang call");
            await abort.CancelAsync(); // the agent goes away: HttpClient drops the connection
            await Assert.ThrowsAnyAsync<OperationCanceledException>(() => call);

            // The record is written when the call ends, which the disconnect is: wait for it in the file.
            var deadline = DateTime.UtcNow + FaultyServer.WaitBound;
            while (FindCall(ReadEvents(host.AuditFile), "\"c-1\"") is null)
            {
                Assert.True(DateTime.UtcNow < deadline, "the abandoned call was never recorded:\n" + host.Log);
                await Task.Delay(20);
            }

            AssertForwardedCall(await StopAndVerifyAsync(host), "\"c-1\"", session, "hang", "cancelled");
        }
        finally
        {
            await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_call_in_flight_at_shutdown_is_recorded_as_unknown()
    {
        var host = await _faulty.StartGatewayAsync(upstreamTimeout: "10m");
        try
        {
            var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));
            var call = PostCallAsync(host, session, "\"u-1\"", "hang");
            await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang") && FaultyServer.HasId(m, "\"u-1\""), "the hang call");

            var events = await StopAndVerifyAsync(host); // the call is still in flight: the upstream never answers it
            AssertForwardedCall(events, "\"u-1\"", session, "hang", "unknown");
            try
            {
                (await call).Dispose();
            }
            catch (HttpRequestException)
            {
                // whatever the agent got at shutdown is not what this test is about
            }
        }
        finally
        {
            await host.DisposeAsync();
        }
    }

    /// <summary>
    /// README: "On shutdown (SIGTERM), sessions are closed, the queue is drained, calls still in flight are written as
    /// unknown, audit_stop is written and every sink is flushed." Here through <c>sidecar run</c> itself, signalled as
    /// systemd and Kubernetes stop it, with a call the upstream never answers.
    /// </summary>
    [Fact]
    public async Task Sigterm_with_a_call_in_flight_records_the_call_and_ends_the_trail_with_audit_stop()
    {
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-sigterm-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            var port = EverythingServer.FreeLoopbackPort();
            var config = Path.Combine(folder, "sidecar.json");
            await File.WriteAllTextAsync(Path.Combine(folder, "policy.json"), FaultyServer.Policy);
            await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["listen"] = $"127.0.0.1:{port}",
                ["mcpServers"] = new Dictionary<string, object> { [FaultyServer.Name] = _faulty.ServerConfig() },
                ["policy"] = "policy.json",
                ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "10m" },
                ["audit"] = new Dictionary<string, object> { ["file"] = "audit.jsonl" },
            }));
            var auditFile = Path.Combine(folder, "audit.jsonl");
            using var gateway = SidecarProcess.Start(config);
            await gateway.WaitUntilReadyAsync(_http, port);
            var url = new Uri($"http://127.0.0.1:{port}/servers/{FaultyServer.Name}/mcp");
            var session = await RawMcp.OpenSessionAsync(_http, url);
            var call = PostCallAsync(url, session, "\"t-1\"", "hang");
            await _faulty.WaitForAsync(m => FaultyServer.IsCallOf(m, "hang") && FaultyServer.HasId(m, "\"t-1\""), "the hang call");

            await gateway.TerminateAsync();
            var exit = await gateway.WaitForExitAsync();
            try
            {
                (await call).Dispose();
            }
            catch (HttpRequestException)
            {
                // what the agent got as the gateway went away is not what this test is about
            }

            var events = ReadEvents(auditFile);
            var diagnostics = $"exit {exit}; trail:\n{string.Join('\n', events.Select(e => e.GetRawText()))}\nstderr:\n{gateway.Stderr}";
            Assert.True(FindCall(events, "\"t-1\"") is not null, "the call in flight has no record; " + diagnostics);
            Assert.True(events[^1].GetProperty("type").GetString() == "audit_stop", "the trail does not end with audit_stop; " + diagnostics);
            var (code, output, error) = await GatewayAuditTests.VerifyAsync("--strict", auditFile);
            Assert.True(code == 0, output + error);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
