using System.Net;
using System.Net.Sockets;
using System.Text;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>A legacy HTTP+SSE server-everything shared by the tests of one class (each test opens its own session).</summary>
public sealed class SseServerFixture : IAsyncLifetime
{
    public EverythingServer Server { get; private set; } = null!;

    public async Task InitializeAsync() => Server = await EverythingServer.StartSseAsync();

    public async Task DisposeAsync() => await Server.DisposeAsync();
}

public sealed class SseUpstreamTests(SseServerFixture fixture) : UpstreamConversationTests, IClassFixture<SseServerFixture>
{
    protected override ServerConfig Server => fixture.Server.ToServerConfig();

    protected override bool ResponsesCarryCorrelation => false;

    [Fact]
    public async Task Connector_reports_its_transport()
    {
        using var connector = (SseUpstreamConnector)UpstreamConnectors.Create(Server, TestLimits, Loggers);
        Assert.Equal("sse", connector.Transport);
        Assert.Equal("everything", connector.Name);
    }

    [Fact]
    public async Task Nothing_listening_is_a_clear_UpstreamException_right_away()
    {
        var port = EverythingServer.FreeLoopbackPort();
        var config = Server with { Url = new Uri($"http://127.0.0.1:{port}/sse") };
        // A connect timeout far beyond the wait's bound: only a refusal reported as such can end the attempt in time.
        using var connector = (SseUpstreamConnector)UpstreamConnectors.Create(config, TestLimits with { ConnectTimeout = TimeSpan.FromMinutes(10) }, Loggers);
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => connector.ConnectAsync(CancellationToken.None).AsTask().WaitAsync(TimeSpan.FromSeconds(60)));
        Assert.Contains($"cannot reach upstream 'everything' at http://127.0.0.1:{port}/sse", ex.Message);
        Assert.Contains("refused", ex.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public async Task A_server_going_away_faults_Completion_and_later_sends_throw()
    {
        await using var server = await EverythingServer.StartSseAsync();
        var connector = UpstreamConnectors.Create(server.ToServerConfig(), TestLimits, Loggers);
        await using var client = new UpstreamTestClient(await connector.ConnectAsync(CancellationToken.None));
        await client.InitializeAsync();

        await server.StopAsync();

        var ex = await Assert.ThrowsAsync<UpstreamException>(() => client.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.Contains("SSE stream", ex.Message);
        await Assert.ThrowsAsync<UpstreamException>(() => client.RequestAsync("tools/list"));
        (connector as IDisposable)?.Dispose();
    }

    /// <summary>
    /// The only fake server in these tests: a loopback socket that answers the GET with an event stream announcing a
    /// message endpoint somewhere else. The connector must refuse it before sending anything there.
    /// </summary>
    [Theory]
    [InlineData("http://127.0.0.1:1/message?sessionId=abc")]        // another port
    [InlineData("//sidecar-test.invalid/message?sessionId=abc")]    // scheme-relative: another host
    [InlineData("https://127.0.0.1:{port}/message?sessionId=abc")]  // another scheme
    public async Task An_endpoint_on_another_origin_is_refused(string endpoint)
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        endpoint = endpoint.Replace("{port}", port.ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal);
        using var serve = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        string? receivedRequest = null;
        var fake = Task.Run(async () =>
        {
            using var socket = await listener.AcceptSocketAsync(serve.Token);
            await using var stream = new NetworkStream(socket);
            var buffer = new byte[8192];
            var request = new StringBuilder();
            while (!request.ToString().Contains("\r\n\r\n", StringComparison.Ordinal))
            {
                var read = await stream.ReadAsync(buffer, serve.Token);
                if (read == 0)
                {
                    return;
                }
                request.Append(Encoding.ASCII.GetString(buffer, 0, read));
            }
            receivedRequest = request.ToString();
            var response = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
                + ": a comment first\r\n\r\n"
                + $"event: endpoint\r\ndata: {endpoint}\r\n\r\n";
            await stream.WriteAsync(Encoding.ASCII.GetBytes(response), serve.Token);
            // Keep the stream open until the client hangs up (bounded by the token).
            while (await stream.ReadAsync(buffer, serve.Token) > 0)
            {
            }
        });

        var config = Server with
        {
            Url = new Uri($"http://127.0.0.1:{port}/sse"),
            Headers = new Dictionary<string, string> { ["X-Api-Key"] = "k-2f9c1e-secret", ["Accept"] = "text/html" },
        };
        using var connector = (SseUpstreamConnector)UpstreamConnectors.Create(config, TestLimits, Loggers);
        var ex = await Assert.ThrowsAsync<UpstreamException>(async () => await connector.ConnectAsync(CancellationToken.None));
        Assert.Contains("message endpoint on another origin", ex.Message);
        await fake.WaitAsync(TimeSpan.FromSeconds(10)); // the connector hung up

        // The configured credential was sent, the protocol's own Accept won over a configured one, and the
        // credential shows up in no error and no log line.
        Assert.NotNull(receivedRequest);
        Assert.StartsWith("GET /sse HTTP/1.1\r\n", receivedRequest);
        Assert.Contains("X-Api-Key: k-2f9c1e-secret\r\n", receivedRequest);
        Assert.Contains("Accept: text/event-stream\r\n", receivedRequest);
        Assert.DoesNotContain("text/html", receivedRequest);
        Assert.DoesNotContain("k-2f9c1e-secret", ex.ToString());
        Assert.DoesNotContain("k-2f9c1e-secret", Loggers.Dump());
        Assert.Contains(Loggers.Entries, l => l.EventId.Id == 2008 && l.Message.Contains("Accept", StringComparison.Ordinal));
    }
}
