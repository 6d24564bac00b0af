using BenchmarkDotNet.Attributes;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Logging;
using Sidecar.Benchmarks.EndToEnd;
using Sidecar.Configuration;
using Sidecar.Gateway;

namespace Sidecar.Benchmarks;

/// <summary>The upstream behind the gateway in <see cref="EndToEndBenchmarks"/>.</summary>
public enum E2ETarget
{
    /// <summary>No gateway: the client talks to the HTTP echo directly (the harness's own cost, the baseline).</summary>
    Direct,

    /// <summary>Gateway → Streamable HTTP echo answering with an <c>application/json</c> body.</summary>
    HttpJson,

    /// <summary>Gateway → Streamable HTTP echo answering with a <c>text/event-stream</c> body (one event).</summary>
    HttpSse,

    /// <summary>
    /// Gateway → Streamable HTTP echo (JSON answers) in the stateless era: <c>MCP-Protocol-Version: 2026-07-28</c>
    /// with the mirrored headers, no session, each call passed through as its own upstream POST.
    /// </summary>
    HttpStateless,

    /// <summary>Gateway → stdio echo (<c>node bench/load/echo-server/stdio.cjs</c>, a process of the session's own).</summary>
    Stdio,
}

/// <summary>
/// One <c>tools/call</c> end to end through the real gateway, in process: Kestrel on 127.0.0.1 (port 0) built by
/// <see cref="GatewayHost.Build"/> with the load bench's realistic policy (<c>bench/load/config/policy-realistic.json</c>:
/// the <c>echo</c> tool with two <c>require</c> and two <c>deny_if</c> conditions and a per-session limit, an
/// <c>all_tools</c> condition and a global limit), logging at Information with no provider. The agent is
/// <see cref="RawMcpClient"/> (one keep-alive connection, blocking socket, no per-call allocation) that sends
/// <c>initialize</c> and <c>notifications/initialized</c> once in the setup, then one <c>tools/call</c> per operation
/// and reads the whole SSE answer (the gateway answers a <c>tools/call</c> as a stream when the agent accepts one); in
/// the stateless era (<see cref="E2ETarget.HttpStateless"/>) there is no setup and the answer is the upstream's JSON.
/// </summary>
/// <remarks>
/// <para>
/// <b>What "Allocated" includes.</b> BenchmarkDotNet's <c>MemoryDiagnoser</c> reads
/// <c>GC.GetTotalAllocatedBytes(precise: true)</c>, which counts every thread of the process: the gateway (Kestrel,
/// the endpoint, the session, the upstream connection and its <c>HttpClient</c>, thread-pool continuations), the
/// client (nothing per call), the in-process HTTP echo (<see cref="EchoUpstream"/>: nothing per call) and whatever
/// runs in the background meanwhile (the gateway's 250 ms heartbeat, Kestrel's 1 s heartbeat: a few bytes per call
/// when amortised). The stdio echo is a separate Node.js process, so none of its allocations count. The
/// <see cref="E2ETarget.Direct"/> row measures the harness alone; the gateway's cost per call is a row minus it.
/// </para>
/// <para>Time is one full round trip on loopback with both ends on this machine's cores: it is only comparable run
/// to run on a quiet machine.</para>
/// </remarks>
[MemoryDiagnoser]
[Config(typeof(EndToEndConfig))]
public class EndToEndBenchmarks
{
    private EchoUpstream? _echo;
    private WebApplication? _gateway;
    private RawMcpClient _client = null!;
    private string? _folder;

    [Params(E2ETarget.Direct, E2ETarget.HttpJson, E2ETarget.HttpSse, E2ETarget.HttpStateless, E2ETarget.Stdio)]
    public E2ETarget Target { get; set; }

    [GlobalSetup]
    public void Setup() => SetupAsync().GetAwaiter().GetResult();

    public async Task SetupAsync()
    {
        int port;
        string path;
        if (Target != E2ETarget.Stdio)
        {
            _echo = new EchoUpstream(Target == E2ETarget.HttpSse ? EchoResponseStyle.Sse : EchoResponseStyle.Json);
        }
        if (Target == E2ETarget.Direct)
        {
            port = _echo!.Port;
            path = "/mcp";
        }
        else
        {
            var upstream = Target == E2ETarget.Stdio
                ? $$"""{ "command": "node", "args": [ {{Json(RepoPath("bench", "load", "echo-server", "stdio.cjs"))}} ], "policy": "policy.json" }"""
                : $$"""{ "url": {{Json(_echo!.Url.ToString())}}, "transport": "streamable-http", "policy": "policy.json" }""";
            _folder = Path.Combine(Path.GetTempPath(), "sidecar-bench-" + Guid.NewGuid().ToString("N"));
            Directory.CreateDirectory(_folder);
            File.Copy(RepoPath("bench", "load", "config", "policy-realistic.json"), Path.Combine(_folder, "policy.json"));
            var configPath = Path.Combine(_folder, "sidecar.json");
            await File.WriteAllTextAsync(configPath,
                $$"""{ "listen": "127.0.0.1:0", "mcpServers": { "echo": {{upstream}} }, "limits": { "maxSessions": 16, "sessionIdleTimeout": "1h" }, "audit": { "enabled": false } }""").ConfigureAwait(false);
            // Audit off: its writer thread's allocations (off the call path) would count here; the call path's share
            // of auditing (recording a decision and its completion: ~100 ns, 0 B) is measured by AuditBenchmarks.
            var config = SidecarConfigReader.LoadFile(configPath) with { Listen = "127.0.0.1:0" };
            _gateway = GatewayHost.Build(config, LogLevel.Information, static _ => { });
            await _gateway.StartAsync().ConfigureAwait(false);
            port = new Uri(_gateway.Urls.Single()).Port;
            path = "/servers/echo/mcp";
        }

        _client = new RawMcpClient(port, path);
        if (Target == E2ETarget.HttpStateless)
        {
            _client.UseStateless();
        }
        else
        {
            _client.Initialize();
        }
        for (var i = 0; i < 200; i++)
        {
            ToolsCall(); // warm the connection pool, the upstream process and the JIT before BenchmarkDotNet's own warmup
        }
    }

    [Benchmark(Description = "tools/call round trip")]
    public int ToolsCall()
    {
        var status = _client.Call();
        if (status != 200 || _client.LastBody.IndexOf("\"result\""u8) < 0)
        {
            throw new InvalidOperationException($"tools/call failed: HTTP {status}: {System.Text.Encoding.UTF8.GetString(_client.LastBody)}");
        }
        return status;
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _client.Dispose();
        if (_gateway is not null)
        {
            _gateway.StopAsync().GetAwaiter().GetResult();
            _gateway.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        _echo?.Dispose();
        if (_folder is not null)
        {
            Directory.Delete(_folder, recursive: true);
        }
    }

    private static string Json(string value) => "\"" + System.Text.Json.JsonEncodedText.Encode(value) + "\"";

    /// <summary>A path under the repository root (found by walking up to <c>Sidecar.sln</c> from the binaries or the working directory).</summary>
    internal static string RepoPath(params string[] parts)
    {
        foreach (var start in new[] { AppContext.BaseDirectory, Environment.CurrentDirectory })
        {
            for (var dir = new DirectoryInfo(start); dir is not null; dir = dir.Parent)
            {
                if (File.Exists(Path.Combine(dir.FullName, "Sidecar.sln")))
                {
                    return Path.Combine([dir.FullName, .. parts]);
                }
            }
        }
        throw new InvalidOperationException("repository root (Sidecar.sln) not found above " + AppContext.BaseDirectory);
    }
}
