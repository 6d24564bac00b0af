using System.Runtime.InteropServices;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.RateLimiting;
using Sidecar.Sessions;

namespace Sidecar.Gateway;

/// <summary>
/// The daemon: the audit pipeline, the session engine over the config's snapshot, and what the HTTP transports share
/// (the listener's address, the 503 body). Everything about MCP itself is in <see cref="SessionEngine"/>.
/// </summary>
internal sealed class Gateway : IAsyncDisposable
{
    private readonly ILogger _logger;
    private ConfigWatcher? _watcher;
    private PosixSignalRegistration? _hangup;
    private Overloaded _overloaded;
    private Task? _drain;
    private int _stopSignals;
    private readonly CancellationTokenSource _stopNow = new();
    private PosixSignalRegistration? _terminate;
    private PosixSignalRegistration? _interrupt;

    /// <summary>Builds the audit pipeline and the first snapshot; throws <see cref="ConfigValidationException"/> with every error of every policy.</summary>
    public Gateway(SidecarConfig config, ILoggerFactory loggers, bool listeningOnLoopback)
    {
        _logger = loggers.CreateLogger("Sidecar.Http");
        Loggers = loggers;
        ListeningOnLoopback = listeningOnLoopback;
        var snapshot = SnapshotBuilder.Build(config, null, loggers, out var errors) ?? throw new ConfigValidationException(errors);
        Audit = AuditSetup.Create(config, loggers);
        if (config.RateLimits is { Store: RateLimitStoreKind.Redis, Redis: { } redis })
        {
            var sharedLog = loggers.CreateLogger("Sidecar.RateLimits");
            SharedLimits = new RedisLimitStore(redis, sharedLog);
            sharedLog.LogInformation("Rate limits of scope global, identity and grant are shared in Redis at {Endpoints} (prefix {Prefix}, failMode {FailMode}); session limits stay local",
                SharedLimits.Endpoints, redis.Prefix, redis.FailMode.ToString().ToLowerInvariant());
        }
        Engine = new SessionEngine(snapshot, Audit?.Recorder ?? AuditRecorder.Disabled, new RateLimitStore(), loggers, SharedLimits);
        if (SharedLimits is not null)
        {
            var outageLog = loggers.CreateLogger("Sidecar.RateLimits");
            Engine.Decisions.SharedOutage = what => outageLog.LogWarning("Shared rate limits: Redis is unreachable; {What}", what);
        }
        _overloaded = new Overloaded(config.Limits.MaxInFlight, JsonRpcResponses.Overloaded(config.Limits.MaxInFlight));
        Reloader = config.File is { } file ? new ConfigReloader(Path.GetFullPath(file), Engine, loggers) : null;
        GatewayObservables.Register(this);
        // After the observables: the listener is started once every instrument of the gateway's meter exists.
        Metrics = new Sidecar.Metrics.PrometheusExporter(instrument => ReferenceEquals(instrument.Meter, Engine.Metrics.Meter));
    }

    /// <summary>The shared rate-limit store (<c>rateLimits.store: redis</c>); null with the memory store.</summary>
    public RedisLimitStore? SharedLimits { get; }

    /// <summary>What <c>/metrics</c> serves: this gateway's instruments in Prometheus text.</summary>
    public Sidecar.Metrics.PrometheusExporter Metrics { get; }

    /// <summary>Live reload of the config file and its policies; null for a config that came from no file.</summary>
    public ConfigReloader? Reloader { get; }

    public SessionEngine Engine { get; }

    /// <summary>The audit writer; null when audit is off.</summary>
    public AuditPipeline? Audit { get; }

    public ILoggerFactory Loggers { get; }

    /// <summary>The HTTP transports' own log (refused hosts, stateless mismatches).</summary>
    public ILogger HttpLog => _logger;

    /// <summary>On loopback only loopback <c>Host</c> names are accepted (DNS-rebinding protection).</summary>
    public bool ListeningOnLoopback { get; }

