using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Logging;
using Sidecar.Sessions;
using ZLogger;

namespace Sidecar.Gateway;

/// <summary>Builds and runs the Kestrel daemon for a config.</summary>
internal static class GatewayHost
{
    /// <summary>The runtime's switch for running socket completions on the I/O thread.</summary>
    public const string InlineCompletionsVariable = "DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS";

    /// <summary>
    /// Whether a call runs start to end on the I/O thread that received it: on unless
    /// <c>DOTNET_SYSTEM_NET_SOCKETS_INLINE_COMPLETIONS=0</c>. <c>sidecar run</c> sets that variable to 1 when it is
    /// not set (<see cref="PreferInlineIo"/>), so the runtime also completes socket reads and writes inline. A
    /// thread-pool hand-off per step (receive, decide, forward, answer, send) costs a thread wake-up each, which on a
    /// small VM is more than the rest of the call (bench/load/FINDINGS.md).
    /// </summary>
    public static bool InlineIo => Environment.GetEnvironmentVariable(InlineCompletionsVariable) != "0";

    /// <summary>Turns on the runtime's inline socket completions unless the environment says otherwise. Call before any socket exists.</summary>
    public static void PreferInlineIo()
    {
        if (Environment.GetEnvironmentVariable(InlineCompletionsVariable) is null)
        {
            Environment.SetEnvironmentVariable(InlineCompletionsVariable, "1");
        }
    }

