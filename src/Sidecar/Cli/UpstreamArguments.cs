using Sidecar.Configuration;

namespace Sidecar.Cli;

/// <summary>A usage error of a command line (<c>sidecar wrap</c>, <c>sidecar scan</c>): exit code 2, one line.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>
/// An upstream named on the command line, as <c>sidecar wrap</c> and <c>sidecar scan</c> take it: <c>-- COMMAND
/// [ARGS…]</c> (a stdio server to run), or <c>--upstream URL [--header 'Name: value']… [--transport
/// sse|streamable-http]</c> (a remote server; without <c>--transport</c> a URL ending in <c>/sse</c> means legacy SSE,
/// anything else Streamable HTTP, as in the config file). One place for both commands' rules and messages.
/// </summary>
internal sealed record UpstreamArguments(string? Upstream, string[] Headers, string? Transport, string? Name, string[] Command)
{
    /// <summary>Launchers whose first non-option argument names the server better than they do (<c>npx -y @scope/server-x</c>).</summary>
    private static readonly string[] s_launchers = ["npx", "uvx", "node", "python", "python3", "deno", "bunx", "bun", "pnpm", "docker"];

    /// <summary>File names that say nothing about the server (<c>…/server-x/dist/index.js</c>): the folder above names it.</summary>
    private static readonly string[] s_generic = ["index", "main", "cli", "server", "dist", "build", "lib", "src", "bin", "out"];

    /// <summary>How many upstreams the arguments name: a command, a URL, both (0, 1 or 2).</summary>
    public int Count => (Command.Length > 0 ? 1 : 0) + (Upstream is not null ? 1 : 0);

    /// <summary>
    /// The options that only go with <c>--upstream</c> are refused without it, and so is a command that starts with
    /// <c>-</c>: System.CommandLine hands an unknown option (a typo such as <c>--upstrem</c>) to the command argument,
    /// and running it would fail with a message about the wrong thing.
    /// </summary>
    public void Check()
    {
        if (Command.Length > 0 && Command[0].StartsWith('-'))
        {
            throw new UsageException($"unknown option {Command[0]} (the server's command goes after --)");
        }
        if (Headers.Length > 0 && Upstream is null)
        {
            throw new UsageException("--header goes with --upstream");
        }
        if (Transport is not null && Upstream is null)
        {
            throw new UsageException("--transport goes with --upstream");
        }
    }

    /// <summary>The server the arguments name (exactly one upstream: see <see cref="Count"/>), with <paramref name="policy"/> as its policy.</summary>
    public ServerConfig ToServer(string? policy)
    {
        Check();
        if (Upstream is not null)
        {
            if (!Uri.TryCreate(Upstream, UriKind.Absolute, out var url) || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps))
            {
                throw new UsageException($"--upstream must be an http:// or https:// URL, not \"{Upstream}\"");
            }
            var transport = Transport switch
            {
                null => url.AbsolutePath.TrimEnd('/').EndsWith("/sse", StringComparison.Ordinal) ? UpstreamTransport.Sse : UpstreamTransport.StreamableHttp,
                "sse" => UpstreamTransport.Sse,
                "streamable-http" => UpstreamTransport.StreamableHttp,
                _ => throw new UsageException($"--transport must be sse or streamable-http, not \"{Transport}\""),
            };
            return new ServerConfig(Name ?? NameOf(url), default, transport, null, [], new Dictionary<string, string>(), null, url, ParseHeaders(), policy);
        }
        return new ServerConfig(Name ?? NameOf(Command), default, UpstreamTransport.Stdio, Command[0], Command[1..], new Dictionary<string, string>(), null, null,
            new Dictionary<string, string>(), policy);
    }

    private Dictionary<string, string> ParseHeaders()
    {
        var headers = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        foreach (var header in Headers)
        {
            var colon = header.IndexOf(':');
            if (colon <= 0)
            {
                throw new UsageException($"--header must look like 'Name: value', not \"{header.Split(':')[0]}…\"");
            }
            headers[header[..colon].Trim()] = header[(colon + 1)..].Trim();
        }
        return headers;
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
