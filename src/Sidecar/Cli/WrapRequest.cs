using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>A usage error of <c>sidecar wrap</c> (exit code 2, one line).</summary>
internal sealed class WrapUsageException(string message) : Exception(message);

/// <summary>What <c>sidecar wrap</c> was asked for, turned into the one-server config the session engine runs.</summary>
internal sealed record WrapRequest(string? Policy, string? Upstream, string[] Headers, string? Config, string? Server, string? Name, string? Audit, string[] Command)
{
    /// <summary>Launchers whose first non-option argument names the server better than they do (<c>npx -y @scope/server-x</c>).</summary>
    private static readonly string[] s_launchers = ["npx", "uvx", "node", "python", "python3", "deno", "bunx", "bun", "pnpm", "docker"];

    public SidecarConfig ToConfig()
    {
        var modes = (Command.Length > 0 ? 1 : 0) + (Upstream is not null ? 1 : 0) + (Config is not null ? 1 : 0);
        if (modes != 1)
        {
            throw new WrapUsageException("give exactly one upstream: -- COMMAND [ARGS…], --upstream URL, or --config FILE --server NAME");
        }
        if (Headers.Length > 0 && Upstream is null)
        {
            throw new WrapUsageException("--header goes with --upstream");
        }
        return Config is not null ? FromConfig() : FromArguments();
    }

    private SidecarConfig FromConfig()
    {
        if (Server is null)
        {
            throw new WrapUsageException("--config needs --server NAME (the server of the config to wrap)");
        }
        var config = SidecarConfigReader.LoadFile(Config!);
        var server = config.Servers.FirstOrDefault(s => s.Name == Server)
            ?? throw new WrapUsageException($"{Config} has no server \"{Server}\" (it has: {string.Join(", ", config.Servers.Select(s => s.Name))})");
        if (Policy is not null)
        {
            server = server with { PolicyPath = Path.GetFullPath(Policy) };
        }
        if (Name is not null)
        {
            server = server with { Name = Name };
        }
        var audit = config.Audit;
        if (Audit is not null)
        {
            audit = audit with { Enabled = true, File = FileAt(Audit), Stdout = false };
        }
        else if (ReferenceEquals(audit, AuditConfig.Default))
        {
            audit = audit with { File = FileAt(DefaultAuditPath(server.Name)) };
        }
        if (audit.Stdout)
        {
            throw new WrapUsageException($"{Config}: audit.stdout would mix audit events into the MCP messages on stdout; use a file or http sink with wrap");
        }
        // wrap serves no admin API (nobody could approve): a require_approval call is refused at once, as documented.
        return config with { Servers = [server], Audit = audit, Admin = null };
    }

    private SidecarConfig FromArguments()
    {
        if (Policy is null)
        {
            throw new WrapUsageException("-c/--policy POLICY is required (a server without a policy would have every call denied)");
        }
        if (Server is not null)
        {
            throw new WrapUsageException("--server goes with --config");
        }
        ServerConfig server;
        var policy = Path.GetFullPath(Policy);
        if (Upstream is not null)
        {
            if (!Uri.TryCreate(Upstream, UriKind.Absolute, out var url) || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps))
            {
                throw new WrapUsageException($"--upstream must be an http:// or https:// URL, not \"{Upstream}\"");
            }
            var transport = url.AbsolutePath.TrimEnd('/').EndsWith("/sse", StringComparison.Ordinal) ? UpstreamTransport.Sse : UpstreamTransport.StreamableHttp;
            server = new ServerConfig(Name ?? NameOf(url), default, transport, null, [], new Dictionary<string, string>(), null, url, ParseHeaders(), policy);
        }
        else
        {
            server = new ServerConfig(Name ?? NameOf(Command), default, UpstreamTransport.Stdio, Command[0], Command[1..], new Dictionary<string, string>(), null, null,
                new Dictionary<string, string>(), policy);
        }
        var audit = AuditConfig.Default with { File = FileAt(Audit ?? DefaultAuditPath(server.Name)) };
        return new SidecarConfig(null, SidecarConfig.DefaultListen, [server], policy, BlockedCallStyle.Error, GatewayLimits.Default, [], [], audit);
    }

    private Dictionary<string, string> ParseHeaders()
    {
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var header in Headers)
        {
            var colon = header.IndexOf(':');
            if (colon <= 0)
            {
                throw new WrapUsageException($"--header must look like 'Name: value', not \"{header.Split(':')[0]}…\"");
            }
            headers[header[..colon].Trim()] = header[(colon + 1)..].Trim();
        }
        return headers;
    }

    private static AuditFileConfig FileAt(string path) => new(Path.GetFullPath(path), AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles);

    /// <summary><c>$XDG_STATE_HOME/sidecar/wrap-NAME.jsonl</c>, else <c>~/.local/state/sidecar/wrap-NAME.jsonl</c>.</summary>
    internal static string DefaultAuditPath(string name)
    {
        var state = Environment.GetEnvironmentVariable("XDG_STATE_HOME");
        if (string.IsNullOrEmpty(state) || !Path.IsPathRooted(state))
        {
            var home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile, Environment.SpecialFolderOption.DoNotVerify);
            if (string.IsNullOrEmpty(home) || !Path.IsPathRooted(home))
            {
                throw new WrapUsageException("neither XDG_STATE_HOME nor HOME says where the audit file goes: set one, or give --audit FILE");
            }
            state = Path.Combine(home, ".local", "state");
        }
        var folder = Path.Combine(state, "sidecar");
        Directory.CreateDirectory(folder);
        return Path.Combine(folder, $"wrap-{name}.jsonl");
    }

    /// <summary>A server name from its command: the program, or for a launcher (npx, node, …) what it launches.</summary>
    internal static string NameOf(string[] command)
    {
        var program = Path.GetFileNameWithoutExtension(command[0]);
        if (Array.IndexOf(s_launchers, program) >= 0)
        {
            foreach (var argument in command.AsSpan(1))
            {
                if (!argument.StartsWith('-'))
                {
                    return Clean(argument);
                }
            }
        }
        return Clean(program);
    }

    private static string NameOf(Uri url) => Clean(url.Host);

    /// <summary>File names that say nothing about the server (<c>…/server-x/dist/index.js</c>): the folder above names it.</summary>
    private static readonly string[] s_generic = ["index", "main", "cli", "server", "dist", "build", "lib", "src", "bin", "out"];

    /// <summary>The last path segment, without a version (<c>@scope/server-x@1.2</c> → <c>server-x</c>) or extension, in [A-Za-z0-9._-].</summary>
    private static string Clean(string value)
    {
        var segments = value.Split('/', StringSplitOptions.RemoveEmptyEntries);
        var name = segments.Length == 0 ? value : segments[^1];
        for (var i = segments.Length - 1; i > 0 && Array.IndexOf(s_generic, Path.GetFileNameWithoutExtension(segments[i])) >= 0; i--)
        {
            name = segments[i - 1];
        }
        var at = name.IndexOf('@', 1);
        if (at > 0)
        {
            name = name[..at];
        }
        name = name.TrimStart('@');
        if (Path.GetExtension(name) is ".js" or ".cjs" or ".mjs" or ".py" or ".ts")
        {
            name = Path.GetFileNameWithoutExtension(name);
        }
        var chars = name.Select(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-' ? c : '-').ToArray();
        var clean = new string(chars).Trim('-', '.');
        return clean.Length == 0 ? "server" : clean;
    }
}
