using System.Text;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Gateway;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// Runs the Sidecar gateway in-process on a free loopback port, from a config written to a temporary folder (so
/// relative policy paths resolve as they would for a user). The daemon is the real one: Kestrel, the same endpoints.
/// </summary>
public sealed class SidecarHost : IAsyncDisposable
{
    private readonly WebApplication _app;

    private SidecarHost(WebApplication app, string folder, Uri baseUrl, StringBuilder log)
    {
        _app = app;
        Folder = folder;
        BaseUrl = baseUrl;
        Log = log;
    }

    /// <summary>e.g. <c>http://127.0.0.1:41234</c>.</summary>
    public Uri BaseUrl { get; }

    public string Folder { get; }

    /// <summary>The config file the gateway was started from (and reloads).</summary>
    public string ConfigFile => Path.Combine(Folder, "sidecar.json");

    /// <summary>The running gateway (its engine, its reloader).</summary>
    internal Sidecar.Gateway.Gateway Gateway => ((GatewayLifetime)_app.Services.GetService(typeof(GatewayLifetime))!).Gateway!;

    /// <summary>The audit file when the config has no <c>audit</c> section.</summary>
    public string AuditFile => Path.Combine(Folder, "audit.jsonl");

    /// <summary>Stops the gateway (draining the audit trail) without deleting its folder.</summary>
    public Task StopAsync() => _app.StopAsync();

    /// <summary>Everything the gateway logged, for diagnosing a failed test.</summary>
    public StringBuilder Log { get; }

    /// <summary>The admin API's address, when the config has <c>admin</c>.</summary>
    public Uri? AdminUrl { get; private init; }

    public Uri McpUrl(string server) => new(BaseUrl, $"/servers/{server}/mcp");

    public Uri SseUrl(string server) => new(BaseUrl, $"/servers/{server}/sse");

    /// <summary>
    /// Starts a gateway. <paramref name="configJson"/> is a full sidecar.json (its "listen" is replaced by a free
    /// loopback port); <paramref name="files"/> are written beside it (policies).
    /// </summary>
    public static async Task<SidecarHost> StartAsync(string configJson, IReadOnlyDictionary<string, string>? files = null)
    {
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-it-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        foreach (var (name, content) in files ?? new Dictionary<string, string>())
        {
            await File.WriteAllTextAsync(Path.Combine(folder, name), content);
        }
        var configPath = Path.Combine(folder, "sidecar.json");
        // Listening on a free port: written into the file too, so that a reload reads the address the gateway has.
        var json = System.Text.Json.Nodes.JsonNode.Parse(configJson)!.AsObject();
        json["listen"] = "127.0.0.1:0";
        // Calls a test leaves in flight would hold its disposal for the whole default grace (10 s): 1 s unless the test says.
        if (json["limits"] is not System.Text.Json.Nodes.JsonObject limits)
        {
            json["limits"] = limits = new System.Text.Json.Nodes.JsonObject();
        }
        if (!limits.ContainsKey("shutdownGrace"))
        {
            limits["shutdownGrace"] = "1s";
        }
        if (json["admin"] is System.Text.Json.Nodes.JsonObject admin)
        {
            admin["listen"] = "127.0.0.1:0";
        }
        await File.WriteAllTextAsync(configPath, json.ToJsonString());
        var config = SidecarConfigReader.LoadFile(configPath);
        if (ReferenceEquals(config.Audit, AuditConfig.Default))
        {
            // No "audit" section: the trail goes to this gateway's own folder, not the shared working directory.
            config = config with { Audit = AuditConfig.Default with { File = new AuditFileConfig(Path.Combine(folder, "audit.jsonl"), AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles) } };
        }

        var log = new StringBuilder();
        var app = GatewayHost.Build(config, LogLevel.Debug, logging => logging.AddProvider(new StringLoggerProvider(log)));
        await app.StartAsync();
        // Kestrel binds in order: the agent listener first, then the admin API's (when configured).
        var addresses = app.Urls.ToList();
        return new SidecarHost(app, folder, new Uri(addresses[0]), log) { AdminUrl = addresses.Count > 1 ? new Uri(addresses[1]) : null };
    }

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private sealed class StringLoggerProvider(StringBuilder sink) : ILoggerProvider
    {
        public ILogger CreateLogger(string categoryName) => new StringLogger(sink, categoryName);

        public void Dispose()
        {
        }
    }

    private sealed class StringLogger(StringBuilder sink, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => true;

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            lock (sink)
            {
                sink.Append(DateTime.UtcNow.ToString("HH:mm:ss.fff")).Append(' ').Append(logLevel).Append(' ').Append(category).Append(": ")
                    .AppendLine(formatter(state, exception));
                if (exception is not null)
                {
                    sink.AppendLine(exception.ToString());
                }
            }
        }
    }
}
