using System.Text.Json;
using Sidecar.Cli;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Audit;

/// <summary>
/// The audit trail end to end: a real gateway in front of server-everything over stdio, raw HTTP calls, then the
/// JSONL file the gateway wrote, read back and checked with <c>sidecar audit verify</c>.
/// </summary>
public sealed class GatewayAuditTests : IDisposable
{
    private const string Policy = """
        {
          "version": "1",
          "default": "deny",
          "tools": {
            "echo": { "limits": [ { "counter": "echo_rate", "window": "hour", "max": 2, "scope": "session" } ] },
            "get-sum": { "deny_if": [ { "path": "args.a", "op": "gt", "value": 100 } ], "reason": "a is capped at 100" }
          }
        }
        """;

    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    private static string Config(string audit = "") => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["mcpServers"] = new Dictionary<string, object>
        {
            ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
        },
        ["policy"] = "policy.json",
    }).TrimEnd('}') + audit + "}";

    [Fact]
    public async Task Every_decision_is_one_chained_event_with_outcome_latency_and_redacted_arguments()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var host = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = Policy });
        string folder = host.Folder;
        try
        {
            var session = await InitializeAsync(host);
            var ok = await CallAsync(host, session, 1, "echo", """{"message":"hello","api_key":"k-123456","note":"Bearer abcdefghijklmnop"}""");
            Assert.True(ok.TryGetProperty("result", out _), ok.ToString());
            await CallAsync(host, session, 2, "echo", """{"message":"again"}""");
            var limited = await CallAsync(host, session, 3, "echo", """{"message":"third"}""");
            Assert.Equal(-32011, limited.GetProperty("error").GetProperty("code").GetInt32());
            var denied = await CallAsync(host, session, 4, "get-sum", """{"a":500,"b":1}""");
            Assert.Equal(-32010, denied.GetProperty("error").GetProperty("code").GetInt32());
            var unnamed = await CallAsync(host, session, "\"s-5\"", "get-tiny-image", "{}");
            Assert.Equal(-32010, unnamed.GetProperty("error").GetProperty("code").GetInt32());
            var sum = await CallAsync(host, session, 6, "get-sum", """{"a":1,"b":2}""");
            Assert.True(sum.TryGetProperty("result", out _), sum.ToString());

            await host.StopAsync(); // drains the trail: audit_stop, flushed
            var events = ReadEvents(host.AuditFile);
            Assert.Equal("audit_start", events[0].GetProperty("type").GetString());
            Assert.Equal("audit_stop", events[^1].GetProperty("type").GetString());
            var calls = events.Where(e => e.GetProperty("type").GetString() == "tool_call").ToList();
            Assert.Equal(6, calls.Count);
            for (var i = 0; i < events.Count; i++)
            {
                Assert.Equal(i + 1, events[i].GetProperty("seq").GetInt64());
            }

            JsonElement ByRequest(string id) => calls.Single(c => c.GetProperty("requestId").GetRawText() == id);
            var first = ByRequest("1");
            Assert.Equal("everything", first.GetProperty("server").GetString());
            Assert.Equal(session, first.GetProperty("session").GetString());
            Assert.Equal("echo", first.GetProperty("tool").GetString());
            Assert.Equal("allow", first.GetProperty("decision").GetString());
            Assert.Equal("ok", first.GetProperty("outcome").GetString());
            Assert.True(first.GetProperty("upstreamMs").GetDouble() > 0);
            Assert.Equal("hello", first.GetProperty("arguments").GetProperty("message").GetString());
            Assert.Equal("[REDACTED]", first.GetProperty("arguments").GetProperty("api_key").GetString());
            Assert.Equal("[REDACTED]", first.GetProperty("arguments").GetProperty("note").GetString());
            Assert.Equal(1, first.GetProperty("remaining").GetInt64());

            var third = ByRequest("3");
            Assert.Equal("rate_limited", third.GetProperty("decision").GetString());
            Assert.Equal("blocked", third.GetProperty("outcome").GetString());
            Assert.Equal(-32011, third.GetProperty("errorCode").GetInt32());
            Assert.True(third.GetProperty("retryAfterMs").GetInt64() > 0);
            Assert.False(third.TryGetProperty("upstreamMs", out _));

            var fourth = ByRequest("4");
            Assert.Equal("deny", fourth.GetProperty("decision").GetString());
            Assert.Equal("tools.get-sum.deny_if[0]", fourth.GetProperty("rule").GetString());
            Assert.Equal("a is capped at 100", fourth.GetProperty("reason").GetString());
            Assert.Equal(500, fourth.GetProperty("arguments").GetProperty("a").GetInt32());

            Assert.Equal("default", ByRequest("\"s-5\"").GetProperty("rule").GetString());
            Assert.Equal("ok", ByRequest("6").GetProperty("outcome").GetString());

            // Secrets never reach the file in any form.
            var text = await File.ReadAllTextAsync(host.AuditFile);
            Assert.DoesNotContain("k-123456", text, StringComparison.Ordinal);
            Assert.DoesNotContain("abcdefghijklmnop", text, StringComparison.Ordinal);

            var (code, output, error) = await VerifyAsync(host.AuditFile);
            Assert.True(code == 0, output + error);
            Assert.Contains($"{events.Count} events", output, StringComparison.Ordinal);
        }
        finally
        {
            await host.DisposeAsync();
            Assert.False(Directory.Exists(folder));
        }
    }

    [Fact]
    public async Task The_chain_continues_across_a_restart_and_verify_finds_an_edit()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-audit-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        var auditFile = Path.Combine(folder, "trail.jsonl");
        var audit = $$""","audit":{"file":{{JsonSerializer.Serialize(auditFile)}},"hmacKey":"0123456789abcdef-test-key"}""";
        try
        {
            for (var run = 0; run < 2; run++)
            {
                var host = await SidecarHost.StartAsync(Config(audit), new Dictionary<string, string> { ["policy.json"] = Policy });
                try
                {
                    var session = await InitializeAsync(host);
                    await CallAsync(host, session, 1, "get-sum", """{"a":1,"b":2}""");
                }
                finally
                {
                    await host.DisposeAsync();
                }
            }
            var events = ReadEvents(auditFile);
            Assert.Equal(["audit_start", "tool_call", "audit_stop", "audit_start", "tool_call", "audit_stop"], events.Select(e => e.GetProperty("type").GetString()));
            Assert.Equal("hmac-sha256", events[0].GetProperty("chain").GetString());

            Environment.SetEnvironmentVariable("SIDECAR_IT_AUDIT_KEY", "0123456789abcdef-test-key");
            var (code, output, error) = await VerifyAsync(auditFile, "--key-env", "SIDECAR_IT_AUDIT_KEY");
            Assert.True(code == 0, output + error);

            // Without the key, an HMAC trail can't be verified (nor rewritten).
            (code, _, error) = await VerifyAsync(auditFile);
            Assert.Equal(1, code);
            Assert.Contains("HMAC", error, StringComparison.Ordinal);

            // Edit one decision: verify names the line.
            var lines = await File.ReadAllLinesAsync(auditFile);
            lines[1] = lines[1].Replace("\"allow\"", "\"deny\"", StringComparison.Ordinal);
            await File.WriteAllLinesAsync(auditFile, lines);
            (code, _, error) = await VerifyAsync(auditFile, "--key-env", "SIDECAR_IT_AUDIT_KEY");
            Assert.Equal(1, code);
            Assert.Contains($"{auditFile}:2:", error, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task An_http_collector_that_is_down_gets_the_same_chain_as_the_file_once_it_is_back()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        await using var collector = await AuditCollector.StartAsync();
        collector.Status = 503; // down at first: the gateway spools
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-audit-http-" + Guid.NewGuid().ToString("N"));
        var auditFile = Path.Combine(folder, "audit.jsonl");
        var audit = ",\"audit\":" + JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["file"] = auditFile,
            ["flushInterval"] = "20ms",
            ["http"] = new Dictionary<string, object>
            {
                ["url"] = collector.Url.ToString(),
                ["spool"] = Path.Combine(folder, "spool"),
                ["headers"] = new Dictionary<string, string> { ["Authorization"] = "Bearer collector-secret-1234567" },
            },
        });
        var host = await SidecarHost.StartAsync(Config(audit), new Dictionary<string, string> { ["policy.json"] = Policy });
        try
        {
            var session = await InitializeAsync(host);
            for (var i = 1; i <= 4; i++)
            {
                await CallAsync(host, session, i, "get-sum", $$"""{"a":{{i}},"b":2}""");
            }
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (Directory.GetFiles(Path.Combine(folder, "spool"), "*.ndjson").Length == 0)
            {
                Assert.True(DateTime.UtcNow < deadline, "nothing was spooled while the collector was down");
                await Task.Delay(20);
            }
            collector.Status = 200;
            await CallAsync(host, session, 5, "get-tiny-image", "{}");
            await host.StopAsync();

            var file = await File.ReadAllTextAsync(auditFile);
            var delivered = string.Concat(collector.Accepted.Select(r => r.Body));
            Assert.Equal(file, delivered); // every event, in order, byte for byte: the collector can verify the chain too
            Assert.All(collector.Accepted, r => Assert.Equal("Bearer collector-secret-1234567", r.Headers["Authorization"]));
            Assert.DoesNotContain("collector-secret", host.Log.ToString(), StringComparison.Ordinal);
            Assert.Empty(Directory.GetFiles(Path.Combine(folder, "spool"), "*.ndjson"));
        }
        finally
        {
            await host.DisposeAsync();
            Directory.Delete(folder, recursive: true);
        }
    }

    internal static async Task<(int Code, string Output, string Error)> VerifyAsync(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        var code = await SidecarCli.InvokeAsync(["audit", "verify", .. args], output, error);
        return (code, output.ToString(), error.ToString());
    }

    private static List<JsonElement> ReadEvents(string file)
        => File.ReadAllLines(file).Select(line => JsonDocument.Parse(line).RootElement.Clone()).ToList();

    private Task<string> InitializeAsync(SidecarHost host) => RawMcp.OpenSessionAsync(_http, host.McpUrl("everything"));

    private Task<JsonElement> CallAsync(SidecarHost host, string session, int id, string tool, string arguments)
        => CallAsync(host, session, id.ToString(System.Globalization.CultureInfo.InvariantCulture), tool, arguments);

    private async Task<JsonElement> CallAsync(SidecarHost host, string session, string id, string tool, string arguments)
    {
        using var response = await PostAsync(host, $$$"""{"jsonrpc":"2.0","id":{{{id}}},"method":"tools/call","params":{"name":"{{{tool}}}","arguments":{{{arguments}}}}}""", session);
        var text = await response.Content.ReadAsStringAsync();
        foreach (var line in text.Split('\n'))
        {
            var json = line.StartsWith("data: ", StringComparison.Ordinal) ? line[6..] : line;
            if (json.StartsWith('{') && JsonDocument.Parse(json).RootElement is { } message && message.TryGetProperty("id", out _))
            {
                return message.Clone();
            }
        }
        throw new InvalidOperationException("no response in: " + text);
    }

    private Task<HttpResponseMessage> PostAsync(SidecarHost host, string body, string? session)
        => RawMcp.PostAsync(_http, host.McpUrl("everything"), body, session);
}
