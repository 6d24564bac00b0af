using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Sidecar.Cli;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Cli;

/// <summary><c>sidecar approvals list|approve|deny</c> against a fake admin API: outputs, requests, refusals and exit codes.</summary>
public sealed class ApprovalsCommandTests : IAsyncLifetime
{
    private const string Pending = """
        { "approvals": [
          { "id": "ap-1", "server": "everything", "tool": "drop_flow", "identity": "ci-bot", "grant": "ops",
            "arguments": { "flow": "f-1", "note": "x" }, "argumentsSha256": "9f86", "createdAt": "2026-01-01T10:00:00Z",
            "expiresAt": "2026-01-01T10:00:30Z", "status": "pending" },
          { "id": "ap-22", "server": "mitm", "tool": "set_option", "identity": null, "grant": null,
            "arguments": { "value": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" },
            "argumentsSha256": "2c26", "createdAt": "2026-01-01T10:00:05Z", "expiresAt": "2026-01-01T10:00:35Z", "status": "pending" }
        ] }
        """;

    private const string Approved = """
        { "id": "ap-1", "server": "everything", "tool": "drop_flow", "identity": "ci-bot", "grant": "ops", "arguments": {},
          "argumentsSha256": "9f86", "createdAt": "2026-01-01T10:00:00Z", "expiresAt": "2026-01-01T10:00:30Z",
          "status": "approved", "decidedAt": "2026-01-01T10:00:10Z", "decidedBy": "alice", "reason": "planned" }
        """;

    private FakeAdminApi _api = null!;

    public async Task InitializeAsync() => _api = await FakeAdminApi.StartAsync();

    public async Task DisposeAsync() => await _api.DisposeAsync();

    private async Task<(int Exit, string Out, string Err)> Run(params string[] args)
    {
        var result = await CliTests.Run(args);
        Assert.DoesNotContain(FakeAdminApi.Token, result.Out + result.Err, StringComparison.Ordinal);
        Assert.DoesNotContain(FakeAdminApi.WrongToken, result.Out + result.Err, StringComparison.Ordinal);
        return result;
    }

