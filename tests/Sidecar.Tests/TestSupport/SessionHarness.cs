using System.Buffers;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Gateway;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.RateLimiting;
using Sidecar.Tests.Audit;

namespace Sidecar.Tests.TestSupport;

/// <summary>
/// One agent session in front of an <see cref="EchoConnector"/>, with a policy and an audit pipeline that is not
/// started (a test runs the writer's passes itself): the gateway's protocol rules without HTTP or npm servers.
/// </summary>
internal static class SessionHarness
{
    public static (AgentSession Session, EchoConnector Connector, AuditPipeline Pipeline) Create(AuditConfig audit, string policyJson,
        BlockedCallStyle blockedCalls = BlockedCallStyle.Error)
    {
        var pipeline = AuditTest.Pipeline(new MemorySink(), audit);
        var diagnostics = new DiagnosticBag();
        var policy = PolicyCompiler.Load(Encoding.UTF8.GetBytes(policyJson), "srv", diagnostics) ?? throw new InvalidOperationException(diagnostics.ToString());
        var config = new ServerConfig("srv", default, UpstreamTransport.Stdio, "echo", [], new Dictionary<string, string>(), null, null,
            new Dictionary<string, string>(), null);
        var connector = new EchoConnector();
        var server = new ServerRuntime(config, connector, policy, new DecisionEngine(new RateLimitStore()),
            new GatewayOptions(GatewayLimits.Default, blockedCalls), NullLogger.Instance, pipeline.Recorder);
        return (new AgentSession("session-1", server, legacy: false), connector, pipeline);
    }

    public static JsonRpcScan Scan(byte[] message)
    {
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(message, out var scan));
        return scan;
    }

    public static async Task<JsonElement> CallAsync(AgentSession session, byte[] message)
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
