using System.Diagnostics;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Upstreams;

namespace Sidecar.IntegrationTests.Upstreams;

/// <summary>A Streamable HTTP server-everything shared by the tests of one class (each test opens its own session).</summary>
public sealed class StreamableHttpServerFixture : IAsyncLifetime
{
    public EverythingServer Server { get; private set; } = null!;

    public async Task InitializeAsync() => Server = await EverythingServer.StartStreamableHttpAsync();

    public async Task DisposeAsync() => await Server.DisposeAsync();
}

public sealed class StreamableHttpUpstreamTests(StreamableHttpServerFixture fixture)
    : UpstreamConversationTests, IClassFixture<StreamableHttpServerFixture>
{
    protected override ServerConfig Server => fixture.Server.ToServerConfig();

    protected override bool ResponsesCarryCorrelation => true;

    [Fact]
    public async Task The_session_id_and_negotiated_version_are_captured()
    {
        await using var session = await OpenAsync();
        Assert.Equal("streamable-http", session.Connector.Transport);
        var connection = (StreamableHttpUpstreamConnection)session.Connection;
        Assert.Null(connection.SessionId);

        await session.Client.InitializeAsync("2025-03-26");
        Assert.False(string.IsNullOrEmpty(connection.SessionId));
        Assert.Equal("2025-03-26", connection.ProtocolVersion);

        // Later requests carry both headers (the server refuses a session-less non-initialize request with 400).
        var list = await session.Client.RequestAsync("tools/list");
        Assert.True(list.Root.TryGetProperty("result", out _));
    }

    [Fact]
    public async Task Nothing_listening_fails_the_send_quickly_with_a_clear_message()
    {
        var port = EverythingServer.FreeLoopbackPort();
        var config = Server with
        {
            Url = new Uri($"http://127.0.0.1:{port}/mcp"),
            Headers = new Dictionary<string, string> { ["Authorization"] = "Bearer tok-7d1e0a-secret" },
        };
        // A connect timeout far beyond the request's own bound (UpstreamTestClient.DefaultTimeout): only a refusal
        // reported as such can fail the send in time.
        using var connector = (StreamableHttpUpstreamConnector)UpstreamConnectors.Create(config, TestLimits with { ConnectTimeout = TimeSpan.FromMinutes(10) }, Loggers);
        await using var client = new UpstreamTestClient(await connector.ConnectAsync(CancellationToken.None));

        var ex = await Assert.ThrowsAsync<UpstreamSendFailedException>(() => client.InitializeAsync());
        Assert.Contains($"cannot reach upstream 'everything' at http://127.0.0.1:{port}/mcp", ex.Error);
        Assert.Contains("refused", ex.Error, StringComparison.OrdinalIgnoreCase);
        Assert.False(client.Connection.Completion.IsCompleted, "one failed send does not end the connection");
        Assert.DoesNotContain("tok-7d1e0a-secret", ex.ToString());
        Assert.DoesNotContain("tok-7d1e0a-secret", Loggers.Dump());
    }

    [Fact]
    public async Task A_send_to_a_session_the_server_lost_fails_and_faults_the_connection_as_session_gone()
    {
        await using var server = await EverythingServer.StartStreamableHttpAsync();
        using var connector = (StreamableHttpUpstreamConnector)UpstreamConnectors.Create(server.ToServerConfig(), TestLimits, Loggers);
        await using var client = new UpstreamTestClient(await connector.ConnectAsync(CancellationToken.None));
        // initialize only: without notifications/initialized there is no GET stream, so the next POST is what
        // discovers the loss (the GET stream path is the next test).
        await client.RequestAsync("initialize", """{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}""");

        await server.RestartAsync(); // same port, no sessions

        var failed = await Assert.ThrowsAsync<UpstreamSendFailedException>(() => client.RequestAsync("tools/list"));
        Assert.Contains("session is gone (HTTP 400)", failed.Error);
        Assert.Contains("No valid session ID", failed.Payload); // the server's own JSON answer is kept in the event

        var ex = await Assert.ThrowsAsync<UpstreamException>(() => client.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(10)));
        Assert.True(ex.SessionGone);
        var sendEx = await Assert.ThrowsAsync<UpstreamException>(async () => await client.SendRawAsync("""{"jsonrpc":"2.0","id":99,"method":"ping"}"""));
        Assert.True(sendEx.SessionGone);
    }

    [Fact]
    public async Task The_GET_stream_reconnects_and_notices_a_lost_session()
    {
        await using var server = await EverythingServer.StartStreamableHttpAsync();
        using var connector = (StreamableHttpUpstreamConnector)UpstreamConnectors.Create(server.ToServerConfig(), TestLimits, Loggers);
        await using var client = new UpstreamTestClient(await connector.ConnectAsync(CancellationToken.None));
        await client.InitializeAsync();
        await client.RequestAsync("tools/list");

        await server.RestartAsync();

        // Nothing is sent: the GET stream drops, is reopened with backoff, and the server no longer knows the session.
        var ex = await Assert.ThrowsAsync<UpstreamException>(() => client.Connection.Completion.WaitAsync(TimeSpan.FromSeconds(15)));
        Assert.True(ex.SessionGone, ex.Message);
        Assert.Contains(Loggers.Entries, l => l.EventId.Id == 2010); // "reconnecting"
    }

    [Fact]
    public async Task Dispose_deletes_the_server_session()
    {
        var session = await OpenAsync();
        await session.Client.InitializeAsync();
        var sessionId = ((StreamableHttpUpstreamConnection)session.Connection).SessionId;
        Assert.NotNull(sessionId);

        await session.DisposeAsync();

        var deadline = Stopwatch.StartNew();
        var expected = $"Received session termination request for session {sessionId}";
        while (!fixture.Server.Output.Contains(expected, StringComparison.Ordinal) && deadline.Elapsed < TimeSpan.FromSeconds(5))
        {
            await Task.Delay(20);
        }
        Assert.Contains(expected, fixture.Server.Output);
        Assert.True(session.Connection.Completion.IsCompletedSuccessfully);
    }
}
