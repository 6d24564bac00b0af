using System.Net;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Identity;

/// <summary>
/// JWT identities through the real daemon: a token per algorithm (HS256 with the HMAC key; RS256 and ES256 against
/// a local JWKS file) opens a session under its grant; every bad token gets 401 and reaches nothing; a token without
/// a usable grant gets 403; the 401 names the RFC 9728 metadata, which is served.
/// </summary>
public sealed class JwtIdentityTests : IAsyncLifetime
{
    private const string Issuer = "https://auth.test";
    private const string Audience = "sidecar";
    private const string HmacKey = "an-hmac-key-of-at-least-32-bytes-0123456789";
    private static readonly RSA s_rsa = RSA.Create(2048);
    private static readonly ECDsa s_ec = ECDsa.Create(ECCurve.NamedCurves.nistP256);
    private readonly HttpClient _http = new() { Timeout = TimeSpan.FromSeconds(30) };
    private SidecarHost _sidecar = null!;

    public async Task InitializeAsync()
    {
        await McpServerFixtures.EnsureInstalledAsync();
        var rsa = JsonWebKeyConverter.ConvertFromRSASecurityKey(new RsaSecurityKey(s_rsa.ExportParameters(false)) { KeyId = "rsa-1" });
        var ec = JsonWebKeyConverter.ConvertFromECDsaSecurityKey(new ECDsaSecurityKey(ECDsa.Create(s_ec.ExportParameters(false))) { KeyId = "ec-1" });
        var jwks = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["keys"] = new object[]
            {
                new Dictionary<string, string> { ["kty"] = "RSA", ["kid"] = "rsa-1", ["use"] = "sig", ["alg"] = "RS256", ["n"] = rsa.N, ["e"] = rsa.E },
                new Dictionary<string, string> { ["kty"] = "EC", ["kid"] = "ec-1", ["use"] = "sig", ["alg"] = "ES256", ["crv"] = "P-256", ["x"] = ec.X, ["y"] = ec.Y },
            },
        });
        var config = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["mcpServers"] = new Dictionary<string, object>
            {
                ["everything"] = new Dictionary<string, object> { ["command"] = "node", ["args"] = new[] { McpServerFixtures.EverythingEntry, "stdio" } },
            },
            ["identities"] = new Dictionary<string, object>
            {
                ["jwt"] = new Dictionary<string, object>
                {
                    ["issuer"] = Issuer, ["audiences"] = new[] { Audience }, ["keys"] = "jwks.json", ["hmacKey"] = "${SIDECAR_IT_JWT_HMAC}",
                    ["clockSkew"] = "30s", ["authorizationServers"] = new[] { Issuer },
                },
            },
            ["grants"] = new Dictionary<string, object>
            {
                ["ops"] = new Dictionary<string, object> { ["policies"] = new Dictionary<string, string> { ["*"] = "ops.json" } },
            },
        });
        Environment.SetEnvironmentVariable("SIDECAR_IT_JWT_HMAC", HmacKey);
        _sidecar = await SidecarHost.StartAsync(config, new Dictionary<string, string>
        {
            ["jwks.json"] = jwks,
            ["ops.json"] = """{ "version": "1", "default": "deny", "tools": { "get-sum": {} } }""",
        });
    }

    public async Task DisposeAsync()
    {
        await _sidecar.DisposeAsync();
        _http.Dispose();
    }

    private static string Token(SigningCredentials credentials, Action<SecurityTokenDescriptor>? change = null, Dictionary<string, object>? claims = null)
    {
        var now = DateTime.UtcNow;
        var descriptor = new SecurityTokenDescriptor
        {
            Issuer = Issuer,
            Audience = Audience,
            Subject = new ClaimsIdentity([new Claim("sub", "agent-7")]),
            Claims = claims ?? new Dictionary<string, object> { ["sidecar_grant"] = "ops" },
            NotBefore = now.AddMinutes(-1),
            IssuedAt = now.AddMinutes(-1),
            Expires = now.AddMinutes(10),
            SigningCredentials = credentials,
        };
        change?.Invoke(descriptor);
        return new JsonWebTokenHandler().CreateToken(descriptor);
    }

    private static SigningCredentials Hs256 => new(new SymmetricSecurityKey(Encoding.UTF8.GetBytes(HmacKey)), SecurityAlgorithms.HmacSha256);

    private static SigningCredentials Rs256 => new(new RsaSecurityKey(s_rsa) { KeyId = "rsa-1" }, SecurityAlgorithms.RsaSha256);

    private static SigningCredentials Es256 => new(new ECDsaSecurityKey(s_ec) { KeyId = "ec-1" }, SecurityAlgorithms.EcdsaSha256);

    private Task<HttpResponseMessage> InitializeAsync(string token) => RawMcp.PostAsync(_http, _sidecar.McpUrl("everything"), RawMcp.InitializeBody, null,
        configure: r => r.Headers.TryAddWithoutValidation("Authorization", "Bearer " + token));

    public static TheoryData<string> Algorithms => ["HS256", "RS256", "ES256"];

    [Theory]
    [MemberData(nameof(Algorithms))]
    public async Task A_token_signed_with_each_algorithm_opens_a_session_under_its_grant(string algorithm)
    {
        var token = Token(algorithm switch { "HS256" => Hs256, "RS256" => Rs256, _ => Es256 });
        using var opened = await InitializeAsync(token);
        Assert.Equal(HttpStatusCode.OK, opened.StatusCode);
        var session = opened.Headers.GetValues("Mcp-Session-Id").Single();
        for (var i = 0; i < 2; i++) // the second time from the cache of validated tokens
        {
            using var call = await RawMcp.PostAsync(_http, _sidecar.McpUrl("everything"),
                """{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"get-sum","arguments":{"a":2,"b":3}}}""", session,
                configure: r => r.Headers.TryAddWithoutValidation("Authorization", "Bearer " + token));
            Assert.Equal(HttpStatusCode.OK, call.StatusCode);
            Assert.Contains("5", await call.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
    }

    public static TheoryData<string> BadTokens()
    {
        var other = RSA.Create(2048);
        var header = Base64UrlEncoder.Encode("""{"alg":"none","typ":"JWT"}""");
        var payload = Base64UrlEncoder.Encode($$"""{"iss":"{{Issuer}}","aud":"{{Audience}}","sub":"agent-7","sidecar_grant":"ops","exp":{{DateTimeOffset.UtcNow.AddMinutes(10).ToUnixTimeSeconds()}}}""");
        var valid = Token(Rs256).Split('.');
        var tampered = Base64UrlEncoder.Encode(Base64UrlEncoder.Decode(valid[1]).Replace("agent-7", "agent-8", StringComparison.Ordinal));
        return
        [
            Token(Hs256, d => { d.NotBefore = DateTime.UtcNow.AddMinutes(-20); d.IssuedAt = DateTime.UtcNow.AddMinutes(-20); d.Expires = DateTime.UtcNow.AddMinutes(-5); }), // expired
            Token(Hs256, d => d.NotBefore = DateTime.UtcNow.AddMinutes(5)), // not yet valid
            Token(Hs256, d => d.Issuer = "https://evil.test"),
            Token(Hs256, d => d.Audience = "someone-else"),
            $"{header}.{payload}.", // alg: none
            $"{valid[0]}.{tampered}.{valid[2]}", // payload edited after signing
            Token(new SigningCredentials(new RsaSecurityKey(other) { KeyId = "rsa-1" }, SecurityAlgorithms.RsaSha256)), // re-signed with another key
            Token(new SigningCredentials(new SymmetricSecurityKey(s_rsa.ExportSubjectPublicKeyInfo()) { KeyId = "rsa-1" }, SecurityAlgorithms.HmacSha256)), // key confusion
            Token(Hs256, claims: new Dictionary<string, object> { ["sidecar_grant"] = "ops", ["sub"] = "" }), // no identity
            "eyJhbGciOiJIUzI1NiJ9.bm90IGpzb24.c2ln", // not a token
        ];
    }

    [Theory]
    [MemberData(nameof(BadTokens))]
    public async Task Every_bad_token_gets_401_and_reaches_nothing(string token)
    {
        using var response = await InitializeAsync(token);
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        var challenge = response.Headers.WwwAuthenticate.ToString();
        Assert.StartsWith("Bearer", challenge, StringComparison.Ordinal);
        Assert.Contains("resource_metadata=\"http://", challenge, StringComparison.Ordinal);
        Assert.False(response.Headers.Contains("Mcp-Session-Id"));
        Assert.Equal(0, _sidecar.Gateway.Engine.SessionCount);
        Assert.DoesNotContain(token, await File.ReadAllTextAsync(_sidecar.AuditFile), StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_token_without_a_usable_grant_gets_403()
    {
        using (var none = await InitializeAsync(Token(Hs256, claims: new Dictionary<string, object> { ["team"] = "x" })))
        {
            Assert.Equal(HttpStatusCode.Forbidden, none.StatusCode);
            Assert.Contains("no_grant", await none.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }
        using var unknown = await InitializeAsync(Token(Hs256, claims: new Dictionary<string, object> { ["sidecar_grant"] = "admin" }));
        Assert.Equal(HttpStatusCode.Forbidden, unknown.StatusCode);
        Assert.Contains("unknown_grant", await unknown.Content.ReadAsStringAsync(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_protected_resource_metadata_names_the_authorization_server()
    {
        using var response = await _http.GetAsync(new Uri(_sidecar.BaseUrl, "/.well-known/oauth-protected-resource/servers/everything/mcp"));
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        var metadata = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(new Uri(_sidecar.BaseUrl, "/servers/everything/mcp").ToString(), metadata.GetProperty("resource").GetString());
        Assert.Equal([Issuer], metadata.GetProperty("authorization_servers").EnumerateArray().Select(e => e.GetString()));
    }
}
