using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Tests.Configuration;

/// <summary><c>identities</c> and <c>grants</c> in sidecar.json: what is read, and every mistake with its path.</summary>
public sealed class IdentitiesConfigReaderTests
{
    private const string Digest = "0b9c2625dc21ef05f6ad4ddf47c5f203837aa32c3f4f3e2f5a1c0e5a1b2c3d4e";

    private static (SidecarConfig? Config, string Errors) Read(string identitiesAndGrants)
    {
        var json = $$"""{ "mcpServers": { "everything": { "command": "node" }, "other": { "command": "node" } }, {{identitiesAndGrants}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, _ => null);
        return (config, string.Join("\n", diagnostics.Items));
    }

    [Fact]
    public void Keys_and_grants_are_read_with_their_policies_resolved()
    {
        var (config, errors) = Read($$"""
            "identities": { "apiKeys": { "ci-bot": { "sha256": "{{Digest.ToUpperInvariant()}}", "grant": "readonly" } } },
            "grants": { "readonly": { "policies": { "everything": "p/ro.json", "*": "p/default.json" } } }
            """);
        Assert.True(config is not null, errors);
        var key = Assert.Single(config.Identities!.ApiKeys);
        Assert.Equal("ci-bot", key.Name);
        Assert.Equal(Convert.FromHexString(Digest), key.Sha256);
        Assert.Equal("readonly", key.Grant);
        Assert.DoesNotContain(Digest, key.ToString(), StringComparison.OrdinalIgnoreCase);
        var grant = config.Grants["readonly"];
        Assert.Equal("/etc/sidecar/p/ro.json", grant.PolicyFor("everything"));
        Assert.Equal("/etc/sidecar/p/default.json", grant.PolicyFor("other"));
    }

    [Fact]
    public void Without_identities_every_agent_is_anonymous()
    {
        var (config, errors) = Read("\"policy\": \"p.json\"");
        Assert.True(config is not null, errors);
        Assert.Null(config.Identities);
        Assert.Empty(config.Grants);
        Assert.Equal(32, config.Limits.MaxSessionsPerIdentity);
    }

    [Theory]
    [InlineData("""{ "apiKeys": { "k": { "sha256": "abc", "grant": "g" } } }""", "$.identities.apiKeys.k.sha256", "must be 64 hex digits")]
    [InlineData("""{ "apiKeys": { "k": { "sha256": "SHA", "grant": "nope" } } }""", "$.identities.apiKeys.k.grant", "grant \"nope\", which \"grants\" does not define (grants: g)")]
    [InlineData("""{ "apiKeys": { "k": { "grant": "g" } } }""", "$.identities.apiKeys.k", "missing \"sha256\"")]
    [InlineData("""{ "apiKeys": { "k": { "sha256": "SHA", "grant": "g", "key": "x" } } }""", "$.identities.apiKeys.k.key", "unknown")]
    [InlineData("""{ "apiKeys": { "a": { "sha256": "SHA", "grant": "g" }, "b": { "sha256": "SHA", "grant": "g" } } }""", "$.identities.apiKeys.b", "same sha256 as API key \"a\"")]
    [InlineData("""{ }""", "$.identities", "names no identity")]
    [InlineData("""{ "jwt": { "issuer": "x", "audiences": ["sidecar"] } }""", "$.identities.jwt", "needs \"keys\" (a JWKS file, for RS256 and ES256) or \"hmacKey\"")]
    [InlineData("""{ "jwt": { "audiences": ["sidecar"], "hmacKey": "0123456789abcdef0123456789abcdef" } }""", "$.identities.jwt", "needs \"issuer\"")]
    [InlineData("""{ "jwt": { "issuer": "x", "hmacKey": "0123456789abcdef0123456789abcdef" } }""", "$.identities.jwt", "needs \"audiences\"")]
    [InlineData("""{ "jwt": { "issuer": "x", "audiences": ["a"], "hmacKey": "short" } }""", "$.identities.jwt.hmacKey", "at least 32 bytes")]
    [InlineData("""{ "jwt": { "issuer": "x", "audiences": ["a"], "keys": "no-such-jwks.json" } }""", "$.identities.jwt.keys", "no-such-jwks.json")]
    [InlineData("""{ "jwt": { "issuer": "x", "audiences": ["a"], "hmacKey": "0123456789abcdef0123456789abcdef", "defaultGrant": "nope" } }""", "$.identities.jwt.defaultGrant", "which \"grants\" does not define")]
    public void Mistakes_in_identities_are_errors_with_their_path(string identities, string path, string message)
    {
        var (config, errors) = Read($$"""
            "identities": {{identities.Replace("SHA", Digest, StringComparison.Ordinal)}},
            "grants": { "g": { "policies": { "*": "p.json" } } }
            """);
        Assert.Null(config);
        Assert.Contains(errors.Split('\n'), e => e.Contains(path, StringComparison.Ordinal) && e.Contains(message, StringComparison.Ordinal));
    }

    [Fact]
    public void A_grant_naming_a_server_that_does_not_exist_is_an_error()
    {
        var (config, errors) = Read("""
            "grants": { "g": { "policies": { "evrything": "p.json" } } }
            """);
        Assert.Null(config);
        Assert.Contains("$.grants.g.policies.evrything", errors, StringComparison.Ordinal);
        Assert.Contains("which mcpServers does not have", errors, StringComparison.Ordinal);
    }

    [Fact]
    public void A_malformed_jwks_file_is_an_error_with_its_line()
    {
        var folder = Path.Combine(Path.GetTempPath(), "sidecar-jwks-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(folder);
        try
        {
            File.WriteAllText(Path.Combine(folder, "jwks.json"), "{ \"keys\": [\n  { \"kty\": \"RSA\", }\n] }");
            var json = """{ "mcpServers": { "everything": { "command": "node" } }, "grants": { "g": { "policies": { "*": "p.json" } } }, "identities": { "jwt": { "issuer": "x", "audiences": ["a"], "keys": "jwks.json" } } }""";
            var diagnostics = new DiagnosticBag("sidecar.json");
            Assert.Null(SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), folder, diagnostics, _ => null));
            var error = Assert.Single(diagnostics.Items);
            Assert.Equal("$.identities.jwt.keys", error.Path);
            Assert.Contains("jwks.json:2:", error.Message, StringComparison.Ordinal);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
