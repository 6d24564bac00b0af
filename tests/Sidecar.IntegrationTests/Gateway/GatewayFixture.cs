using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol.Client;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// One Sidecar in front of three real server-everything instances — stdio (spawned per session, through the
/// recording wrapper), legacy SSE and Streamable HTTP — all under the same test policy.
/// </summary>
public sealed class GatewayFixture : IAsyncLifetime
{
    public const string Policy = """
        {
          "version": "1",
          "default": "deny",
          "hide": ["get-env"],
          "tools": {
            "echo": { "limits": [ { "counter": "echo_rate", "window": "hour", "max": 3, "scope": "session" } ] },
            "get-sum": { "deny_if": [ { "path": "args.a", "op": "gt", "value": 100 } ], "reason": "a is capped at 100" },
            "get-tiny-image": { "action": "deny", "reason": "no images today" },
            "trigger-sampling-request": {},
            "trigger-elicitation-request": {},
            "trigger-long-running-operation": { "require": [ { "path": "args.duration", "op": "lte", "value": 5 } ] },
            "toggle-simulated-logging": {}
          }
        }
        """;

    public static readonly string[] UpstreamNames = ["stdio", "sse", "http"];

    private EverythingServer? _sse;
    private EverythingServer? _http;

    public SidecarHost Sidecar { get; private set; } = null!;

    /// <summary>Every line the stdio server received, in order (written by tests/fixtures/recorder/record-stdio.cjs).</summary>
    public string RecordFile { get; } = Path.Combine(Path.GetTempPath(), $"sidecar-record-{Guid.NewGuid():N}.jsonl");

    /// <summary>Lines received by the "crashy" stdio server, which dies after every 4 lines.</summary>
    public string CrashRecordFile { get; } = Path.Combine(Path.GetTempPath(), $"sidecar-crash-{Guid.NewGuid():N}.jsonl");

    /// <summary>A loopback port nothing listens on, for the "down" server.</summary>
    public int DeadPort { get; } = EverythingServer.FreeLoopbackPort();

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        _sse = await EverythingServer.StartSseAsync();
        _http = await EverythingServer.StartStreamableHttpAsync();
        Sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = Policy });
    }

    private string Config()
    {
        var recorder = Repo.PathOf("tests", "fixtures", "recorder", "record-stdio.cjs");
        var stdio = new Dictionary<string, object>
        {
            ["command"] = "node",
            ["args"] = new[] { recorder, RecordFile, "node", McpServerFixtures.EverythingEntry, "stdio" },
        };
        var servers = new Dictionary<string, object>
        {
            ["stdio"] = stdio,
            ["sse"] = new Dictionary<string, object> { ["url"] = _sse!.Url.ToString() },
            ["http"] = new Dictionary<string, object> { ["url"] = _http!.Url.ToString(), ["transport"] = "streamable-http" },
            ["crashy"] = new Dictionary<string, object>
            {
                ["command"] = "node",
                ["args"] = new[] { recorder, CrashRecordFile, "node", McpServerFixtures.EverythingEntry, "stdio" },
                ["env"] = new Dictionary<string, string> { ["CRASH_AFTER_LINES"] = "4" },
            },
            ["down"] = new Dictionary<string, object> { ["url"] = $"http://127.0.0.1:{DeadPort}/mcp" },
        };
        return JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = servers,
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "20s", ["maxMessageBytes"] = 65536 },
        });
    }

    public async Task<McpClient> ConnectAsync(string server, HttpTransportMode mode, McpClientOptions? options = null, CancellationToken cancellationToken = default)
    {
        var endpoint = mode == HttpTransportMode.Sse ? Sidecar.SseUrl(server) : Sidecar.McpUrl(server);
        var transport = new HttpClientTransport(new HttpClientTransportOptions { Endpoint = endpoint, TransportMode = mode, Name = "sidecar-it" },
            NullLoggerFactory.Instance);
        options ??= new McpClientOptions();
        options.ClientInfo ??= new ModelContextProtocol.Protocol.Implementation { Name = "sidecar-integration-tests", Version = "1.0" };
        return await McpClient.CreateAsync(transport, options, NullLoggerFactory.Instance, cancellationToken);
    }

    public string[] RecordedLines() => File.Exists(RecordFile) ? File.ReadAllLines(RecordFile) : [];

    public async Task DisposeAsync()
    {
        if (Sidecar is not null)
        {
            await Sidecar.DisposeAsync();
        }
        if (_sse is not null)
        {
            await _sse.DisposeAsync();
        }
        if (_http is not null)
        {
            await _http.DisposeAsync();
        }
        File.Delete(RecordFile);
        File.Delete(CrashRecordFile);
    }
}
