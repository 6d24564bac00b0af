using System.Security.Cryptography;
using System.Text;
using BenchmarkDotNet.Attributes;
using Sidecar.Configuration;
using Sidecar.Identity;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="IdentityResolver.Resolve"/> for an API key: the bearer token hashed (SHA-256) and compared in constant
/// time with the stored digest it finds. The cost a request pays for identities, by number of keys.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class IdentityBenchmarks
{
    private IdentityResolver _resolver = null!;
    private string?[] _header = null!;

    [Params(2, 100)]
    public int Keys { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        var keys = new List<ApiKeyConfig>();
        for (var i = 0; i < Keys; i++)
        {
            keys.Add(new ApiKeyConfig($"agent-{i}", SHA256.HashData(Encoding.UTF8.GetBytes($"sk-live-{i:D4}-8f3a1c9e7b2d4f60")), "ops", default));
        }
        SetupJwt(keys);
        _header = [$"Bearer sk-live-{Keys - 1:D4}-8f3a1c9e7b2d4f60"];
    }

    [Benchmark(Description = "API key: SHA-256 of the token + one digest lookup, compared in constant time")]
    public Caller ApiKey()
    {
        _resolver.Resolve(_header, out var caller);
        return caller;
    }

    [Benchmark(Description = "JWT (HS256), already validated: one cache lookup")]
    public Caller CachedJwt()
    {
        _resolver.Resolve(_jwtHeader, out var caller);
        return caller;
    }

    [Benchmark(Description = "JWT (HS256), first seen: full validation")]
    public Caller FreshJwt()
    {
        _fresh.ClearJwtCache(); // so that this one is validated in full
        _fresh.Resolve(_jwtHeader, out var caller);
        return caller;
    }

    private string?[] _jwtHeader = null!;
    private IdentityResolver _fresh = null!;
    private IdentitiesConfig _identities = null!;
    private Dictionary<string, GrantConfig> _grants = null!;

    private const string HmacKey = "an-hmac-key-of-at-least-32-bytes-0123456789";

    private void SetupJwt(List<ApiKeyConfig> keys)
    {
        _grants = new Dictionary<string, GrantConfig> { ["ops"] = new("ops", new Dictionary<string, string>()) };
        _identities = new IdentitiesConfig(keys)
        {
            Jwt = new JwtConfig("https://auth.test", ["sidecar"], null, [], HmacKey, "sub", "sidecar_grant", null, TimeSpan.FromSeconds(60), []),
        };
        _resolver = new IdentityResolver(_identities, _grants);
        _fresh = new IdentityResolver(_identities, _grants);
        var token = new Microsoft.IdentityModel.JsonWebTokens.JsonWebTokenHandler().CreateToken(new Microsoft.IdentityModel.Tokens.SecurityTokenDescriptor
        {
            Issuer = "https://auth.test",
            Audience = "sidecar",
            Claims = new Dictionary<string, object> { ["sub"] = "agent-1", ["sidecar_grant"] = "ops" },
            Expires = DateTime.UtcNow.AddHours(2),
            SigningCredentials = new Microsoft.IdentityModel.Tokens.SigningCredentials(
                new Microsoft.IdentityModel.Tokens.SymmetricSecurityKey(Encoding.UTF8.GetBytes(HmacKey)), "HS256"),
        });
        _jwtHeader = ["Bearer " + token];
        if (_resolver.Resolve(_jwtHeader, out _) != AuthStatus.Authenticated)
        {
            throw new InvalidOperationException("the benchmark's token does not validate");
        }
    }
}
