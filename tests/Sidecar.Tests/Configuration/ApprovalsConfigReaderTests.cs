using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Tests.Configuration;

/// <summary><c>admin</c> and <c>approvals</c> in sidecar.json: what is read, and every mistake with its path.</summary>
public sealed class ApprovalsConfigReaderTests
{
    private static (SidecarConfig? Config, string Errors) Read(string fields, Func<string, string?>? environment = null)
    {
        var json = $$"""{ "mcpServers": { "everything": { "command": "node" } }, {{fields}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, environment ?? (_ => null));
        return (config, string.Join("\n", diagnostics.Items));
    }

    [Fact]
    public void Admin_and_approvals_are_read_with_the_token_from_the_environment()
    {
        var (config, errors) = Read("""
            "admin": { "listen": "127.0.0.1:9999", "token": "${ADMIN}" },
            "approvals": { "hold": "45s", "maxPending": 7,
              "webhook": { "url": "http://127.0.0.1:9000/approvals", "headers": { "X-Team": "${TEAM}" }, "hmacKey": "${HMAC}", "timeout": "2s" } }
            """, name => name switch { "ADMIN" => "an-admin-token-0123456789", "TEAM" => "ops", "HMAC" => "a-webhook-key-0123456789", _ => null });
        Assert.True(config is not null, errors);
        Assert.Equal("127.0.0.1:9999", config.Admin!.Listen);
        Assert.Equal("an-admin-token-0123456789", config.Admin.Token);
        Assert.DoesNotContain("0123456789", config.Admin.ToString(), StringComparison.Ordinal);
        Assert.Equal(TimeSpan.FromSeconds(45), config.Approvals.Hold);
        Assert.Equal(7, config.Approvals.MaxPending);
        var webhook = config.Approvals.Webhook!;
        Assert.Equal(new Uri("http://127.0.0.1:9000/approvals"), webhook.Url);
        Assert.Equal("ops", webhook.Headers["x-team"]);
        Assert.Equal("a-webhook-key-0123456789", webhook.HmacKey);
        Assert.Equal(TimeSpan.FromSeconds(2), webhook.Timeout);
        Assert.DoesNotContain("0123456789", webhook.ToString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Without_them_there_is_no_admin_api_and_calls_are_held_30_seconds()
    {
        var (config, errors) = Read("\"policy\": \"p.json\"");
        Assert.True(config is not null, errors);
        Assert.Null(config.Admin);
        Assert.Equal(TimeSpan.FromSeconds(30), config.Approvals.Hold);
        Assert.Equal(1000, config.Approvals.MaxPending);
        Assert.Null(config.Approvals.Webhook);
    }

    [Fact]
    public void The_admin_listener_defaults_to_loopback_8788_and_a_zero_hold_answers_at_once()
    {
        var (config, errors) = Read("""
            "admin": { "token": "an-admin-token-0123456789" }, "approvals": { "hold": "0s" }
            """);
        Assert.True(config is not null, errors);
        Assert.Equal("127.0.0.1:8788", config.Admin!.Listen);
        Assert.Equal(TimeSpan.Zero, config.Approvals.Hold);
    }

    [Theory]
    [InlineData("""{ "listen": "127.0.0.1:9999" }""", "$.admin", "needs a \"token\"")]
    [InlineData("""{ "token": "short" }""", "$.admin.token", "at least 16 bytes")]
    [InlineData("""{ "token": "${MISSING}" }""", "$.admin.token", "environment variable \"MISSING\" is not set")]
    [InlineData("""{ "token": "an-admin-token-0123456789", "listen": "127.0.0.1:8787" }""", "$.admin.listen", "the agent listener's address")]
    [InlineData("""{ "token": "an-admin-token-0123456789", "listen": "localhost:8787" }""", "$.admin.listen", "the agent listener's address")]
    [InlineData("""{ "token": "an-admin-token-0123456789", "listen": "nowhere" }""", "$.admin.listen", "invalid admin listen address")]
    [InlineData("""{ "token": "an-admin-token-0123456789", "port": 1 }""", "$.admin.port", "unknown field")]
    [InlineData("\"on\"", "$.admin", "must be an object")]
    public void Admin_mistakes_are_reported_with_their_path(string admin, string path, string message)
    {
        var (config, errors) = Read($"\"admin\": {admin}");
        Assert.Null(config);
        Assert.Contains(path, errors, StringComparison.Ordinal);
        Assert.Contains(message, errors, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("""{ "hold": "forever" }""", "$.approvals.hold", "invalid hold")]
    [InlineData("""{ "hold": "11m" }""", "$.approvals.hold", "invalid hold")]
    [InlineData("""{ "maxPending": 0 }""", "$.approvals.maxPending", "invalid maxPending")]
    [InlineData("""{ "webhook": { } }""", "$.approvals.webhook", "needs a \"url\"")]
    [InlineData("""{ "webhook": { "url": "ftp://x/y" } }""", "$.approvals.webhook.url", "http:// or https://")]
    [InlineData("""{ "webhook": { "url": "http://127.0.0.1/", "hmacKey": "short" } }""", "$.approvals.webhook.hmacKey", "at least 16 bytes")]
    [InlineData("""{ "webhook": { "url": "http://127.0.0.1/", "retries": 3 } }""", "$.approvals.webhook.retries", "unknown field")]
    [InlineData("""{ "holdd": "30s" }""", "$.approvals.holdd", "unknown field")]
    public void Approvals_mistakes_are_reported_with_their_path(string approvals, string path, string message)
    {
        var (config, errors) = Read($"\"approvals\": {approvals}");
        Assert.Null(config);
        Assert.Contains(path, errors, StringComparison.Ordinal);
        Assert.Contains(message, errors, StringComparison.Ordinal);
    }
}
