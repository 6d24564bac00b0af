using System.Collections.Concurrent;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Policy;
using Sidecar.Upstreams;

namespace Sidecar.Gateway;

/// <summary>
/// Everything the gateway holds for one upstream server: its connector, its compiled policy (swapped whole on
/// reload, read without locks) and the agent sessions in front of it.
/// </summary>
internal sealed class ServerRuntime
{
    private volatile PolicyModel _policy;

    public ServerRuntime(ServerConfig config, IUpstreamConnector connector, PolicyModel policy, DecisionEngine engine,
        GatewayOptions options, ILogger logger, AuditRecorder audit)
    {
        Audit = audit;
        Config = config;
        Connector = connector;
        _policy = policy;
        Engine = engine;
        Options = options;
        Logger = logger;
    }

    public string Name => Config.Name;
    public ServerConfig Config { get; }
    public IUpstreamConnector Connector { get; }
    public DecisionEngine Engine { get; }
    public GatewayOptions Options { get; }
    public ILogger Logger { get; }

    /// <summary>Where every <c>tools/call</c> decision (and a forwarded call's completion) is recorded.</summary>
    public AuditRecorder Audit { get; }

    /// <summary>The live policy. Each request reads it once; a reload replaces it atomically.</summary>
    public PolicyModel Policy => _policy;

    public void ReplacePolicy(PolicyModel policy) => _policy = policy;

    public ConcurrentDictionary<string, AgentSession> Sessions { get; } = new(StringComparer.Ordinal);

    /// <summary>
    /// Loads the server's policy; a server with no policy at all gets one that denies everything (fail closed).
    /// </summary>
    public static PolicyModel LoadPolicy(ServerConfig server)
    {
        if (server.PolicyPath is null)
        {
            var diagnostics = new DiagnosticBag();
            var json = $$"""{ "version": "1", "default": "deny", "description": "no policy configured for server {{server.Name}}: everything is denied" }""";
            return PolicyCompiler.Load(Encoding.UTF8.GetBytes(json), server.Name, diagnostics)!;
        }
        return PolicyCompiler.LoadFile(server.PolicyPath, server.Name);
    }
}

/// <summary>Gateway-wide settings derived from the config file.</summary>
internal sealed record GatewayOptions(GatewayLimits Limits, BlockedCallStyle BlockedCalls)
{
    public JsonRpc.JsonRpcScannerOptions Scanner { get; } = new() { MaxMessageBytes = Limits.MaxMessageBytes };
}
