using System.Buffers;
using System.Collections.Frozen;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Sessions;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Tests.Audit;

namespace Sidecar.Tests.TestSupport;

/// <summary>
/// One agent session of a real <see cref="SessionEngine"/> in front of an <see cref="EchoConnector"/>, with a policy
/// and an audit pipeline that is not started (a test runs the writer's passes itself): the gateway's protocol rules
/// without HTTP or npm servers.
/// </summary>
internal static class SessionHarness
{
    public static (TestSession Session, EchoConnector Connector, AuditPipeline Pipeline) Create(AuditConfig audit, string policyJson,
        BlockedCallStyle blockedCalls = BlockedCallStyle.Error)
    {
        var pipeline = AuditTest.Pipeline(new MemorySink(), audit);
        var diagnostics = new DiagnosticBag();
        var policy = PolicyCompiler.Load(Encoding.UTF8.GetBytes(policyJson), "srv", diagnostics) ?? throw new InvalidOperationException(diagnostics.ToString());
        var server = new ServerConfig("srv", default, UpstreamTransport.Stdio, "echo", [], new Dictionary<string, string>(), null, null,
            new Dictionary<string, string>(), null);
        var config = new SidecarConfig(null, "127.0.0.1:0", [server], null, blockedCalls, GatewayLimits.Default, [], [], audit);
        var connector = new EchoConnector();
        var state = new ServerState(server, policy, new UpstreamHandle(connector), 64);
        var snapshot = new GatewaySnapshot(config, new Dictionary<string, ServerState> { ["srv"] = state }.ToFrozenDictionary(), 1);
        var engine = new SessionEngine(snapshot, pipeline.Recorder, new RateLimitStore(), NullLoggerFactory.Instance);
        Assert.Equal(SessionOpen.Opened, engine.TryOpen(snapshot, state, SessionTransport.StreamableHttp, out var session));
        return (new TestSession(engine, session!), connector, pipeline);
    }

    public static JsonRpcScan Scan(byte[] message)
    {
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(message, out var scan));
        return scan;
    }

    public static async Task<JsonElement> CallAsync(TestSession session, byte[] message)
    {
        var sink = new MessageSink(acceptsRelatedMessages: false);
        Assert.True(await session.ProcessAsync(new ReadOnlySequence<byte>(message), Scan(message), sink, CancellationToken.None));
        var outbound = await ReadAsync(sink);
        return JsonDocument.Parse(outbound.Payload).RootElement.Clone();
    }

    public static async Task<Outbound> ReadAsync(MessageSink sink)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (await sink.WaitToReadAsync(timeout.Token))
        {
            if (sink.TryRead(out var message) && message.IsResponse)
            {
                return message;
            }
        }
        throw new InvalidOperationException("the sink ended without an answer");
    }
}

/// <summary>A session and its engine: messages go through <see cref="SessionEngine.ReceiveAsync"/> as a transport sends them.</summary>
internal sealed class TestSession(SessionEngine engine, McpSession session) : IAsyncDisposable
{
    public SessionEngine Engine { get; } = engine;

    public McpSession Session { get; } = session;

    /// <summary>True when an answer will come to <paramref name="sink"/>.</summary>
    public async ValueTask<bool> ProcessAsync(ReadOnlySequence<byte> message, JsonRpcScan scan, MessageSink sink, CancellationToken cancellationToken)
    {
        var (expected, refused) = await Engine.ReceiveAsync(Engine.Current, Session, message, scan, sink, cancellationToken);
        Assert.Null(refused);
        return expected > 0;
    }

    public async ValueTask DisposeAsync()
    {
        await Session.DisposeAsync();
        await Engine.DisposeAsync();
    }
}
