using System.Collections.Concurrent;
using System.Text;
using Microsoft.IdentityModel.JsonWebTokens;
using Microsoft.IdentityModel.Tokens;
using Sidecar.Configuration;

namespace Sidecar.Identity;

/// <summary>
/// Validates bearer JWTs with Microsoft.IdentityModel (a well-kept validator, NativeAOT-clean): the signature with the
/// JWKS keys (RS256, ES256) or the HMAC key (HS256), only those algorithms (so <c>alg: none</c> and algorithm
/// confusion are refused: an RSA key is never used as an HMAC secret), <c>iss</c>, <c>aud</c>, <c>exp</c> and
/// <c>nbf</c> within <c>clockSkew</c>. A token that validated is cached until it expires, so an agent's repeated
/// calls cost one lookup, not a signature check each.
/// </summary>
internal sealed class JwtValidator
{
    /// <summary>Validated tokens kept at most; past it the cache is emptied (tokens validate again).</summary>
    public const int MaxCached = 10_000;

    private readonly JsonWebTokenHandler _handler = new();
    private readonly TokenValidationParameters _parameters;
    private readonly IReadOnlyDictionary<string, GrantConfig> _grants;
    private readonly ConcurrentDictionary<string, Cached> _cache = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Cached>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;

    public JwtValidator(JwtConfig config, IReadOnlyDictionary<string, GrantConfig> grants)
    {
        Config = config;
        _grants = grants;
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
        var keys = new List<SecurityKey>(config.Keys);
        var algorithms = new List<string>();
        foreach (var key in config.Keys)
        {
            algorithms.Add(key is ECDsaSecurityKey ? SecurityAlgorithms.EcdsaSha256 : SecurityAlgorithms.RsaSha256);
        }
        if (config.HmacKey is { } hmac)
        {
            keys.Add(new SymmetricSecurityKey(Encoding.UTF8.GetBytes(hmac)));
            algorithms.Add(SecurityAlgorithms.HmacSha256);
        }
        _parameters = new TokenValidationParameters
        {
            ValidIssuer = config.Issuer,
            ValidAudiences = config.Audiences,
            IssuerSigningKeys = keys,
            ValidAlgorithms = algorithms,
            ClockSkew = config.ClockSkew,
            RequireExpirationTime = true,
            RequireSignedTokens = true,
            ValidateIssuerSigningKey = false,
        };
    }

    public JwtConfig Config { get; }

    /// <summary>Forgets every validated token (benchmarks measure a first validation with it).</summary>
    internal void ClearCache() => _cache.Clear();

    private readonly record struct Cached(Caller Caller, long ExpiresAt);

    /// <summary>Three base64url segments, the first a JSON object's (<c>eyJ</c>): not an API key.</summary>
    public static bool LooksLikeJwt(ReadOnlySpan<char> token) => token.StartsWith("eyJ") && token.Count('.') == 2;

    /// <summary>Validates <paramref name="token"/> (the header's value after <c>Bearer </c>).</summary>
    public AuthStatus Validate(ReadOnlySpan<char> token, out Caller caller)
    {
        var now = Environment.TickCount64;
        if (_cacheBySpan.TryGetValue(token, out var cached) && cached.ExpiresAt > now)
        {
            caller = cached.Caller; // looked up by the header's own characters: nothing allocated
            return AuthStatus.Authenticated;
        }
        caller = Caller.Anonymous;
        var text = token.ToString();
        // With static keys (no metadata to fetch) validation does no I/O: the task is complete when it returns.
        var result = _handler.ValidateTokenAsync(text, _parameters).GetAwaiter().GetResult();
        if (!result.IsValid || result.SecurityToken is not JsonWebToken jwt)
        {
            return AuthStatus.InvalidToken;
        }
        if (!jwt.TryGetPayloadValue<string>(Config.IdentityClaim, out var identity) || string.IsNullOrEmpty(identity))
        {
            return AuthStatus.InvalidToken;
        }
        var grant = jwt.TryGetPayloadValue<string>(Config.GrantClaim, out var claimed) && !string.IsNullOrEmpty(claimed) ? claimed : Config.DefaultGrant;
        if (grant is null)
        {
            return AuthStatus.NoGrant;
        }
        if (!_grants.ContainsKey(grant))
        {
            return AuthStatus.UnknownGrant;
        }
        caller = new Caller(identity, grant);
        var lifetime = jwt.ValidTo - DateTime.UtcNow; // exp without the skew: a cached token stops at its own expiry
        if (lifetime > TimeSpan.Zero)
        {
            if (_cache.Count >= MaxCached)
            {
                _cache.Clear();
            }
            _cache[text] = new Cached(caller, now + (long)Math.Min(lifetime.TotalMilliseconds, TimeSpan.FromHours(1).TotalMilliseconds));
        }
        return AuthStatus.Authenticated;
    }
}
