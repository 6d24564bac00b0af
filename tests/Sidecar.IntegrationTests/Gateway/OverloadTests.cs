using System.Net;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// <c>limits.maxInFlight</c>: with a cap of one request and a real long-running call holding it, every other POST
/// (Streamable HTTP and legacy SSE) is shed with 503 + Retry-After and a -32015 error, the held call completes
/// untouched, and the place is given back afterwards.
/// </summary>
public sealed class OverloadTests : IAsyncLifetime
{
    private const string Policy = """
        { "version": "1", "default": "deny", "tools": { "echo": {}, "trigger-long-running-operation": {} } }
        """;

    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };
    private SidecarHost _sidecar = null!;
    private HttpResponseMessage? _legacyStream; // held (and so kept open) until the test ends

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object>
                {
                    ["command"] = "node",
                    ["args"] = new[] { "--require", McpServerFixtures.LoopbackPreload, McpServerFixtures.EverythingEntry, "stdio" },
                },
            },
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["maxInFlight"] = 1, ["upstreamTimeout"] = "20s" },
        });
        _sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = Policy });
    }

    public async Task DisposeAsync()
    {
        _legacyStream?.Dispose();
        _http.Dispose();
        await _sidecar.DisposeAsync();
    }

    [Fact]
    public async Task Requests_beyond_maxInFlight_are_shed_with_503_and_the_held_call_completes()
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // Everything that needs a POST is opened first, while the gate is free.
        var rawSession = await OpenSessionAsync();
        var legacyEndpoint = await OpenLegacyStreamAsync(timeout.Token);
        await using var client = await ConnectAsync(timeout.Token);
        await WaitForReadyzAsync("0 of 1 requests in flight", timeout.Token);

        var slow = client.CallToolAsync("trigger-long-running-operation",
            new Dictionary<string, object?> { ["duration"] = 3, ["steps"] = 1 }, cancellationToken: timeout.Token).AsTask();
        await WaitForReadyzAsync("1 of 1 requests in flight", timeout.Token);

        using (var shed = await PostAsync(_sidecar.McpUrl("everything"), """{"jsonrpc":"2.0","id":5,"method":"ping"}""", rawSession))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, shed.StatusCode);
            Assert.Equal(TimeSpan.FromSeconds(1), shed.Headers.RetryAfter?.Delta);
            var message = JsonDocument.Parse(await shed.Content.ReadAsStringAsync()).RootElement;
            Assert.Equal(JsonValueKind.Null, message.GetProperty("id").ValueKind);
            var error = message.GetProperty("error");
            Assert.Equal(-32015, error.GetProperty("code").GetInt32());
            Assert.Contains("limits.maxInFlight", error.GetProperty("message").GetString(), StringComparison.Ordinal);
            Assert.Equal("overloaded", error.GetProperty("data").GetProperty("reason").GetString());
            Assert.Equal(1000, error.GetProperty("data").GetProperty("retryAfterMs").GetInt32());
            Assert.Equal(1, error.GetProperty("data").GetProperty("maxInFlight").GetInt32());
        }
        using (var shedLegacy = await PostAsync(new Uri(_sidecar.BaseUrl, legacyEndpoint), """{"jsonrpc":"2.0","id":6,"method":"ping"}""", null))
        {
            Assert.Equal(HttpStatusCode.ServiceUnavailable, shedLegacy.StatusCode);
            Assert.Contains("-32015", await shedLegacy.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        var result = await slow;
        Assert.NotEqual(true, result.IsError);
        Assert.Contains("completed", string.Join("\n", result.Content.OfType<TextContentBlock>().Select(c => c.Text)), StringComparison.OrdinalIgnoreCase);

        // The place is given back: the same request now goes through.
        await WaitForReadyzAsync("0 of 1 requests in flight", timeout.Token);
        using (var ok = await PostAsync(_sidecar.McpUrl("everything"), """{"jsonrpc":"2.0","id":7,"method":"ping"}""", rawSession))
        {
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
            Assert.Contains("\"result\"", await ok.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        // The heartbeat reports the shed requests in the log (never on the request path).
        while (!LogText().Contains("requests with 503 (2 since start)", StringComparison.Ordinal))
        {
            await Task.Delay(50, timeout.Token);
        }
    }

    private string LogText()
    {
        lock (_sidecar.Log)
        {
            return _sidecar.Log.ToString();
        }
    }

    private Task<string> OpenSessionAsync() => RawMcp.OpenSessionAsync(_http, _sidecar.McpUrl("everything"));

    /// <summary>Opens a legacy SSE stream (a GET: not counted in flight) and returns the message endpoint it announces.</summary>
    private async Task<string> OpenLegacyStreamAsync(CancellationToken cancellationToken)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, _sidecar.SseUrl("everything"));
        request.Headers.Accept.ParseAdd("text/event-stream");
        _legacyStream = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        var reader = new StreamReader(await _legacyStream.Content.ReadAsStreamAsync(cancellationToken));
        Assert.Equal("event: endpoint", await reader.ReadLineAsync(cancellationToken));
        var data = await reader.ReadLineAsync(cancellationToken);
        Assert.StartsWith("data: ", data);
        return data!["data: ".Length..];
    }

    private async Task<McpClient> ConnectAsync(CancellationToken cancellationToken)
    {
        var transport = new HttpClientTransport(new HttpClientTransportOptions
        {
            Endpoint = _sidecar.McpUrl("everything"),
            TransportMode = HttpTransportMode.StreamableHttp,
            Name = "overload-it",
        }, NullLoggerFactory.Instance);
        return await McpClient.CreateAsync(transport, new McpClientOptions(), NullLoggerFactory.Instance, cancellationToken);
    }

    private async Task WaitForReadyzAsync(string expected, CancellationToken cancellationToken)
    {
        string text;
        while (!(text = await _http.GetStringAsync(new Uri(_sidecar.BaseUrl, "/readyz"), cancellationToken)).Contains(expected, StringComparison.Ordinal))
        {
            await Task.Delay(20, cancellationToken);
        }
        Assert.Contains(expected, text, StringComparison.Ordinal);
    }

    private Task<HttpResponseMessage> PostAsync(Uri url, string body, string? session) => RawMcp.PostAsync(_http, url, body, session);
}
