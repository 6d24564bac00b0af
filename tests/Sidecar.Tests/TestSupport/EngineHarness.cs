using System.Buffers;
using System.Collections.Frozen;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.JsonRpc;
using Sidecar.Policy;
using Sidecar.Protocol;
using Sidecar.RateLimiting;
using Sidecar.Sessions;
using Sidecar.Tests.Audit;

namespace Sidecar.Tests.TestSupport;

/// <summary>
/// A real <see cref="SessionEngine"/> over one server "srv" backed by a <see cref="ScriptedUpstream"/>, with an audit
/// pipeline that is not started (<see cref="AuditCalls"/> runs the writer's passes). Messages go through
/// <see cref="SessionEngine.Check"/> and <see cref="SessionEngine.ReceiveAsync"/> exactly as a transport hands them.
/// </summary>
internal sealed class EngineHarness : IAsyncDisposable
{
    public const string AllowAll = """{ "version": "1", "default": "allow" }""";

    /// <summary>The initialize params every test agent sends (replayed upstream after a restart).</summary>
    public const string InitializeParams = """{"protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true}},"clientInfo":{"name":"test-agent","version":"9.9"}}""";

    private readonly List<McpSession> _sessions = [];

    private EngineHarness(SessionEngine engine, ScriptedUpstream upstream, ServerState server, MemorySink audit, AuditPipeline pipeline, SidecarConfig config)
    {
        Engine = engine;
        Upstream = upstream;
        Server = server;
        AuditSink = audit;
        Pipeline = pipeline;
        Config = config;
    }

    public SessionEngine Engine { get; }

    public ScriptedUpstream Upstream { get; }

    /// <summary>"srv" as the first snapshot defines it.</summary>
    public ServerState Server { get; }

    public MemorySink AuditSink { get; }

    public AuditPipeline Pipeline { get; }

    public SidecarConfig Config { get; }

