using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The stateless era (2026-07-28) passed through to an upstream that speaks it: the official C# SDK server in
/// stateless mode (tests/fixtures/ModernMcpServer), run as its own process on loopback.
/// </summary>
public sealed class StatelessGatewayFixture : IAsyncLifetime
{
    private Process? _server;

    public const string AdminToken = "stateless-admin-token-0123456789";

    public SidecarHost Sidecar { get; private set; } = null!;

    public async Task InitializeAsync()
    {
        var port = EverythingServer.FreeLoopbackPort();
        var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";
        var dll = Repo.PathOf("tests", "fixtures", "ModernMcpServer", "bin", configuration, "net10.0", "ModernMcpServer.dll");
        _server = Process.Start(new ProcessStartInfo("dotnet", [dll, "--urls", $"http://127.0.0.1:{port}"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        })!;
        _server.OutputDataReceived += (_, _) => { };
        _server.ErrorDataReceived += (_, _) => { };
        _server.BeginOutputReadLine();
        _server.BeginErrorReadLine();
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (true)
        {
            try
            {
                using var probe = new TcpClient();
                await probe.ConnectAsync(IPAddress.Loopback, port);
                break;
            }
            catch (SocketException) when (DateTime.UtcNow < deadline && !_server.HasExited)
            {
                await Task.Delay(100);
            }
        }

        // Listening is not serving yet: its first answer (JIT, routing) can take seconds on a loaded machine, longer than
        // Sidecar's server/discover probe waits. Warm it up with that probe's request.
        using (var warm = new HttpClient { Timeout = TimeSpan.FromSeconds(30) })
        {
            using var discover = new HttpRequestMessage(HttpMethod.Post, $"http://127.0.0.1:{port}/mcp")
            {
                Content = new StringContent("""{"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}""", Encoding.UTF8, "application/json"),
            };
            discover.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
            discover.Headers.TryAddWithoutValidation("MCP-Protocol-Version", "2026-07-28");
            discover.Headers.TryAddWithoutValidation("Mcp-Method", "server/discover");
            using var answer = await warm.SendAsync(discover);
        }

        var policy = """
            { "version": "1", "default": "deny", "hide": ["secret"],
              "tools": {
                "echo": { "limits": [ { "counter": "echo", "window": "hour", "max": 1000 } ] },
                "add": { "deny_if": [ { "path": "args.a", "op": "gt", "value": 100 } ], "reason": "a is capped at 100" },
                "deploy": { "action": "require_approval" } } }
            """;
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["modern"] = new Dictionary<string, object> { ["url"] = $"http://127.0.0.1:{port}/mcp", ["transport"] = "streamable-http" },
            },
            ["policy"] = "policy.json",
            ["admin"] = new Dictionary<string, object> { ["listen"] = "127.0.0.1:0", ["token"] = AdminToken },
        });
        Sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = policy });
    }

    public async Task DisposeAsync()
    {
        if (Sidecar is not null)
        {
            await Sidecar.DisposeAsync();
        }
        if (_server is { HasExited: false })
        {
            _server.Kill(entireProcessTree: true);
            await _server.WaitForExitAsync();
        }
        _server?.Dispose();
    }
}

public sealed class StatelessGatewayTests(StatelessGatewayFixture fixture) : IClassFixture<StatelessGatewayFixture>, IDisposable
{
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public void Dispose() => _http.Dispose();

    private static CancellationToken Timeout() => new CancellationTokenSource(TimeSpan.FromSeconds(30)).Token;

    private async Task<McpClient> ConnectAsync(string? protocolVersion)
    {
        var transport = new HttpClientTransport(new HttpClientTransportOptions { Endpoint = fixture.Sidecar.McpUrl("modern"), TransportMode = HttpTransportMode.StreamableHttp },
            NullLoggerFactory.Instance);
        return await McpClient.CreateAsync(transport, new McpClientOptions { ProtocolVersion = protocolVersion }, NullLoggerFactory.Instance, Timeout());
    }

