using System.Net;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Microsoft.Extensions.Logging.Abstractions;
using ModelContextProtocol;
using ModelContextProtocol.Client;
using ModelContextProtocol.Protocol;
using Sidecar.IntegrationTests.TestSupport;
using Sidecar.Sessions;

namespace Sidecar.IntegrationTests.Gateway;

/// <summary>
/// The aggregated endpoint per identity (each server's policy for the caller's grant filters its list and decides
/// its calls), with paginated servers (the aggregate's cursors), and across a reload that adds a server.
/// </summary>
public sealed class AggregateGrantsAndPagesTests
{
    private const string ReaderKey = "sk-aggregate-reader-1c2d";
    private const string OpsKey = "sk-aggregate-ops-9e8f";
    private const string AllowAll = """{ "version": "1", "default": "allow" }""";
    private const string ReaderPolicy = """{ "version": "1", "default": "deny", "tools": { "tool-1": {}, "tool-4": {} } }""";

    private static CancellationToken Timeout(int seconds = 30) => new CancellationTokenSource(TimeSpan.FromSeconds(seconds)).Token;

    private static string Sha256(string key) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(key)));

    private static string Paged => Repo.PathOf("tests", "fixtures", "mcp-servers", "paged.cjs");

    private static string Echo => Repo.PathOf("bench", "load", "echo-server", "stdio.cjs");

    private static Dictionary<string, object> Stdio(string script, params string[] args)
        => new() { ["command"] = "node", ["args"] = new[] { script }.Concat(args).ToArray() };

    private static async Task<McpClient> ConnectAsync(SidecarHost sidecar, string? key = null, McpClientOptions? options = null)
    {
        var transportOptions = new HttpClientTransportOptions
        {
            Endpoint = new Uri(sidecar.BaseUrl, "/mcp"),
            TransportMode = HttpTransportMode.StreamableHttp,
            Name = "sidecar-aggregate-it",
            AdditionalHeaders = key is null ? null : new Dictionary<string, string> { ["Authorization"] = "Bearer " + key },
        };
        options ??= new McpClientOptions();
        options.ClientInfo ??= new Implementation { Name = "sidecar-integration-tests", Version = "1.0" };
        return await McpClient.CreateAsync(new HttpClientTransport(transportOptions, NullLoggerFactory.Instance), options, NullLoggerFactory.Instance, Timeout());
    }

    /// <summary>Client options that count the <c>notifications/tools/list_changed</c> the client gets in <paramref name="count"/>.</summary>
    internal static McpClientOptions CountingListChanged(StrongBox<int> count) => new()
    {
        Handlers = new McpClientHandlers
        {
            NotificationHandlers = [new(NotificationMethods.ToolListChangedNotification, (_, _) =>
            {
                Interlocked.Increment(ref count.Value);
                return ValueTask.CompletedTask;
            })],
        },
    };

    [Fact]
    public async Task Each_identity_sees_and_calls_what_its_grant_allows_on_every_server()
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { ["paged"] = Stdio(Paged), ["echo"] = Stdio(Echo) },
            ["identities"] = new Dictionary<string, object>
            {
                ["apiKeys"] = new Dictionary<string, object>
                {
                    ["reader"] = new Dictionary<string, string> { ["sha256"] = Sha256(ReaderKey), ["grant"] = "readonly" },
                    ["ops"] = new Dictionary<string, string> { ["sha256"] = Sha256(OpsKey), ["grant"] = "ops" },
                },
            },
            ["grants"] = new Dictionary<string, object>
            {
                // No policy for echo in this grant: the reader gets nothing of it.
                ["readonly"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["paged"] = "reader.json" } },
                ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "all.json" } },
            },
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["reader.json"] = ReaderPolicy, ["all.json"] = AllowAll });

        await using (var reader = await ConnectAsync(sidecar, ReaderKey))
        {
            var tools = (await reader.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).Order().ToList();
            Assert.Equal(["paged__tool-1", "paged__tool-4"], tools);
            var denied = await Assert.ThrowsAsync<McpProtocolException>(() => reader.CallToolAsync("echo__echo",
                new Dictionary<string, object?> { ["message"] = "no" }, cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32010, (int)denied.ErrorCode);
            var hidden = await Assert.ThrowsAsync<McpProtocolException>(() => reader.CallToolAsync("paged__tool-2",
                new Dictionary<string, object?> { ["message"] = "no" }, cancellationToken: Timeout()).AsTask());
            Assert.Equal(-32010, (int)hidden.ErrorCode);
            var allowed = await reader.CallToolAsync("paged__tool-4", new Dictionary<string, object?> { ["message"] = "yes" }, cancellationToken: Timeout());
            Assert.Equal("tool-4: yes", ((TextContentBlock)allowed.Content[0]).Text);
        }
        await using (var ops = await ConnectAsync(sidecar, OpsKey))
        {
            var tools = (await ops.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToHashSet();
            Assert.Equal(6, tools.Count); // five paged tools, across three pages, and the echo
            Assert.Contains("echo__echo", tools);
            Assert.Contains("paged__tool-5", tools);
        }

        // The aggregated endpoint asks for credentials like any other.
        using var http = new HttpClient();
        using var anonymous = await RawMcp.PostAsync(http, new Uri(sidecar.BaseUrl, "/mcp"), RawMcp.InitializeBody, null);
        Assert.Equal(HttpStatusCode.Unauthorized, anonymous.StatusCode);
    }

    [Fact]
    public async Task Pages_of_every_server_are_merged_with_the_aggregates_own_cursor()
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { ["a"] = Stdio(Paged, "5", "2"), ["b"] = Stdio(Paged, "3", "3") },
            ["policy"] = "all.json",
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["all.json"] = AllowAll });
        using var http = new HttpClient();
        var url = new Uri(sidecar.BaseUrl, "/mcp");
        var session = await RawMcp.OpenSessionAsync(http, url);

        var names = new List<string>();
        var pages = 0;
        string? cursor = null;
        do
        {
            var body = cursor is null
                ? """{"jsonrpc":"2.0","id":1,"method":"tools/list"}"""
                : "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\",\"params\":{\"cursor\":" + JsonSerializer.Serialize(cursor) + "}}";
            using var response = await RawMcp.PostAsync(http, url, body, session);
            var result = (await RawMcp.AnswerAsync(response)).GetProperty("result");
            names.AddRange(result.GetProperty("tools").EnumerateArray().Select(t => t.GetProperty("name").GetString()!));
            cursor = result.TryGetProperty("nextCursor", out var next) ? next.GetString() : null;
            Assert.True(cursor is null || cursor.StartsWith("sidecar-aggregate.", StringComparison.Ordinal), cursor);
            pages++;
        }
        while (cursor is not null && pages < 10);

        // First page: a's first two and all of b; then a's next pages only.
        Assert.Equal(3, pages);
        Assert.Equal(["a__tool-1", "a__tool-2", "b__tool-1", "b__tool-2", "b__tool-3", "a__tool-3", "a__tool-4", "a__tool-5"], names);

        using var bad = await RawMcp.PostAsync(http, url, """{"jsonrpc":"2.0","id":2,"method":"tools/list","params":{"cursor":"page:2"}}""", session);
        Assert.Equal(-32602, (await RawMcp.AnswerAsync(bad)).GetProperty("error").GetProperty("code").GetInt32());

        // The official client follows the cursors too, for prompts and resources as well.
        await using var client = await ConnectAsync(sidecar);
        Assert.Equal(8, (await client.ListToolsAsync(cancellationToken: Timeout())).Count);
        Assert.Equal(8, (await client.ListPromptsAsync(cancellationToken: Timeout())).Count);
        var resources = await client.ListResourcesAsync(cancellationToken: Timeout());
        Assert.Equal(8, resources.Count);
        Assert.Contains(resources, r => r.Uri == "paged://item/5");
    }

    [Fact]
    public async Task A_servers_list_changed_reaches_the_agent()
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { ["a"] = Stdio(Paged, "2", "2"), ["echo"] = Stdio(Echo) },
            ["policy"] = "all.json",
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["all.json"] = AllowAll });
        var changed = new StrongBox<int>();
        await using var client = await ConnectAsync(sidecar, options: CountingListChanged(changed));
        Assert.Equal(3, (await client.ListToolsAsync(cancellationToken: Timeout())).Count);
        await Task.Delay(300);
        Assert.Equal(0, Volatile.Read(ref changed.Value)); // nothing changed yet: opening the session announces nothing

        var result = await client.CallToolAsync("a__tool-2", new Dictionary<string, object?> { ["message"] = "m", ["notify"] = true }, cancellationToken: Timeout());
        Assert.Equal("tool-2: m", ((TextContentBlock)result.Content[0]).Text);
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (Volatile.Read(ref changed.Value) == 0 && DateTime.UtcNow < deadline)
        {
            await Task.Delay(50);
        }
        Assert.Equal(1, Volatile.Read(ref changed.Value));
    }

    [Fact]
    public async Task A_server_added_by_a_reload_joins_open_sessions()
    {
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object> { ["a"] = Stdio(Paged, "1", "1") },
            ["policy"] = "all.json",
        });
        await using var sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string> { ["all.json"] = AllowAll });
        var changed = new StrongBox<int>();
        await using var client = await ConnectAsync(sidecar, options: CountingListChanged(changed));
        Assert.Equal(["a__tool-1"], (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name));

        var json = JsonNode.Parse(await File.ReadAllTextAsync(sidecar.ConfigFile))!.AsObject();
        json["mcpServers"]!.AsObject()["echo"] = JsonNode.Parse(JsonSerializer.Serialize(Stdio(Echo)));
        await File.WriteAllTextAsync(sidecar.ConfigFile, json.ToJsonString());
        Assert.Equal(ReloadStatus.Applied, (await sidecar.Gateway.Reloader!.ReloadAsync(ReloadTrigger.Api)).Status);

        var deadline = DateTime.UtcNow.AddSeconds(20);
        List<string> tools;
        do
        {
            tools = (await client.ListToolsAsync(cancellationToken: Timeout())).Select(t => t.Name).ToList();
        }
        while (!tools.Contains("echo__echo") && DateTime.UtcNow < deadline && await Delay());
        Assert.Contains("echo__echo", tools);
        Assert.True(Volatile.Read(ref changed.Value) >= 1);
        Assert.Equal("joined", ((TextContentBlock)(await client.CallToolAsync("echo__echo",
            new Dictionary<string, object?> { ["message"] = "joined" }, cancellationToken: Timeout())).Content[0]).Text);

        static async Task<bool> Delay()
        {
            await Task.Delay(100);
            return true;
        }
    }
}