    [Fact]
    public async Task List_prints_one_line_per_approval_with_its_arguments_cut()
    {
        _api.Answer("GET", "/v1/approvals", 200, Pending);
        var (exit, output, error) = await Run(["approvals", "list", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal(
            "ap-1   pending  everything/drop_flow  ci-bot (ops)  expires 2026-01-01T10:00:30Z  {\"flow\":\"f-1\",\"note\":\"x\"}\n"
            + "ap-22  pending  mitm/set_option       -             expires 2026-01-01T10:00:35Z  {\"value\":\"" + new string('a', 69) + "…\n",
            output.ReplaceLineEndings("\n"));
        var request = Assert.Single(_api.Requests);
        Assert.Equal("GET", request.Method);
        Assert.Equal("/v1/approvals", request.Target);
        Assert.Equal("Bearer " + FakeAdminApi.Token, request.Authorization);
    }

    [Fact]
    public async Task List_all_asks_for_every_status_and_shows_who_decided()
    {
        _api.Answer("GET", "/v1/approvals?status=all", 200, $$"""{ "approvals": [ {{Approved}} ] }""");
        var (exit, output, _) = await Run(["approvals", "list", "--all", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("ap-1  approved  everything/drop_flow  ci-bot (ops)  decided 2026-01-01T10:00:10Z by alice  {}", output.TrimEnd());
    }

    [Fact]
    public async Task List_as_json_prints_the_api_answer_as_is()
    {
        _api.Answer("GET", "/v1/approvals?status=all", 200, Pending);
        var (exit, output, error) = await Run(["approvals", "list", "--all", "--format", "json", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal(Pending + Environment.NewLine, output);
    }

    [Fact]
    public async Task An_empty_list_says_so()
    {
        _api.Answer("GET", "/v1/approvals", 200, """{ "approvals": [] }""");
        var (exit, output, _) = await Run(["approvals", "list", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("no pending approvals", output.Trim());
    }

    [Fact]
    public async Task Text_from_the_api_cannot_send_escape_sequences_to_the_terminal()
    {
        _api.Answer("GET", "/v1/approvals", 200, """
            { "approvals": [ { "id": "ap-3", "server": "s", "tool": "t\u001b[2J", "identity": "i\u009b", "arguments": { "k": "\u001b]0;x\u0007" },
              "expiresAt": "2026-01-01T10:00:30Z", "status": "pending" } ] }
            """);
        var (exit, output, _) = await Run(["approvals", "list", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.DoesNotContain('\u001b', output);
        Assert.DoesNotContain('\u009b', output);
        Assert.Contains("s/t\\u001b[2J  i\\u009b  ", output, StringComparison.Ordinal);
    }

    [Fact]
    public async Task An_answer_that_is_not_an_approvals_list_is_one_line()
    {
        _api.Answer("GET", "/v1/approvals", 200, """{ "pending": 3 }""");
        var (exit, output, error) = await Run(["approvals", "list", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.Equal("the admin API's answer is not an approvals list: expected an object with an \"approvals\" array", error.TrimEnd());
    }

    [Fact]
    public async Task Approve_sends_the_reason_and_who_decides_and_prints_one_line()
    {
        _api.Answer("POST", "/v1/approvals/ap-1/approve", 200, Approved);
        var (exit, output, error) = await Run(["approvals", "approve", "ap-1", "--reason", "planned", "--by", "alice", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal("approved ap-1 (everything/drop_flow for ci-bot)" + Environment.NewLine, output);
        var request = Assert.Single(_api.Requests);
        Assert.Equal("POST", request.Method);
        Assert.Equal("/v1/approvals/ap-1/approve", request.Target);
        Assert.Equal("Bearer " + FakeAdminApi.Token, request.Authorization);
        Assert.Equal("application/json", request.ContentType);
        using var body = JsonDocument.Parse(request.Body);
        Assert.Equal("planned", body.RootElement.GetProperty("reason").GetString());
        Assert.Equal("alice", body.RootElement.GetProperty("by").GetString());
    }

    [Fact]
    public async Task Deny_without_by_sends_the_os_user_name_and_no_reason()
    {
        _api.Answer("POST", "/v1/approvals/ap-1/deny", 200, Approved.Replace("\"approved\"", "\"denied\"", StringComparison.Ordinal));
        var (exit, output, _) = await Run(["approvals", "deny", "ap-1", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("denied ap-1 (everything/drop_flow for ci-bot)", output.TrimEnd());
        using var body = JsonDocument.Parse(Assert.Single(_api.Requests).Body);
        Assert.False(body.RootElement.TryGetProperty("reason", out _));
        if (Environment.UserName.Length > 0)
        {
            Assert.Equal(Environment.UserName, body.RootElement.GetProperty("by").GetString());
        }
    }

    [Fact]
    public async Task An_id_is_escaped_into_the_path()
    {
        _api.Answer("POST", "/v1/approvals/a%20b/approve", 404, """{ "error": "no approval \"a b\"" }""");
        var (exit, _, error) = await Run(["approvals", "approve", "a b", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("/v1/approvals/a%20b/approve", Assert.Single(_api.Requests).Target);
        Assert.Equal("no approval \"a b\" (404)", error.TrimEnd());
    }

    [Theory]
    [InlineData("approve", 404, "no approval ap-9")]
    [InlineData("deny", 409, "approval ap-9 is already approved")]
    [InlineData("approve", 409, "approval ap-9 expired")]
    public async Task A_refusal_prints_the_api_message_and_exits_1(string verb, int status, string message)
    {
        _api.Answer("POST", $"/v1/approvals/ap-9/{verb}", status, $$"""{ "error": "{{message}}" }""");
        var (exit, output, error) = await Run(["approvals", verb, "ap-9", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.Equal($"{message} ({status}){Environment.NewLine}", error);
    }

    [Fact]
    public async Task A_refusal_without_a_json_message_names_the_status()
    {
        _api.Answer("POST", "/v1/approvals/ap-9/approve", 404, "");
        var (exit, _, error) = await Run(["approvals", "approve", "ap-9", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("the admin API answered 404 Not Found", error.TrimEnd());
    }

    [Fact]
    public async Task A_wrong_token_is_refused_with_401_in_one_line()
    {
        _api.Answer("GET", "/v1/approvals", 200, Pending);
        var (exit, output, error) = await Run("approvals", "list", "--admin", _api.Url, "--token-env", FakeAdminApi.WrongTokenVariable);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.Equal("the admin API refused the token (401)" + Environment.NewLine, error);
        Assert.Equal("Bearer " + FakeAdminApi.WrongToken, Assert.Single(_api.Requests).Authorization);
    }

    [Fact]
    public async Task An_unreachable_api_is_one_line_and_exit_1()
    {
        var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var port = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop(); // nothing listens there now

        var (exit, output, error) = await Run("approvals", "list", "--admin", $"http://127.0.0.1:{port}", "--token-env", FakeAdminApi.TokenVariable);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        var line = Assert.Single(error.Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"cannot reach the admin API at http://127.0.0.1:{port}: ", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_config_gives_the_url_and_the_token()
    {
        _api.Answer("GET", "/v1/approvals", 200, """{ "approvals": [] }""");
        // 0.0.0.0 is listened on, and reached on 127.0.0.1.
        using var config = new TempConfig($$"""
            { "mcpServers": { "a": { "command": "x" } },
              "admin": { "listen": "0.0.0.0:{{_api.Port}}", "token": "${{{FakeAdminApi.TokenVariable}}}" } }
            """);
        var (exit, output, error) = await Run("approvals", "list", "--config", config.Path);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal("no pending approvals", output.Trim());
        Assert.Equal("Bearer " + FakeAdminApi.Token, Assert.Single(_api.Requests).Authorization);
    }

    [Fact]
    public async Task Token_env_wins_over_the_config_token_and_the_config_needs_not_resolve_it()
    {
        _api.Answer("GET", "/v1/approvals", 200, """{ "approvals": [] }""");
        var unset = "SIDECAR_TEST_UNSET_" + Guid.NewGuid().ToString("N");
        using var config = new TempConfig($$"""
            { "mcpServers": { "a": { "command": "x", "headers": { "Authorization": "${{{unset}}}" } } },
              "admin": { "listen": "127.0.0.1:{{_api.Port}}", "token": "${{{unset}}}" } }
            """);
        var (exit, _, error) = await Run("approvals", "list", "--config", config.Path, "--token-env", FakeAdminApi.TokenVariable);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal("Bearer " + FakeAdminApi.Token, Assert.Single(_api.Requests).Authorization);
    }

    [Fact]
    public async Task A_config_token_whose_variable_is_unset_is_a_config_error()
    {
        var unset = "SIDECAR_TEST_UNSET_" + Guid.NewGuid().ToString("N");
        using var config = new TempConfig($$"""
            { "mcpServers": { "a": { "command": "x" } },
              "admin": { "listen": "127.0.0.1:{{_api.Port}}",
                         "token": "${{{unset}}}" } }
            """);
        var (exit, _, error) = await Run("approvals", "list", "--config", config.Path);
        Assert.Equal(2, exit);
        Assert.Equal($"{config.Path}:3:23: $.admin.token: environment variable \"{unset}\" is not set", error.TrimEnd());
        Assert.Empty(_api.Requests);
    }

    [Fact]
    public async Task A_config_without_admin_says_the_admin_api_is_off()
    {
        using var config = new TempConfig("""{ "mcpServers": { "a": { "command": "x" } } }""");
        var (exit, _, error) = await Run("approvals", "list", "--config", config.Path, "--token-env", FakeAdminApi.TokenVariable);
        Assert.Equal(2, exit);
        var line = Assert.Single(error.Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith($"{config.Path}: no \"admin\" section, so the gateway runs no admin API", line, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_bad_url_and_an_unset_token_variable_are_usage_errors()
    {
        var (exit, _, error) = await Run("approvals", "list", "--admin", "127.0.0.1:8788", "--token-env", FakeAdminApi.TokenVariable);
        Assert.Equal(2, exit);
        Assert.StartsWith("--admin: \"127.0.0.1:8788\" is not an http:// or https:// URL", error, StringComparison.Ordinal);

        var unset = "SIDECAR_TEST_UNSET_" + Guid.NewGuid().ToString("N");
        (exit, _, error) = await Run("approvals", "approve", "ap-1", "--admin", _api.Url, "--token-env", unset);
        Assert.Equal(2, exit);
        Assert.Equal($"--token-env: environment variable {unset} is not set", error.TrimEnd());
        Assert.Empty(_api.Requests);
    }

    [Fact]
    public async Task A_missing_id_is_a_usage_error()
    {
        var (exit, _, error) = await Run(["approvals", "approve", .. _api.Args]);
        Assert.Equal(2, exit);
        Assert.Contains("'id'", error, StringComparison.Ordinal);
        Assert.Empty(_api.Requests);
    }

    [Fact]
    public async Task Every_command_and_option_has_help()
    {
        foreach (var verb in new[] { "list", "approve", "deny" })
        {
            var (exit, output, _) = await Run("approvals", verb, "--help");
            Assert.Equal(0, exit);
            foreach (var option in new[] { "--admin <URL>", "--token-env <NAME>", "--config <FILE>" })
            {
                Assert.Contains(option, output, StringComparison.Ordinal);
            }
            Assert.Contains(verb == "list" ? "--format <json|text>" : "--reason <TEXT>", output, StringComparison.Ordinal);
        }
    }

    [Theory]
    [InlineData(null, null, null, "no admin API address: give --admin URL")]
    [InlineData("http://127.0.0.1:8788", null, null, "no admin token: set SIDECAR_ADMIN_TOKEN")]
    [InlineData("http://127.0.0.1:8788", "T", null, "--token-env: environment variable T is not set")]
    [InlineData("http://127.0.0.1:8788", null, "bad token", "the admin token has characters a header cannot carry")]
    public void Missing_or_unusable_url_or_token_is_one_line(string? admin, string? tokenEnv, string? defaultToken, string expected)
    {
        var error = new StringWriter();
        Func<string, string?> environment = name => name == AdminClient.DefaultTokenVariable ? defaultToken : null;
        Assert.False(AdminClient.TryResolve(admin, tokenEnv, null, environment, error, out _, out _));
        var line = Assert.Single(error.ToString().Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith(expected, line, StringComparison.Ordinal);
    }

    [Fact]
    public void The_default_token_variable_and_sidecar_config_are_used_when_nothing_else_is_given()
    {
        using var config = new TempConfig("""
            { "mcpServers": { "a": { "command": "x" } }, "admin": { "listen": "[::]:9999", "token": "${CONFIG_TOKEN}" } }
            """);
        var variables = new Dictionary<string, string>
        {
            [AdminClient.ConfigVariable] = config.Path,
            ["CONFIG_TOKEN"] = "token-from-the-config",
            [AdminClient.DefaultTokenVariable] = "token-from-the-default-variable",
        };
        var error = new StringWriter();
        Assert.True(AdminClient.TryResolve(null, null, null, variables.GetValueOrDefault, error, out var url, out var token));
        Assert.Equal("http://[::1]:9999/", url.AbsoluteUri);
        Assert.Equal("token-from-the-config", token); // the config's token before $SIDECAR_ADMIN_TOKEN

        Assert.True(AdminClient.TryResolve("http://gateway.internal:8788/admin", null, "/nonexistent.json", variables.GetValueOrDefault, error, out url, out token)
            is false); // a config that was asked for must be readable
        Assert.True(AdminClient.TryResolve("http://gateway.internal:8788/admin", null, null, name => name == AdminClient.DefaultTokenVariable ? "t0123456789abcdef" : null,
            error, out url, out token));
        Assert.Equal("http://gateway.internal:8788/admin/", url.AbsoluteUri);
        Assert.Equal("t0123456789abcdef", token);
    }

    [Theory]
    [InlineData("127.0.0.1:8788", "http://127.0.0.1:8788/")]
    [InlineData("0.0.0.0:8788", "http://127.0.0.1:8788/")]
    [InlineData("[::]:8788", "http://[::1]:8788/")]
    [InlineData("::1:8788", "http://[::1]:8788/")]
    [InlineData("[fe80::1]:8788", "http://[fe80::1]:8788/")]
    [InlineData("localhost:8788", "http://localhost:8788/")]
    [InlineData("127.0.0.1:0", null)]
    public void Listen_addresses_become_urls_to_connect_to(string listen, string? expected)
    {
        Assert.Equal(expected is not null, AdminClient.TryListenUrl(listen, out var url));
        Assert.Equal(expected, url?.AbsoluteUri);
    }

    /// <summary>A sidecar.json in a folder of its own, deleted with it.</summary>
    internal sealed class TempConfig : IDisposable
    {
        private readonly string _folder = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "sidecar-admin-cli-" + Guid.NewGuid().ToString("N"));

        public TempConfig(string json)
        {
            Directory.CreateDirectory(_folder);
            File.WriteAllText(Path, json);
        }

        public string Path => System.IO.Path.Combine(_folder, "sidecar.json");

        public void Dispose() => Directory.Delete(_folder, recursive: true);
    }
}
