namespace Sidecar.Configuration;

/// <summary>
/// <c>identities</c>: who may call. With it, every agent request on an MCP endpoint must carry
/// <c>Authorization: Bearer</c>; without it every agent is anonymous.
/// </summary>
public sealed record IdentitiesConfig(IReadOnlyList<ApiKeyConfig> ApiKeys)
{
    /// <summary><c>identities.jwt</c>; null: API keys only.</summary>
    public JwtConfig? Jwt { get; init; }
}

/// <summary>
/// <c>identities.jwt</c>: bearer JWTs signed with the keys of a local JWKS file (RS256, ES256) or <see cref="HmacKey"/>
/// (HS256), from <see cref="Issuer"/> for one of <see cref="Audiences"/>. <see cref="ToString"/> never prints the HMAC key.
/// </summary>
public sealed record JwtConfig(
    string Issuer,
    IReadOnlyList<string> Audiences,
    string? KeysPath,
    IReadOnlyList<Microsoft.IdentityModel.Tokens.SecurityKey> Keys,
    string? HmacKey,
    string IdentityClaim,
    string GrantClaim,
    string? DefaultGrant,
    TimeSpan ClockSkew,
    IReadOnlyList<string> AuthorizationServers)
{
    public override string ToString() => $"jwt (issuer {Issuer}, {Keys.Count} keys{(HmacKey is null ? "" : ", HS256")})";
}

/// <summary>
/// <c>identities.apiKeys.NAME</c>: an API key, known only by its SHA-256 (the key itself is never stored), and the
/// grant it holds. <see cref="ToString"/> does not print the digest.
/// </summary>
public sealed record ApiKeyConfig(string Name, byte[] Sha256, string Grant, SourceLocation Location)
{
    public override string ToString() => $"{Name} (grant {Grant})";
}

/// <summary><c>grants.NAME</c>: the policy each server applies to identities holding the grant (<c>"*"</c>: every other server).</summary>
public sealed record GrantConfig(string Name, IReadOnlyDictionary<string, string> Policies)
{
    /// <summary>The policy file for <paramref name="server"/>: its own, else <c>"*"</c>'s, else null (the server is denied to the grant).</summary>
    public string? PolicyFor(string server) => Policies.GetValueOrDefault(server) ?? Policies.GetValueOrDefault("*");
}
