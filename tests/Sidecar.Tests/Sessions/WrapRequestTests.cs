using Sidecar.Cli;
using Sidecar.Configuration;

namespace Sidecar.Tests.Sessions;

/// <summary>
/// <c>sidecar wrap</c>'s arguments turned into its one-server config: usage errors, the server's name, the transport
/// of <c>--upstream</c>, and the default audit file under <c>$XDG_STATE_HOME/sidecar/</c>. Every test runs with
/// <c>XDG_STATE_HOME</c> pointing into a temporary folder (restored after), so nothing is created in the home folder.
/// </summary>
public sealed class WrapRequestTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("sidecar-wrap-tests-").FullName;
    private readonly string? _savedStateHome = Environment.GetEnvironmentVariable("XDG_STATE_HOME");

    public WrapRequestTests() => Environment.SetEnvironmentVariable("XDG_STATE_HOME", StateHome);

    private string StateHome => Path.Combine(_folder, "state");

    private string PolicyFile => Path.Combine(_folder, "policy.json");

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("XDG_STATE_HOME", _savedStateHome);
        Directory.Delete(_folder, recursive: true);
    }

    private static WrapRequest Request(string? policy = null, string? upstream = null, string[]? headers = null, string? config = null,
        string? server = null, string? name = null, string? audit = null, string[]? command = null)
        => new(policy, upstream, headers ?? [], config, server, name, audit, command ?? []);

    private static string UsageError(WrapRequest request) => Assert.Throws<UsageException>(() => request.ToConfig()).Message;

    private const string OneUpstream = "give exactly one upstream: -- COMMAND [ARGS…], --upstream URL, or --config FILE --server NAME";

    [Fact]
    public void Exactly_one_upstream_mode_is_required()
    {
        Assert.Equal(OneUpstream, UsageError(Request(policy: PolicyFile)));
        Assert.Equal(OneUpstream, UsageError(Request(policy: PolicyFile, upstream: "http://127.0.0.1:9011/mcp", command: ["uvx", "mcp-server-fetch"])));
        Assert.Equal(OneUpstream, UsageError(Request(policy: PolicyFile, config: "sidecar.json", server: "a", command: ["uvx", "mcp-server-fetch"])));
        Assert.Equal(OneUpstream, UsageError(Request(policy: PolicyFile, config: "sidecar.json", server: "a", upstream: "http://127.0.0.1:9011/mcp")));
    }

    [Fact]
    public void A_header_without_upstream_is_refused()
    {
        Assert.Equal("--header goes with --upstream", UsageError(Request(policy: PolicyFile, headers: ["Authorization: Bearer x"], command: ["uvx", "mcp-server-fetch"])));
    }

    [Fact]
    public void A_header_must_be_name_colon_value()
    {
        Assert.Equal("--header must look like 'Name: value', not \"Authorization Bearer x…\"",
            UsageError(Request(policy: PolicyFile, upstream: "http://127.0.0.1:9011/mcp", headers: ["Authorization Bearer x"])));
    }

    [Fact]
    public void The_policy_is_required_without_config()
    {
        Assert.Equal("-c/--policy POLICY is required (a server without a policy would have every call denied)",
            UsageError(Request(command: ["uvx", "mcp-server-fetch"])));
        Assert.Equal("-c/--policy POLICY is required (a server without a policy would have every call denied)",
            UsageError(Request(upstream: "http://127.0.0.1:9011/mcp")));
    }

    [Fact]
    public void Server_goes_with_config_and_config_needs_server()
    {
        Assert.Equal("--server goes with --config", UsageError(Request(policy: PolicyFile, server: "a", command: ["uvx", "mcp-server-fetch"])));
        Assert.Equal("--config needs --server NAME (the server of the config to wrap)", UsageError(Request(config: "sidecar.json")));
    }

    [Theory]
    [InlineData("ftp://example.com/mcp")]
    [InlineData("not a url")]
    public void Upstream_must_be_an_http_url(string url)
        => Assert.Equal($"--upstream must be an http:// or https:// URL, not \"{url}\"", UsageError(Request(policy: PolicyFile, upstream: url)));

    [Theory]
    [InlineData(new[] { "npx", "-y", "@modelcontextprotocol/server-everything" }, "server-everything")]
    [InlineData(new[] { "npx", "-y", "@modelcontextprotocol/server-everything@2025.1.1" }, "server-everything")]
    [InlineData(new[] { "node", "/x/server-everything/dist/index.js", "stdio" }, "server-everything")]
    [InlineData(new[] { "uvx", "mcp-server-fetch" }, "mcp-server-fetch")]
    [InlineData(new[] { "python3", "-m", "weather.py" }, "weather")]
    [InlineData(new[] { "/usr/local/bin/my-server", "--port", "1" }, "my-server")]
    public void The_servers_name_comes_from_what_the_command_runs(string[] command, string name)
    {
        var config = Request(policy: PolicyFile, command: command).ToConfig();
        var server = Assert.Single(config.Servers);
        Assert.Equal(name, server.Name);
        Assert.Equal(UpstreamTransport.Stdio, server.Transport);
        Assert.Equal(command[0], server.Command);
        Assert.Equal(command[1..], server.Args);
        Assert.Equal(Path.GetFullPath(PolicyFile), server.PolicyPath);
        Assert.Equal(name, WrapRequest.NameOf(command));
    }

    [Fact]
    public void The_name_option_wins()
        => Assert.Equal("fetch", Assert.Single(Request(policy: PolicyFile, name: "fetch", command: ["uvx", "mcp-server-fetch"]).ToConfig().Servers).Name);

    [Theory]
    [InlineData("http://127.0.0.1:9011/sse", UpstreamTransport.Sse)]
    [InlineData("http://127.0.0.1:9011/sse/", UpstreamTransport.Sse)]
    [InlineData("http://127.0.0.1:9011/mcp", UpstreamTransport.StreamableHttp)]
    [InlineData("https://mcp.example.com/", UpstreamTransport.StreamableHttp)]
    public void Upstream_urls_ending_in_sse_use_the_legacy_SSE_transport(string url, UpstreamTransport transport)
    {
        var server = Assert.Single(Request(policy: PolicyFile, upstream: url, headers: ["Authorization: Bearer t0ken"]).ToConfig().Servers);
        Assert.Equal(transport, server.Transport);
        Assert.Equal(new Uri(url), server.Url);
        Assert.Equal("Bearer t0ken", server.Headers["authorization"]);
        Assert.Equal(new Uri(url).Host, server.Name);
    }

    [Fact]
    public void The_default_audit_file_is_under_XDG_STATE_HOME_and_its_folder_is_created()
    {
        var config = Request(policy: PolicyFile, command: ["uvx", "mcp-server-fetch"]).ToConfig();
        Assert.Equal(Path.Combine(StateHome, "sidecar", "wrap-mcp-server-fetch.jsonl"), config.Audit.File!.Path);
        Assert.True(Directory.Exists(Path.Combine(StateHome, "sidecar")));
        Assert.False(config.Audit.Stdout);
    }

    [Fact]
    public void Without_XDG_STATE_HOME_or_with_a_relative_one_the_audit_file_is_under_the_home_folder()
    {
        var home = Directory.CreateDirectory(Path.Combine(_folder, "home")).FullName;
        WithHome(home, () =>
        {
            foreach (var value in new[] { "relative/state", "", null })
            {
                Environment.SetEnvironmentVariable("XDG_STATE_HOME", value);
                Assert.Equal(Path.Combine(home, ".local", "state", "sidecar", "wrap-x.jsonl"), WrapRequest.DefaultAuditPath("x"));
            }
            Assert.True(Directory.Exists(Path.Combine(home, ".local", "state", "sidecar")));
        });
    }

    [Fact]
    public void Without_XDG_STATE_HOME_the_audit_file_is_under_HOME_even_before_HOME_exists()
    {
        var home = Path.Combine(_folder, "not-created-yet");
        WithHome(home, () =>
        {
            Environment.SetEnvironmentVariable("XDG_STATE_HOME", null);
            Assert.Equal(Path.Combine(home, ".local", "state", "sidecar", "wrap-x.jsonl"), WrapRequest.DefaultAuditPath("x"));
        });
    }

    /// <summary>Runs <paramref name="action"/> with HOME (what GetFolderPath(UserProfile) reads on Unix) set to <paramref name="home"/>.</summary>
    private static void WithHome(string home, Action action)
    {
        var saved = Environment.GetEnvironmentVariable("HOME");
        Environment.SetEnvironmentVariable("HOME", home);
        try
        {
            action();
        }
        finally
        {
            Environment.SetEnvironmentVariable("HOME", saved);
        }
    }

    [Fact]
    public void An_audit_option_names_the_file()
    {
        var file = Path.Combine(_folder, "mine.jsonl");
        var config = Request(policy: PolicyFile, audit: file, command: ["uvx", "mcp-server-fetch"]).ToConfig();
        Assert.Equal(file, config.Audit.File!.Path);
        Assert.False(Directory.Exists(Path.Combine(StateHome, "sidecar")));
    }

    [Fact]
    public void With_config_the_server_is_taken_from_the_file_and_the_policy_may_be_overridden()
    {
        var file = Path.Combine(_folder, "sidecar.json");
        File.WriteAllText(file, """{ "mcpServers": { "fetch": { "command": "uvx", "args": ["mcp-server-fetch"] }, "other": { "command": "x" } } }""");
        var config = Request(config: file, server: "fetch").ToConfig();
        var server = Assert.Single(config.Servers);
        Assert.Equal(("fetch", "uvx", (string?)null), (server.Name, server.Command, server.PolicyPath));
        Assert.Equal(Path.Combine(StateHome, "sidecar", "wrap-fetch.jsonl"), config.Audit.File!.Path);

        var overridden = Assert.Single(Request(config: file, server: "fetch", policy: PolicyFile, name: "renamed").ToConfig().Servers);
        Assert.Equal(("renamed", Path.GetFullPath(PolicyFile)), (overridden.Name, overridden.PolicyPath));

        Assert.Equal($"{file} has no server \"missing\" (it has: fetch, other)", UsageError(Request(config: file, server: "missing")));
    }
}
