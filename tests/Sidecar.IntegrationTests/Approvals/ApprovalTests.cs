using System.Net;
using System.Net.Http.Headers;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Approvals;

/// <summary>
/// Human approval end to end: the real daemon with an admin API in front of server-everything (over stdio, through a
/// recorder that shows what reached the server), API-key identities, the official C# client and raw HTTP. A held
/// call is released exactly once, refused on a denial, answered -32012 when the hold runs out (and passes once on
/// the identical retry after approval), expires, and is announced to a signed webhook; the admin API wants its token.
/// </summary>
public sealed class ApprovalTests : IAsyncLifetime
{
    private const string OpsKey = "sk-ops-approvals-5b1c";
    private const string OtherKey = "sk-other-approvals-9e2d";
    private const string AdminToken = "admin-token-for-tests-0123456789";
    private const string WebhookKey = "webhook-hmac-key-for-tests-abcdef";
    private const string Policy = """
        { "version": "1", "default": "deny",
          "tools": {
            "echo": {},
            "get-sum": { "action": "require_approval", "reason": "sums need a person", "approval_timeout": "1m" },
            "get-env": { "action": "require_approval", "approval_timeout": "2s" }
          } }
        """;

    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(30);
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(60) };
    private readonly string _record = Path.Combine(Path.GetTempPath(), $"sidecar-approvals-{Guid.NewGuid():N}.jsonl");
    private AuditCollector _webhook = null!;
    private SidecarHost? _sidecar;

    private static string Sha256(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        _webhook = await AuditCollector.StartAsync();
    }

    public async Task DisposeAsync()
    {
        if (_sidecar is not null)
        {
            await _sidecar.DisposeAsync();
        }
        await _webhook.DisposeAsync();
        _http.Dispose();
        File.Delete(_record);
    }

    private async Task<SidecarHost> StartAsync(string hold = "20s", string mode = "enforce", int maxInFlight = 1024)
    {
        var recorder = Repo.PathOf("tests", "fixtures", "recorder", "record-stdio.cjs");
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { recorder, _record, "node", McpServerFixtures.EverythingEntry, "stdio" } },
            },
            ["identities"] = new Dictionary<string, object>
            {
                ["apiKeys"] = new Dictionary<string, object>
                {
                    ["ops-agent"] = new Dictionary<string, string> { ["sha256"] = Sha256(OpsKey), ["grant"] = "ops" },
                    ["other-agent"] = new Dictionary<string, string> { ["sha256"] = Sha256(OtherKey), ["grant"] = "ops" },
                },
            },
            ["grants"] = new Dictionary<string, object>
            {
                ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["everything"] = "policy.json" } },
            },
            ["admin"] = new Dictionary<string, object> { ["listen"] = "127.0.0.1:0", ["token"] = AdminToken },
            ["approvals"] = new Dictionary<string, object>
            {
                ["hold"] = hold,
                ["webhook"] = new Dictionary<string, object>
                {
                    ["url"] = _webhook.Url.ToString(),
                    ["headers"] = new Dictionary<string, string> { ["X-Team"] = "platform" },
                    ["hmacKey"] = WebhookKey,
                },
            },
            ["limits"] = new Dictionary<string, object> { ["maxInFlight"] = maxInFlight, ["upstreamTimeout"] = "30s" },
        });
        var policy = mode == "shadow" ? Policy.Replace("\"default\": \"deny\",", "\"default\": \"deny\", \"mode\": \"shadow\",", StringComparison.Ordinal) : Policy;
        _sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = policy });
        return _sidecar;
    }

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;

    private Task<McpClient> ClientAsync(SidecarHost sidecar, string key = OpsKey)
    {
        var transport = new HttpClientTransport(new HttpClientTransportOptions
        {
            Endpoint = sidecar.McpUrl("everything"),
            TransportMode = HttpTransportMode.StreamableHttp,
            AdditionalHeaders = new Dictionary<string, string> { ["Authorization"] = "Bearer " + key },
        }, NullLoggerFactory.Instance);
        return McpClient.CreateAsync(transport, new McpClientOptions(), NullLoggerFactory.Instance, Timeout());
    }

    private static Dictionary<string, object?> Sum(int a, int b) => new() { ["a"] = a, ["b"] = b };

    // ---- The admin API ---------------------------------------------------------------------------------------------

    private async Task<(HttpStatusCode Status, JsonElement Body)> AdminAsync(SidecarHost sidecar, HttpMethod method, string path, string? body = null,
        string? token = AdminToken)
    {
        using var request = new HttpRequestMessage(method, new Uri(sidecar.AdminUrl!, path));
        if (token is not null)
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        }
        if (body is not null)
        {
            request.Content = new StringContent(body, Encoding.UTF8, "application/json");
        }
        using var response = await _http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    private async Task<JsonElement[]> PendingAsync(SidecarHost sidecar)
    {
        var (status, body) = await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals");
        Assert.Equal(HttpStatusCode.OK, status);
        return [.. body.GetProperty("approvals").EnumerateArray()];
    }

    /// <summary>Waits (bounded) until <paramref name="count"/> approvals are pending, other than those in <paramref name="except"/>.</summary>
    private async Task<JsonElement> WaitForPendingAsync(SidecarHost sidecar, params string[] except)
    {
        var deadline = DateTime.UtcNow + s_bound;
        while (true)
        {
            var fresh = (await PendingAsync(sidecar)).Where(a => !except.Contains(a.GetProperty("id").GetString())).ToList();
            if (fresh.Count > 0)
            {
                return fresh[0];
            }
            Assert.True(DateTime.UtcNow < deadline, "no approval became pending");
            await Task.Delay(50);
        }
    }

    private Task<(HttpStatusCode Status, JsonElement Body)> DecideAsync(SidecarHost sidecar, string id, string verb, string? body = null)
        => AdminAsync(sidecar, HttpMethod.Post, $"/v1/approvals/{id}/{verb}", body);

    // ---- What reached the server and what the trail says ------------------------------------------------------------

    /// <summary>The <c>tools/call</c> lines for <paramref name="tool"/> that reached the server.</summary>
    private List<JsonElement> CallsAtUpstream(string tool)
    {
        if (!File.Exists(_record))
        {
            return [];
        }
        using var stream = new FileStream(_record, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return [.. reader.ReadToEnd().Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => JsonDocument.Parse(l).RootElement.Clone())
            .Where(m => m.TryGetProperty("method", out var method) && method.GetString() == "tools/call"
                && m.GetProperty("params").GetProperty("name").GetString() == tool)];
    }

    private static async Task<List<JsonElement>> AuditEventsAsync(SidecarHost sidecar, string type, int atLeast = 1)
    {
        var deadline = DateTime.UtcNow + s_bound;
        while (true)
        {
            var events = new List<JsonElement>();
            if (File.Exists(sidecar.AuditFile))
            {
                await using var stream = new FileStream(sidecar.AuditFile, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
                using var reader = new StreamReader(stream, Encoding.UTF8);
                events = [.. (await reader.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    .Select(l => JsonDocument.Parse(l).RootElement.Clone()).Where(e => e.GetProperty("type").GetString() == type)];
            }
            if (events.Count >= atLeast || DateTime.UtcNow > deadline)
            {
                return events;
            }
            await Task.Delay(100);
        }
    }

    // ---- Raw HTTP calls ------------------------------------------------------------------------------------------

    private async Task<string> OpenRawSessionAsync(SidecarHost sidecar, string key = OpsKey)
    {
        using var response = await RawMcp.PostAsync(_http, sidecar.McpUrl("everything"), RawMcp.InitializeBody, null, configure: Bearer(key));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var session = response.Headers.GetValues("Mcp-Session-Id").Single();
        using var initialized = await RawMcp.PostAsync(_http, sidecar.McpUrl("everything"), """{"jsonrpc":"2.0","method":"notifications/initialized"}""", session, configure: Bearer(key));
        Assert.Equal(HttpStatusCode.Accepted, initialized.StatusCode);
        return session;
    }

    private static Action<HttpRequestMessage> Bearer(string key) => request => request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);

    private async Task<JsonElement> RawCallAsync(SidecarHost sidecar, string session, string body, string key = OpsKey)
    {
        using var response = await RawMcp.PostAsync(_http, sidecar.McpUrl("everything"), body, session, configure: Bearer(key));
        return await RawMcp.AnswerAsync(response);
    }

    // ---- Tests -----------------------------------------------------------------------------------------------------

    [Fact]
    public async Task An_approval_given_within_the_hold_forwards_the_call_exactly_once_and_a_second_identical_call_needs_a_new_one()
    {
        var sidecar = await StartAsync(hold: "20s");
        await using var client = await ClientAsync(sidecar);

        var call = client.CallToolAsync("get-sum", Sum(2, 3), cancellationToken: Timeout()).AsTask();
        var approval = await WaitForPendingAsync(sidecar);
        Assert.Equal("everything", approval.GetProperty("server").GetString());
        Assert.Equal("get-sum", approval.GetProperty("tool").GetString());
        Assert.Equal("ops-agent", approval.GetProperty("identity").GetString());
        Assert.Equal("ops", approval.GetProperty("grant").GetString());
        Assert.Equal("pending", approval.GetProperty("status").GetString());
        Assert.Equal(2, approval.GetProperty("arguments").GetProperty("a").GetInt32());
        Assert.Equal(64, approval.GetProperty("argumentsSha256").GetString()!.Length);
        Assert.True(approval.GetProperty("expiresAt").GetDateTimeOffset() > approval.GetProperty("createdAt").GetDateTimeOffset());
        Assert.False(call.IsCompleted);
        Assert.Empty(CallsAtUpstream("get-sum")); // held: nothing reached the server

        var id = approval.GetProperty("id").GetString()!;
        var (status, decided) = await DecideAsync(sidecar, id, "approve", """{ "reason": "looks right", "by": "alice" }""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("approved", decided.GetProperty("status").GetString());
        Assert.Equal("alice", decided.GetProperty("decidedBy").GetString());

        var result = await call;
        Assert.NotEqual(true, result.IsError);
        Assert.Contains("5", ((TextContentBlock)result.Content[0]).Text, StringComparison.Ordinal);
        Assert.Single(CallsAtUpstream("get-sum"));

        // Approving again: it was decided already.
        Assert.Equal(HttpStatusCode.Conflict, (await DecideAsync(sidecar, id, "approve")).Status);

        // The approval covered exactly that call: the identical one waits for a new approval.
        var second = client.CallToolAsync("get-sum", Sum(2, 3), cancellationToken: Timeout()).AsTask();
        var next = await WaitForPendingAsync(sidecar);
        Assert.NotEqual(id, next.GetProperty("id").GetString());
        var (denied, _) = await DecideAsync(sidecar, next.GetProperty("id").GetString()!, "deny", """{ "reason": "once is enough" }""");
        Assert.Equal(HttpStatusCode.OK, denied);
        var refused = await Assert.ThrowsAsync<McpProtocolException>(() => second);
        Assert.Equal(-32013, (int)refused.ErrorCode);
        Assert.Single(CallsAtUpstream("get-sum"));

        // The trail: requested, granted by alice, and the released call's event carries the approval's id.
        var granted = Assert.Single(await AuditEventsAsync(sidecar, "approval_granted"));
        Assert.Equal(id, granted.GetProperty("approvalId").GetString());
        Assert.Equal("alice", granted.GetProperty("decidedBy").GetString());
        Assert.Equal("looks right", granted.GetProperty("reason").GetString());
        Assert.Equal(2, (await AuditEventsAsync(sidecar, "approval_requested", 2)).Count);
        Assert.Single(await AuditEventsAsync(sidecar, "approval_denied"));
        var calls = await AuditEventsAsync(sidecar, "tool_call", 2);
        var released = Assert.Single(calls, e => e.TryGetProperty("approvalId", out var a) && a.GetString() == id);
        Assert.Equal("allow", released.GetProperty("decision").GetString());
        Assert.Equal("ops-agent", released.GetProperty("identity").GetString());
        Assert.Equal("ok", released.GetProperty("outcome").GetString());

        var all = await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals?status=all");
        Assert.Contains(all.Body.GetProperty("approvals").EnumerateArray(), a => a.GetProperty("id").GetString() == id && a.GetProperty("status").GetString() == "used");
    }

    [Fact]
    public async Task A_denied_call_gets_32013_with_the_persons_reason_and_never_reaches_the_server()
    {
        var sidecar = await StartAsync(hold: "20s");
        await using var client = await ClientAsync(sidecar);
        var call = client.CallToolAsync("get-sum", Sum(40, 2), cancellationToken: Timeout()).AsTask();
        var approval = await WaitForPendingAsync(sidecar);
        var (status, _) = await DecideAsync(sidecar, approval.GetProperty("id").GetString()!, "deny", """{ "reason": "not during the freeze", "by": "bob" }""");
        Assert.Equal(HttpStatusCode.OK, status);

        var refused = await Assert.ThrowsAsync<McpProtocolException>(() => call);
        Assert.Equal(-32013, (int)refused.ErrorCode);
        Assert.Contains("not during the freeze", refused.Message, StringComparison.Ordinal);
        Assert.Empty(CallsAtUpstream("get-sum"));
        var denial = Assert.Single(await AuditEventsAsync(sidecar, "approval_denied"));
        Assert.Equal("bob", denial.GetProperty("decidedBy").GetString());
        var record = Assert.Single(await AuditEventsAsync(sidecar, "tool_call"));
        Assert.Equal(-32013, record.GetProperty("errorCode").GetInt32());
        Assert.Equal("denied", record.GetProperty("approvalStatus").GetString());
    }

    [Fact]
    public async Task When_the_hold_runs_out_the_agent_gets_32012_and_the_identical_retry_passes_once_after_approval_whatever_its_key_order()
    {
        var sidecar = await StartAsync(hold: "1s");
        var session = await OpenRawSessionAsync(sidecar);

        var first = await RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-sum", """{"a":7,"b":8}"""));
        var error = first.GetProperty("error");
        Assert.Equal(-32012, error.GetProperty("code").GetInt32());
        var data = error.GetProperty("data");
        Assert.Equal("pending", data.GetProperty("status").GetString());
        Assert.Equal("require_approval", data.GetProperty("decision").GetString());
        Assert.True(data.GetProperty("retryAfterMs").GetInt32() > 0);
        var id = data.GetProperty("approvalId").GetString()!;
        Assert.Equal(id, Assert.Single(await PendingAsync(sidecar)).GetProperty("id").GetString());

        // The same call again while pending: the same approval, not a second one.
        var again = await RawCallAsync(sidecar, session, RawMcp.CallBody("2", "get-sum", """{"a":7,"b":8}"""));
        Assert.Equal(id, again.GetProperty("error").GetProperty("data").GetProperty("approvalId").GetString());
        Assert.Single(await PendingAsync(sidecar));

        Assert.Equal(HttpStatusCode.OK, (await DecideAsync(sidecar, id, "approve")).Status);

        // Other values are another call: a new approval, not this one.
        var other = await RawCallAsync(sidecar, session, RawMcp.CallBody("3", "get-sum", """{"a":7,"b":9}"""));
        Assert.NotEqual(id, other.GetProperty("error").GetProperty("data").GetProperty("approvalId").GetString());
        Assert.Empty(CallsAtUpstream("get-sum"));

        // Key order and whitespace do not make another call: the retry passes, once.
        var retry = await RawCallAsync(sidecar, session, RawMcp.CallBody("4", "get-sum", """{ "b" : 8,  "a":7 }"""));
        Assert.True(retry.TryGetProperty("result", out var result), retry.ToString());
        Assert.Contains("15", result.GetProperty("content")[0].GetProperty("text").GetString(), StringComparison.Ordinal);
        Assert.Single(CallsAtUpstream("get-sum"));

        var twice = await RawCallAsync(sidecar, session, RawMcp.CallBody("5", "get-sum", """{"a":7,"b":8}"""));
        Assert.Equal(-32012, twice.GetProperty("error").GetProperty("code").GetInt32());
        Assert.NotEqual(id, twice.GetProperty("error").GetProperty("data").GetProperty("approvalId").GetString());
        Assert.Single(CallsAtUpstream("get-sum"));

        // Another identity's identical call is not covered by this identity's approvals.
        var otherSession = await OpenRawSessionAsync(sidecar, OtherKey);
        var stranger = await RawCallAsync(sidecar, otherSession, RawMcp.CallBody("6", "get-sum", """{"a":7,"b":9}"""), OtherKey);
        Assert.Equal(-32012, stranger.GetProperty("error").GetProperty("code").GetInt32());
    }

    [Fact]
    public async Task A_pending_approval_expires_after_its_approval_timeout_and_an_identical_call_asks_again()
    {
        var sidecar = await StartAsync(hold: "20s");
        var session = await OpenRawSessionAsync(sidecar);

        // approval_timeout 2s, shorter than the hold: the held call hears of the expiry.
        var held = await RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-env"));
        var data = held.GetProperty("error").GetProperty("data");
        Assert.Equal(-32012, held.GetProperty("error").GetProperty("code").GetInt32());
        Assert.Equal("expired", data.GetProperty("status").GetString());
        var id = data.GetProperty("approvalId").GetString()!;

        var (status, body) = await DecideAsync(sidecar, id, "approve");
        Assert.Equal(HttpStatusCode.Conflict, status);
        Assert.Contains("expired", body.GetProperty("error").GetString(), StringComparison.Ordinal);
        var expired = Assert.Single(await AuditEventsAsync(sidecar, "approval_expired"));
        Assert.Equal(id, expired.GetProperty("approvalId").GetString());
        Assert.Equal("sidecar", expired.GetProperty("decidedBy").GetString());

        var retry = RawCallAsync(sidecar, session, RawMcp.CallBody("2", "get-env"));
        var next = await WaitForPendingAsync(sidecar);
        Assert.NotEqual(id, next.GetProperty("id").GetString());
        await DecideAsync(sidecar, next.GetProperty("id").GetString()!, "approve");
        Assert.True((await retry).TryGetProperty("result", out _));
        Assert.Equal(HttpStatusCode.NotFound, (await DecideAsync(sidecar, "0123456789abcdef0123456789abcdef", "approve")).Status);
    }

    [Fact]
    public async Task The_webhook_gets_each_new_approval_signed_with_the_hmac_key()
    {
        var sidecar = await StartAsync(hold: "0s");
        var session = await OpenRawSessionAsync(sidecar);
        var answer = await RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-sum", """{"a":1,"b":1}"""));
        var id = answer.GetProperty("error").GetProperty("data").GetProperty("approvalId").GetString();

        var deadline = DateTime.UtcNow + s_bound;
        while (_webhook.Requests.Count == 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        var delivery = Assert.Single(_webhook.Requests);
        var approval = JsonDocument.Parse(delivery.Body).RootElement;
        Assert.Equal(id, approval.GetProperty("id").GetString());
        Assert.Equal("pending", approval.GetProperty("status").GetString());
        Assert.Equal("get-sum", approval.GetProperty("tool").GetString());
        Assert.Equal("platform", delivery.Headers["X-Team"]);
        var expected = "sha256=" + Convert.ToHexStringLower(HMACSHA256.HashData(Encoding.UTF8.GetBytes(WebhookKey), Encoding.UTF8.GetBytes(delivery.Body)));
        Assert.Equal(expected, delivery.Headers["X-Sidecar-Signature"]);
    }

    [Fact]
    public async Task A_webhook_that_is_down_does_not_hold_calls_back()
    {
        _webhook.Status = 503;
        var sidecar = await StartAsync(hold: "0s");
        var session = await OpenRawSessionAsync(sidecar);
        for (var i = 0; i < 3; i++)
        {
            var answer = await RawCallAsync(sidecar, session, RawMcp.CallBody(i.ToString(), "get-sum", $$"""{"a":{{i}},"b":1}"""));
            Assert.Equal(-32012, answer.GetProperty("error").GetProperty("code").GetInt32());
        }
        var echo = await RawCallAsync(sidecar, session, RawMcp.CallBody("9", "echo", """{"message":"still here"}"""));
        Assert.True(echo.TryGetProperty("result", out _));
        Assert.Equal(3, (await PendingAsync(sidecar)).Length);

        // The failed deliveries are retried with backoff (the first after about a second), and counted.
        var deadline = DateTime.UtcNow + s_bound;
        string ready;
        do
        {
            await Task.Delay(200);
            ready = await _http.GetStringAsync(new Uri(sidecar.BaseUrl, "/readyz"));
        }
        // A retry is counted as it starts: wait for its request to arrive too.
        while ((!System.Text.RegularExpressions.Regex.IsMatch(ready, @"webhook 0 delivered, [1-9]\d* retries") || _webhook.Requests.Count < 4)
               && DateTime.UtcNow < deadline);
        Assert.Matches(@"approvals: 3 pending, webhook 0 delivered, [1-9]\d* retries", ready);
        Assert.True(_webhook.Requests.Count >= 4, $"{_webhook.Requests.Count} deliveries arrived");
    }

    [Fact]
    public async Task The_agent_gets_progress_while_its_call_is_held()
    {
        var sidecar = await StartAsync(hold: "20s");
        await using var client = await ClientAsync(sidecar);
        var progressed = new TaskCompletionSource<ProgressNotificationValue>(TaskCreationOptions.RunContinuationsAsynchronously);
        var call = client.CallToolAsync("get-sum", Sum(1, 2), progress: new SyncProgress(v => progressed.TrySetResult(v)), cancellationToken: Timeout()).AsTask();
        var approval = await WaitForPendingAsync(sidecar);

        var first = await progressed.Task.WaitAsync(TimeSpan.FromSeconds(15));
        Assert.Contains(approval.GetProperty("id").GetString()!, first.Message, StringComparison.Ordinal);
        Assert.False(call.IsCompleted);
        await DecideAsync(sidecar, approval.GetProperty("id").GetString()!, "approve");
        Assert.NotEqual(true, (await call).IsError);
    }

    [Fact]
    public async Task A_held_call_keeps_no_in_flight_place()
    {
        var sidecar = await StartAsync(hold: "20s", maxInFlight: 1);
        var session = await OpenRawSessionAsync(sidecar);
        var held = RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-sum", """{"a":2,"b":2}"""));
        var approval = await WaitForPendingAsync(sidecar);

        // With maxInFlight 1 and a call waiting for a person, other calls still get through.
        var echo = await RawCallAsync(sidecar, session, RawMcp.CallBody("2", "echo", """{"message":"meanwhile"}"""));
        Assert.True(echo.TryGetProperty("result", out _), echo.ToString());

        await DecideAsync(sidecar, approval.GetProperty("id").GetString()!, "approve");
        Assert.True((await held).TryGetProperty("result", out _));
    }

    [Fact]
    public async Task In_shadow_mode_a_call_that_needs_approval_is_recorded_as_require_approval_and_forwarded_without_waiting()
    {
        var sidecar = await StartAsync(hold: "20s", mode: "shadow");
        var session = await OpenRawSessionAsync(sidecar);
        var answer = await RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-sum", """{"a":2,"b":5}"""));
        Assert.True(answer.TryGetProperty("result", out _), answer.ToString());
        Assert.Empty(await PendingAsync(sidecar));
        var record = Assert.Single(await AuditEventsAsync(sidecar, "tool_call"));
        Assert.Equal("require_approval", record.GetProperty("decision").GetString());
        Assert.False(record.GetProperty("enforced").GetBoolean());
    }

    [Fact]
    public async Task The_admin_api_wants_its_token_and_lives_only_on_its_own_listener()
    {
        var sidecar = await StartAsync();
        Assert.Equal(HttpStatusCode.Unauthorized, (await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals", token: null)).Status);
        var (wrong, body) = await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals", token: AdminToken + "x");
        Assert.Equal(HttpStatusCode.Unauthorized, wrong);
        Assert.Contains("admin", body.GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(HttpStatusCode.Unauthorized, (await AdminAsync(sidecar, HttpMethod.Post, "/v1/reload", token: OpsKey)).Status);
        // The catalogue: every tool of the server under the server's own policy. This config has none (only grants'
        // policies), so anonymous use is denied everything.
        var (catalogued, catalogue) = await AdminAsync(sidecar, HttpMethod.Get, "/v1/tools");
        Assert.Equal(HttpStatusCode.OK, catalogued);
        var server = Assert.Single(catalogue.GetProperty("servers").EnumerateArray());
        Assert.Equal("everything", server.GetProperty("name").GetString());
        var tools = server.GetProperty("tools").EnumerateArray().ToDictionary(t => t.GetProperty("name").GetString()!);
        Assert.Contains("get-sum", tools.Keys);
        Assert.All(tools.Values, t => Assert.Equal("denied", t.GetProperty("decision").GetString()));
        Assert.All(tools.Values, t => Assert.StartsWith("sha256:", t.GetProperty("hash").GetString(), StringComparison.Ordinal));
        // /metrics on the admin listener too, with its token.
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(sidecar.AdminUrl!, "/metrics")))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
            using var metrics = await _http.SendAsync(request);
            Assert.Equal(HttpStatusCode.OK, metrics.StatusCode);
            Assert.Contains("sidecar_approvals_pending 0", await metrics.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        Assert.Equal(HttpStatusCode.Unauthorized, (await AdminAsync(sidecar, HttpMethod.Get, "/metrics", token: null)).Status);
        Assert.Equal(HttpStatusCode.NotFound, (await AdminAsync(sidecar, HttpMethod.Get, "/v1/nothing")).Status);

        // The agent listener has no admin API; the admin listener serves nothing of the agents'.
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(sidecar.BaseUrl, "/v1/approvals")))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
            Assert.Equal(HttpStatusCode.NotFound, (await _http.SendAsync(request)).StatusCode);
        }
        using (var request = new HttpRequestMessage(HttpMethod.Get, new Uri(sidecar.AdminUrl!, "/healthz")))
        {
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", AdminToken);
            Assert.Equal(HttpStatusCode.NotFound, (await _http.SendAsync(request)).StatusCode);
        }
        using var agent = await RawMcp.PostAsync(_http, new Uri(sidecar.AdminUrl!, "/servers/everything/mcp"), RawMcp.InitializeBody, null, configure: Bearer(OpsKey));
        Assert.Equal(HttpStatusCode.Unauthorized, agent.StatusCode);
    }

    [Fact]
    public async Task Reload_through_the_admin_api_applies_a_valid_config_and_returns_every_error_of_an_invalid_one()
    {
        var sidecar = await StartAsync();
        var (applied, body) = await AdminAsync(sidecar, HttpMethod.Post, "/v1/reload");
        Assert.Equal(HttpStatusCode.OK, applied);
        Assert.True(body.GetProperty("applied").GetBoolean());

        var policy = Path.Combine(sidecar.Folder, "policy.json");
        await File.WriteAllTextAsync(policy, """{ "version": "1", "default": "deny", "tools": { "echo": { "action": "maybe" } }, "extra": 1 }""");
        var (refused, errors) = await AdminAsync(sidecar, HttpMethod.Post, "/v1/reload");
        Assert.Equal(HttpStatusCode.UnprocessableEntity, refused);
        Assert.False(errors.GetProperty("applied").GetBoolean());
        var list = errors.GetProperty("errors").EnumerateArray().ToList();
        Assert.True(list.Count >= 2, errors.ToString());
        Assert.All(list, e => Assert.EndsWith("policy.json", e.GetProperty("file").GetString(), StringComparison.Ordinal));
        Assert.All(list, e => Assert.True(e.GetProperty("line").GetInt32() >= 1));
        Assert.Contains(list, e => e.GetProperty("path").GetString()!.Contains("extra", StringComparison.Ordinal));

        // The old policy still serves.
        var session = await OpenRawSessionAsync(sidecar);
        var echo = await RawCallAsync(sidecar, session, RawMcp.CallBody("1", "echo", """{"message":"old policy"}"""));
        Assert.True(echo.TryGetProperty("result", out _), echo.ToString());
        await File.WriteAllTextAsync(policy, Policy);

        // The admin token changes live; the admin listener does not (it needs a restart).
        var config = System.Text.Json.Nodes.JsonNode.Parse(await File.ReadAllTextAsync(sidecar.ConfigFile))!.AsObject();
        config["admin"]!["token"] = AdminToken + "-rotated";
        await File.WriteAllTextAsync(sidecar.ConfigFile, config.ToJsonString());
        Assert.Equal(HttpStatusCode.OK, (await AdminAsync(sidecar, HttpMethod.Post, "/v1/reload")).Status);
        Assert.Equal(HttpStatusCode.Unauthorized, (await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals")).Status);
        Assert.Equal(HttpStatusCode.OK, (await AdminAsync(sidecar, HttpMethod.Get, "/v1/approvals", token: AdminToken + "-rotated")).Status);

        config["admin"]!["listen"] = "127.0.0.1:1";
        await File.WriteAllTextAsync(sidecar.ConfigFile, config.ToJsonString());
        var (moved, why) = await AdminAsync(sidecar, HttpMethod.Post, "/v1/reload", token: AdminToken + "-rotated");
        Assert.Equal(HttpStatusCode.UnprocessableEntity, moved);
        var error = Assert.Single(why.GetProperty("errors").EnumerateArray());
        Assert.Equal("$.admin.listen", error.GetProperty("path").GetString());
        Assert.Contains("restart", error.GetProperty("message").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Closing_the_session_answers_its_held_call()
    {
        var sidecar = await StartAsync(hold: "20s");
        var session = await OpenRawSessionAsync(sidecar);
        var held = RawCallAsync(sidecar, session, RawMcp.CallBody("1", "get-sum", """{"a":3,"b":3}"""));
        await WaitForPendingAsync(sidecar);
        using (var delete = new HttpRequestMessage(HttpMethod.Delete, sidecar.McpUrl("everything")))
        {
            delete.Headers.Add("Mcp-Session-Id", session);
            delete.Headers.Authorization = new AuthenticationHeaderValue("Bearer", OpsKey);
            Assert.Equal(HttpStatusCode.OK, (await _http.SendAsync(delete)).StatusCode);
        }
        var answer = await held.WaitAsync(s_bound);
        Assert.Equal(-32016, answer.GetProperty("error").GetProperty("code").GetInt32());
        var record = Assert.Single(await AuditEventsAsync(sidecar, "tool_call"));
        Assert.Equal("require_approval", record.GetProperty("decision").GetString());
        Assert.Empty(CallsAtUpstream("get-sum"));
    }

    [Fact]
    public async Task The_cli_lists_and_approves_a_held_call_and_reloads_through_the_admin_api()
    {
        const string tokenVariable = "SIDECAR_TEST_APPROVALS_CLI_TOKEN";
        Environment.SetEnvironmentVariable(tokenVariable, AdminToken);
        var sidecar = await StartAsync(hold: "20s");
        await using var client = await ClientAsync(sidecar);
        var call = client.CallToolAsync("get-sum", Sum(20, 22), cancellationToken: Timeout()).AsTask();
        var id = (await WaitForPendingAsync(sidecar)).GetProperty("id").GetString()!;
        string[] admin = ["--admin", sidecar.AdminUrl!.ToString(), "--token-env", tokenVariable];

        var (listed, list, _) = await CliAsync(["approvals", "list", .. admin]);
        Assert.Equal(0, listed);
        Assert.Contains(id, list, StringComparison.Ordinal);
        Assert.Contains("everything/get-sum", list, StringComparison.Ordinal);
        Assert.Contains("ops-agent", list, StringComparison.Ordinal);

        var (approved, said, _) = await CliAsync(["approvals", "approve", id, "--reason", "checked by hand", "--by", "carol", .. admin]);
        Assert.Equal(0, approved);
        Assert.Contains("approved " + id, said, StringComparison.Ordinal);
        Assert.Contains("42", ((TextContentBlock)(await call).Content[0]).Text, StringComparison.Ordinal);

        var (again, _, refusal) = await CliAsync(["approvals", "deny", id, .. admin]);
        Assert.Equal(1, again);
        Assert.Contains("409", refusal, StringComparison.Ordinal);

        var (reloaded, reloadSaid, _) = await CliAsync(["reload", .. admin]);
        Assert.Equal(0, reloaded);
        Assert.Contains("reload", reloadSaid, StringComparison.Ordinal);

        var (unauthorized, _, why) = await CliAsync(["approvals", "list", "--admin", sidecar.AdminUrl!.ToString(), "--token-env", "PATH"]);
        Assert.Equal(1, unauthorized);
        Assert.Contains("401", why, StringComparison.Ordinal);
    }

    private static async Task<(int Exit, string Output, string Error)> CliAsync(string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var exit = await Sidecar.Cli.SidecarCli.InvokeAsync(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    private sealed class SyncProgress(Action<ProgressNotificationValue> report) : IProgress<ProgressNotificationValue>
    {
        public void Report(ProgressNotificationValue value) => report(value);
    }
}
