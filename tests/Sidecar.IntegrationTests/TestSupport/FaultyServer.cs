using System.Globalization;
using System.Text.Json;

namespace Sidecar.IntegrationTests.TestSupport;

/// <summary>
/// The stdio server that fails on purpose (<c>tests/fixtures/mcp-servers/faulty.cjs</c>: tools <c>ok</c>, <c>fail</c>,
/// <c>hang</c>, <c>die</c>), with the files it reports through: every line it received, and the id of every process
/// started. Needs only node (no npm packages). Every wait is on an event the fixture wrote, bounded only to fail.
/// </summary>
public sealed class FaultyServer : IDisposable
{
    /// <summary>How long a wait on the fixture may take before the test fails.</summary>
    public static readonly TimeSpan WaitBound = TimeSpan.FromSeconds(30);

    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-faulty-" + Guid.NewGuid().ToString("N"));

    public FaultyServer()
    {
        Directory.CreateDirectory(_folder);
    }

    /// <summary>
    /// The policy <see cref="StartGatewayAsync"/> puts in front of it: every tool allowed; <c>ok</c> and <c>fail</c>
    /// limited to <see cref="OkMax"/> and <see cref="FailMax"/> calls per session, <c>die</c> to <see cref="DieMax"/>
    /// (hourly windows: no token comes back by refill while a test runs, only by refund).
    /// </summary>
    public const string Policy = """
        {
          "version": "1",
          "default": "deny",
          "tools": {
            "ok": { "limits": [ { "counter": "ok_rate", "window": "hour", "max": 3, "scope": "session" } ] },
            "fail": { "limits": [ { "counter": "fail_rate", "window": "hour", "max": 3, "scope": "session" } ] },
            "die": { "limits": [ { "counter": "die_rate", "window": "hour", "max": 2, "scope": "session" } ] },
            "hang": {}
          }
        }
        """;

    public const int OkMax = 3;
    public const int FailMax = 3;
    public const int DieMax = 2;

    /// <summary>The server's name in the gateway: <c>/servers/faulty/mcp</c>.</summary>
    public const string Name = "faulty";

    public static string Script => Path.Combine(McpServerFixtures.Directory, "faulty.cjs");

