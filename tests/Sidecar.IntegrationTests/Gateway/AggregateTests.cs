using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The aggregated endpoint (<c>/mcp</c>, <c>/sse</c>) in front of real server-everything over stdio and the stdio
/// echo, driven by the official C# client: one merged, filtered, prefixed list; routing; ids kept apart; progress;
/// server-to-client requests; prompts and resources; a killed server withdrawn and restored.
/// </summary>
public sealed class AggregateTests(AggregateTests.Fixture fixture) : IClassFixture<AggregateTests.Fixture>
{
    public const string EverythingPolicy = """
        {
          "version": "1",
          "default": "deny",
          "hide": ["get-env"],
          "tools": {
            "echo": {},
            "get-sum": {},
            "get-tiny-image": { "action": "deny", "reason": "no images today" },
            "trigger-sampling-request": {},
            "trigger-long-running-operation": { "require": [ { "path": "args.duration", "op": "lte", "value": 5 } ] }
          }
        }
        """;

    public const string EchoPolicy = """{ "version": "1", "default": "deny", "tools": { "echo": {} } }""";

    public sealed class Fixture : IAsyncLifetime
    {
        /// <summary>On the echo server's command line, so that a test can find (and kill) its processes.</summary>
        public string Marker { get; } = "sidecar-aggregate-echo-" + Guid.NewGuid().ToString("N");

        public SidecarHost Sidecar { get; private set; } = null!;

        public async Task InitializeAsync()
        {
            await McpServerFixtures.EnsureInstalledAsync();
            Sidecar = await StartAsync(Marker);
        }

        public Task DisposeAsync() => Sidecar.DisposeAsync().AsTask();

