using System.Net;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The official C# MCP client, over Streamable HTTP and legacy SSE, talking to real server-everything instances
/// (stdio, SSE, Streamable HTTP) through Sidecar.
/// </summary>
public sealed class GatewayClientTests(GatewayFixture fixture) : IClassFixture<GatewayFixture>
{
    public static TheoryData<string, HttpTransportMode> Routes()
    {
        var data = new TheoryData<string, HttpTransportMode>();
        foreach (var upstream in GatewayFixture.UpstreamNames)
        {
            data.Add(upstream, HttpTransportMode.StreamableHttp);
            data.Add(upstream, HttpTransportMode.Sse);
        }
        return data;
    }

    private static CancellationToken Timeout(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    private static IReadOnlyDictionary<string, object?> Args(params (string Key, object? Value)[] pairs)
        => pairs.ToDictionary(p => p.Key, p => p.Value);

    private static string Text(CallToolResult result) => string.Join("\n", result.Content.OfType<TextContentBlock>().Select(c => c.Text));

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Tools_list_shows_only_what_the_policy_allows(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        var tools = (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToHashSet();
        Assert.Contains("echo", tools);
        Assert.Contains("get-sum", tools);
        Assert.Contains("trigger-long-running-operation", tools);
        Assert.DoesNotContain("get-env", tools);        // hidden
        Assert.DoesNotContain("get-tiny-image", tools); // denied
        Assert.DoesNotContain("get-annotated-message", tools); // default deny
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Allowed_call_reaches_the_server(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        var result = await client.CallToolAsync("echo", Args(("message", $"hello via {upstream}")), cancellationToken: Timeout());
        Assert.NotEqual(true, result.IsError);
        Assert.Contains($"hello via {upstream}", Text(result), StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Denied_call_gets_the_reason(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        var ex = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-tiny-image", Args(), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)ex.ErrorCode);
        Assert.Contains("no images today", ex.Message, StringComparison.Ordinal);
        Assert.Contains("get-tiny-image", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Fourth_call_is_rate_limited_when_max_is_three(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        for (var i = 1; i <= 3; i++)
        {
            var ok = await client.CallToolAsync("echo", Args(("message", $"call {i}")), cancellationToken: Timeout());
            Assert.Contains($"call {i}", Text(ok), StringComparison.Ordinal);
        }
        var ex = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("echo", Args(("message", "call 4")), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32011, (int)ex.ErrorCode);
        Assert.Contains("echo_rate", ex.Message, StringComparison.Ordinal);
        Assert.Contains("retry in", ex.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Argument_conditions_decide_on_the_arguments(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        var sum = await client.CallToolAsync("get-sum", Args(("a", 40), ("b", 2)), cancellationToken: Timeout());
        Assert.Contains("42", Text(sum), StringComparison.Ordinal);

        var denied = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("get-sum", Args(("a", 500), ("b", 1)), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)denied.ErrorCode);
        Assert.Contains("a is capped at 100", denied.Message, StringComparison.Ordinal);

        var invalid = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("trigger-long-running-operation", Args(("duration", 60), ("steps", 1)), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32014, (int)invalid.ErrorCode);
        Assert.Contains("args.duration", invalid.Message, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Server_to_client_sampling_round_trips(string upstream, HttpTransportMode mode)
    {
        var sampled = 0;
        var options = new McpClientOptions
        {
            Capabilities = new ClientCapabilities { Sampling = new SamplingCapability() },
            Handlers = new McpClientHandlers
            {
                SamplingHandler = (request, progress, cancellationToken) =>
                {
                    Interlocked.Increment(ref sampled);
                    return ValueTask.FromResult(new CreateMessageResult
                    {
                        Model = "test-model",
                        Role = Role.Assistant,
                        Content = [new TextContentBlock { Text = "sampled through sidecar" }],
                    });
                },
            },
        };
        await using var client = await fixture.ConnectAsync(upstream, mode, options, Timeout());
        // The server shows this tool only to clients that declare sampling: the agent's capabilities reached it.
        Assert.Contains("trigger-sampling-request", (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name));
        var result = await client.CallToolAsync("trigger-sampling-request", Args(("prompt", "hi"), ("maxTokens", 10)), cancellationToken: Timeout());
        Assert.Equal(1, sampled);
        Assert.Contains("sampled through sidecar", Text(result), StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Routes))]
    public async Task Progress_notifications_reach_the_agent(string upstream, HttpTransportMode mode)
    {
        await using var client = await fixture.ConnectAsync(upstream, mode, cancellationToken: Timeout());
        var updates = new List<ProgressNotificationValue>();
        var progress = new SynchronousProgress(updates);
        var result = await client.CallToolAsync("trigger-long-running-operation", Args(("duration", 3), ("steps", 3)), progress, cancellationToken: Timeout());
        Assert.Contains("completed", Text(result), StringComparison.OrdinalIgnoreCase);
        // The C# client hands progress to IProgress asynchronously and stops listening when the result arrives, so
        // the last update can be lost even on a direct connection (measured against server-everything without
        // Sidecar: 3,2,2,2,3 updates in five runs). The wire-level test in GatewayHttpTests checks that all three
        // reach the agent; here the first two, in order, prove the client's own progress flows through Sidecar. Steps are
        // a second apart so that, under a loaded test run, the client's race can only ever reach the last update.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (Count() < 2 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        lock (updates)
        {
            Assert.Equal([1f, 2f], updates.Select(u => u.Progress).Order().Take(2));
        }

        int Count()
        {
            lock (updates)
            {
                return updates.Count;
            }
        }
    }

    [Fact]
    public async Task Dual_era_client_falls_back_to_initialize_at_once()
    {
        // The official client probes server/discover (2026-07-28) first; Sidecar must answer the probe so the client
        // falls back on that answer, not after its probe timeout. With the probe timeout off, nothing else can make
        // it fall back: without Sidecar's answer, connecting would wait out Timeout() and fail.
        var exchanges = new List<(string? Method, string? Version, HttpStatusCode Status)>();
        using var http = new HttpClient(new RecordingHandler(exchanges));
        var transport = new HttpClientTransport(
            new HttpClientTransportOptions { Endpoint = fixture.Sidecar.McpUrl("http"), TransportMode = HttpTransportMode.AutoDetect, Name = "sidecar-it" },
            http, NullLoggerFactory.Instance, ownsHttpClient: false);
        var options = new McpClientOptions
        {
            DiscoverProbeTimeout = System.Threading.Timeout.InfiniteTimeSpan,
            ClientInfo = new Implementation { Name = "sidecar-integration-tests", Version = "1.0" },
        };
        await using var client = await McpClient.CreateAsync(transport, options, NullLoggerFactory.Instance, Timeout());
        Assert.NotNull(client.NegotiatedProtocolVersion);
        Assert.NotEqual("2026-07-28", client.NegotiatedProtocolVersion);

        List<(string? Method, string? Version, HttpStatusCode Status)> seen;
        lock (exchanges)
        {
            seen = [.. exchanges];
        }
        var trace = string.Join("; ", seen.Select(e => $"{e.Method} {e.Version} {(int)e.Status}"));
        var probe = seen.FindIndex(e => e.Method == "server/discover");
        Assert.True(probe >= 0, "the client never probed: " + trace);
        Assert.Equal("2026-07-28", seen[probe].Version);
        Assert.True(seen[probe].Status == HttpStatusCode.BadRequest, trace);
        Assert.True(seen.FindIndex(e => e.Method == "initialize") > probe, "no initialize after the answered probe: " + trace);
    }

    /// <summary>Records each POST's JSON-RPC method, MCP-Protocol-Version and HTTP status, in the order they were answered.</summary>
    private sealed class RecordingHandler(List<(string? Method, string? Version, HttpStatusCode Status)> exchanges) : DelegatingHandler(new HttpClientHandler())
    {
        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            string? method = null;
            if (request.Method == HttpMethod.Post && request.Content is { } content)
            {
                await content.LoadIntoBufferAsync(cancellationToken);
                try
                {
                    using var body = System.Text.Json.JsonDocument.Parse(await content.ReadAsStringAsync(cancellationToken));
                    method = body.RootElement.TryGetProperty("method", out var m) ? m.GetString() : null;
                }
                catch (System.Text.Json.JsonException)
                {
                }
            }
            var version = request.Headers.TryGetValues("MCP-Protocol-Version", out var values) ? values.FirstOrDefault() : null;
            var response = await base.SendAsync(request, cancellationToken);
            if (request.Method == HttpMethod.Post)
            {
                lock (exchanges)
                {
                    exchanges.Add((method, version, response.StatusCode));
                }
            }
            return response;
        }
    }

    private sealed class SynchronousProgress(List<ProgressNotificationValue> sink) : IProgress<ProgressNotificationValue>
    {
        public void Report(ProgressNotificationValue value)
        {
            lock (sink)
            {
                sink.Add(value);
            }
        }
    }
}
