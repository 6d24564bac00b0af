using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.RateLimiting;

/// <summary>
/// Two real Sidecar processes sharing their limits through one real <c>redis-server</c> on loopback, in front of the
/// faulty stdio fixture, which logs every message it receives: what was admitted is counted at the upstream.
/// </summary>
public sealed class SharedLimitsTests : IAsyncLifetime
{
    private const string Key = "sk-shared-limits-4b1d";
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-shared-" + Guid.NewGuid().ToString("N"));
    private readonly List<SidecarProcess> _processes = [];
    private RedisServer _redis = null!;

    public async Task InitializeAsync()
    {
        Directory.CreateDirectory(_folder);
        await McpServerFixtures.EnsureInstalledAsync();
        _redis = await RedisServer.StartAsync(password: "pw-" + Guid.NewGuid().ToString("N")[..10]);
    }

    public async Task DisposeAsync()
    {
        foreach (var process in _processes)
        {
            if (!process.Process.HasExited)
            {
                await process.TerminateAsync();
                await process.Process.WaitForExitAsync(new CancellationTokenSource(TimeSpan.FromSeconds(15)).Token);
            }
            process.Dispose();
        }
        await _redis.DisposeAsync();
        _http.Dispose();
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
            // a process may still hold a file for a moment
        }
    }

    private string UpstreamLog => Path.Combine(_folder, "upstream.log");

    /// <summary>Starts two gateways on one config (each its own port), sharing <paramref name="policy"/>'s limits in Redis.</summary>
    private async Task<(int A, int B)> StartPairAsync(string policy, string failMode = "closed")
    {
        await File.WriteAllTextAsync(Path.Combine(_folder, "policy.json"), policy);
        var ports = new List<int>();
        var prefix = $"it-{Guid.NewGuid():N}:"; // one per pair: both replicas share it
        for (var i = 0; i < 2; i++)
        {
            var port = EverythingServer.FreeLoopbackPort();
            var config = Path.Combine(_folder, $"sidecar-{i}-{port}.json");
            await File.WriteAllTextAsync(config, JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["listen"] = $"127.0.0.1:{port}",
                ["mcpServers"] = new Dictionary<string, object>
                {
                    ["faulty"] = new Dictionary<string, object>
                    {
                        ["command"] = "node",
                        ["args"] = new[] { Path.Combine(McpServerFixtures.Directory, "faulty.cjs") },
                        ["env"] = new Dictionary<string, string> { ["FAULTY_LOG"] = UpstreamLog },
                        ["policy"] = "policy.json",
                    },
                },
                ["identities"] = new Dictionary<string, object>
                {
                    ["apiKeys"] = new Dictionary<string, object>
                    {
                        ["agent"] = new Dictionary<string, string> { ["sha256"] = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(Key))), ["grant"] = "ops" },
                    },
                },
                ["grants"] = new Dictionary<string, object> { ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "policy.json" } } },
                ["rateLimits"] = new Dictionary<string, object>
                {
                    ["store"] = "redis",
                    ["redis"] = new Dictionary<string, object>
                    {
                        // The password comes from the environment, as a deployment would give it.
                        ["connection"] = $"127.0.0.1:{_redis.Port},password=${{REDIS_PASSWORD}}",
                        ["prefix"] = prefix,
                        ["failMode"] = failMode,
                        ["timeout"] = "1s",
                    },
                },
                ["audit"] = new Dictionary<string, object> { ["file"] = $"audit-{i}.jsonl" },
            }));
            var process = SidecarProcess.Start(config, new Dictionary<string, string> { ["REDIS_PASSWORD"] = _redis.Password! });
            _processes.Add(process);
            await process.WaitUntilReadyAsync(_http, port);
            ports.Add(port);
        }
        return (ports[0], ports[1]);
    }

    private async Task<string> OpenAsync(int port)
    {
        using var response = await PostAsync(port, RawMcp.InitializeBody, null);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var session = response.Headers.GetValues("Mcp-Session-Id").Single();
        using var initialized = await PostAsync(port, """{"jsonrpc":"2.0","method":"notifications/initialized"}""", session);
        return session;
    }

    private Task<HttpResponseMessage> PostAsync(int port, string body, string? session)
        => RawMcp.PostAsync(_http, new Uri($"http://127.0.0.1:{port}/servers/faulty/mcp"), body, session,
            configure: request => request.Headers.Authorization = new System.Net.Http.Headers.AuthenticationHeaderValue("Bearer", Key));

    /// <summary>Calls <paramref name="tool"/>; the JSON-RPC error code, or 0 for a result.</summary>
    private async Task<int> CallAsync(int port, string session, string tool, string arguments = "{}", int id = 1)
    {
        using var response = await PostAsync(port, RawMcp.CallBody(id.ToString(), tool, arguments), session);
        var answer = await RawMcp.AnswerAsync(response);
        return answer.TryGetProperty("error", out var error) ? error.GetProperty("code").GetInt32() : 0;
    }

    /// <summary>The tools/call messages of <paramref name="tool"/> that reached the upstream (any replica's process).</summary>
    private int ReachedUpstream(string tool)
    {
        if (!File.Exists(UpstreamLog))
        {
            return 0;
        }
        using var stream = new FileStream(UpstreamLog, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd().Split('\n').Count(line => line.Contains("\"method\":\"tools/call\"", StringComparison.Ordinal)
            && line.Contains($"\"name\":\"{tool}\"", StringComparison.Ordinal));
    }

    private static string Policy(string limit, string failLimit = "") => $$"""
        { "version": "1", "default": "deny",
          "tools": { "ok": { "limits": [ {{limit}} ] }, "fail": { "limits": [ {{(failLimit.Length > 0 ? failLimit : limit)}} ] } } }
        """;

    [Theory]
    [InlineData("grant")]
    [InlineData("identity")]
    [InlineData("global")]
    public async Task Two_replicas_under_concurrent_load_admit_exactly_max_in_total(string scope)
    {
        const int max = 25;
        var (a, b) = await StartPairAsync(Policy($$"""{ "counter": "ok_rate", "window": "hour", "max": {{max}}, "scope": "{{scope}}" }"""));
        var sessions = new List<(int Port, string Session)>();
        foreach (var port in new[] { a, b, a, b, a, b })
        {
            sessions.Add((port, await OpenAsync(port)));
        }
        var codes = await Task.WhenAll(sessions.SelectMany(s => Enumerable.Range(0, 15).Select(i => (s.Port, s.Session, i)))
            .Select(c => CallAsync(c.Port, c.Session, "ok", """{"message":"x"}""", c.i)));
        Assert.Equal(max, codes.Count(c => c == 0));
        Assert.Equal(6 * 15 - max, codes.Count(c => c == -32011));
        Assert.Equal(max, ReachedUpstream("ok"));
    }

    [Fact]
    public async Task A_spend_limit_is_exact_across_replicas()
    {
        var (a, b) = await StartPairAsync(Policy("""{ "counter": "spend", "window": "day", "max": 100, "scope": "global", "increment_from": "args.amount" }"""));
        var sa = await OpenAsync(a);
        var sb = await OpenAsync(b);
        var codes = await Task.WhenAll(Enumerable.Range(0, 30).Select(i => CallAsync(i % 2 == 0 ? a : b, i % 2 == 0 ? sa : sb, "ok", """{"amount":7}""", i)));
        Assert.Equal(14, codes.Count(c => c == 0)); // 14 × 7 = 98 ≤ 100 < 105
        Assert.Equal(14, ReachedUpstream("ok"));
        Assert.Equal(-32011, await CallAsync(a, sa, "ok", """{"amount":3}""", 99)); // 98 + 3 > 100
        Assert.Equal(0, await CallAsync(b, sb, "ok", """{"amount":2}""", 100));    // exactly 100
    }

    [Fact]
    public async Task A_failed_upstream_call_gives_its_tokens_back_on_every_replica()
    {
        var shared = """{ "counter": "calls", "window": "hour", "max": 3, "scope": "global" }""";
        var (a, b) = await StartPairAsync(Policy(shared, shared));
        var sa = await OpenAsync(a);
        var sb = await OpenAsync(b);
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(-32000, await CallAsync(a, sa, "fail", "{}", i)); // the upstream's own error: the tokens go back
        }
        await Task.Delay(300); // the refunds are sent as the answers go out; let the last one land
        for (var i = 0; i < 3; i++)
        {
            Assert.Equal(0, await CallAsync(b, sb, "ok", """{"message":"after refunds"}""", 10 + i));
        }
        Assert.Equal(-32011, await CallAsync(a, sa, "ok", """{"message":"fourth"}""", 20));
        Assert.Equal(3, ReachedUpstream("fail"));
        Assert.Equal(3, ReachedUpstream("ok"));
    }

    [Fact]
    public async Task Redis_going_away_fails_closed_and_its_return_restores_shared_limits_without_a_restart()
    {
        var (a, b) = await StartPairAsync(Policy("""{ "counter": "ok_rate", "window": "hour", "max": 2, "scope": "global" }"""));
        var sa = await OpenAsync(a);
        var sb = await OpenAsync(b);
        Assert.Equal(0, await CallAsync(a, sa, "ok", """{"message":"1"}""", 1));

        await _redis.KillAsync();
        int code;
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while ((code = await CallAsync(b, sb, "ok", """{"message":"down"}""", 2)) != -32018 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }
        Assert.Equal(-32018, code);
        using (var ready = await _http.GetAsync(new Uri($"http://127.0.0.1:{a}/readyz")))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
            Assert.Contains("UNREACHABLE", await ready.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        var metrics = await _http.GetStringAsync(new Uri($"http://127.0.0.1:{b}/metrics"));
        Assert.Contains("sidecar_shared_limits_up 0", metrics, StringComparison.Ordinal);
        Assert.Matches(@"sidecar_shared_limits_unavailable_total [1-9]", metrics);
        Assert.Matches(@"sidecar_shared_limits_roundtrip_seconds_count [1-9]", await _http.GetStringAsync(new Uri($"http://127.0.0.1:{a}/metrics"))); // a's call before
        Assert.Matches(@"sidecar_tool_calls_total\{[^}]*decision=""store_unavailable""[^}]*\} [1-9]", metrics);

        await _redis.StartAgainAsync(); // empty (no persistence): the counter starts afresh
        deadline = DateTime.UtcNow.AddSeconds(30);
        while ((code = await CallAsync(a, sa, "ok", """{"message":"back"}""", 3)) != 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
        }
        Assert.Equal(0, code);
        // Each replica reconnects on its own: b may take a moment longer (refusals meanwhile take no tokens).
        deadline = DateTime.UtcNow.AddSeconds(30);
        while ((code = await CallAsync(b, sb, "ok", """{"message":"back on b"}""", 4)) == -32018 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
        }
        Assert.Equal(0, code);
        Assert.Equal(-32011, await CallAsync(a, sa, "ok", """{"message":"over"}""", 5)); // shared again: 2 in total
        using var readyAgain = await _http.GetAsync(new Uri($"http://127.0.0.1:{b}/readyz"));
        Assert.Equal(HttpStatusCode.OK, readyAgain.StatusCode);
        Assert.DoesNotContain(_redis.Password!, _processes[0].Log + _processes[1].Log, StringComparison.Ordinal);
    }

    [Fact]
    public async Task With_fail_mode_open_each_replica_decides_alone_while_redis_is_away()
    {
        var (a, b) = await StartPairAsync(Policy("""{ "counter": "ok_rate", "window": "hour", "max": 2, "scope": "global" }"""), failMode: "open");
        var sa = await OpenAsync(a);
        var sb = await OpenAsync(b);
        await _redis.KillAsync();
        // Each replica's own bucket: 2 on a and 2 on b, then refused locally.
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!(await _http.GetStringAsync(new Uri($"http://127.0.0.1:{a}/readyz"))).Contains("UNREACHABLE", StringComparison.Ordinal) && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }
        var onA = new List<int>();
        var onB = new List<int>();
        for (var i = 1; i <= 3; i++)
        {
            onA.Add(await CallAsync(a, sa, "ok", "{}", i));
            onB.Add(await CallAsync(b, sb, "ok", "{}", i));
        }
        Assert.Equal([0, 0, -32011], onA);
        Assert.Equal([0, 0, -32011], onB);
        using var ready = await _http.GetAsync(new Uri($"http://127.0.0.1:{a}/readyz"));
        Assert.Equal(HttpStatusCode.OK, ready.StatusCode); // degraded, not down
        Assert.Contains("3 decided locally", await ready.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        Assert.Contains("own buckets", _processes[0].Log, StringComparison.Ordinal);
    }
}
