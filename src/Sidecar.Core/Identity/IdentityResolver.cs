using System.Security.Cryptography;
using System.Text;
using Sidecar.Configuration;

namespace Sidecar.Identity;

/// <summary>Who is calling: the identity's name (as audit, limits and approvals show it) and the grant it holds. Both null: anonymous.</summary>
public readonly record struct Caller(string? Identity, string? Grant)
{
    public static Caller Anonymous => default;

    public bool IsAnonymous => Identity is null;
}

/// <summary>How an agent request's credentials were judged.</summary>
public enum AuthStatus : byte
{
    /// <summary>No <c>identities</c> are configured: every agent is anonymous.</summary>
    Anonymous,

    /// <summary>A known identity.</summary>
    Authenticated,

    /// <summary>No <c>Authorization</c> header.</summary>
    Missing,

    /// <summary>Not one <c>Authorization: Bearer TOKEN</c> header.</summary>
    Malformed,

    /// <summary>A bearer token that is no configured key.</summary>
    Unknown,

    /// <summary>A JWT that fails validation (signature, algorithm, issuer, audience, lifetime, identity claim).</summary>
    InvalidToken,

    /// <summary>A valid JWT with no grant (no grant claim and no <c>defaultGrant</c>): HTTP 403.</summary>
    NoGrant,

    /// <summary>A valid JWT whose grant claim names a grant <c>grants</c> does not define: HTTP 403.</summary>
    UnknownGrant,
}

/// <summary>
/// Turns an agent's <c>Authorization: Bearer</c> token into a <see cref="Caller"/>. An API key is known only by its
/// SHA-256: the token is hashed and its digest looked up (one hash-table probe, whatever the number of keys), and the
/// digests are compared in constant time, all 32 bytes whatever differs first. A lookup's timing can tell an attacker
/// at most how a digest of their own token relates to a stored digest, which SHA-256's preimage resistance makes
/// worthless; the key itself is never held. Nothing is allocated per request.
/// </summary>
public sealed class IdentityResolver
{
    /// <summary>Longest bearer token accepted (a longer one is malformed).</summary>
    public const int MaxTokenBytes = 4096;

    private readonly Dictionary<Digest, ApiKeyConfig> _keys = [];
    private readonly JwtValidator? _jwt;

    public IdentityResolver(IdentitiesConfig? config, IReadOnlyDictionary<string, GrantConfig>? grants = null)
    {
        Required = config is not null;
        foreach (var key in config?.ApiKeys ?? [])
        {
            _keys[new Digest(key.Sha256)] = key;
        }
        if (config?.Jwt is { } jwt)
        {
            _jwt = new JwtValidator(jwt, grants ?? new Dictionary<string, GrantConfig>());
        }
    }

    /// <summary>Forgets the validated JWTs (benchmarks).</summary>
    internal void ClearJwtCache() => _jwt?.ClearCache();

    /// <summary>RFC 9728 metadata is served, and named in 401 challenges, when JWTs come from named authorization servers.</summary>
    public IReadOnlyList<string> AuthorizationServers => _jwt?.Config.AuthorizationServers ?? [];

    /// <summary>Whether every request must carry credentials (<c>identities</c> is configured).</summary>
    public bool Required { get; }

    public static IdentityResolver None { get; } = new(null);

    /// <summary>Judges the <c>Authorization</c> header values of one request.</summary>
    public AuthStatus Resolve(ReadOnlySpan<string?> authorization, out Caller caller)
    {
        caller = Caller.Anonymous;
        if (!Required)
        {
            return AuthStatus.Anonymous;
        }
        if (authorization.Length == 0)
        {
            return AuthStatus.Missing;
        }
        if (authorization.Length > 1 || authorization[0] is not { } header
            || header.Length <= 7 || !header.AsSpan(0, 7).Equals("Bearer ", StringComparison.OrdinalIgnoreCase))
        {
            return AuthStatus.Malformed;
        }
        var token = header.AsSpan(7).Trim(' ');
        if (token.IsEmpty || token.Length > MaxTokenBytes)
        {
            return AuthStatus.Malformed;
        }
        if (_jwt is not null && JwtValidator.LooksLikeJwt(token))
        {
            return _jwt.Validate(token, out caller);
        }
        Span<byte> bytes = stackalloc byte[Encoding.UTF8.GetMaxByteCount(token.Length)];
        var length = Encoding.UTF8.GetBytes(token, bytes);
        if (length > MaxTokenBytes)
        {
            return AuthStatus.Malformed;
        }
        Span<byte> digest = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(bytes[..length], digest);
        if (!_keys.TryGetValue(new Digest(digest), out var key))
        {
            return AuthStatus.Unknown;
        }
        caller = new Caller(key.Name, key.Grant);
        return AuthStatus.Authenticated;
    }

    /// <summary>A SHA-256 digest as a key: equality looks at all 32 bytes with no early exit.</summary>
    private readonly struct Digest : IEquatable<Digest>
    {
        private readonly ulong _a, _b, _c, _d;

        public Digest(ReadOnlySpan<byte> bytes)
        {
            _a = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes);
            _b = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes[8..]);
            _c = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes[16..]);
            _d = System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes[24..]);
        }

        public bool Equals(Digest other) => ((_a ^ other._a) | (_b ^ other._b) | (_c ^ other._c) | (_d ^ other._d)) == 0;

        public override bool Equals(object? obj) => obj is Digest other && Equals(other);

        public override int GetHashCode() => (int)_a;
    }

    /// <summary>The reason an <see cref="AuthStatus"/> refusal gives (in the 401, the log and <c>auth_failure</c>; never the token).</summary>
    public static string Reason(AuthStatus status) => status switch
    {
        AuthStatus.Missing => "missing_credentials",
        AuthStatus.Malformed => "malformed_credentials",
        AuthStatus.InvalidToken => "invalid_token",
        AuthStatus.NoGrant => "no_grant",
        AuthStatus.UnknownGrant => "unknown_grant",
        _ => "unknown_credentials",
    };
}