    [Theory]
    [InlineData("2026-07-28")]
    [InlineData(null)]
    public async Task A_modern_client_reaches_a_modern_server_through_the_policy(string? pinned)
    {
        await using var client = await ConnectAsync(pinned);
        Assert.Equal("2026-07-28", client.NegotiatedProtocolVersion);

        var tools = (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToHashSet();
        Assert.Contains("echo", tools);
        Assert.Contains("add", tools);
        Assert.DoesNotContain("secret", tools);

        var echo = await client.CallToolAsync("echo", new Dictionary<string, object?> { ["message"] = "stateless" }, cancellationToken: Timeout());
        Assert.Contains("Echo: stateless", echo.Content.OfType<TextContentBlock>().Single().Text, StringComparison.Ordinal);

        var denied = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("add", new Dictionary<string, object?> { ["a"] = 500, ["b"] = 1 }, cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)denied.ErrorCode);
        Assert.Contains("a is capped at 100", denied.Message, StringComparison.Ordinal);

        var hidden = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("secret", new Dictionary<string, object?>(), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)hidden.ErrorCode);
    }

    [Fact]
    public async Task A_stateless_call_that_needs_approval_is_refused_at_once_and_its_identical_retry_passes_once_approved()
    {
        string Call(int id) => "{\"jsonrpc\":\"2.0\",\"id\":" + id + ",\"method\":\"tools/call\",\"params\":{\"name\":\"deploy\",\"arguments\":{\"target\":\"staging\"}," + Meta + "}}";
        (string, string)[] headers = [("Mcp-Method", "tools/call"), ("Mcp-Name", "deploy")];
        var (status, body) = await PostAsync(Call(1), headers);
        Assert.Equal(HttpStatusCode.OK, status);
        var error = JsonDocument.Parse(body).RootElement.GetProperty("error");
        Assert.Equal(-32012, error.GetProperty("code").GetInt32());
        Assert.Equal("pending", error.GetProperty("data").GetProperty("status").GetString());
        var id = error.GetProperty("data").GetProperty("approvalId").GetString()!;

        using (var approve = new HttpRequestMessage(HttpMethod.Post, new Uri(fixture.Sidecar.AdminUrl!, $"/v1/approvals/{id}/approve")))
        {
            approve.Headers.Authorization = new AuthenticationHeaderValue("Bearer", StatelessGatewayFixture.AdminToken);
            using var approved = await _http.SendAsync(approve);
            Assert.Equal(HttpStatusCode.OK, approved.StatusCode);
        }

        var (_, retried) = await PostAsync(Call(2), headers);
        Assert.Contains("deployed staging", retried, StringComparison.Ordinal);
        var (_, again) = await PostAsync(Call(3), headers);
        var second = JsonDocument.Parse(again).RootElement.GetProperty("error");
        Assert.Equal(-32012, second.GetProperty("code").GetInt32());
        Assert.NotEqual(id, second.GetProperty("data").GetProperty("approvalId").GetString());
    }

    private async Task<(HttpStatusCode Status, string Body)> PostAsync(string body, params (string Name, string Value)[] headers)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, fixture.Sidecar.McpUrl("modern")) { Content = new StringContent(body, Encoding.UTF8) };
        request.Content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        request.Headers.TryAddWithoutValidation("Accept", "application/json, text/event-stream");
        request.Headers.Add("MCP-Protocol-Version", "2026-07-28");
        foreach (var (name, value) in headers)
        {
            request.Headers.TryAddWithoutValidation(name, value);
        }
        using var response = await _http.SendAsync(request);
        return (response.StatusCode, await response.Content.ReadAsStringAsync());
    }

    private const string Meta = "\"_meta\":{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{}}";

    [Fact]
    public async Task Headers_must_say_what_the_body_says()
    {
        var secretCall = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"secret\",\"arguments\":{}," + Meta + "}}";
        var (status, body) = await PostAsync(secretCall, ("Mcp-Method", "tools/call"), ("Mcp-Name", "echo"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("-32020", body, StringComparison.Ordinal);

        (status, body) = await PostAsync(secretCall, ("Mcp-Method", "tools/list"), ("Mcp-Name", "secret"));
        Assert.Equal(HttpStatusCode.BadRequest, status);
        Assert.Contains("-32020", body, StringComparison.Ordinal);

        (status, _) = await PostAsync(secretCall);
        Assert.Equal(HttpStatusCode.BadRequest, status);
    }

    [Fact]
    public async Task Base64_header_values_are_decoded_and_the_decision_is_on_the_body()
    {
        var echoCall = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"e\\u0063ho\",\"arguments\":{\"message\":\"b64\"}," + Meta + "}}";
        var encoded = "=?base64?" + Convert.ToBase64String(Encoding.UTF8.GetBytes("echo")) + "?=";
        var (status, body) = await PostAsync(echoCall, ("Mcp-Method", "tools/call"), ("Mcp-Name", encoded));
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Contains("Echo: b64", body, StringComparison.Ordinal);

        var hiddenCall = "{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"secret\",\"arguments\":{}," + Meta + "}}";
        (status, body) = await PostAsync(hiddenCall, ("Mcp-Method", "tools/call"), ("Mcp-Name", "secret"));
        Assert.Equal(HttpStatusCode.OK, status); // a denial is an answer, not a transport failure
        Assert.Contains("-32010", body, StringComparison.Ordinal);
        Assert.DoesNotContain("the secret", body, StringComparison.Ordinal);
    }
}