    /// <summary>
    /// A real gateway (in-process, HTTP on loopback) in front of this server under <see cref="Policy"/>, with
    /// <c>limits.upstreamTimeout</c> = <paramref name="upstreamTimeout"/>; its trail is <see cref="SidecarHost.AuditFile"/>.
    /// </summary>
    public Task<SidecarHost> StartGatewayAsync(string upstreamTimeout = "60s", bool linger = false)
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { [Name] = ServerConfig(linger) },
            ["policy"] = "policy.json",
            ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = upstreamTimeout },
        });
        return SidecarHost.StartAsync(config, new Dictionary<string, string> { ["policy.json"] = Policy });
    }

    /// <summary>Every line a process of this server received on stdin, in order (all processes, one file).</summary>
    public string LogFile => Path.Combine(_folder, "received.jsonl");

    /// <summary>One line per process started: its pid.</summary>
    public string PidFile => Path.Combine(_folder, "pids");

    /// <summary>While this file exists, a new process exits at once (code 4).</summary>
    public string ExitAtOnceFile => Path.Combine(_folder, "exit-at-once");

    /// <summary>The <c>mcpServers</c> entry; <paramref name="linger"/> makes the process ignore stdin closing.</summary>
    public Dictionary<string, object> ServerConfig(bool linger = false)
    {
        var env = new Dictionary<string, string>
        {
            ["FAULTY_LOG"] = LogFile,
            ["FAULTY_PIDS"] = PidFile,
            ["FAULTY_EXIT_AT_ONCE"] = ExitAtOnceFile,
        };
        if (linger)
        {
            env["FAULTY_LINGER"] = "1";
        }
        return new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { Script }, ["env"] = env };
    }

    /// <summary>From now on, every process started exits at once.</summary>
    public void ExitAtOnceFromNowOn() => File.WriteAllText(ExitAtOnceFile, "");

    /// <summary>The messages received so far (a last line still being written is left out).</summary>
    public List<JsonElement> Received() => CompleteLines(LogFile).Select(Parse).Where(m => m.ValueKind != JsonValueKind.Undefined).ToList();

    /// <summary>The pids of the processes started so far, in order.</summary>
    public List<int> Pids() => CompleteLines(PidFile).Select(l => int.Parse(l, CultureInfo.InvariantCulture)).ToList();

    /// <summary>Waits for a received message that matches; fails after <see cref="WaitBound"/>, saying what it waited for.</summary>
    public async Task<JsonElement> WaitForAsync(Func<JsonElement, bool> match, string what)
    {
        var deadline = DateTime.UtcNow + WaitBound;
        while (true)
        {
            foreach (var message in Received())
            {
                if (match(message))
                {
                    return message;
                }
            }
            Assert.True(DateTime.UtcNow < deadline, $"the upstream never received {what}; it received:\n{string.Join('\n', CompleteLines(LogFile))}");
            await Task.Delay(20);
        }
    }

    /// <summary>The <c>tools/call</c>s received for <paramref name="tool"/>.</summary>
    public List<JsonElement> CallsOf(string tool) => Received().Where(m => IsCallOf(m, tool)).ToList();

    public static bool IsCallOf(JsonElement message, string tool)
        => Method(message) == "tools/call" && message.TryGetProperty("params", out var p) && p.TryGetProperty("name", out var n) && n.GetString() == tool;

    /// <summary>A request with this raw id (<c>7</c>, <c>"a-7"</c>).</summary>
    public static bool HasId(JsonElement message, string rawId) => message.TryGetProperty("id", out var id) && id.GetRawText() == rawId;

    /// <summary><c>notifications/cancelled</c> for the request with this raw id.</summary>
    public static bool IsCancellationOf(JsonElement message, string rawId)
        => Method(message) == "notifications/cancelled" && message.TryGetProperty("params", out var p)
           && p.TryGetProperty("requestId", out var id) && id.GetRawText() == rawId;

    public static string? Method(JsonElement message)
        => message.ValueKind == JsonValueKind.Object && message.TryGetProperty("method", out var m) ? m.GetString() : null;

    private static JsonElement Parse(string line)
    {
        try
        {
            return JsonDocument.Parse(line).RootElement.Clone();
        }
        catch (JsonException)
        {
            return default;
        }
    }

    private static List<string> CompleteLines(string file)
    {
        if (!File.Exists(file))
        {
            return [];
        }
        string text;
        using (var stream = new FileStream(file, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete))
        using (var reader = new StreamReader(stream))
        {
            text = reader.ReadToEnd();
        }
        var end = text.LastIndexOf('\n');
        return end < 0 ? [] : text[..end].Split('\n').Where(l => l.Length > 0).ToList();
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(_folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>Processes seen through <c>/proc</c> (Linux).</summary>
public static class Processes
{
    /// <summary>True while <paramref name="pid"/> exists and is not a zombie.</summary>
    public static bool IsAlive(int pid)
    {
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/stat");
        }
        catch (IOException)
        {
            return false;
        }
        var close = stat.LastIndexOf(')');
        var state = close >= 0 && close + 2 < stat.Length ? stat[close + 2] : '?';
        return state is not ('Z' or 'X');
    }

    /// <summary>The command line of <paramref name="pid"/>, arguments separated by spaces ("" when it is gone).</summary>
    public static string CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid.ToString(CultureInfo.InvariantCulture)}/cmdline").Replace('\0', ' ').Trim();
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>Waits until <paramref name="pid"/> has exited; fails after <paramref name="bound"/>.</summary>
    public static async Task WaitForExitAsync(int pid, TimeSpan bound, string what)
    {
        var deadline = DateTime.UtcNow + bound;
        while (IsAlive(pid))
        {
            Assert.True(DateTime.UtcNow < deadline, $"{what} (pid {pid}, {CommandLine(pid)}) is still running");
            await Task.Delay(20);
        }
    }
}
