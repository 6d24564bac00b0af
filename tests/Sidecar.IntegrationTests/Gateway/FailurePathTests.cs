using System.Net;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The failure paths README.md promises, through the public surface only: a real gateway over HTTP in front of real
/// upstream processes (tests/fixtures/mcp-servers/faulty.cjs), what the agent gets back, and what reached the
/// upstream (its own record of every line it received) or happened to its process. Nothing here reaches into the
/// session layer, so these keep passing across a rewrite of it.
/// </summary>
public sealed class FailurePathTests : IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };
    private readonly FaultyServer _faulty = new();

    public void Dispose()
    {
        _http.Dispose();
        _faulty.Dispose();
    }

    private static string Marker() => "m-" + Guid.NewGuid().ToString("N");

    private static int ErrorCode(JsonElement answer)
    {
        Assert.True(answer.TryGetProperty("error", out var error), "expected an error, got " + answer.GetRawText());
        return error.GetProperty("code").GetInt32();
    }

    private async Task<JsonElement> CallAsync(SidecarHost host, string session, string rawId, string tool, string arguments = "{}")
    {
        using var response = await RawMcp.PostAsync(_http, host.McpUrl(FaultyServer.Name), RawMcp.CallBody(rawId, tool, arguments), session);
        var answer = await RawMcp.AnswerAsync(response);
        Assert.Equal(rawId, answer.GetProperty("id").GetRawText());
        return answer;
    }

    /// <summary>README, limits.upstreamTimeout: "a request the upstream doesn't answer in time gets -32017 and the upstream gets notifications/cancelled".</summary>
    [Theory]
    [InlineData("7")]
    [InlineData("\"hang-7\"")]
    public async Task A_call_the_upstream_never_answers_gets_32017_and_the_upstream_gets_notifications_cancelled_for_its_id(string rawId)
    {
        await using var host = await _faulty.StartGatewayAsync(upstreamTimeout: "2s");
        var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));

        var answer = await CallAsync(host, session, rawId, "hang");

        Assert.Equal(-32017, ErrorCode(answer));
        Assert.Contains("did not answer", answer.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        var cancelled = await _faulty.WaitForAsync(m => FaultyServer.IsCancellationOf(m, rawId), $"notifications/cancelled for request {rawId}");
        Assert.False(cancelled.TryGetProperty("id", out _), "notifications/cancelled is a notification");
        // The call itself reached the upstream exactly once, before its cancellation.
        var received = _faulty.Received();
        var call = Assert.Single(received, m => FaultyServer.IsCallOf(m, "hang"));
        Assert.Equal(rawId, call.GetProperty("id").GetRawText());
        Assert.True(received.FindIndex(m => FaultyServer.IsCallOf(m, "hang")) < received.FindIndex(m => FaultyServer.IsCancellationOf(m, rawId)));
    }

    /// <summary>The control for the refund tests: calls that succeed spend their tokens, and the one past the limit never leaves.</summary>
    [Fact]
    public async Task Successful_calls_spend_their_tokens_and_the_next_is_rate_limited_before_the_upstream()
    {
        await using var host = await _faulty.StartGatewayAsync();
        var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));
        for (var i = 1; i <= FaultyServer.OkMax; i++)
        {
            var ok = await CallAsync(host, session, i.ToString(System.Globalization.CultureInfo.InvariantCulture), "ok", """{"message":"fine"}""");
            Assert.True(ok.TryGetProperty("result", out _), ok.GetRawText());
        }
        var marker = Marker();
        var limited = await CallAsync(host, session, "99", "ok", $$"""{"message":"{{marker}}"}""");

        Assert.Equal(-32011, ErrorCode(limited));
        Assert.Equal(0, limited.GetProperty("error").GetProperty("data").GetProperty("remaining").GetInt64());
        Assert.Equal(FaultyServer.OkMax, _faulty.CallsOf("ok").Count);
        Assert.DoesNotContain(_faulty.Received(), m => m.GetRawText().Contains(marker, StringComparison.Ordinal));
    }

    /// <summary>README: "A call that fails upstream gives its rate-limit tokens back" (here: a JSON-RPC error from the upstream).</summary>
    [Fact]
    public async Task Calls_the_upstream_answers_with_a_json_rpc_error_give_their_tokens_back()
    {
        await using var host = await _faulty.StartGatewayAsync();
        var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));

        // Twice the limit, and one more: with refunds, every one of them reaches the upstream and gets its error.
        for (var i = 1; i <= (2 * FaultyServer.FailMax) + 1; i++)
        {
            var rawId = i.ToString(System.Globalization.CultureInfo.InvariantCulture);
            var answer = await CallAsync(host, session, rawId, "fail");
            Assert.True(ErrorCode(answer) == -32000, $"call {i} of fail: {answer.GetRawText()}");
            Assert.Equal("fail: this tool always fails", answer.GetProperty("error").GetProperty("message").GetString());
            Assert.Single(_faulty.CallsOf("fail"), m => FaultyServer.HasId(m, rawId));
        }
    }

    /// <summary>README, -32016: "The upstream server is unreachable, crashed, or closed the session (tokens taken for the call are given back)".</summary>
    [Fact]
    public async Task Calls_whose_upstream_dies_mid_call_get_32016_and_give_their_tokens_back()
    {
        await using var host = await _faulty.StartGatewayAsync();
        var session = await RawMcp.OpenSessionAsync(_http, host.McpUrl(FaultyServer.Name));

        // die's limit is DieMax; each call kills the process, and the next message respawns it.
        for (var i = 1; i <= FaultyServer.DieMax + 1; i++)
        {
            var rawId = "\"die-" + i.ToString(System.Globalization.CultureInfo.InvariantCulture) + "\"";
            var answer = await CallAsync(host, session, rawId, "die");
            Assert.True(ErrorCode(answer) == -32016, $"call {i} of die: {answer.GetRawText()}");
            Assert.Single(_faulty.CallsOf("die"), m => FaultyServer.HasId(m, rawId));
        }
        Assert.Equal(FaultyServer.DieMax + 1, _faulty.Pids().Count); // one process per call: each died with its call

        // The session goes on: the respawned server answers, and the tokens of ok were never touched.
        var ok = await CallAsync(host, session, "100", "ok", """{"message":"after the crashes"}""");
        Assert.Contains("ok: after the crashes", ok.GetRawText(), StringComparison.Ordinal);
    }

    /// <summary>README, Endpoints: "DELETE /servers/{name}/mcp: Ends the session and its upstream session (a stdio process is stopped)".</summary>
    [Theory]
    [InlineData(false)] // a server that exits when its stdin closes
    [InlineData(true)]  // a server that ignores it and has to be killed
    public async Task Delete_stops_the_sessions_stdio_process(bool linger)
    {
        await using var host = await _faulty.StartGatewayAsync(linger: linger);
        var url = host.McpUrl(FaultyServer.Name);
        var session = await RawMcp.OpenSessionAsync(_http, url);
        var ok = await CallAsync(host, session, "1", "ok", """{"message":"alive"}""");
        Assert.True(ok.TryGetProperty("result", out _), ok.GetRawText());
        var pid = Assert.Single(_faulty.Pids());
        Assert.True(Processes.IsAlive(pid), $"the session's server (pid {pid}) is not running");
        Assert.Contains(FaultyServer.Script, Processes.CommandLine(pid), StringComparison.Ordinal);

        using (var delete = new HttpRequestMessage(HttpMethod.Delete, url))
        {
            delete.Headers.Add("Mcp-Session-Id", session);
            using var deleted = await _http.SendAsync(delete);
            Assert.Equal(HttpStatusCode.OK, deleted.StatusCode);
        }

        await Processes.WaitForExitAsync(pid, FaultyServer.WaitBound, "the deleted session's stdio server");
        using var after = await RawMcp.PostAsync(_http, url, RawMcp.CallBody("2", "ok"), session);
        Assert.Equal(HttpStatusCode.NotFound, after.StatusCode);
        Assert.Single(_faulty.Pids()); // nothing respawned it
    }

    /// <summary>README, -32016 "unreachable": a stdio server that cannot be started (or dies at once) opens no session.</summary>
    [Theory]
    [InlineData(true)]  // the command does not exist
    [InlineData(false)] // the command runs, but the process exits at once
    public async Task An_upstream_that_cannot_start_fails_initialize_with_32016_and_opens_no_session(bool missingCommand)
    {
        string config;
        if (missingCommand)
        {
            config = """{ "mcpServers": { "faulty": { "command": "sidecar-no-such-command-7f3a", "args": [] } }, "policy": "policy.json" }""";
        }
        else
        {
            _faulty.ExitAtOnceFromNowOn();
            config = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["mcpServers"] = new Dictionary<string, object> { [FaultyServer.Name] = _faulty.ServerConfig() },
                ["policy"] = "policy.json",
            });
        }
        await using var host = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = FaultyServer.Policy });

        using var response = await RawMcp.PostAsync(_http, host.McpUrl(FaultyServer.Name), RawMcp.InitializeBody, null);
        var answer = await RawMcp.AnswerAsync(response);

        Assert.Equal(-32016, ErrorCode(answer));
        Assert.Equal("0", answer.GetProperty("id").GetRawText());
        Assert.Contains("faulty", answer.GetProperty("error").GetProperty("message").GetString(), StringComparison.Ordinal);
        Assert.False(response.Headers.Contains("Mcp-Session-Id"));
        // The session is dropped right after its answer is written: wait for it (bounded), never for a time.
        var deadline = DateTime.UtcNow + FaultyServer.WaitBound;
        string ready;
        while (!(ready = await _http.GetStringAsync(new Uri(host.BaseUrl, "/readyz"))).Contains(" 0 sessions,", StringComparison.Ordinal))
        {
            Assert.True(DateTime.UtcNow < deadline, "the failed session was kept: " + ready);
            await Task.Delay(20);
        }
        if (!missingCommand)
        {
            Assert.Single(_faulty.Pids()); // it did start, and exited
        }
    }
}
