using System.Text;
using Sidecar.Policy;

namespace Sidecar.Configuration;

/// <summary>
/// Reads <c>sidecar.json</c>: the <c>mcpServers</c> map MCP clients already use, plus Sidecar's own fields. Every
/// error is collected with path and line; unknown fields are errors. Relative paths resolve against the file's folder;
/// <c>${NAME}</c> in <c>headers</c> and <c>env</c> values is replaced from the environment.
/// </summary>
public static class SidecarConfigReader
{
    private const string TopFields = "listen, mcpServers, policy, blockedCalls, limits, allowedOrigins, allowedHosts, audit, identities, grants, admin, approvals, logging, aggregate, rateLimits";
    private const string ServerFields = "command, args, env, cwd, share, url, transport, headers, policy, type, description";

    public static SidecarConfig LoadFile(string path, Func<string, string?>? environment = null)
    {
        var diagnostics = new DiagnosticBag(path);
        var bytes = diagnostics.ReadFile(path, "config") ?? throw new ConfigValidationException(diagnostics.Items);
        var baseDirectory = Path.GetDirectoryName(Path.GetFullPath(path))!;
        return Read(bytes, baseDirectory, diagnostics, environment, Path.GetFullPath(path))
            ?? throw new ConfigValidationException(diagnostics.Items);
    }

    public static SidecarConfig? Read(ReadOnlySpan<byte> utf8Json, string baseDirectory, DiagnosticBag diagnostics,
        Func<string, string?>? environment = null, string? file = null)
    {
        environment ??= Environment.GetEnvironmentVariable;
        var errorsBefore = diagnostics.Items.Count;
        var root = ConfigJsonParser.Parse(utf8Json, diagnostics);
        if (root is null)
        {
            return null;
        }
        if (root is not ConfigObject obj)
        {
            diagnostics.Add(root, $"the config must be a JSON object, not {root.KindName}");
            return null;
        }

        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var listen = SidecarConfig.DefaultListen;
        if (members.Take("listen") is { } listenNode && PolicyConfigReader.ReadString(listenNode, diagnostics) is { } l)
        {
            if (TryParseListen(l, out _, out _))
            {
                listen = l;
            }
            else
            {
                diagnostics.Add(listenNode, $"invalid listen address \"{l}\"; expected HOST:PORT, e.g. \"127.0.0.1:8787\" or \"[::1]:8787\"");
            }
        }

        string? topPolicy = null;
        if (members.Take("policy") is { } policyNode && PolicyConfigReader.ReadString(policyNode, diagnostics) is { } p)
        {
            topPolicy = ResolvePath(baseDirectory, p);
        }

        var servers = new List<ServerConfig>();
        if (members.Take("mcpServers") is { } serversNode)
        {
            if (serversNode is ConfigObject serversObj)
            {
                foreach (var member in serversObj.Members)
                {
                    if (!IsValidServerName(member.Name))
                    {
                        diagnostics.Add(member.Value.Path, member.NameLocation,
                            $"invalid server name \"{member.Name}\": use letters, digits, '-' and '_' (it appears in URLs)");
                        continue;
                    }
                    if (ReadServer(member.Name, member.Value, baseDirectory, topPolicy, environment, diagnostics) is { } server)
                    {
                        servers.Add(server);
                    }
                }
            }
            else
            {
                diagnostics.Add(serversNode, $"\"mcpServers\" must be an object mapping server names to servers, not {serversNode.KindName}");
            }
        }
        else
        {
            diagnostics.Add(obj, "missing required field \"mcpServers\"");
        }

        var blocked = BlockedCallStyle.Error;
        if (members.Take("blockedCalls") is { } blockedNode)
        {
            blocked = PolicyConfigReader.ReadString(blockedNode, diagnostics) switch
            {
                "error" => BlockedCallStyle.Error,
                "tool_result" => BlockedCallStyle.ToolResult,
                null => BlockedCallStyle.Error,
                var other => Invalid(blockedNode, $"invalid blockedCalls \"{other}\"; expected \"error\" or \"tool_result\"", BlockedCallStyle.Error),
            };
        }

        var limits = GatewayLimits.Default;
        if (members.Take("limits") is { } limitsNode)
        {
            limits = ReadLimits(limitsNode, diagnostics);
        }

        var origins = members.Take("allowedOrigins") is { } originsNode ? ReadStringList(originsNode, diagnostics) : [];
        var hosts = members.Take("allowedHosts") is { } hostsNode ? ReadStringList(hostsNode, diagnostics) : [];
        var audit = members.Take("audit") is { } auditNode
            ? AuditConfigReader.Read(auditNode, baseDirectory, environment, diagnostics)
            : AuditConfig.Default;

        var grants = members.Take("grants") is { } grantsNode
            ? IdentitiesConfigReader.ReadGrants(grantsNode, baseDirectory, servers, diagnostics)
            : new Dictionary<string, GrantConfig>();
        var identities = members.Take("identities") is { } identitiesNode
            ? IdentitiesConfigReader.ReadIdentities(identitiesNode, grants, baseDirectory, environment, diagnostics)
            : null;

        var admin = members.Take("admin") is { } adminNode ? ApprovalsConfigReader.ReadAdmin(adminNode, listen, environment, diagnostics) : null;
        var approvals = members.Take("approvals") is { } approvalsNode
            ? ApprovalsConfigReader.ReadApprovals(approvalsNode, environment, diagnostics)
            : ApprovalsConfig.Default;

        var logging = members.Take("logging") is { } loggingNode ? ReadLogging(loggingNode, diagnostics) : LoggingConfig.Default;
        var rateLimits = members.Take("rateLimits") is { } rateLimitsNode ? ReadRateLimits(rateLimitsNode, environment, diagnostics) : RateLimitsConfig.Default;
        var aggregate = members.Take("aggregate") is { } aggregateNode ? ReadAggregate(aggregateNode, servers, diagnostics) : AggregateConfig.Default;

        members.ReportUnknown(TopFields);

        T Invalid<T>(ConfigNode node, string message, T fallback)
        {
            diagnostics.Add(node, message);
            return fallback;
        }

        return diagnostics.Items.Count > errorsBefore
            ? null
            : new SidecarConfig(file, listen, servers, topPolicy, blocked, limits, origins, hosts, audit) { Identities = identities, Grants = grants, Admin = admin, Approvals = approvals, Logging = logging, Aggregate = aggregate, RateLimits = rateLimits };
    }