    /// <summary>The body of the 503 a shed request gets (built once per <c>limits.maxInFlight</c>).</summary>
    public byte[] OverloadedResponse
    {
        get
        {
            // The body and the cap it names are swapped together (a reload may change limits.maxInFlight).
            var capacity = Engine.InFlight.Capacity;
            var current = Volatile.Read(ref _overloaded);
            if (current.Capacity != capacity)
            {
                current = new Overloaded(capacity, JsonRpcResponses.Overloaded(capacity));
                Volatile.Write(ref _overloaded, current);
            }
            return current.Body;
        }
    }

    /// <summary>
    /// Starts the audit writer (its first event is <c>audit_start</c>). Called once the listener is bound, so that a
    /// gateway that cannot listen (the port is taken) leaves no run in the trail.
    /// </summary>
    public void Start()
    {
        Audit?.Start();
        // Connects in the background: the gateway serves (by its fail mode) until Redis is reachable.
        _ = SharedLimits?.StartAsync();
        _terminate = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnStopSignal);
        _interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnStopSignal);
        if (Reloader is not null)
        {
            _watcher = new ConfigWatcher(Reloader, _logger);
            // SIGHUP reloads (and never ends the process: its default action would, without audit_stop).
            _hangup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, context =>
            {
                context.Cancel = true;
                _ = ReloadOnSignalAsync();
            });
        }
    }

    /// <summary>
    /// The host begins to stop (SIGTERM, SIGINT): new sessions and requests are refused, and the calls in flight get
    /// <c>limits.shutdownGrace</c> to finish (<see cref="SessionEngine.DrainAsync"/>); what is left then is answered
    /// with -32016 (shutting down) and recorded as <c>unknown</c>. A second SIGTERM or SIGINT ends the grace at once.
    /// <see cref="DrainedAsync"/> completes when that is done.
    /// </summary>
    public void BeginStopping()
    {
        _hangup?.Dispose();
        _watcher?.Dispose();
        if (Interlocked.CompareExchange(ref _drain, Task.CompletedTask, null) is not null)
        {
            return;
        }
        var grace = Engine.Current.Options.Limits.ShutdownGrace;
        _logger.LogInformation("Stopping: new requests are refused; calls in flight have {Grace} s to finish (limits.shutdownGrace); a second SIGTERM or SIGINT stops at once",
            grace.TotalSeconds);
        Volatile.Write(ref _drain, Engine.DrainAsync(grace, _stopNow.Token));
    }

    /// <summary>Completes once the drain begun by <see cref="BeginStopping"/> is over (at once if it never began).</summary>
    public Task DrainedAsync() => Volatile.Read(ref _drain) ?? Task.CompletedTask;

    /// <summary>Counts SIGTERM and SIGINT (the host stops on the first): the second one ends the grace now.</summary>
    private void OnStopSignal(PosixSignalContext context)
    {
        if (Interlocked.Increment(ref _stopSignals) > 1)
        {
            _logger.LogWarning("{Signal} again: stopping now; calls still in flight are answered with -32016 (shutting down)", context.Signal);
            _stopNow.Cancel();
        }
    }

    private async Task ReloadOnSignalAsync()
    {
        try
        {
            await Reloader!.ReloadAsync(ReloadTrigger.Signal).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            _logger.LogError(ex, "Reload on SIGHUP failed");
        }
    }

    private sealed record Overloaded(int Capacity, byte[] Body);

    public async ValueTask DisposeAsync()
    {
        _hangup?.Dispose();
        _watcher?.Dispose();
        _terminate?.Dispose();
        _interrupt?.Dispose();
        Metrics.Dispose();
        await Engine.DisposeAsync().ConfigureAwait(false);
        if (SharedLimits is not null)
        {
            await SharedLimits.DisposeAsync().ConfigureAwait(false);
        }
        // Last: the sessions above have recorded how their calls ended; drain, write audit_stop, flush the sinks.
        if (Audit is not null)
        {
            await Audit.DisposeAsync().ConfigureAwait(false);
        }
    }
}
