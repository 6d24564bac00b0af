using System.Net;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using ZLogger;

namespace Sidecar.Gateway;

/// <summary>Builds and runs the Kestrel daemon for a config.</summary>
internal static class GatewayHost
{
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
        builder.Services.AddRoutingCore();
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(logLevel);
        builder.Logging.AddFilter("Microsoft.AspNetCore", logLevel <= LogLevel.Debug ? logLevel : LogLevel.Warning);
        if (logging is null)
        {
            builder.Logging.AddZLoggerConsole(options =>
            {
                options.LogToStandardErrorThreshold = LogLevel.Trace;
                options.UsePlainTextFormatter(formatter => formatter.SetPrefixFormatter($"{0:yyyy-MM-ddTHH:mm:ss.fffZ} {1:short} {2}: ",
                    (in MessageTemplate template, in LogInfo info) => template.Format(info.Timestamp.Utc, info.LogLevel, info.Category)));
            });
        }
        else
        {
            logging(builder.Logging);
        }
        builder.WebHost.ConfigureKestrel(kestrel =>
        {
            kestrel.AddServerHeader = false;
            kestrel.Limits.MaxRequestBodySize = config.Limits.MaxMessageBytes;
            kestrel.Listen(address, port);
        });

        var app = builder.Build();
        var loggers = app.Services.GetRequiredService<ILoggerFactory>();
        var gateway = new Gateway(config, loggers, IPAddress.IsLoopback(address));
        app.Lifetime.ApplicationStopping.Register(() => gateway.DisposeAsync().AsTask().GetAwaiter().GetResult());
        var endpoints = new McpEndpoints(gateway, loggers.CreateLogger("Sidecar.Http"));

        app.MapPost("/servers/{name}/mcp", new RequestDelegate(endpoints.PostAsync));
        app.MapGet("/servers/{name}/mcp", new RequestDelegate(endpoints.GetAsync));
        app.MapDelete("/servers/{name}/mcp", new RequestDelegate(endpoints.DeleteAsync));
        app.MapGet("/servers/{name}/sse", new RequestDelegate(endpoints.LegacySseAsync));
        app.MapPost("/servers/{name}/message", new RequestDelegate(endpoints.LegacyMessageAsync));
        app.MapGet("/healthz", new RequestDelegate(static context => context.Response.WriteAsync("ok")));
        app.MapGet("/readyz", new RequestDelegate(context => context.Response.WriteAsync($"ready: {gateway.Config.Servers.Count} servers, {gateway.SessionCount} sessions")));
        return app;
    }
}