    private static ServerConfig? ReadServer(string name, ConfigNode node, string baseDirectory, string? topPolicy,
        Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"a server must be an object with \"command\" or \"url\", not {node.KindName}");
            return null;
        }
        var errorsBefore = diagnostics.Items.Count;
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);

        var commandNode = members.Take("command");
        var urlNode = members.Take("url");
        var command = commandNode is null ? null : PolicyConfigReader.ReadString(commandNode, diagnostics);
        var urlText = urlNode is null ? null : PolicyConfigReader.ReadString(urlNode, diagnostics);
        var args = members.Take("args") is { } argsNode ? ReadStringList(argsNode, diagnostics) : [];
        var env = members.Take("env") is { } envNode ? ReadStringMap(envNode, environment, diagnostics) : new Dictionary<string, string>();
        var cwdNode = members.Take("cwd");
        var cwd = cwdNode is null ? null : PolicyConfigReader.ReadString(cwdNode, diagnostics);
        var shareNode = members.Take("share");
        var share = false;
        if (shareNode is ConfigScalar { IsBoolean: true } shareValue)
        {
            share = shareValue.Kind == ConfigNodeKind.True;
        }
        else if (shareNode is not null)
        {
            diagnostics.Add(shareNode, $"\"share\" must be true or false, not {shareNode.KindName}");
        }
        var headersNode = members.Take("headers");
        var headers = headersNode is null ? new Dictionary<string, string>() : ReadStringMap(headersNode, environment, diagnostics);
        var transportNode = members.Take("transport") ?? members.Take("type");
        var transportText = transportNode is null ? null : PolicyConfigReader.ReadString(transportNode, diagnostics);
        var policyNode = members.Take("policy");
        var policy = policyNode is null ? topPolicy : PolicyConfigReader.ReadString(policyNode, diagnostics) is { } pp ? ResolvePath(baseDirectory, pp) : null;
        if (members.Take("description") is { } descNode)
        {
            PolicyConfigReader.ReadString(descNode, diagnostics);
        }
        members.ReportUnknown(ServerFields);

        UpstreamTransport transport = UpstreamTransport.Stdio;
        Uri? url = null;
        if (command is not null && urlNode is not null)
        {
            diagnostics.Add(obj, "a server has either \"command\" (stdio) or \"url\" (HTTP), not both");
        }
        else if (command is not null)
        {
            if (command.Length == 0)
            {
                diagnostics.Add(commandNode!, "\"command\" cannot be empty");
            }
            if (transportText is not null and not "stdio")
            {
                diagnostics.Add(transportNode!, $"transport \"{transportText}\" does not fit a \"command\" server; stdio servers need no transport");
            }
            if (headersNode is not null)
            {
                diagnostics.Add(headersNode, "\"headers\" apply to \"url\" servers only");
            }
        }
        else if (urlText is not null)
        {
            if (!Uri.TryCreate(urlText, UriKind.Absolute, out url) || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps))
            {
                diagnostics.Add(urlNode!, $"invalid url \"{urlText}\"; expected an absolute http:// or https:// URL");
            }
            else
            {
                transport = transportText switch
                {
                    "sse" => UpstreamTransport.Sse,
                    "streamable-http" or "streamableHttp" or "http" => UpstreamTransport.StreamableHttp,
                    null => url.AbsolutePath.TrimEnd('/').EndsWith("/sse", StringComparison.Ordinal) ? UpstreamTransport.Sse : UpstreamTransport.StreamableHttp,
                    _ => Invalid(),
                };
                UpstreamTransport Invalid()
                {
                    diagnostics.Add(transportNode!, $"invalid transport \"{transportText}\"; expected \"sse\" or \"streamable-http\"");
                    return UpstreamTransport.StreamableHttp;
                }
            }
            if (args.Count > 0 || env.Count > 0 || cwd is not null)
            {
                diagnostics.Add(obj, "\"args\", \"env\" and \"cwd\" apply to \"command\" servers only");
            }
            if (share)
            {
                diagnostics.Add(shareNode!, "\"share\" applies to \"command\" (stdio) servers only: an HTTP server already gives each session an upstream session of its own");
            }
        }
        else if (commandNode is null && urlNode is null)
        {
            diagnostics.Add(obj, "a server needs \"command\" (a stdio server Sidecar spawns) or \"url\" (an HTTP server)");
        }

        return diagnostics.Items.Count > errorsBefore
            ? null
            : new ServerConfig(name, obj.Location, transport, command, args, env,
                cwd is null ? null : ResolvePath(baseDirectory, cwd), url, headers, policy) { Share = share };
    }

    /// <summary>A duration from zero (<c>"0s"</c>, which <see cref="PolicyConfigReader.TryReadDuration"/> refuses) to <paramref name="max"/>.</summary>
    internal static bool TryReadDurationFromZero(ConfigNode node, TimeSpan max, out TimeSpan value)
    {
        if (node is ConfigScalar { Text: "0" or "0s" or "0ms" })
        {
            value = TimeSpan.Zero;
            return true;
        }
        return PolicyConfigReader.TryReadDuration(node, out value) && value <= max;
    }

    /// <summary><c>logging</c>: <c>format</c> (<c>json</c>, the default, or <c>text</c>) and <c>level</c>.</summary>
    private static AggregateConfig ReadAggregate(ConfigNode node, List<ServerConfig> servers, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"aggregate\" must be an object with \"servers\" and \"separator\", not {node.KindName}");
            return AggregateConfig.Default;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var separator = AggregateConfig.DefaultSeparator;
        if (members.Take("separator") is { } separatorNode && PolicyConfigReader.ReadString(separatorNode, diagnostics) is { } text)
        {
            if (text.Length is 0 or > 8 || !IsSeparatorText(text))
            {
                diagnostics.Add(separatorNode, $"invalid aggregate.separator \"{text}\": use 1 to 8 of the characters tool names allow (letters, digits, '_', '-', '.')");
            }
            else
            {
                separator = text;
            }
        }
        List<string>? names = null;
        if (members.Take("servers") is { } serversNode)
        {
            names = [];
            if (serversNode is ConfigArray array)
            {
                foreach (var item in array.Items)
                {
                    if (PolicyConfigReader.ReadString(item, diagnostics) is not { } name)
                    {
                        continue;
                    }
                    if (!servers.Exists(s => s.Name == name))
                    {
                        diagnostics.Add(item, $"aggregate.servers names \"{name}\", which is not in mcpServers");
                    }
                    else if (names.Contains(name))
                    {
                        diagnostics.Add(item, $"aggregate.servers names \"{name}\" twice");
                    }
                    else if (name.Contains(separator, StringComparison.Ordinal))
                    {
                        diagnostics.Add(item, $"server \"{name}\" contains the aggregated endpoint's separator \"{separator}\", so its tools' names "
                            + "there would be ambiguous: rename it, or choose another aggregate.separator");
                    }
                    else
                    {
                        names.Add(name);
                    }
                }
            }
            else
            {
                diagnostics.Add(serversNode, $"aggregate.servers must be an array of server names, not {serversNode.KindName}");
            }
        }
        members.ReportUnknown("servers, separator");
        return new AggregateConfig(names, separator);
    }

    private static bool IsSeparatorText(string text)
    {
        foreach (var c in text)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.'))
            {
                return false;
            }
        }
        return true;
    }

    private static RateLimitsConfig ReadRateLimits(ConfigNode node, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"rateLimits\" must be an object with \"store\" and \"redis\", not {node.KindName}");
            return RateLimitsConfig.Default;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var store = RateLimitStoreKind.Memory;
        var storeNode = members.Take("store");
        switch (storeNode is null ? "memory" : PolicyConfigReader.ReadString(storeNode, diagnostics))
        {
            case "memory" or null:
                break;
            case "redis":
                store = RateLimitStoreKind.Redis;
                break;
            case var other:
                diagnostics.Add(storeNode!, $"invalid rateLimits.store \"{other}\"; expected \"memory\" or \"redis\"");
                break;
        }
        var redisNode = members.Take("redis");
        members.ReportUnknown("store, redis");
        if (store == RateLimitStoreKind.Memory)
        {
            if (redisNode is not null)
            {
                diagnostics.Add(redisNode, "rateLimits.redis is set but rateLimits.store is \"memory\": set \"store\": \"redis\" to use it");
            }
            return RateLimitsConfig.Default;
        }
        if (redisNode is not ConfigObject redisObj)
        {
            diagnostics.Add(redisNode ?? node, redisNode is null
                ? "rateLimits.store \"redis\" needs rateLimits.redis with a \"connection\""
                : $"rateLimits.redis must be an object, not {redisNode.KindName}");
            return RateLimitsConfig.Default;
        }
        var redis = new PolicyConfigReader.MemberReader(redisObj, diagnostics);
        string? connection = null;
        if (redis.Take("connection") is { } connectionNode && PolicyConfigReader.ReadString(connectionNode, diagnostics) is { } text)
        {
            connection = Expand(text, connectionNode, environment, diagnostics);
            if (connection is not null && Sidecar.RateLimiting.RedisConnection.Check(connection) is { } problem)
            {
                diagnostics.Add(connectionNode, $"invalid rateLimits.redis.connection: {problem}");
                connection = null;
            }
        }
        else if (!redisObj.Members.Exists(m => m.Name == "connection"))
        {
            diagnostics.Add(redisObj, "rateLimits.redis needs \"connection\" (e.g. \"127.0.0.1:6379,password=${REDIS_PASSWORD}\")");
        }
        var prefix = RedisLimitsConfig.DefaultPrefix;
        if (redis.Take("prefix") is { } prefixNode && PolicyConfigReader.ReadString(prefixNode, diagnostics) is { } prefixText)
        {
            if (prefixText.Length > 64 || prefixText.Contains('{') || prefixText.Contains('}'))
            {
                diagnostics.Add(prefixNode, "invalid rateLimits.redis.prefix: at most 64 characters, without '{' or '}' (Sidecar puts the hash tag after it)");
            }
            else
            {
                prefix = prefixText;
            }
        }
        var failMode = SharedFailMode.Closed;
        if (redis.Take("failMode") is { } failNode)
        {
            switch (PolicyConfigReader.ReadString(failNode, diagnostics))
            {
                case "closed" or null:
                    break;
                case "open":
                    failMode = SharedFailMode.Open;
                    break;
                case var other:
                    diagnostics.Add(failNode, $"invalid rateLimits.redis.failMode \"{other}\"; expected \"closed\" or \"open\"");
                    break;
            }
        }
        var timeout = RedisLimitsConfig.DefaultTimeout;
        if (redis.Take("timeout") is { } timeoutNode)
        {
            if (PolicyConfigReader.TryReadDuration(timeoutNode, out var t) && t >= TimeSpan.FromMilliseconds(10) && t <= TimeSpan.FromSeconds(30))
            {
                timeout = t;
            }
            else
            {
                diagnostics.Add(timeoutNode, "invalid rateLimits.redis.timeout: a duration from 10ms to 30s (e.g. \"500ms\")");
            }
        }
        redis.ReportUnknown("connection, prefix, failMode, timeout");
        return connection is null ? RateLimitsConfig.Default : new RateLimitsConfig(store, new RedisLimitsConfig(connection, prefix, failMode, timeout));
    }

    private static LoggingConfig ReadLogging(ConfigNode node, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"logging\" must be an object with \"format\" and \"level\", not {node.KindName}");
            return LoggingConfig.Default;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var logging = LoggingConfig.Default;
        if (members.Take("format") is { } formatNode)
        {
            switch (PolicyConfigReader.ReadString(formatNode, diagnostics))
            {
                case "json":
                    break;
                case "text":
                    logging = logging with { Format = LogFormat.Text };
                    break;
                case { } other:
                    diagnostics.Add(formatNode, $"invalid logging.format \"{other}\"; expected \"json\" or \"text\"");
                    break;
            }
        }
        if (members.Take("level") is { } levelNode && PolicyConfigReader.ReadString(levelNode, diagnostics) is { } level)
        {
            if (LoggingConfig.TryParseLevel(level, out var parsed))
            {
                logging = logging with { Level = parsed };
            }
            else
            {
                diagnostics.Add(levelNode, $"invalid logging.level \"{level}\"; expected trace, debug, information, warning, error, critical or none");
            }
        }
        members.ReportUnknown("format, level");
        return logging;
    }

    private static GatewayLimits ReadLimits(ConfigNode node, DiagnosticBag diagnostics)
    {
        var limits = GatewayLimits.Default;
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"limits\" must be an object, not {node.KindName}");
            return limits;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        if (members.Take("maxMessageBytes") is { } max)
        {
            if (max is ConfigScalar { IsNumber: true } n && int.TryParse(n.Text, out var bytes) && bytes >= 1024)
            {
                limits = limits with { MaxMessageBytes = bytes };
            }
            else
            {
                diagnostics.Add(max, "\"maxMessageBytes\" must be a whole number of bytes, at least 1024");
            }
        }
        limits = limits with
        {
            UpstreamTimeout = ReadDuration(members.Take("upstreamTimeout"), limits.UpstreamTimeout, diagnostics),
            ConnectTimeout = ReadDuration(members.Take("connectTimeout"), limits.ConnectTimeout, diagnostics),
            SessionIdleTimeout = ReadDuration(members.Take("sessionIdleTimeout"), limits.SessionIdleTimeout, diagnostics),
        };
        limits = limits with
        {
            MaxSessions = ReadCount(members.Take("maxSessions"), "maxSessions", limits.MaxSessions, diagnostics),
            MaxInFlight = ReadCount(members.Take("maxInFlight"), "maxInFlight", limits.MaxInFlight, diagnostics),
        };
        if (members.Take("maxSessionsPerServer") is { } perServer)
        {
            limits = limits with { MaxSessionsPerServer = ReadCount(perServer, "maxSessionsPerServer", 1, diagnostics) };
        }
        limits = limits with
        {
            MaxSessionsPerIdentity = ReadCount(members.Take("maxSessionsPerIdentity"), "maxSessionsPerIdentity", limits.MaxSessionsPerIdentity, diagnostics),
        };
        if (members.Take("shutdownGrace") is { } graceNode)
        {
            if (TryReadDurationFromZero(graceNode, TimeSpan.FromMinutes(10), out var grace))
            {
                limits = limits with { ShutdownGrace = grace };
            }
            else
            {
                diagnostics.Add(graceNode, $"invalid shutdownGrace {PolicyConfigReader.Describe(graceNode)}; expected a duration from \"0s\" to \"10m\", e.g. \"10s\"");
            }
        }
        members.ReportUnknown("maxMessageBytes, upstreamTimeout, connectTimeout, maxSessions, maxSessionsPerServer, maxSessionsPerIdentity, sessionIdleTimeout, maxInFlight, shutdownGrace");
        return limits;
    }

    /// <summary>A whole number, at least 1; the fallback when absent (or invalid, with a diagnostic).</summary>
    private static int ReadCount(ConfigNode? node, string name, int fallback, DiagnosticBag diagnostics)
    {
        if (node is null)
        {
            return fallback;
        }
        if (node is ConfigScalar { IsNumber: true } n && int.TryParse(n.Text, out var count) && count >= 1)
        {
            return count;
        }
        diagnostics.Add(node, $"\"{name}\" must be a whole number, at least 1");
        return fallback;
    }

    private static TimeSpan ReadDuration(ConfigNode? node, TimeSpan fallback, DiagnosticBag diagnostics)
    {
        if (node is null)
        {
            return fallback;
        }
        if (PolicyConfigReader.TryReadDuration(node, out var value))
        {
            return value;
        }
        diagnostics.Add(node, $"invalid duration {PolicyConfigReader.Describe(node)}; expected e.g. \"500ms\", \"30s\", \"5m\" or a number of seconds");
        return fallback;
    }

    public static bool TryParseListen(string text, out string host, out int port)
    {
        host = "";
        port = 0;
        var colon = text.LastIndexOf(':');
        if (colon <= 0 || !int.TryParse(text.AsSpan(colon + 1), out port) || port is < 0 or > 65535)
        {
            return false;
        }
        host = text[..colon];
        if (host.StartsWith('[') && host.EndsWith(']'))
        {
            host = host[1..^1];
        }
        return host.Length > 0 && (host == "localhost" || System.Net.IPAddress.TryParse(host, out _));
    }

    private static bool IsValidServerName(string name)
    {
        if (name.Length is 0 or > 64)
        {
            return false;
        }
        foreach (var c in name)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_'))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>
    /// The <c>url</c>, <c>headers</c> (values <c>${NAME}</c>-expanded) and <c>timeout</c> (up to <paramref name="maxTimeout"/>)
    /// of an outbound HTTP target (an audit sink, a webhook) named <paramref name="what"/>; the url is null when
    /// missing or invalid (reported).
    /// </summary>
    internal static (Uri? Url, Dictionary<string, string> Headers, TimeSpan Timeout) ReadHttpTarget(PolicyConfigReader.MemberReader members, ConfigObject obj,
        string what, TimeSpan defaultTimeout, TimeSpan maxTimeout, string maxText, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        Uri? url = null;
        if (members.Take("url") is { } urlNode && PolicyConfigReader.ReadString(urlNode, diagnostics) is { } urlText)
        {
            if (!Uri.TryCreate(urlText, UriKind.Absolute, out url) || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps))
            {
                diagnostics.Add(urlNode, $"invalid url \"{urlText}\"; expected an absolute http:// or https:// URL");
                url = null;
            }
        }
        else
        {
            diagnostics.Add(obj, $"\"{what}\" needs a \"url\"");
        }
        var headers = members.Take("headers") is { } headersNode
            ? ReadStringMap(headersNode, environment, diagnostics, StringComparer.OrdinalIgnoreCase)
            : new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        var timeout = defaultTimeout;
        if (members.Take("timeout") is { } timeoutNode)
        {
            if (PolicyConfigReader.TryReadDuration(timeoutNode, out var t) && t > TimeSpan.Zero && t <= maxTimeout)
            {
                timeout = t;
            }
            else
            {
                diagnostics.Add(timeoutNode, $"invalid timeout {PolicyConfigReader.Describe(timeoutNode)}; expected a duration up to \"{maxText}\"");
            }
        }
        return (url, headers, timeout);
    }

    internal static string ResolvePath(string baseDirectory, string path) => Path.GetFullPath(Path.Combine(baseDirectory, path));

    internal static List<string> ReadStringList(ConfigNode node, DiagnosticBag diagnostics)
    {
        var result = new List<string>();
        if (node is not ConfigArray arr)
        {
            diagnostics.Add(node, $"expected an array of strings, not {node.KindName}");
            return result;
        }
        foreach (var item in arr.Items)
        {
            if (PolicyConfigReader.ReadString(item, diagnostics) is { } s)
            {
                result.Add(s);
            }
        }
        return result;
    }

    /// <summary>An object of string values with <c>${NAME}</c> expanded (<paramref name="comparer"/>: Ordinal unless given).</summary>
    internal static Dictionary<string, string> ReadStringMap(ConfigNode node, Func<string, string?> environment, DiagnosticBag diagnostics,
        StringComparer? comparer = null)
    {
        var result = new Dictionary<string, string>(comparer ?? StringComparer.Ordinal);
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"expected an object of string values, not {node.KindName}");
            return result;
        }
        foreach (var member in obj.Members)
        {
            if (PolicyConfigReader.ReadString(member.Value, diagnostics) is { } value && Expand(value, member.Value, environment, diagnostics) is { } expanded)
            {
                result[member.Name] = expanded;
            }
        }
        return result;
    }

    /// <summary>Replaces <c>${NAME}</c> with the variable's value; <c>$${</c> is a literal <c>${</c>. A missing variable is an error (its name only).</summary>
    internal static string? Expand(string value, ConfigNode node, Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (!value.Contains('$', StringComparison.Ordinal))
        {
            return value;
        }
        var sb = new StringBuilder(value.Length);
        for (var i = 0; i < value.Length; i++)
        {
            if (value[i] == '$' && i + 1 < value.Length && value[i + 1] == '$' && i + 2 < value.Length && value[i + 2] == '{')
            {
                sb.Append("${");
                i += 2;
                continue;
            }
            if (value[i] == '$' && i + 1 < value.Length && value[i + 1] == '{')
            {
                var end = value.IndexOf('}', i + 2);
                if (end < 0)
                {
                    diagnostics.Add(node, "unterminated ${ in value");
                    return null;
                }
                var name = value[(i + 2)..end];
                var resolved = name.Length == 0 ? null : environment(name);
                if (resolved is null)
                {
                    diagnostics.Add(node, $"environment variable \"{name}\" is not set");
                    return null;
                }
                sb.Append(resolved);
                i = end;
                continue;
            }
            sb.Append(value[i]);
        }
        return sb.ToString();
    }
}
