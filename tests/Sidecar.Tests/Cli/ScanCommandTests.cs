using Sidecar.Cli;
using Sidecar.Configuration;

namespace Sidecar.Tests.Cli;

/// <summary>
/// <c>sidecar scan</c>'s command line: exactly one upstream, the options that go only with <c>--upstream</c>, the
/// transport (from <c>--transport</c> or the URL), headers, the server's name; usage errors are one line and exit 2.
/// </summary>
public class ScanCommandTests
{
    private static string UsageError(string? upstream = null, string[]? headers = null, string? transport = null, string[]? command = null)
        => Assert.Throws<UsageException>(() => ScanCommand.Parse(upstream, headers ?? [], transport, null, command ?? [])).Message;

    [Fact]
    public void Exactly_one_upstream_is_required()
    {
        const string one = "give exactly one upstream: -- COMMAND [ARGS…] or --upstream URL";
        Assert.Equal(one, UsageError());
        Assert.Equal(one, UsageError(upstream: "http://127.0.0.1:9011/mcp", command: ["uvx", "mcp-server-fetch"]));
    }

    [Fact]
    public void Headers_and_transport_go_only_with_upstream()
    {
        Assert.Equal("--header goes with --upstream", UsageError(headers: ["Authorization: Bearer x"], command: ["uvx", "mcp-server-fetch"]));
        Assert.Equal("--transport goes with --upstream", UsageError(transport: "sse", command: ["uvx", "mcp-server-fetch"]));
    }

    [Theory]
    [InlineData("ftp://127.0.0.1/mcp", null, "--upstream must be an http:// or https:// URL, not \"ftp://127.0.0.1/mcp\"")]
    [InlineData("not a url", null, "--upstream must be an http:// or https:// URL, not \"not a url\"")]
    [InlineData("http://127.0.0.1:9011/mcp", "websocket", "--transport must be sse or streamable-http, not \"websocket\"")]
    public void Bad_upstream_values_are_usage_errors(string upstream, string? transport, string message)
        => Assert.Equal(message, UsageError(upstream: upstream, transport: transport));

    [Fact]
    public void A_header_must_be_name_colon_value()
        => Assert.Equal("--header must look like 'Name: value', not \"Authorization Bearer x…\"",
            UsageError(upstream: "http://127.0.0.1:9011/mcp", headers: ["Authorization Bearer x"]));

    [Theory]
    [InlineData("http://127.0.0.1:9011/sse", null, UpstreamTransport.Sse)]
    [InlineData("http://127.0.0.1:9011/sse/", null, UpstreamTransport.Sse)]
    [InlineData("http://127.0.0.1:9011/mcp", null, UpstreamTransport.StreamableHttp)]
    [InlineData("http://127.0.0.1:9011/mcp", "sse", UpstreamTransport.Sse)]
    [InlineData("http://127.0.0.1:9011/sse", "streamable-http", UpstreamTransport.StreamableHttp)]
    public void The_transport_comes_from_the_option_else_from_the_url(string upstream, string? transport, UpstreamTransport expected)
    {
        var server = ScanCommand.Parse(upstream, ["Authorization: Bearer abc", "X-Team:  blue "], transport, null, []);
        Assert.Equal(expected, server.Transport);
        Assert.Equal(new Uri(upstream), server.Url);
        Assert.Equal("127.0.0.1", server.Name);
        Assert.Equal("Bearer abc", server.Headers["authorization"]);
        Assert.Equal("blue", server.Headers["X-Team"]);
        Assert.Null(server.PolicyPath);
    }

    [Fact]
    public void A_command_is_a_stdio_server_named_after_what_it_runs()
    {
        var server = ScanCommand.Parse(null, [], null, null, ["npx", "-y", "@modelcontextprotocol/server-everything", "stdio"]);
        Assert.Equal((UpstreamTransport.Stdio, "npx", "server-everything"), (server.Transport, server.Command, server.Name));
        Assert.Equal(["-y", "@modelcontextprotocol/server-everything", "stdio"], server.Args);
        Assert.Equal("fetcher", ScanCommand.Parse(null, [], null, "fetcher", ["uvx", "mcp-server-fetch"]).Name);
    }

    [Theory]
    [InlineData(new string[] { "scan" }, "sidecar scan: give exactly one upstream")]
    [InlineData(new string[] { "scan", "--transport", "sse", "--", "node", "x.js" }, "sidecar scan: --transport goes with --upstream")]
    [InlineData(new string[] { "scan", "--upstream", "ftp://x/mcp" }, "sidecar scan: --upstream must be")]
    public async Task Usage_errors_exit_2_with_one_line(string[] args, string message)
    {
        var (exit, output, error) = await CliTests.Run(args);
        Assert.Equal(2, exit);
        Assert.Equal("", output);
        Assert.StartsWith(message, error, StringComparison.Ordinal);
        Assert.Single(error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Theory]
    [InlineData("--bogus")]
    [InlineData("--upstrem", "http://127.0.0.1:9011/mcp")]
    public async Task An_unknown_option_is_a_usage_error_not_a_command_to_run(params string[] args)
    {
        var (exit, _, error) = await CliTests.Run(["scan", .. args]);
        Assert.Equal(2, exit);
        Assert.Equal($"sidecar scan: unknown option {args[0]} (the server's command goes after --)", error.Trim());
    }
}
