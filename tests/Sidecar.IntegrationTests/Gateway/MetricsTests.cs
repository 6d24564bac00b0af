using System.Diagnostics;
using System.Text.Json;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// <c>/metrics</c> through the real gateway in front of server-everything over stdio, legacy SSE and Streamable HTTP,
/// with the official C# client over both agent transports: the scrape parses as Prometheus text with the reference
/// parser (the Python <c>prometheus_client</c>'s, <c>.ci/run</c> installs it), and its counters and histograms move
/// with the traffic.
/// </summary>
public sealed class MetricsTests(GatewayFixture fixture) : IClassFixture<GatewayFixture>, IDisposable
{
    private const string Parser = "/usr/bin/python3";
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(60)).Token;

    /// <summary>One parsed sample: its name, labels and value.</summary>
    private sealed record Sample(string Name, Dictionary<string, string> Labels, double Value, string Type);

    /// <summary>Scrapes <c>/metrics</c> and parses it with prometheus_client's text parser (it throws on malformed input).</summary>
    private async Task<List<Sample>> ScrapeAsync(Uri baseUrl)
    {
        using var response = await _http.GetAsync(new Uri(baseUrl, "/metrics"));
        response.EnsureSuccessStatusCode();
        Assert.Equal("text/plain; version=0.0.4; charset=utf-8", response.Content.Headers.ContentType!.ToString());
        var text = await response.Content.ReadAsStringAsync();
        const string script = """
            import json, sys
            from prometheus_client.parser import text_string_to_metric_families
            out = []
            names = set()
            for family in text_string_to_metric_families(sys.stdin.read()):
                if family.name in names:
                    raise SystemExit("duplicate family " + family.name)
                names.add(family.name)
                for s in family.samples:
                    out.append({"name": s.name, "labels": s.labels, "value": s.value, "type": family.type})
            print(json.dumps(out))
            """;
        var start = new ProcessStartInfo(Parser) { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(script);
        using var parser = Process.Start(start)!;
        await parser.StandardInput.WriteAsync(text);
        parser.StandardInput.Close();
        var output = await parser.StandardOutput.ReadToEndAsync();
        var error = await parser.StandardError.ReadToEndAsync();
        await parser.WaitForExitAsync();
        Assert.True(parser.ExitCode == 0, $"not valid Prometheus text: {error}\n{text}");
        return [.. JsonDocument.Parse(output).RootElement.EnumerateArray().Select(s => new Sample(
            s.GetProperty("name").GetString()!,
            s.GetProperty("labels").EnumerateObject().ToDictionary(p => p.Name, p => p.Value.GetString()!),
            s.GetProperty("value").GetDouble(),
            s.GetProperty("type").GetString()!))];
    }

    /// <summary>
    /// The reference parser is Debian's <c>python3-prometheus-client</c>: installed on first use when missing (as the
    /// npm fixtures are), which needs root and apt; otherwise the test says what to install.
    /// </summary>
    private static async Task EnsureParserAsync()
    {
        if (await Commands.RunAsync(Parser, "-c", "import prometheus_client") == 0)
        {
            return;
        }
        if (Environment.UserName == "root" && File.Exists("/usr/bin/apt-get"))
        {
            await Commands.RunAsync("/usr/bin/apt-get", "update", "-qq");
            await Commands.RunAsync("/usr/bin/apt-get", "install", "-y", "-qq", "--no-install-recommends", "python3", "python3-prometheus-client");
        }
        Assert.True(await Commands.RunAsync(Parser, "-c", "import prometheus_client") == 0,
            "the Prometheus reference parser is missing: apt-get install python3-prometheus-client (.ci/run installs it)");
    }

    private static double Value(List<Sample> samples, string name, params (string Key, string Value)[] labels)
        => samples.Where(s => s.Name == name && labels.All(l => s.Labels.TryGetValue(l.Key, out var v) && v == l.Value)).Sum(s => s.Value);

    [Fact]
    public async Task Metrics_parse_as_prometheus_text_and_move_with_traffic_through_every_transport()
    {
        await EnsureParserAsync();
        var before = await ScrapeAsync(fixture.Sidecar.BaseUrl);

        // Streamable HTTP to each upstream transport, and legacy SSE to the stdio one: an allowed call and a denied one each.
        var routes = new (string Server, HttpTransportMode Mode)[]
        {
            ("stdio", HttpTransportMode.StreamableHttp), ("sse", HttpTransportMode.StreamableHttp), ("http", HttpTransportMode.StreamableHttp), ("stdio", HttpTransportMode.Sse),
        };
        foreach (var (server, mode) in routes)
        {
            await using var client = await fixture.ConnectAsync(server, mode, cancellationToken: Timeout());
            var sum = await client.CallToolAsync("get-sum", new Dictionary<string, object?> { ["a"] = 1, ["b"] = 2 }, cancellationToken: Timeout());
            Assert.NotEqual(true, sum.IsError);
            await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-tiny-image", new Dictionary<string, object?>(), cancellationToken: Timeout()).AsTask());
            await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("no-such-tool", new Dictionary<string, object?>(), cancellationToken: Timeout()).AsTask());
        }

        var after = await ScrapeAsync(fixture.Sidecar.BaseUrl);
        double Moved(string name, params (string, string)[] labels) => Value(after, name, labels) - Value(before, name, labels);

        Assert.Equal(2, Moved("sidecar_tool_calls_total", ("server", "stdio"), ("tool", "get-sum"), ("decision", "allow")));
        foreach (var server in new[] { "sse", "http" })
        {
            Assert.Equal(1, Moved("sidecar_tool_calls_total", ("server", server), ("tool", "get-sum"), ("decision", "allow")));
            Assert.Equal(1, Moved("sidecar_tool_calls_total", ("server", server), ("tool", "get-tiny-image"), ("decision", "deny")));
            // A tool the policy does not name is counted as "other": the label's values stay bounded.
            Assert.Equal(1, Moved("sidecar_tool_calls_total", ("server", server), ("tool", "other"), ("decision", "deny")));
            Assert.Equal(1, Moved("sidecar_upstream_seconds_count", ("server", server)));
        }
        Assert.DoesNotContain(after, s => s.Labels.TryGetValue("tool", out var tool) && tool == "no-such-tool");
        Assert.Equal(2, Moved("sidecar_upstream_seconds_count", ("server", "stdio")));
        Assert.Equal(4, Moved("sidecar_overhead_seconds_count"));
        Assert.True(Moved("sidecar_overhead_seconds_sum") > 0);
        Assert.True(Moved("sidecar_upstream_seconds_sum", ("server", "http")) > 0);

        // Histograms are cumulative and end in +Inf = count.
        var buckets = after.Where(s => s.Name == "sidecar_overhead_seconds_bucket").ToList();
        Assert.Equal("+Inf", buckets[^1].Labels["le"]);
        Assert.Equal(Value(after, "sidecar_overhead_seconds_count"), buckets[^1].Value);
        for (var i = 1; i < buckets.Count; i++)
        {
            Assert.True(buckets[i].Value >= buckets[i - 1].Value);
        }

        // Gauges and totals read at scrape time.
        Assert.Equal(1, Value(after, "sidecar_build_info"));
        Assert.Contains(after, s => s.Name == "sidecar_sessions" && s.Labels["server"] == "stdio");
        Assert.Contains(after, s => s.Name == "sidecar_in_flight_requests");
        Assert.Contains(after, s => s.Name == "sidecar_shed_requests_total");
        Assert.Contains(after, s => s.Name == "sidecar_auth_failures_total");
        Assert.Contains(after, s => s.Name == "sidecar_approvals_pending");
        Assert.Contains(after, s => s.Name == "sidecar_config_reloads_total" && s.Labels["result"] == "failed");
        // The audit writer writes in batches (at most audit.flushInterval behind): its total catches up.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(15);
        while (Moved("sidecar_audit_events_total") < 12 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(200);
            after = await ScrapeAsync(fixture.Sidecar.BaseUrl);
        }
        Assert.True(Moved("sidecar_audit_events_total") >= 12, "the audit writer's events did not move");
        foreach (var name in new[] { "sidecar_audit_queue_depth", "sidecar_audit_dropped_total", "sidecar_audit_shed_total", "sidecar_audit_spool_bytes" })
        {
            Assert.Contains(after, s => s.Name == name);
        }
        Assert.Equal("counter", after.First(s => s.Name == "sidecar_tool_calls_total").Type);
        Assert.Equal("histogram", after.First(s => s.Name == "sidecar_overhead_seconds_bucket").Type);
    }
}