        /// <summary>
        /// A gateway over everything and the echo; with <paramref name="blockFile"/>, the echo refuses to start while
        /// that file exists (so a test decides when a killed echo may come back).
        /// </summary>
        public static Task<SidecarHost> StartAsync(string marker, string separator = "__", string? blockFile = null)
        {
            var echoScript = Repo.PathOf("bench", "load", "echo-server", "stdio.cjs");
            var echo = blockFile is null
                ? new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { echoScript, marker } }
                : new Dictionary<string, object>
                {
                    ["command"] = "sh",
                    ["args"] = new[] { "-c", "if [ -e \"$1\" ]; then echo blocked >&2; exit 3; fi; exec node \"$2\" \"$3\"", "sh", blockFile, echoScript, marker },
                };
            echo["policy"] = "echo.json";
            var config = JsonSerializer.Serialize(new Dictionary<string, object>
            {
                ["mcpServers"] = new Dictionary<string, object>
                {
                    ["everything"] = new Dictionary<string, object>
                    {
                        ["command"] = "node",
                        ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" },
                        ["policy"] = "everything.json",
                    },
                    ["echo"] = echo,
                },
                ["aggregate"] = new Dictionary<string, object> { ["separator"] = separator },
                ["limits"] = new Dictionary<string, object> { ["upstreamTimeout"] = "20s" },
            });
            return SidecarHost.StartAsync(config, new Dictionary<string, string> { ["everything.json"] = EverythingPolicy, ["echo.json"] = EchoPolicy });
        }
    }

    public static TheoryData<HttpTransportMode> Modes() => new() { HttpTransportMode.StreamableHttp, HttpTransportMode.Sse };

    private static CancellationToken Timeout(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    private static IReadOnlyDictionary<string, object?> Args(params (string Key, object? Value)[] pairs) => pairs.ToDictionary(p => p.Key, p => p.Value);

    private static string Text(CallToolResult result) => string.Join("\n", result.Content.OfType<TextContentBlock>().Select(c => c.Text));

    internal static async Task<McpClient> ConnectAsync(SidecarHost sidecar, HttpTransportMode mode, McpClientOptions? options = null)
    {
        var endpoint = new Uri(sidecar.BaseUrl, mode == HttpTransportMode.Sse ? "/sse" : "/mcp");
        var transport = new HttpClientTransport(new HttpClientTransportOptions { Endpoint = endpoint, TransportMode = mode, Name = "sidecar-aggregate-it" },
            NullLoggerFactory.Instance);
        options ??= new McpClientOptions();
        options.ClientInfo ??= new Implementation { Name = "sidecar-integration-tests", Version = "1.0" };
        return await McpClient.CreateAsync(transport, options, NullLoggerFactory.Instance, Timeout());
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task One_merged_filtered_prefixed_list(HttpTransportMode mode)
    {
        await using var client = await ConnectAsync(fixture.Sidecar, mode);
        Assert.Equal("sidecar", client.ServerInfo!.Name);
        var tools = (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToList();
        Assert.Equal(tools.Count, tools.Distinct().Count());
        Assert.Contains("everything__echo", tools);
        Assert.Contains("everything__get-sum", tools);
        Assert.Contains("everything__trigger-long-running-operation", tools);
        Assert.Contains("echo__echo", tools);
        Assert.DoesNotContain("everything__get-env", tools);            // hidden by everything's policy
        Assert.DoesNotContain("everything__get-tiny-image", tools);     // denied
        Assert.DoesNotContain("everything__get-annotated-message", tools); // default deny
        Assert.All(tools, name => Assert.True(name.StartsWith("everything__", StringComparison.Ordinal) || name.StartsWith("echo__", StringComparison.Ordinal), name));
        // Every tool keeps its definition: the schema of the echo server's only tool came through.
        var echo = (await client.ListToolsAsync(cancellationToken: Timeout())).Single(t => t.Name == "echo__echo");
        Assert.Equal("Returns the message it is given.", echo.Description);
        Assert.Contains("message", echo.JsonSchema.GetProperty("properties").EnumerateObject().Select(p => p.Name));
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Calls_route_by_prefix_and_each_servers_policy_decides(HttpTransportMode mode)
    {
        await using var client = await ConnectAsync(fixture.Sidecar, mode);
        var fromEverything = await client.CallToolAsync("everything__echo", Args(("message", "to everything")), cancellationToken: Timeout());
        Assert.Equal("Echo: to everything", Text(fromEverything));
        var fromEcho = await client.CallToolAsync("echo__echo", Args(("message", "to echo")), cancellationToken: Timeout());
        Assert.Equal("to echo", Text(fromEcho));

        var denied = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("everything__get-tiny-image", Args(), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32010, (int)denied.ErrorCode);
        Assert.Contains("no images today", denied.Message, StringComparison.Ordinal);
        var limited = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("everything__trigger-long-running-operation",
            Args(("duration", 50), ("steps", 1)), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32014, (int)limited.ErrorCode);

        var unknown = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("nosuch__echo", Args(("message", "x")), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32602, (int)unknown.ErrorCode);
        var bare = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("echo", Args(("message", "x")), cancellationToken: Timeout()).AsTask());
        Assert.Equal(-32602, (int)bare.ErrorCode);

        // The audit trail names the server and the tool as the server knows it.
        var audit = await AuditLines(fixture.Sidecar, line => line.Contains("\"get-tiny-image\"", StringComparison.Ordinal));
        Assert.Contains(audit, line => line.Contains("\"server\":\"everything\"", StringComparison.Ordinal) && line.Contains("\"decision\":\"deny\"", StringComparison.Ordinal));
    }

    [Fact]
    public async Task An_escaped_prefix_is_read_as_the_server_reads_it()
    {
        using var http = new HttpClient();
        var url = new Uri(fixture.Sidecar.BaseUrl, "/mcp");
        var session = await RawMcp.OpenSessionAsync(http, url);
        // "ech\u006f__echo" is echo__echo once unescaped: it goes to the echo server, which gets the bare name.
        using var response = await RawMcp.PostAsync(http, url, RawMcp.CallBody("7", "ech\\u006f__echo", """{"message":"escaped"}"""), session);
        var answer = await RawMcp.AnswerAsync(response);
        Assert.Equal(7, answer.GetProperty("id").GetInt32());
        Assert.Equal("escaped", answer.GetProperty("result").GetProperty("content")[0].GetProperty("text").GetString());
    }

    [Fact]
    public async Task Concurrent_calls_to_both_servers_keep_their_ids_apart()
    {
        await using var client = await ConnectAsync(fixture.Sidecar, HttpTransportMode.StreamableHttp);
        var calls = Enumerable.Range(0, 40).Select(async i =>
        {
            var server = i % 2 == 0 ? "everything" : "echo";
            var result = await client.CallToolAsync($"{server}__echo", Args(("message", $"call {i}")), cancellationToken: Timeout(60));
            return (i, server, Text(result));
        }).ToList();
        foreach (var (i, server, text) in await Task.WhenAll(calls))
        {
            Assert.Equal(server == "everything" ? $"Echo: call {i}" : $"call {i}", text);
        }
    }

    [Fact]
    public async Task Progress_reaches_the_caller()
    {
        await using var client = await ConnectAsync(fixture.Sidecar, HttpTransportMode.StreamableHttp);
        var updates = new List<ProgressNotificationValue>();
        var progress = new SynchronousProgress(updates);
        var result = await client.CallToolAsync("everything__trigger-long-running-operation", Args(("duration", 3), ("steps", 3)), progress, cancellationToken: Timeout());
        Assert.Contains("completed", Text(result), StringComparison.OrdinalIgnoreCase);
        // As in GatewayClientTests: the client may lose the last update to its own race, so the first two are checked.
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (progress.Count < 2 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(20);
        }
        lock (updates)
        {
            Assert.Equal([1f, 2f], updates.Select(u => u.Progress).Order().Take(2));
        }
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public async Task Server_to_client_requests_find_their_way_back(HttpTransportMode mode)
    {
        var sampled = 0;
        var options = new McpClientOptions
        {
            Capabilities = new ClientCapabilities { Sampling = new SamplingCapability() },
            Handlers = new McpClientHandlers
            {
                SamplingHandler = (request, progress, cancellationToken) =>
                {
                    Interlocked.Increment(ref sampled);
                    return ValueTask.FromResult(new CreateMessageResult
                    {
                        Model = "test-model",
                        Role = Role.Assistant,
                        Content = [new TextContentBlock { Text = "sampled through the aggregate" }],
                    });
                },
            },
        };
        await using var client = await ConnectAsync(fixture.Sidecar, mode, options);
        // The server shows this tool only to clients that declare sampling: the agent's capabilities reached it.
        Assert.Contains("everything__trigger-sampling-request", (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name));
        var result = await client.CallToolAsync("everything__trigger-sampling-request", Args(("prompt", "hi"), ("maxTokens", 10)), cancellationToken: Timeout());
        Assert.Equal(1, sampled);
        Assert.Contains("sampled through the aggregate", Text(result), StringComparison.Ordinal);
    }

    [Fact]
    public async Task Prompts_are_prefixed_and_resources_routed_by_who_listed_them()
    {
        await using var client = await ConnectAsync(fixture.Sidecar, HttpTransportMode.StreamableHttp);
        var prompts = (await client.ListPromptsAsync(cancellationToken: Timeout())).Select(p => p.Name).ToList();
        Assert.Contains("everything__simple-prompt", prompts);
        Assert.All(prompts, name => Assert.StartsWith("everything__", name, StringComparison.Ordinal)); // the echo server has none
        var prompt = await client.GetPromptAsync("everything__simple-prompt", cancellationToken: Timeout());
        Assert.NotEmpty(prompt.Messages);
        // completion/complete follows its prompt's prefix (the server gets the bare name).
        var completion = await client.CompleteAsync(new PromptReference { Name = "everything__completable-prompt" }, "department", "E", cancellationToken: Timeout());
        Assert.Equal(["Engineering"], completion.Completion.Values);

        var resources = await client.ListResourcesAsync(cancellationToken: Timeout());
        Assert.NotEmpty(resources);
        var read = await client.ReadResourceAsync(resources[0].Uri, cancellationToken: Timeout());
        Assert.NotEmpty(read.Contents);
        Assert.Equal(resources[0].Uri, read.Contents[0].Uri);
    }

    [Fact]
    public async Task The_separator_is_configurable()
    {
        await using var sidecar = await Fixture.StartAsync("sidecar-aggregate-sep-" + Guid.NewGuid().ToString("N"), separator: ".");
        await using var client = await ConnectAsync(sidecar, HttpTransportMode.StreamableHttp);
        var tools = (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToList();
        Assert.Contains("echo.echo", tools);
        Assert.Contains("everything.get-sum", tools);
        Assert.Equal("dotted", Text(await client.CallToolAsync("echo.echo", Args(("message", "dotted")), cancellationToken: Timeout())));
    }

    [Fact]
    public async Task A_killed_server_is_withdrawn_while_the_other_serves_and_comes_back_after_respawn()
    {
        var marker = "sidecar-aggregate-kill-" + Guid.NewGuid().ToString("N");
        var block = Path.Combine(Path.GetTempPath(), marker + ".block");
        await using var sidecar = await Fixture.StartAsync(marker, blockFile: block);
        var changes = new System.Runtime.CompilerServices.StrongBox<int>();
        await using var client = await ConnectAsync(sidecar, HttpTransportMode.StreamableHttp, AggregateGrantsAndPagesTests.CountingListChanged(changes));
        Assert.Contains("echo__echo", await ToolNames(client));
        Assert.Equal("before", Text(await client.CallToolAsync("echo__echo", Args(("message", "before")), cancellationToken: Timeout())));

        // Killed, and kept from starting again until the test says so (the gateway's own retries fail meanwhile).
        await File.WriteAllTextAsync(block, "");
        try
        {
            Assert.True(KillProcesses(marker) > 0, "the echo server's process was not found");

            // Withdrawn (with list_changed), while everything keeps serving.
            Assert.True(await Eventually(async () => !(await ToolNames(client)).Contains("echo__echo")), "the killed server's tools stayed in the list");
            Assert.True(await Eventually(() => Task.FromResult(Volatile.Read(ref changes.Value) >= 1)), "no tools/list_changed when the server went down");
            Assert.Contains("everything__echo", await ToolNames(client));
            Assert.Equal("Echo: still here", Text(await client.CallToolAsync("everything__echo", Args(("message", "still here")), cancellationToken: Timeout())));
            var refused = await Assert.ThrowsAsync<McpProtocolException>(() => client.CallToolAsync("echo__echo", Args(("message", "while down")), cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32016, (int)refused.ErrorCode);
            Assert.DoesNotContain("echo__echo", await ToolNames(client));
        }
        finally
        {
            File.Delete(block);
        }

        // Respawned in the background: its tools come back, and so does calling them.
        Assert.True(await Eventually(async () => (await ToolNames(client)).Contains("echo__echo")), "the server's tools did not come back");
        Assert.Equal("after", Text(await client.CallToolAsync("echo__echo", Args(("message", "after")), cancellationToken: Timeout())));
        Assert.True(await Eventually(() => Task.FromResult(Volatile.Read(ref changes.Value) >= 2)), $"{changes.Value} tools/list_changed notifications");
        Assert.Contains("is down", sidecar.Log.ToString(), StringComparison.Ordinal);
    }

    private static async Task<List<string>> ToolNames(McpClient client) => (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToList();

    private static async Task<bool> Eventually(Func<Task<bool>> condition, int seconds = 30)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (DateTime.UtcNow < deadline)
        {
            if (await condition())
            {
                return true;
            }
            await Task.Delay(100);
        }
        return false;
    }

    /// <summary>Kills every process whose command line holds <paramref name="marker"/>; returns how many.</summary>
    internal static int KillProcesses(string marker)
    {
        var killed = 0;
        foreach (var folder in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(folder), out var pid))
            {
                continue;
            }
            string commandLine;
            try
            {
                commandLine = File.ReadAllText(Path.Combine(folder, "cmdline"));
            }
            catch (IOException)
            {
                continue;
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }
            if (commandLine.Contains(marker, StringComparison.Ordinal))
            {
                try
                {
                    System.Diagnostics.Process.GetProcessById(pid).Kill();
                    killed++;
                }
                catch (ArgumentException)
                {
                    // Gone already.
                }
            }
        }
        return killed;
    }

    private static async Task<List<string>> AuditLines(SidecarHost sidecar, Func<string, bool> match)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            var lines = File.Exists(sidecar.AuditFile) ? await ReadShared(sidecar.AuditFile) : [];
            var found = lines.Where(match).ToList();
            if (found.Count > 0 || DateTime.UtcNow > deadline)
            {
                return found;
            }
            await Task.Delay(100);
        }
    }

    private static async Task<string[]> ReadShared(string path)
    {
        await using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite | FileShare.Delete);
        using var reader = new StreamReader(stream);
        return (await reader.ReadToEndAsync()).Split('\n', StringSplitOptions.RemoveEmptyEntries);
    }

    private sealed class SynchronousProgress(List<ProgressNotificationValue> sink) : IProgress<ProgressNotificationValue>
    {
        public int Count
        {
            get
            {
                lock (sink)
                {
                    return sink.Count;
                }
            }
        }

        public void Report(ProgressNotificationValue value)
        {
            lock (sink)
            {
                sink.Add(value);
            }
        }
    }
}
