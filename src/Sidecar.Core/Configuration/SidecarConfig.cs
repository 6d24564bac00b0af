using Sidecar.Policy;

namespace Sidecar.Configuration;

public enum UpstreamTransport : byte { Stdio, Sse, StreamableHttp }

/// <summary>How a blocked <c>tools/call</c> is reported to the agent.</summary>
public enum BlockedCallStyle : byte
{
    /// <summary>A JSON-RPC error with a distinct code and <c>error.data</c> (the default).</summary>
    Error,
    /// <summary>A successful response holding a tool result with <c>isError: true</c>, for agents that read only results.</summary>
    ToolResult,
}

/// <summary>The gateway's config file (<c>sidecar.json</c>) as the user wrote it, paths resolved.</summary>
public sealed record SidecarConfig(
    string? File,
    string Listen,
    IReadOnlyList<ServerConfig> Servers,
    string? PolicyPath,
    BlockedCallStyle BlockedCalls,
    GatewayLimits Limits,
    IReadOnlyList<string> AllowedOrigins,
    IReadOnlyList<string> AllowedHosts,
    AuditConfig Audit)
{
    public const string DefaultListen = "127.0.0.1:8787";

    /// <summary><c>identities</c>; null: every agent is anonymous and each server's own <c>policy</c> applies.</summary>
    public IdentitiesConfig? Identities { get; init; }

    /// <summary><c>grants</c>: by name.</summary>
    public IReadOnlyDictionary<string, GrantConfig> Grants { get; init; } = new Dictionary<string, GrantConfig>();

    /// <summary><c>admin</c>; null: no admin API (and so nobody can approve: <c>require_approval</c> refuses at once).</summary>
    public AdminConfig? Admin { get; init; }

    /// <summary><c>approvals</c>: how held calls wait, and the webhook.</summary>
    public ApprovalsConfig Approvals { get; init; } = ApprovalsConfig.Default;

    /// <summary><c>logging</c>: the format and level of the log on stderr.</summary>
    public LoggingConfig Logging { get; init; } = LoggingConfig.Default;

    /// <summary><c>rateLimits</c>: where rate-limit counters live (in memory, or shared in Redis).</summary>
    public RateLimitsConfig RateLimits { get; init; } = RateLimitsConfig.Default;

    /// <summary><c>aggregate</c>: which servers the aggregated endpoint (<c>/mcp</c>) serves, and how their tools are named.</summary>
    public AggregateConfig Aggregate { get; init; } = AggregateConfig.Default;
}

/// <summary>
/// <c>aggregate</c>: the aggregated endpoint serves <see cref="Servers"/> (null: every server whose name does not
/// contain the separator, in config order) and names each tool and prompt <c>{server}{Separator}{name}</c>.
/// </summary>
public sealed record AggregateConfig(IReadOnlyList<string>? Servers, string Separator)
{
    public const string DefaultSeparator = "__";

    public static AggregateConfig Default { get; } = new(null, DefaultSeparator);

