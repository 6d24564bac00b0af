using System.Collections.Frozen;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.RateLimiting;
using Sidecar.Upstreams;

namespace Sidecar.Gateway;

/// <summary>
/// The running gateway: one <see cref="ServerRuntime"/> per configured upstream, the shared rate-limit store, and the
/// heartbeat that expires overdue requests, evicts idle sessions and sweeps idle buckets.
/// </summary>
internal sealed class Gateway : IAsyncDisposable
{
    private static readonly TimeSpan HeartbeatPeriod = TimeSpan.FromMilliseconds(250);
    private static readonly TimeSpan SweepPeriod = TimeSpan.FromSeconds(10);
    private readonly FrozenDictionary<string, ServerRuntime> _servers;
    private readonly ILogger _logger;
    private readonly Timer _heartbeat;
    private long _lastSweep = Environment.TickCount64;
    private long _shedReported;

    public Gateway(SidecarConfig config, ILoggerFactory loggers, bool listeningOnLoopback)
    {
        Config = config;
        _logger = loggers.CreateLogger("Sidecar.Gateway");
        Options = new GatewayOptions(config.Limits, config.BlockedCalls);
        Guards = new HttpGuards(config, listeningOnLoopback);
        InFlight = new InFlightGate(config.Limits.MaxInFlight);
        OverloadedResponse = JsonRpcResponses.Overloaded(config.Limits.MaxInFlight);
        Store = new RateLimitStore();
        Engine = new DecisionEngine(Store);
        Audit = AuditSetup.Create(config, loggers);
        var recorder = Audit?.Recorder ?? AuditRecorder.Disabled;

        var servers = new Dictionary<string, ServerRuntime>(StringComparer.Ordinal);
        foreach (var server in config.Servers)
        {
            var policy = ServerRuntime.LoadPolicy(server);
            var connector = UpstreamConnectors.Create(server, config.Limits, loggers);
            servers[server.Name] = new ServerRuntime(server, connector, policy, Engine, Options, loggers.CreateLogger("Sidecar.Server." + server.Name), recorder);
            _logger.LogInformation("Server {Server}: {Transport}, policy {Policy}", server.Name, server.TransportName,
                server.PolicyPath ?? "(none: everything denied)");
        }
        _servers = servers.ToFrozenDictionary(StringComparer.Ordinal);
        _heartbeat = new Timer(static state => ((Gateway)state!).Heartbeat(), this, HeartbeatPeriod, HeartbeatPeriod);
    }

    /// <summary>
    /// Starts the audit writer (its first event is <c>audit_start</c>). Called once the listener is bound, so that a
    /// gateway that cannot listen (the port is taken) leaves no run in the trail.
    /// </summary>
    public void Start() => Audit?.Start();

    public SidecarConfig Config { get; }
    public GatewayOptions Options { get; }
    public HttpGuards Guards { get; }
    public RateLimitStore Store { get; }

    /// <summary>The cap on agent requests in flight (<c>limits.maxInFlight</c>).</summary>
    public InFlightGate InFlight { get; }

    /// <summary>The body of the 503 a shed request gets (built once).</summary>
    public byte[] OverloadedResponse { get; }
    public DecisionEngine Engine { get; }

    /// <summary>The audit writer; null when audit is off.</summary>
    public AuditPipeline? Audit { get; }
    public IEnumerable<ServerRuntime> Servers => _servers.Values;

    public ServerRuntime? FindServer(string name) => _servers.GetValueOrDefault(name);

    public int SessionCount
    {
        get
        {
            var count = 0;
            foreach (var server in _servers.Values)
            {
                count += server.Sessions.Count;
            }
            return count;
        }
    }

    /// <summary>Opens a session for an agent; null when the gateway already holds <c>limits.maxSessions</c>.</summary>
    public AgentSession? CreateSession(ServerRuntime server, bool legacy)
    {
        if (SessionCount >= Options.Limits.MaxSessions)
        {
            _logger.LogWarning("Refused a new session for {Server}: {Max} sessions are open", server.Name, Options.Limits.MaxSessions);
            return null;
        }
        var session = new AgentSession(NewSessionId(), server, legacy);
        server.Sessions[session.Id] = session;
        return session;
    }

    /// <summary>128 random bits, hex: unguessable, and safe in headers and URLs.</summary>
    private static string NewSessionId() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));

    private void Heartbeat()
    {
        try
        {
            var now = Environment.TickCount64;
            var sweep = now - _lastSweep >= (long)SweepPeriod.TotalMilliseconds;
            foreach (var server in _servers.Values)
            {
                foreach (var (_, session) in server.Sessions)
                {
                    session.ExpireOverdue(now);
                    if (sweep && !session.Legacy && session.IsIdle(Options.Limits.SessionIdleTimeout))
                    {
                        _logger.LogInformation("Closing idle session {Session} of {Server}", session.Id, server.Name);
                        _ = session.DisposeAsync().AsTask();
                    }
                }
            }
            if (sweep)
            {
                _lastSweep = now;
                Store.Sweep();
            }
            ReportShed();
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "Gateway heartbeat failed");
        }
    }

    /// <summary>Logs the requests shed since the last heartbeat (at most four lines a second, none on the request path).</summary>
    private void ReportShed()
    {
        var shed = InFlight.Shed;
        if (shed != _shedReported)
        {
            _logger.LogWarning("Overloaded: shed {Count} requests with 503 ({Total} since start); {InFlight} of {Max} in flight (limits.maxInFlight)",
                shed - _shedReported, shed, InFlight.Count, InFlight.Capacity);
            _shedReported = shed;
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _heartbeat.DisposeAsync().ConfigureAwait(false);
        var closing = new List<Task>();
        foreach (var server in _servers.Values)
        {
            foreach (var (_, session) in server.Sessions)
            {
                closing.Add(session.DisposeAsync().AsTask());
            }
        }
        await Task.WhenAll(closing).ConfigureAwait(false);
        foreach (var server in _servers.Values)
        {
            (server.Connector as IDisposable)?.Dispose();
        }
        // Last: the sessions above have recorded how their calls ended; drain, write audit_stop, flush the sinks.
        if (Audit is not null)
        {
            await Audit.DisposeAsync().ConfigureAwait(false);
        }
    }
}