    public static WebApplication Build(SidecarConfig config, LogLevel logLevel, Action<ILoggingBuilder>? logging = null)
    {
        if (!SidecarConfigReader.TryParseListen(config.Listen, out var host, out var port))
        {
            throw new ArgumentException($"invalid listen address {config.Listen}");
        }
        var address = host == "localhost" ? IPAddress.Loopback : IPAddress.Parse(host);

        // The empty builder: no appsettings files, no environment-variable configuration and, above all, no file
        // watcher on the content root. The slim builder watches the working directory for appsettings changes, and on
        // Linux that walks every folder below it at start (from "/" in a container, or a repository with node_modules:
        // hundreds of milliseconds). Sidecar reads its own config file; Kestrel and routing are added explicitly.
        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
        builder.WebHost.UseKestrelCore();
        // Kestrel runs the request handlers on the socket's I/O thread instead of handing each read and write to the
        // thread pool (see InlineIo). The handlers never block: every wait is asynchronous.
        builder.WebHost.UseSockets(sockets => sockets.UnsafePreferInlineScheduling = InlineIo);
        builder.Services.AddRoutingCore();
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(logLevel);
        builder.Logging.AddFilter("Microsoft.AspNetCore", logLevel <= LogLevel.Debug ? logLevel : LogLevel.Warning);
        // "Hosting failed to start" and its stack trace: `sidecar run` says why in one line (a port in use, say).
        builder.Logging.AddFilter("Microsoft.Extensions.Hosting", logLevel <= LogLevel.Debug ? logLevel : LogLevel.Critical);
        if (logging is null)
        {
            AddStderrLogging(builder.Logging, config.Logging.Format);
        }
        else
        {
            logging(builder.Logging);
        }
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            // limits.maxMessageBytes is enforced by HttpGuards.ReadBodyAsync (a reload may change it): Kestrel's own cap
            // is set at start and could not follow.
            kestrel.Limits.MaxRequestBodySize = null;
            kestrel.Listen(address, port);
            if (config.Admin is { } admin)
            {
                // The admin API's own socket: its connections are marked, and only the admin API answers them.
                SidecarConfigReader.TryParseListen(admin.Listen, out var adminHost, out var adminPort);
                kestrel.Listen(adminHost == "localhost" ? IPAddress.Loopback : IPAddress.Parse(adminHost), adminPort, listen => listen.Use(next => connection =>
                {
                    connection.Features.Set(AdminConnectionFeature.Instance);
                    return next(connection);
                }));
            }
        });

        // Stopping: when the host begins to stop (ApplicationStopping, before the web server waits for the requests
        // still open), the sessions are closed, so the calls in flight are answered and recorded at once instead of
        // holding the web server's shutdown; then a hosted service awaits the gateway's disposal (audit drained,
        // audit_stop, sinks flushed). Blocking in the ApplicationStopping callback would hold the thread that asked
        // to stop, and an I/O thread must never wait for I/O.
        // The host waits for the drain (limits.shutdownGrace; it may grow on reload up to 10 min) and the audit's drain.
        builder.Services.Configure<HostOptions>(options => options.ShutdownTimeout = TimeSpan.FromMinutes(11));
        var lifetime = new GatewayLifetime();
        builder.Services.AddSingleton<IHostedService>(lifetime);
        builder.Services.AddSingleton(lifetime);
        var app = builder.Build();
        var loggers = app.Services.GetRequiredService<ILoggerFactory>();
        var gateway = new Gateway(config, loggers, IPAddress.IsLoopback(address));
        lifetime.Gateway = gateway;
        // Once every hosted service has started and Kestrel is bound: a gateway that cannot listen leaves no run in the trail.
        app.Lifetime.ApplicationStarted.Register(gateway.Start);
        app.Lifetime.ApplicationStopping.Register(gateway.BeginStopping);
        if (Hosting.SystemdNotifier.FromEnvironment(loggers.CreateLogger("Sidecar.Systemd")) is { } systemd)
        {
            // Type=notify: ready once Kestrel is bound; reloading and ready again around every reload; stopping on SIGTERM;
            // the watchdog pings while the engine's heartbeat keeps running.
            app.Lifetime.ApplicationStarted.Register(() =>
            {
                systemd.Ready($"listening on {config.Listen}");
                systemd.StartWatchdog(() => Environment.TickCount64 - gateway.Engine.LastHeartbeat < 10_000);
            });
            app.Lifetime.ApplicationStopping.Register(() => systemd.Stopping("draining calls in flight, then flushing the audit trail"));
            app.Lifetime.ApplicationStopped.Register(systemd.Dispose);
            if (gateway.Reloader is { } reloader)
            {
                reloader.Starting = _ => systemd.Reloading();
                reloader.Finished = result => systemd.Ready($"reload {ReloadResult.Name(result.Status)}: config version {gateway.Engine.Current.Version}");
            }
        }
        var logger = loggers.CreateLogger("Sidecar.Http");
        if (config.Admin is not null)
        {
            // First in the pipeline: a request on the admin listener reaches the admin API and nothing else, and the
            // admin API is mapped on no route of the agent listener.
            var adminApi = new AdminApi(gateway, loggers.CreateLogger("Sidecar.Admin"));
            app.Use(next => context => AdminApi.IsAdminConnection(context) ? adminApi.HandleAsync(context) : next(context));
        }
        var streamable = new StreamableHttpEndpoint(gateway, new StatelessEndpoint(gateway, logger));
        var legacy = new LegacySseEndpoint(gateway);

        app.MapPost("/servers/{name}/mcp", new RequestDelegate(streamable.PostAsync));
        app.MapGet("/servers/{name}/mcp", new RequestDelegate(streamable.GetAsync));
        app.MapDelete("/servers/{name}/mcp", new RequestDelegate(streamable.DeleteAsync));
        app.MapGet("/servers/{name}/sse", new RequestDelegate(legacy.StreamAsync));
        app.MapPost("/servers/{name}/message", new RequestDelegate(legacy.MessageAsync));
        // The aggregated endpoint: the same handlers, with no server in the route.
        app.MapPost("/mcp", new RequestDelegate(streamable.PostAsync));
        app.MapGet("/mcp", new RequestDelegate(streamable.GetAsync));
        app.MapDelete("/mcp", new RequestDelegate(streamable.DeleteAsync));
        app.MapGet("/sse", new RequestDelegate(legacy.StreamAsync));
        app.MapPost("/message", new RequestDelegate(legacy.MessageAsync));
        app.MapGet(HttpGuards.ProtectedResourcePath + "/{**resource}", new RequestDelegate(context => ProtectedResourceAsync(context, gateway)));
        app.MapGet(HttpGuards.ProtectedResourcePath, new RequestDelegate(context => ProtectedResourceAsync(context, gateway)));
        app.MapGet("/metrics", new RequestDelegate(context => WriteMetricsAsync(context, gateway)));
        app.MapGet("/healthz", new RequestDelegate(static context => context.Response.WriteAsync("ok")));
        app.MapGet("/readyz", new RequestDelegate(context =>
        {
            // Shared limits that fail closed with Redis unreachable: every call that needs them is refused, so not ready.
            if (gateway.SharedLimits is { IsConnected: false, FailMode: Sidecar.Configuration.SharedFailMode.Closed })
            {
                context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            }
            return context.Response.WriteAsync(Readiness(gateway));
        }));
        return app;
    }

    /// <summary>
    /// Every log entry on stderr (stdout is for the audit <c>stdout</c> sink and for <c>wrap</c>), one line each: JSON
    /// (<c>logging.format: json</c>, the default) or text, control characters escaped either way.
    /// </summary>
    public static void AddStderrLogging(ILoggingBuilder logging, LogFormat format = LogFormat.Json) => logging.AddZLoggerConsole(options =>
    {
        options.LogToStandardErrorThreshold = LogLevel.Trace;
        if (format == LogFormat.Json)
        {
            options.UseFormatter(static () => new JsonLinesFormatter());
            return;
        }
        options.UseSafePlainTextFormatter(formatter => formatter.SetPrefixFormatter($"{0:yyyy-MM-ddTHH:mm:ss.fffZ} {1:short} {2}: ",
            (in MessageTemplate template, in LogInfo info) => template.Format(info.Timestamp.Utc, info.LogLevel, info.Category)));
    });

    /// <summary>
    /// RFC 9728 protected resource metadata, for MCP clients that discover where to get a token: the resource (the
    /// path after the well-known prefix, on this host), its authorization servers, and bearer tokens in the header.
    /// 404 unless JWT identities name <c>authorizationServers</c>.
    /// </summary>
    private static async Task ProtectedResourceAsync(HttpContext context, Gateway gateway)
    {
        var servers = gateway.Engine.Current.Identities.AuthorizationServers;
        if (servers.Count == 0)
        {
            context.Response.StatusCode = StatusCodes.Status404NotFound;
            return;
        }
        var request = context.Request;
        var resourcePath = request.Path.Value is { } path && path.Length > HttpGuards.ProtectedResourcePath.Length
            ? path[HttpGuards.ProtectedResourcePath.Length..]
            : "";
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(256);
        using (var json = new System.Text.Json.Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("resource"u8, $"{request.Scheme}://{request.Host}{request.PathBase}{resourcePath}");
            json.WriteStartArray("authorization_servers"u8);
            foreach (var server in servers)
            {
                json.WriteStringValue(server);
            }
            json.WriteEndArray();
            json.WriteStartArray("bearer_methods_supported"u8);
            json.WriteStringValue("header"u8);
            json.WriteEndArray();
            json.WriteEndObject();
        }
        context.Response.ContentType = "application/json";
        await context.Response.BodyWriter.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary><c>/metrics</c>: Prometheus text exposition 0.0.4 (also on the admin listener, with its token).</summary>
    internal static async Task WriteMetricsAsync(HttpContext context, Gateway gateway)
    {
        var buffer = new System.Buffers.ArrayBufferWriter<byte>(16 * 1024);
        gateway.Metrics.Write(buffer);
        context.Response.ContentType = Sidecar.Metrics.PrometheusExporter.ContentType;
        context.Response.ContentLength = buffer.WrittenCount;
        await context.Response.BodyWriter.WriteAsync(buffer.WrittenMemory, context.RequestAborted).ConfigureAwait(false);
    }

    /// <summary>The body of <c>/readyz</c>: what is open and how full the queues are.</summary>
    private static string Readiness(Gateway gateway)
    {
        var engine = gateway.Engine;
        var shared = gateway.SharedLimits is not { } store
            ? ""
            : store.IsConnected
                ? $"; shared limits: Redis at {store.Endpoints} connected ({store.RoundTrips} round trips, {store.Errors} errors)"
                : $"; shared limits: Redis at {store.Endpoints} UNREACHABLE (failMode {store.FailMode.ToString().ToLowerInvariant()}: "
                  + (store.FailMode == Sidecar.Configuration.SharedFailMode.Closed ? "calls that need a shared counter get -32018" : "this replica's own buckets decide")
                  + $"; {engine.Decisions.SharedUnavailable} refused, {engine.Decisions.SharedFallbacks} decided locally)";
        var head = gateway.SharedLimits is { IsConnected: false, FailMode: Sidecar.Configuration.SharedFailMode.Closed } ? "not ready" : "ready";
        return $"{head}: {engine.Current.Servers.Count} servers, {engine.SessionCount} sessions, {engine.InFlight.Count} of {engine.InFlight.Capacity} requests in flight"
            + (gateway.Audit is { } audit
                ? $"; audit queue {audit.Recorder.Queue!.Credits} of {audit.Recorder.Queue.Capacity} places taken, {audit.Recorder.Shed} calls shed, {audit.Recorder.Dropped} records dropped"
                : "; audit off")
            + ApprovalsReadiness(engine.Approvals)
            + shared;
    }

    /// <summary>The pending approvals and, with a webhook, what became of its deliveries (retries and failures counted).</summary>
    private static string ApprovalsReadiness(Sidecar.Approvals.ApprovalBook approvals)
        => approvals.Webhook is { } webhook
            ? $"; approvals: {approvals.PendingCount} pending, webhook {webhook.Delivered} delivered, {webhook.Retries} retries, {webhook.Failed} failed, {webhook.Dropped} dropped"
            : approvals.PendingCount > 0 ? $"; approvals: {approvals.PendingCount} pending" : "";
}

/// <summary>Disposes the gateway when the host stops, asynchronously.</summary>
internal sealed class GatewayLifetime : IHostedService
{
    public Gateway? Gateway { get; set; }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public async Task StopAsync(CancellationToken cancellationToken)
    {
        if (Gateway is { } gateway)
        {
            // The drain began with ApplicationStopping; the sessions are closed when it ends, then the audit is drained.
            await gateway.DrainedAsync().ConfigureAwait(false);
            await gateway.DisposeAsync().ConfigureAwait(false);
        }
    }
}
