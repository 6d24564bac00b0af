using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Audit;

/// <summary>
/// The audit trail keeps up and fails closed: a saturated gateway answers no call without exactly one record of it
/// (what the queue cannot hold is refused with -32015 audit_backlog, never forwarded unrecorded), and a gateway killed
/// with SIGKILL under traffic with <c>durability: before_answer</c> has the record of every call it answered; the run
/// after it says so in <c>audit_start</c>, and <c>sidecar audit verify --strict</c> fails the cut trail.
/// </summary>
public sealed class AuditCompletenessTests : IDisposable
{
    private const string Policy = """
        { "version": "1", "default": "deny", "hide": ["get-env"], "tools": { "echo": {} } }
        """;

    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    private static string Config(object audit, int? port = null) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["listen"] = $"127.0.0.1:{port ?? 0}",
        ["mcpServers"] = new Dictionary<string, object>
        {
            ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
        },
        ["policy"] = "policy.json",
        ["audit"] = audit,
    });

    [Fact]
    public async Task A_saturated_gateway_answers_no_call_without_exactly_one_record_and_leaves_no_gap()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        // A tiny queue and a writer that flushes rarely: the queue fills at once under this load. Before onFull: shed
        // (and a writer that wakes with the load) this dropped records and wrote audit_gap events.
        var host = await SidecarHost.StartAsync(Config(new Dictionary<string, object>
        {
            ["file"] = "audit.jsonl",
            ["bufferEvents"] = 64,
            ["batchEvents"] = 16,
        }), new Dictionary<string, string> { ["policy.json"] = Policy });
        try
        {
            var url = host.McpUrl("everything");
            var sessions = new string[4];
            for (var i = 0; i < sessions.Length; i++)
            {
                sessions[i] = await RawMcp.OpenSessionAsync(_http, url);
            }
            var answers = new ConcurrentDictionary<string, string>(); // request id -> ok | denied | shed
            var deadline = Stopwatch.StartNew();
            var workers = Enumerable.Range(0, 32).Select(worker => Task.Run(async () =>
            {
                for (var n = 0; n < 2_000 && deadline.Elapsed < TimeSpan.FromSeconds(3); n++)
                {
                    var id = $"w{worker}-{n}";
                    var tool = n % 4 == 3 ? "get-env" : "echo";
                    var answer = await CallAsync(url, sessions[worker % sessions.Length], id, tool, """{"message":"load"}""");
                    answers[id] = Classify(answer);
                }
            })).ToList();
            await Task.WhenAll(workers);
            // /metrics shows the sheds as the agents saw them, and the writer's backlog.
            var metrics = await _http.GetStringAsync(new Uri(host.BaseUrl, "/metrics"));
            long Metric(string name) => long.Parse(metrics.Split('\n').Single(l => l.StartsWith(name + " ", StringComparison.Ordinal))[(name.Length + 1)..],
                System.Globalization.CultureInfo.InvariantCulture);
            Assert.Equal(answers.Count(a => a.Value == "shed"), Metric("sidecar_audit_shed_total"));
            Assert.Equal(64, Metric("sidecar_audit_queue_capacity"));
            Assert.InRange(Metric("sidecar_audit_queue_depth"), 0, 64);
            Assert.Equal(0, Metric("sidecar_audit_dropped_total"));
            await host.StopAsync(); // drains the trail: audit_stop, flushed

            var events = ReadEvents(Path.Combine(host.Folder, "audit.jsonl"));
            Assert.DoesNotContain(events, e => e.GetProperty("type").GetString() == "audit_gap");
            var records = events.Where(e => e.GetProperty("type").GetString() == "tool_call")
                .GroupBy(e => e.GetProperty("requestId").GetString()!)
                .ToDictionary(g => g.Key, g => g.ToList());
            var recorded = answers.Where(a => a.Value != "shed").ToList();
            Assert.True(recorded.Count > 100, $"only {recorded.Count} calls were answered");
            foreach (var (id, kind) in recorded)
            {
                Assert.True(records.TryGetValue(id, out var forId), $"answered call {id} ({kind}) has no record");
                var record = Assert.Single(forId);
                Assert.Equal(kind == "ok" ? "ok" : "blocked", record.GetProperty("outcome").GetString());
            }
            var shed = answers.Count(a => a.Value == "shed");
            foreach (var (id, _) in answers.Where(a => a.Value == "shed"))
            {
                Assert.False(records.ContainsKey(id), $"shed call {id} has a record: was it forwarded?");
            }
            Assert.Equal(recorded.Count, records.Count);
            var stop = events[^1];
            Assert.Equal("audit_stop", stop.GetProperty("type").GetString());
            Assert.Equal(0, stop.GetProperty("dropped").GetInt64());
            Assert.Equal(shed, stop.GetProperty("shed").GetInt64());

            // An intact, complete trail passes --strict.
            var (code, output, error) = await VerifyAsync("--strict", Path.Combine(host.Folder, "audit.jsonl"));
            Assert.True(code == 0, output + error);
        }
        finally
        {
            await host.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_gateway_killed_under_traffic_with_before_answer_kept_the_record_of_every_answered_call()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-kill-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        var auditFile = Path.Combine(folder, "audit.jsonl");
        await File.WriteAllTextAsync(Path.Combine(folder, "policy.json"), Policy);
        var port = EverythingServer.FreeLoopbackPort();
        var configPath = Path.Combine(folder, "sidecar.json");
        await File.WriteAllTextAsync(configPath, Config(new Dictionary<string, object>
        {
            ["file"] = "audit.jsonl",
            ["durability"] = "before_answer",
        }, port));
        var url = new Uri($"http://127.0.0.1:{port}/servers/everything/mcp");
        try
        {
            var gateway = await StartGatewayAsync(configPath, port);
            var answered = new ConcurrentDictionary<string, string>();
            try
            {
                var session = await RawMcp.OpenSessionAsync(_http, url);
                using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                var workers = Enumerable.Range(0, 8).Select(worker => Task.Run(async () =>
                {
                    for (var n = 0; n < 100_000 && !stop.IsCancellationRequested; n++)
                    {
                        var id = $"k{worker}-{n}";
                        try
                        {
                            var answer = await CallAsync(url, session, id, n % 5 == 4 ? "get-env" : "echo", """{"message":"before the kill"}""", stop.Token);
                            answered[id] = Classify(answer);
                        }
                        catch (Exception ex) when (ex is HttpRequestException or OperationCanceledException or IOException or JsonException)
                        {
                            return; // the gateway is gone
                        }
                    }
                })).ToList();
                var traffic = Stopwatch.StartNew();
                while (answered.Count < 300 && traffic.Elapsed < TimeSpan.FromSeconds(20))
                {
                    await Task.Delay(10);
                }
                Assert.True(answered.Count >= 300, $"only {answered.Count} calls were answered before the kill: {gateway.Log}");
                gateway.Process.Kill(entireProcessTree: true); // SIGKILL, calls in flight
                await gateway.Process.WaitForExitAsync();
                await stop.CancelAsync();
                await Task.WhenAll(workers);
            }
            finally
            {
                gateway.Dispose();
            }

            var before = ReadEvents(auditFile);
            Assert.NotEqual("audit_stop", before[^1].GetProperty("type").GetString());
            var recorded = before.Where(e => e.GetProperty("type").GetString() == "tool_call")
                .Select(e => e.GetProperty("requestId").GetString()!).ToHashSet();
            var missing = answered.Keys.Where(id => !recorded.Contains(id)).ToList();
            Assert.True(missing.Count == 0, $"{missing.Count} of {answered.Count} answered calls have no record, e.g. {string.Join(", ", missing.Take(5))}");
            var lastSequence = before[^1].GetProperty("seq").GetInt64();

            // The cut trail: intact, but not complete.
            var (code, output, error) = await VerifyAsync(auditFile);
            Assert.True(code == 0, output + error);
            Assert.Contains("without audit_stop", output + error, StringComparison.Ordinal);
            (code, output, error) = await VerifyAsync("--strict", auditFile);
            Assert.True(code == 1, output + error);

            // The next run says what happened to the one before.
            var restarted = await StartGatewayAsync(configPath, port);
            try
            {
                using var term = Process.Start("kill", ["-TERM", restarted.Process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]);
                await term.WaitForExitAsync();
                using var exited = new CancellationTokenSource(TimeSpan.FromSeconds(30));
                await restarted.Process.WaitForExitAsync(exited.Token);
            }
            finally
            {
                restarted.Dispose();
            }
            var after = ReadEvents(auditFile);
            var start = after[before.Count];
            Assert.Equal("audit_start", start.GetProperty("type").GetString());
            Assert.True(start.GetProperty("uncleanStop").GetBoolean());
            Assert.Equal(lastSequence, start.GetProperty("lastSequence").GetInt64());
            Assert.Equal("audit_stop", after[^1].GetProperty("type").GetString());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private static string Classify(JsonElement answer)
    {
        if (answer.TryGetProperty("result", out _))
        {
            return "ok";
        }
        var error = answer.GetProperty("error");
        return error.GetProperty("code").GetInt32() switch
        {
            -32010 => "denied",
            -32015 when error.GetProperty("data").GetProperty("reason").GetString() == "audit_backlog" => "shed",
            var code => throw new InvalidOperationException($"unexpected answer {code}: {answer}"),
        };
    }

    private async Task<JsonElement> CallAsync(Uri url, string session, string id, string tool, string arguments, CancellationToken cancellationToken = default)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, url)
        {
            Content = new StringContent($$$"""{"jsonrpc":"2.0","id":"{{{id}}}","method":"tools/call","params":{"name":"{{{tool}}}","arguments":{{{arguments}}}}}""", Encoding.UTF8),
        };
        request.Content.Headers.ContentType = MediaTypeHeaderValue.Parse("application/json");
        request.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
        request.Headers.Add("Mcp-Session-Id", session);
        using var response = await _http.SendAsync(request, cancellationToken);
        var text = await response.Content.ReadAsStringAsync(cancellationToken);
        foreach (var line in text.Split('\n'))
        {
            var json = line.StartsWith("data: ", StringComparison.Ordinal) ? line[6..] : line;
            if (json.StartsWith('{') && JsonDocument.Parse(json).RootElement is { } message && message.TryGetProperty("id", out _))
            {
                return message.Clone();
            }
        }
        throw new JsonException("no response in: " + text);
    }

    /// <summary>The file's events; a last line cut by a kill mid-write is left out.</summary>
    private static List<JsonElement> ReadEvents(string file)
    {
        var events = new List<JsonElement>();
        var text = File.ReadAllText(file);
        var lines = text.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i].Length == 0)
            {
                continue;
            }
            if (i == lines.Length - 1)
            {
                break; // no newline after it: cut
            }
            events.Add(JsonDocument.Parse(lines[i]).RootElement.Clone());
        }
        return events;
    }

    private static Task<(int Code, string Output, string Error)> VerifyAsync(params string[] args) => GatewayAuditTests.VerifyAsync(args);

    private Task<SidecarProcess> StartGatewayAsync(string configPath, int port) => SidecarProcess.StartAsync(_http, configPath, port);
}
