using System.Net;
using System.Text;
using System.Text.Json;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Sessions;

namespace Sidecar.IntegrationTests.Reload;

/// <summary>
/// Live reload through the real daemon (in process): policies edited under traffic, invalid edits, a ConfigMap-style
/// symlink swap, a server added and removed. Each waits for the change with a bound, never for a fixed time.
/// </summary>
public sealed class ReloadTests : IAsyncLifetime
{
    private const string AllowEcho = """{ "version": "1", "default": "deny", "tools": { "echo": {}, "get-sum": {} } }""";
    private const string DenyEcho = """{ "version": "1", "default": "deny", "tools": { "echo": { "action": "deny", "reason": "echo is off now" }, "get-sum": {} } }""";
    private static readonly TimeSpan s_bound = TimeSpan.FromSeconds(20);
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };

    public Task InitializeAsync() => McpServerFixtures.EnsureInstalledAsync();

    public Task DisposeAsync()
    {
        _http.Dispose();
        return Task.CompletedTask;
    }

    private static string Config(string policy = "policy.json", string? extraServer = null) => JsonSerializer.Serialize(new Dictionary<string, object>
    {
        ["mcpServers"] = Servers(extraServer),
        ["policy"] = policy,
        ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "20s" },
    });

    private static Dictionary<string, object> Servers(string? extra)
    {
        var servers = new Dictionary<string, object> { ["everything"] = Stdio() };
        if (extra is not null)
        {
            servers[extra] = Stdio();
        }
        return servers;
    }

    private static Dictionary<string, object> Stdio() => new()
    {
        ["command"] = "node",
        ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" },
    };

    private static string Call(int id, string tool, string arguments) =>
        $$$"""{"jsonrpc":"2.0","id":{{{id}}},"method":"tools/call","params":{"name":"{{{tool}}}","arguments":{{{arguments}}}}}""";

    /// <summary>The one JSON-RPC answer of a POST (a JSON body or the answer among SSE events).</summary>
    private async Task<JsonElement> CallAsync(SidecarHost sidecar, string server, string session, int id, string tool = "echo")
    {
        using var response = await RawMcp.PostAsync(_http, sidecar.McpUrl(server), Call(id, tool, """{"message":"hi"}"""), session);
        var body = await response.Content.ReadAsStringAsync();
        Assert.True(response.StatusCode == HttpStatusCode.OK, $"{response.StatusCode}: {body}");
        var json = response.Content.Headers.ContentType?.MediaType == "text/event-stream"
            ? body.Split('\n').Where(l => l.StartsWith("data: ", StringComparison.Ordinal)).Select(l => l[6..]).Last(l => l.Contains("\"id\"", StringComparison.Ordinal))
            : body;
        return JsonDocument.Parse(json).RootElement.Clone();
    }

    private static bool IsDenied(JsonElement answer) => answer.TryGetProperty("error", out var error) && error.GetProperty("code").GetInt32() == -32010;

    private static bool IsResult(JsonElement answer) => answer.TryGetProperty("result", out _);

    /// <summary>Calls until <paramref name="done"/> holds for an answer (every answer must be a result or a denial).</summary>
    private async Task<int> CallUntilAsync(SidecarHost sidecar, string session, Func<JsonElement, bool> done, int firstId = 100)
    {
        var deadline = DateTime.UtcNow + s_bound;
        var id = firstId;
        while (DateTime.UtcNow < deadline)
        {
            var answer = await CallAsync(sidecar, "everything", session, id++);
            Assert.True(IsResult(answer) || IsDenied(answer), answer.GetRawText());
            if (done(answer))
            {
                return id;
            }
            await Task.Delay(50);
        }
        throw new TimeoutException("the reload was not seen in time\n" + sidecar.Log);
    }

    private static async Task WaitForAsync(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + s_bound;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException(what);
            }
            await Task.Delay(20);
        }
    }

    private static async Task ReplaceAtomicallyAsync(string path, string content)
    {
        var temp = path + ".tmp";
        await File.WriteAllTextAsync(temp, content);
        File.Move(temp, path, overwrite: true);
    }

    private static async Task<List<JsonElement>> AuditEventsAsync(SidecarHost sidecar, string type, int atLeast = 1)
    {
        var deadline = DateTime.UtcNow + s_bound;
        while (true)
        {
            var events = File.Exists(sidecar.AuditFile)
                ? (await ReadSharedAsync(sidecar.AuditFile)).Split('\n', StringSplitOptions.RemoveEmptyEntries)
                    .Select(l => JsonDocument.Parse(l).RootElement.Clone()).Where(e => e.GetProperty("type").GetString() == type).ToList()
                : [];
            if (events.Count >= atLeast || DateTime.UtcNow > deadline)
            {
                return events;
            }
            await Task.Delay(100);
        }
    }

    private static async Task<string> ReadSharedAsync(string path)
    {
        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        return await reader.ReadToEndAsync();
    }

    [Fact]
    public async Task A_policy_replaced_under_traffic_changes_decisions_in_a_live_session_without_dropping_a_call()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = AllowEcho });
        var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 1)));

        // Traffic on a second session the whole time: every call gets an answer, a result or a denial.
        using var stop = new CancellationTokenSource();
        var answered = 0;
        var traffic = Task.Run(async () =>
        {
            var other = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
            for (var id = 1000; id < 3000 && !stop.IsCancellationRequested; id++)
            {
                var answer = await CallAsync(sidecar, "everything", other, id);
                Assert.True(IsResult(answer) || IsDenied(answer), answer.GetRawText());
                Interlocked.Increment(ref answered);
            }
        });
        await WaitForAsync(() => Volatile.Read(ref answered) >= 3 || traffic.IsCompleted, "traffic started");

        await ReplaceAtomicallyAsync(Path.Combine(sidecar.Folder, "policy.json"), DenyEcho);
        await CallUntilAsync(sidecar, session, IsDenied);
        var denied = await CallAsync(sidecar, "everything", session, 2);
        Assert.Equal("echo is off now", denied.GetProperty("error").GetProperty("data").GetProperty("reason").GetString());
        var atReload = Volatile.Read(ref answered);
        await WaitForAsync(() => Volatile.Read(ref answered) >= atReload + 3 || traffic.IsCompleted, "traffic after the reload");

        await stop.CancelAsync();
        await traffic; // throws if any call went unanswered or got something else
        var reloads = await AuditEventsAsync(sidecar, "config_reload");
        var applied = Assert.Single(reloads, e => e.GetProperty("result").GetString() == "applied");
        Assert.Equal("file", applied.GetProperty("trigger").GetString());
        Assert.Equal(["everything"], applied.GetProperty("policiesChanged").EnumerateArray().Select(e => e.GetString()));
    }

    [Fact]
    public async Task A_policy_written_in_place_is_picked_up()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = AllowEcho });
        var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 1)));
        await File.WriteAllTextAsync(Path.Combine(sidecar.Folder, "policy.json"), DenyEcho); // truncate and write the same file
        await CallUntilAsync(sidecar, session, IsDenied);
    }

    [Fact]
    public async Task An_invalid_edit_keeps_the_old_decisions_and_says_where_it_is_wrong()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = AllowEcho });
        var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
        var policy = Path.Combine(sidecar.Folder, "policy.json");
        await ReplaceAtomicallyAsync(policy, """
            { "version": "1", "default": "deny",
              "tools": { "echo": { "action": "deny", "reason": "x", "limitz": [] } } }
            """);
        var failed = Assert.Single(await AuditEventsAsync(sidecar, "config_reload"));
        Assert.Equal("failed", failed.GetProperty("result").GetString());
        var error = Assert.Single(failed.GetProperty("errors").EnumerateArray()).GetString()!;
        Assert.Contains("policy.json:2:", error, StringComparison.Ordinal);
        Assert.Contains("$.tools.echo.limitz", error, StringComparison.Ordinal);
        Assert.Contains("$.tools.echo.limitz", sidecar.Log.ToString(), StringComparison.Ordinal);
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 1)), "the old policy keeps serving");
        Assert.Equal(1, sidecar.Gateway.Reloader!.Failed);
        Assert.Equal(1, sidecar.Gateway.Engine.Current.Version);
    }

    [Fact]
    public async Task A_configmap_style_symlink_swap_is_picked_up()
    {
        // What a Kubernetes ConfigMap volume looks like: the file is a symlink into ..data, itself a symlink to a
        // timestamped folder; an update writes a new folder and renames a new ..data symlink over the old one.
        var mount = Path.Combine(Path.GetTempPath(), "sidecar-cm-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(Path.Combine(mount, "..2026_12_01_a"));
        await File.WriteAllTextAsync(Path.Combine(mount, "..2026_12_01_a", "policy.json"), AllowEcho);
        File.CreateSymbolicLink(Path.Combine(mount, "..data"), "..2026_12_01_a");
        File.CreateSymbolicLink(Path.Combine(mount, "policy.json"), Path.Combine("..data", "policy.json"));
        try
        {
            await using var sidecar = await SidecarHost.StartAsync(Config(Path.Combine(mount, "policy.json")));
            var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
            Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 1)));

            Directory.CreateDirectory(Path.Combine(mount, "..2026_12_01_b"));
            await File.WriteAllTextAsync(Path.Combine(mount, "..2026_12_01_b", "policy.json"), DenyEcho);
            File.CreateSymbolicLink(Path.Combine(mount, "..data_tmp"), "..2026_12_01_b");
            Rename(Path.Combine(mount, "..data_tmp"), Path.Combine(mount, "..data")); // rename(2), as the kubelet does
            Directory.Delete(Path.Combine(mount, "..2026_12_01_a"), recursive: true);

            await CallUntilAsync(sidecar, session, IsDenied);
        }
        finally
        {
            Directory.Delete(mount, recursive: true);
        }
    }

    [Fact]
    public async Task A_server_added_to_the_config_serves_without_a_restart_and_a_removed_one_closes_its_sessions()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = AllowEcho });
        using (var missing = await RawMcp.PostAsync(_http, sidecar.McpUrl("second"), RawMcp.InitializeBody, null))
        {
            Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        }
        await ReplaceAtomicallyAsync(sidecar.ConfigFile, WithListen(Config(extraServer: "second")));
        string? second = null;
        var deadline = DateTime.UtcNow + s_bound;
        while (second is null && DateTime.UtcNow < deadline)
        {
            using var response = await RawMcp.PostAsync(_http, sidecar.McpUrl("second"), RawMcp.InitializeBody, null);
            if (response.StatusCode == HttpStatusCode.OK)
            {
                second = response.Headers.GetValues("Mcp-Session-Id").Single();
            }
            else
            {
                await Task.Delay(100);
            }
        }
        Assert.True(second is not null, "the added server never served\n" + sidecar.Log);
        Assert.True(IsResult(await CallAsync(sidecar, "second", second!, 1)));
        var added = Assert.Single(await AuditEventsAsync(sidecar, "config_reload"));
        Assert.Equal(["second"], added.GetProperty("serversAdded").EnumerateArray().Select(e => e.GetString()));

        await ReplaceAtomicallyAsync(sidecar.ConfigFile, WithListen(Config()));
        deadline = DateTime.UtcNow + s_bound;
        while (sidecar.Gateway.Engine.SessionCountOf("second") > 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(100);
        }
        Assert.Equal(0, sidecar.Gateway.Engine.SessionCountOf("second"));
        using var gone = await RawMcp.PostAsync(_http, sidecar.McpUrl("second"), Call(2, "echo", "{}"), second);
        Assert.Equal(HttpStatusCode.NotFound, gone.StatusCode);
    }

    [Fact]
    public async Task A_rate_limit_whose_definition_is_unchanged_keeps_its_count_across_a_reload()
    {
        const string Limited = """{ "version": "1", "default": "deny", "tools": { "echo": { "limits": [ { "counter": "echo_rate", "window": "hour", "max": 2, "scope": "global" } ] } } }""";
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = Limited });
        var session = await RawMcp.OpenSessionAsync(_http, sidecar.McpUrl("everything"));
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 1)));
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 2)));

        // The same counter, and a new tool: the reload changes the policy, not echo_rate.
        var result = await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api);
        Assert.Equal(ReloadStatus.Applied, result.Status);
        await File.WriteAllTextAsync(Path.Combine(sidecar.Folder, "policy.json"), Limited.Replace("\"tools\": {", "\"tools\": { \"get-sum\": {},", StringComparison.Ordinal));
        result = await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api);
        Assert.Equal(ReloadStatus.Applied, result.Status);
        var limited = await CallAsync(sidecar, "everything", session, 3);
        Assert.Equal(-32011, limited.GetProperty("error").GetProperty("code").GetInt32());

        // A new max is a new counter.
        await File.WriteAllTextAsync(Path.Combine(sidecar.Folder, "policy.json"), Limited.Replace("\"max\": 2", "\"max\": 3", StringComparison.Ordinal));
        Assert.Equal(ReloadStatus.Applied, (await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api)).Status);
        Assert.True(IsResult(await CallAsync(sidecar, "everything", session, 4)));
    }

    [Fact]
    public async Task SIGHUP_reloads_and_never_ends_the_process()
    {
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-hup-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            var port = EverythingServer.FreeLoopbackPort();
            var audit = Path.Combine(folder, "audit.jsonl");
            var json = System.Text.Json.Nodes.JsonNode.Parse(Config())!.AsObject();
            json["listen"] = $"127.0.0.1:{port}";
            json["audit"] = System.Text.Json.Nodes.JsonNode.Parse($$"""{ "file": { "path": {{JsonSerializer.Serialize(audit)}} } }""");
            var configPath = Path.Combine(folder, "sidecar.json");
            await File.WriteAllTextAsync(configPath, json.ToJsonString());
            await File.WriteAllTextAsync(Path.Combine(folder, "policy.json"), AllowEcho);
            using var gateway = await SidecarProcess.StartAsync(_http, configPath, port);
            var url = new Uri($"http://127.0.0.1:{port}/servers/everything/mcp");
            var session = await RawMcp.OpenSessionAsync(_http, url);

            gateway.Signal("HUP");
            await WaitForAsync(() => File.Exists(audit) && File.ReadAllText(audit).Contains("\"config_reload\"", StringComparison.Ordinal), "config_reload after SIGHUP");
            Assert.False(gateway.Process.HasExited, "SIGHUP ended the gateway: " + gateway.Log);
            using (var call = await RawMcp.PostAsync(_http, url, Call(1, "echo", """{"message":"after HUP"}"""), session))
            {
                Assert.Equal(HttpStatusCode.OK, call.StatusCode);
                Assert.Contains("after HUP", await call.Content.ReadAsStringAsync(), StringComparison.Ordinal);
            }

            gateway.Signal("TERM");
            using var exited = new CancellationTokenSource(s_bound);
            await gateway.Process.WaitForExitAsync(exited.Token);
            Assert.Equal(0, gateway.Process.ExitCode);
            var events = File.ReadAllLines(audit).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();
            var reload = Assert.Single(events, e => e.GetProperty("type").GetString() == "config_reload");
            Assert.Equal("signal", reload.GetProperty("trigger").GetString());
            Assert.Equal("applied", reload.GetProperty("result").GetString());
            Assert.Equal("audit_stop", events[^1].GetProperty("type").GetString());
            Assert.Contains(events, e => e.GetProperty("type").GetString() == "tool_call" && e.GetProperty("tool").GetString() == "echo");
            var (code, _, error) = await Sidecar.IntegrationTests.Audit.GatewayAuditTests.VerifyAsync("--strict", audit);
            Assert.True(code == 0, error);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public async Task A_changed_listen_address_is_refused()
    {
        await using var sidecar = await SidecarHost.StartAsync(Config(), new Dictionary<string, string> { ["policy.json"] = AllowEcho });
        var json = System.Text.Json.Nodes.JsonNode.Parse(Config())!.AsObject();
        json["listen"] = "127.0.0.1:1";
        await File.WriteAllTextAsync(sidecar.ConfigFile, json.ToJsonString());
        var result = await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api);
        Assert.Equal(ReloadStatus.Failed, result.Status);
        Assert.Contains("needs a restart", Assert.Single(result.Errors).Message, StringComparison.Ordinal);
    }

    /// <summary>Renames a symlink over another (File.Move follows a symlink to a folder and refuses it).</summary>
    private static void Rename(string from, string to)
    {
        using var mv = System.Diagnostics.Process.Start("mv", ["-Tf", from, to])!;
        Assert.True(mv.WaitForExit(10_000));
        Assert.Equal(0, mv.ExitCode);
    }

    private static string WithListen(string config)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(config)!.AsObject();
        json["listen"] = "127.0.0.1:0";
        return json.ToJsonString();
    }
}
