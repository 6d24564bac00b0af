using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Cli;

/// <summary><c>sidecar reload</c> against a fake admin API: applied, unchanged, refused with every error, and the token.</summary>
public sealed class ReloadCommandTests : IAsyncLifetime
{
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

    [Theory]
    [InlineData("applied", "reload applied")]
    [InlineData("unchanged", "reload: nothing changed")]
    public async Task A_reload_the_gateway_accepts_prints_one_line(string result, string expected)
    {
        _api.Answer("POST", "/v1/reload", 200, $$"""{ "applied": true, "result": "{{result}}", "servers": 2 }""");
        var (exit, output, error) = await Run(["reload", .. _api.Args]);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal(expected + Environment.NewLine, output);
        var request = Assert.Single(_api.Requests);
        Assert.Equal("POST", request.Method);
        Assert.Equal("/v1/reload", request.Target);
        Assert.Equal("Bearer " + FakeAdminApi.Token, request.Authorization);
        Assert.Equal("", request.Body);
    }

    [Fact]
    public async Task A_refused_reload_prints_every_error_with_file_line_column_and_path()
    {
        _api.Answer("POST", "/v1/reload", 422, """
            { "applied": false, "errors": [
              { "file": "/etc/sidecar/policies/a.json", "line": 3, "column": 14, "path": "$.default", "message": "invalid default \"nope\"" },
              { "file": "/etc/sidecar/sidecar.json", "line": 7, "column": 5, "path": "$.admin.listen", "message": "a reload cannot change admin.listen" },
              { "message": "no file, no place" } ] }
            """);
        var (exit, output, error) = await Run(["reload", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.Equal(
            [
                "/etc/sidecar/policies/a.json:3:14: $.default: invalid default \"nope\"",
                "/etc/sidecar/sidecar.json:7:5: $.admin.listen: a reload cannot change admin.listen",
                "no file, no place",
                "reload refused: 3 errors; the gateway keeps its running config",
            ],
            error.Split(Environment.NewLine, StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public async Task A_422_without_errors_is_one_line_with_its_message()
    {
        _api.Answer("POST", "/v1/reload", 422, """{ "error": "the config file is gone" }""");
        var (exit, _, error) = await Run(["reload", .. _api.Args]);
        Assert.Equal(1, exit);
        Assert.Equal("the config file is gone (422)" + Environment.NewLine, error);
    }

    [Fact]
    public async Task A_wrong_token_is_refused_with_401()
    {
        var (exit, output, error) = await Run("reload", "--admin", _api.Url, "--token-env", FakeAdminApi.WrongTokenVariable);
        Assert.Equal(1, exit);
        Assert.Equal("", output);
        Assert.Equal("the admin API refused the token (401)" + Environment.NewLine, error);
    }

    [Fact]
    public async Task The_config_gives_the_url_and_the_token()
    {
        _api.Answer("POST", "/v1/reload", 200, """{ "applied": true, "result": "unchanged" }""");
        using var config = new ApprovalsCommandTests.TempConfig($$"""
            { "mcpServers": { "a": { "command": "x" } },
              "admin": { "listen": "127.0.0.1:{{_api.Port}}", "token": "${{{FakeAdminApi.TokenVariable}}}" } }
            """);
        var (exit, output, error) = await Run("reload", "-c", config.Path);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Equal("reload: nothing changed", output.Trim());
        Assert.Equal("Bearer " + FakeAdminApi.Token, Assert.Single(_api.Requests).Authorization);
    }

    [Fact]
    public async Task Help_names_every_option()
    {
        var (exit, output, _) = await Run("reload", "--help");
        Assert.Equal(0, exit);
        foreach (var option in new[] { "--admin <URL>", "--token-env <NAME>", "-c, --config <FILE>" })
        {
            Assert.Contains(option, output, StringComparison.Ordinal);
        }
    }
}