    /// <summary>Whether <paramref name="server"/> is part of the aggregated endpoint.</summary>
    public bool Includes(string server)
    {
        if (Servers is null)
        {
            return !server.Contains(Separator, StringComparison.Ordinal);
        }
        foreach (var name in Servers)
        {
            if (string.Equals(name, server, StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
    }
}

/// <summary>The log's format on stderr.</summary>
public enum LogFormat : byte
{
    /// <summary>One JSON object per line (the default): <c>time, level, category, eventId?, message</c>, the message's values, <c>exception?</c>.</summary>
    Json,

    /// <summary>One line of text per entry, control characters escaped.</summary>
    Text,
}

/// <summary><c>logging</c>: <see cref="Format"/> and, when set, <see cref="Level"/> (<c>--log-level</c> wins over it).</summary>
public sealed record LoggingConfig(LogFormat Format, Microsoft.Extensions.Logging.LogLevel? Level)
{
    public static LoggingConfig Default { get; } = new(LogFormat.Json, null);

    public static bool TryParseLevel(string text, out Microsoft.Extensions.Logging.LogLevel level)
    {
        level = default;
        return !int.TryParse(text, out _) && Enum.TryParse(text, ignoreCase: true, out level) && Enum.IsDefined(level);
    }
}

/// <summary>Bounds on what the gateway accepts and how long it waits.</summary>
public sealed record GatewayLimits(
    int MaxMessageBytes,
    TimeSpan UpstreamTimeout,
    TimeSpan ConnectTimeout,
    int MaxSessions,
    TimeSpan SessionIdleTimeout,
    int MaxInFlight)
{
    public static GatewayLimits Default { get; } = new(4 * 1024 * 1024, TimeSpan.FromSeconds(60), TimeSpan.FromSeconds(30), 10_000, TimeSpan.FromMinutes(30), 1024);

    /// <summary>A stdio server's default <see cref="MaxSessionsPerServer"/>: each session is a process of its own.</summary>
    public const int DefaultMaxStdioSessions = 64;

    /// <summary>A shared stdio server's (<c>"share": true</c>) default <see cref="MaxSessionsPerServer"/>: sessions cost no process each.</summary>
    public const int DefaultMaxSharedStdioSessions = 1024;

    /// <summary>An HTTP server's default <see cref="MaxSessionsPerServer"/>.</summary>
    public const int DefaultMaxHttpSessions = 1024;

    /// <summary>
    /// <c>limits.maxSessionsPerServer</c>; null: <see cref="DefaultMaxStdioSessions"/> for a stdio server,
    /// <see cref="DefaultMaxSharedStdioSessions"/> for a shared one, <see cref="DefaultMaxHttpSessions"/> otherwise.
    /// </summary>
    public int? MaxSessionsPerServer { get; init; }

    /// <summary>The default <see cref="MaxSessionsPerIdentity"/>.</summary>
    public const int DefaultMaxSessionsPerIdentity = 32;

    /// <summary><c>limits.maxSessionsPerIdentity</c>: sessions one identity may hold open (anonymous agents are not counted).</summary>
    public int MaxSessionsPerIdentity { get; init; } = DefaultMaxSessionsPerIdentity;

    /// <summary>
    /// <c>limits.shutdownGrace</c> (default 10 s): on SIGTERM, how long calls in flight may take to finish before the
    /// rest are answered with -32016 "shutting down".
    /// </summary>
    public TimeSpan ShutdownGrace { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>The session cap of one server that is not shared (<see cref="SessionsPerServer(ServerConfig)"/> knows about <c>share</c>).</summary>
    public int SessionsPerServer(UpstreamTransport transport)
        => MaxSessionsPerServer ?? (transport == UpstreamTransport.Stdio ? DefaultMaxStdioSessions : DefaultMaxHttpSessions);

    /// <summary>The session cap of <paramref name="server"/>: a shared stdio server's sessions cost no process each.</summary>
    public int SessionsPerServer(ServerConfig server)
    {
        ArgumentNullException.ThrowIfNull(server);
        return server.Share ? MaxSessionsPerServer ?? DefaultMaxSharedStdioSessions : SessionsPerServer(server.Transport);
    }
}

/// <summary>One upstream MCP server (<c>mcpServers.NAME</c>): a stdio command or a URL.</summary>
/// <remarks><see cref="Headers"/> and <see cref="Env"/> may hold credentials: <see cref="ToString"/> never prints them.</remarks>
public sealed record ServerConfig(
    string Name,
    SourceLocation Location,
    UpstreamTransport Transport,
    string? Command,
    IReadOnlyList<string> Args,
    IReadOnlyDictionary<string, string> Env,
    string? Cwd,
    Uri? Url,
    IReadOnlyDictionary<string, string> Headers,
    string? PolicyPath)
{
    /// <summary>
    /// <c>"share": true</c> (stdio only): one server process for all sessions of this server instead of one per session,
    /// request ids mapped per session (<see cref="Upstreams.SharedStdioConnector"/>).
    /// </summary>
    public bool Share { get; init; }

    public override string ToString() => Transport == UpstreamTransport.Stdio
        ? $"{Name} (stdio{(Share ? ", shared" : "")}: {Command})"
        : $"{Name} ({(Transport == UpstreamTransport.Sse ? "sse" : "streamable-http")}: {Url!.GetLeftPart(UriPartial.Path)})";

    /// <summary>
    /// Whether <paramref name="other"/> reaches the same upstream the same way (command, arguments, environment,
    /// folder, URL, headers, <c>share</c>): its connections can be kept across a reload. The policy is not part of it.
    /// </summary>
    public bool SameUpstream(ServerConfig other) =>
        Name == other.Name && Transport == other.Transport && Command == other.Command && Cwd == other.Cwd && Url == other.Url
        && Share == other.Share
        && Args.SequenceEqual(other.Args) && SameEntries(Env, other.Env) && SameEntries(Headers, other.Headers);

    private static bool SameEntries(IReadOnlyDictionary<string, string> a, IReadOnlyDictionary<string, string> b)
    {
        if (a.Count != b.Count)
        {
            return false;
        }
        foreach (var (key, value) in a)
        {
            if (!b.TryGetValue(key, out var other) || other != value)
            {
                return false;
            }
        }
        return true;
    }

    public string TransportName => Transport switch
    {
        UpstreamTransport.Stdio => "stdio",
        UpstreamTransport.Sse => "sse",
        _ => "streamable-http",
    };
}

/// <summary>Where rate-limit counters live.</summary>
public enum RateLimitStoreKind : byte
{
    /// <summary>This process's lock-free buckets (the default).</summary>
    Memory,

    /// <summary>Counters of scope <c>global</c>, <c>identity</c> and <c>grant</c> in Redis, shared by every replica; <c>session</c> counters stay local.</summary>
    Redis,
}

/// <summary>What a call that needs a shared counter gets while Redis is unreachable.</summary>
public enum SharedFailMode : byte
{
    /// <summary>-32018 (the default): no call is admitted without the shared count.</summary>
    Closed,

    /// <summary>This replica's own buckets decide meanwhile (logged and counted).</summary>
    Open,
}

/// <summary><c>rateLimits.redis</c>: the connection (<c>${ENV}</c> expanded, never logged), the key prefix, the fail mode and the round trip's timeout.</summary>
public sealed record RedisLimitsConfig(string Connection, string Prefix, SharedFailMode FailMode, TimeSpan Timeout)
{
    public const string DefaultPrefix = "sidecar:";

    public static readonly TimeSpan DefaultTimeout = TimeSpan.FromMilliseconds(500);
}

/// <summary><c>rateLimits</c>: <see cref="Store"/> and, for Redis, <see cref="Redis"/>.</summary>
public sealed record RateLimitsConfig(RateLimitStoreKind Store, RedisLimitsConfig? Redis)
{
    public static RateLimitsConfig Default { get; } = new(RateLimitStoreKind.Memory, null);
}