    public static EngineHarness Create(string policyJson = AllowAll, GatewayLimits? limits = null, int maxSessionsPerServer = 64,
        ScriptedUpstream? upstream = null)
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink, AuditTest.Config());
        var server = new ServerConfig("srv", default, UpstreamTransport.Stdio, "fake", [], new Dictionary<string, string>(), null, null,
            new Dictionary<string, string>(), null);
        var config = new SidecarConfig(null, "127.0.0.1:0", [server], null, BlockedCallStyle.Error, limits ?? GatewayLimits.Default, [], [], AuditTest.Config());
        upstream ??= new ScriptedUpstream();
        var state = new ServerState(server, Compile(policyJson), new UpstreamHandle(upstream), maxSessionsPerServer);
        var snapshot = new GatewaySnapshot(config, new Dictionary<string, ServerState> { ["srv"] = state }.ToFrozenDictionary(), 1);
        var engine = new SessionEngine(snapshot, pipeline.Recorder, new RateLimitStore(), NullLoggerFactory.Instance);
        return new EngineHarness(engine, upstream, state, sink, pipeline, config);
    }

    public static PolicyModel Compile(string policyJson)
    {
        var diagnostics = new DiagnosticBag();
        return PolicyCompiler.Load(Encoding.UTF8.GetBytes(policyJson), "srv", diagnostics) ?? throw new InvalidOperationException(diagnostics.ToString());
    }

    /// <summary>
    /// The live snapshot with "srv" under <paramref name="policyJson"/> (same connector and, as the snapshot builder
    /// does for an unchanged server, the same pin watch), for <see cref="SessionEngine.Apply"/>.
    /// </summary>
    public GatewaySnapshot WithPolicy(string policyJson)
    {
        var current = Engine.Current;
        var server = current.Find("srv")!;
        var state = new ServerState(server.Config, Compile(policyJson), server.Upstream, server.MaxSessions, pinWatch: server.Pins.Watch);
        return new GatewaySnapshot(current.Config, new Dictionary<string, ServerState> { ["srv"] = state }.ToFrozenDictionary(), current.Version + 1);
    }

    /// <summary>A snapshot without any server.</summary>
    public GatewaySnapshot WithoutServers()
    {
        var current = Engine.Current;
        return new GatewaySnapshot(current.Config with { Servers = [] }, new Dictionary<string, ServerState>().ToFrozenDictionary(), current.Version + 1);
    }

    public McpSession Open(SessionTransport transport = SessionTransport.StreamableHttp)
    {
        var snapshot = Engine.Current;
        Assert.Equal(SessionOpen.Opened, Engine.TryOpen(snapshot, snapshot.Find("srv")!, transport, out var session));
        _sessions.Add(session!);
        return session!;
    }

    /// <summary>Opens a session and initializes it; the upstream answers with <paramref name="version"/>.</summary>
    public async Task<McpSession> OpenInitializedAsync(string version = McpProtocol.V20250618)
    {
        Upstream.ProtocolVersion = version;
        var session = Open();
        var answer = await RequestAsync(session, Initialize(1));
        Assert.Equal(version, answer.GetProperty("result").GetProperty("protocolVersion").GetString());
        Assert.Equal(version, session.ProtocolVersion);
        return session;
    }

    public static string Initialize(object id) => $$"""{"jsonrpc":"2.0","id":{{Id(id)}},"method":"initialize","params":{{InitializeParams}}}""";

    public static string Request(object id, string method, string? paramsJson = null)
        => paramsJson is null
            ? $$"""{"jsonrpc":"2.0","id":{{Id(id)}},"method":"{{method}}"}"""
            : $$"""{"jsonrpc":"2.0","id":{{Id(id)}},"method":"{{method}}","params":{{paramsJson}}}""";

    public static string Call(object id, string tool, string arguments = "{}")
        => Request(id, "tools/call", $$"""{"name":"{{tool}}","arguments":{{arguments}}}""");

    public static string Notification(string method, string? paramsJson = null)
        => paramsJson is null
            ? $$"""{"jsonrpc":"2.0","method":"{{method}}"}"""
            : $$"""{"jsonrpc":"2.0","method":"{{method}}","params":{{paramsJson}}}""";

    /// <summary>An int, or a string written as it is (so <c>"\"a\""</c> or <c>"1.0"</c> is the raw token).</summary>
    private static string Id(object id) => id is string raw ? raw : Convert.ToString(id, System.Globalization.CultureInfo.InvariantCulture)!;

    /// <summary>Checks <paramref name="json"/> (it must pass) and hands it to <paramref name="session"/>.</summary>
    public async Task<(int Expected, Refusal? Refused)> SendAsync(McpSession session, string json, MessageSink sink)
    {
        var body = new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(json));
        var snapshot = Engine.Current;
        Assert.Null(SessionEngine.Check(body, snapshot.Options, out var scan));
        return await Engine.ReceiveAsync(snapshot, session, body, scan, sink, CancellationToken.None);
    }

    /// <summary>Sends one request and returns its answer (at most 10 s).</summary>
    public async Task<JsonElement> RequestAsync(McpSession session, string json)
    {
        var sink = NewSink();
        var (expected, refused) = await SendAsync(session, json, sink);
        Assert.Null(refused);
        Assert.Equal(1, expected);
        return await AnswerAsync(sink);
    }

    /// <summary>Sends a request that will be answered later; returns the sink its answer goes to.</summary>
    public async Task<MessageSink> StartAsync(McpSession session, string json)
    {
        var sink = NewSink();
        var (expected, refused) = await SendAsync(session, json, sink);
        Assert.Null(refused);
        Assert.Equal(1, expected);
        return sink;
    }

    public static MessageSink NewSink() => new(acceptsRelatedMessages: false);

    /// <summary>The next response written to <paramref name="sink"/> (at most 10 s).</summary>
    public static async Task<JsonElement> AnswerAsync(MessageSink sink) => Parse((await SessionHarness.ReadAsync(sink)).Payload);

    /// <summary>Every message written to <paramref name="sink"/> so far, without waiting.</summary>
    public static List<JsonElement> Drain(MessageSink sink)
    {
        var messages = new List<JsonElement>();
        while (sink.TryRead(out var message))
        {
            messages.Add(Parse(message.Payload));
        }
        return messages;
    }

    /// <summary>The next message of any kind written to <paramref name="sink"/> (at most 10 s).</summary>
    public static async Task<JsonElement> NextAsync(MessageSink sink)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        while (await sink.WaitToReadAsync(timeout.Token))
        {
            if (sink.TryRead(out var message))
            {
                return Parse(message.Payload);
            }
        }
        throw new InvalidOperationException("the sink ended without a message");
    }

    public static JsonElement Parse(ReadOnlyMemory<byte> payload) => JsonDocument.Parse(payload).RootElement.Clone();

    /// <summary>The <c>tool_call</c> events the audit writer has written so far (it is run until the queue is empty).</summary>
    public List<JsonElement> AuditCalls()
    {
        while (Pipeline.RunOnce() > 0)
        {
        }
        return [.. AuditSink.Lines.Select(line => JsonDocument.Parse(line).RootElement.Clone()).Where(e => e.GetProperty("type").GetString() == "tool_call")];
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var session in _sessions)
        {
            await session.DisposeAsync();
        }
        await Engine.DisposeAsync();
        await Pipeline.DisposeAsync();
    }
}
