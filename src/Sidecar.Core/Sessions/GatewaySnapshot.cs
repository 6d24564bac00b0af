using System.Collections.Frozen;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.Upstreams;

namespace Sidecar.Sessions;

/// <summary>Gateway-wide settings derived from the config file.</summary>
internal sealed record GatewayOptions(GatewayLimits Limits, BlockedCallStyle BlockedCalls)
{
    public JsonRpcScannerOptions Scanner { get; } = new() { MaxMessageBytes = Limits.MaxMessageBytes };

    /// <summary>
    /// Whether a <c>require_approval</c> call is held for a person: only when the admin API (the only way to approve)
    /// is configured. Otherwise it is refused at once with -32012.
    /// </summary>
    public bool ApprovalsEnabled { get; init; }
}

/// <summary>
/// Everything the gateway serves with, built whole from one config and its policies and published with one volatile
/// swap (<see cref="SessionEngine.Apply"/>): a request reads <see cref="SessionEngine.Current"/> once and uses that
/// snapshot to its end, whatever reloads meanwhile. Immutable.
/// </summary>
internal sealed class GatewaySnapshot
{
    public GatewaySnapshot(SidecarConfig config, FrozenDictionary<string, ServerState> servers, long version)
    {
        Config = config;
        Servers = servers;
        Version = version;
        Options = new GatewayOptions(config.Limits, config.BlockedCalls) { ApprovalsEnabled = config.Admin is not null };
        Origins = new OriginGuard(config.AllowedHosts, config.AllowedOrigins);
        Identities = new IdentityResolver(config.Identities, config.Grants);
    }

    /// <summary>Who may call (<c>identities</c>); <see cref="IdentityResolver.Required"/> is false when every agent is anonymous.</summary>
    public IdentityResolver Identities { get; }

    public SidecarConfig Config { get; }
    public FrozenDictionary<string, ServerState> Servers { get; }
    public GatewayOptions Options { get; }

    /// <summary>Which <c>Host</c> and <c>Origin</c> values agents may send.</summary>
    public OriginGuard Origins { get; }

    /// <summary>1 for the snapshot the gateway started with, +1 per applied reload.</summary>
    public long Version { get; }

    public ServerState? Find(string name) => Servers.GetValueOrDefault(name);

    /// <summary>For a snapshot built and then not applied: closes the connectors it made that <paramref name="live"/> does not share.</summary>
    public void RetireNewUpstreams(GatewaySnapshot live)
    {
        foreach (var (name, server) in Servers)
        {
            if (live.Find(name) is not { } current || !ReferenceEquals(current.Upstream, server.Upstream))
            {
                server.Upstream.Retire();
            }
        }
    }
}

/// <summary>One upstream server in a snapshot: its definition, its compiled policies and the connector new sessions use.</summary>
internal sealed class ServerState(ServerConfig config, PolicyModel policy, UpstreamHandle upstream, int maxSessions,
    FrozenDictionary<string, PolicyModel>? grantPolicies = null, PinWatch? pinWatch = null)
{
    private readonly FrozenDictionary<string, PolicyModel> _grantPolicies = grantPolicies ?? FrozenDictionary<string, PolicyModel>.Empty;

    /// <summary>
    /// The pins of every policy this server applies (its own and each grant's) and what its pinned tools were last
    /// seen as: <see cref="PinWatch"/> outlives sessions, and the snapshot builder hands it on while the server's
    /// definition is unchanged.
    /// </summary>
    public ServerPins Pins { get; } = new(pinWatch ?? new PinWatch(), [policy, .. (grantPolicies ?? FrozenDictionary<string, PolicyModel>.Empty).Values]);

    public string Name => Config.Name;
    public ServerConfig Config { get; } = config;

    /// <summary>The compiled policy for anonymous callers (the server's own <c>policy</c>): replaced only by a new snapshot.</summary>
    public PolicyModel Policy { get; } = policy;

    /// <summary>
    /// The policy <paramref name="caller"/>'s grant gives this server: the grant's <c>policies[server]</c>, else
    /// <c>policies["*"]</c>, else one that denies everything (compiled with the snapshot, so this is one lookup).
    /// An anonymous caller gets <see cref="Policy"/>.
    /// </summary>
    public PolicyModel PolicyFor(in Caller caller)
        => caller.Grant is null ? Policy : _grantPolicies.GetValueOrDefault(caller.Grant) ?? Policy;

    /// <summary>Opens upstream sessions; shared with the next snapshot while the server's definition is unchanged.</summary>
    public UpstreamHandle Upstream { get; } = upstream;

    /// <summary><c>limits.maxSessionsPerServer</c> for this server (64 for stdio, 1024 for shared stdio and HTTP, unless configured).</summary>
    public int MaxSessions { get; } = maxSessions;
}

/// <summary>
/// A connector and the sessions using it. A reload that changes a server's definition retires the old handle: its
/// sessions keep it, new sessions get the new one, and the old connector (an HTTP client pool) is disposed once its
/// last session has closed.
/// </summary>
internal sealed class UpstreamHandle(IUpstreamConnector connector)
{
    private int _users;
    private int _retired;

    public IUpstreamConnector Connector { get; } = connector;

    public void Retain() => Interlocked.Increment(ref _users);

    public void Release()
    {
        if (Interlocked.Decrement(ref _users) == 0 && Volatile.Read(ref _retired) != 0)
        {
            Close();
        }
    }

    /// <summary>No new session will use it: closed now if idle, else when its last session closes.</summary>
    public void Retire()
    {
        if (Interlocked.Exchange(ref _retired, 1) == 0 && Volatile.Read(ref _users) == 0)
        {
            Close();
        }
    }

    private void Close() => (Connector as IDisposable)?.Dispose();
}
