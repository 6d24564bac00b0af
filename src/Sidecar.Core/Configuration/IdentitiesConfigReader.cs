using Sidecar.Policy;

namespace Sidecar.Configuration;

/// <summary>Reads <c>identities</c> and <c>grants</c> of <c>sidecar.json</c>, every error with path and line.</summary>
internal static class IdentitiesConfigReader
{
    /// <summary><c>grants</c>: each grant's policies by server name (or <c>"*"</c>), paths resolved; the servers must exist.</summary>
    public static Dictionary<string, GrantConfig> ReadGrants(ConfigNode node, string baseDirectory, IReadOnlyList<ServerConfig> servers, DiagnosticBag diagnostics)
    {
        var grants = new Dictionary<string, GrantConfig>(StringComparer.Ordinal);
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"grants\" must be an object mapping grant names to {{ \"policies\": {{ server: file }} }}, not {node.KindName}");
            return grants;
        }
        foreach (var member in obj.Members)
        {
            if (member.Value is not ConfigObject grant)
            {
                diagnostics.Add(member.Value, $"a grant must be an object with \"policies\", not {member.Value.KindName}");
                continue;
            }
            var members = new PolicyConfigReader.MemberReader(grant, diagnostics);
            var policies = new Dictionary<string, string>(StringComparer.Ordinal);
            if (members.Take("policies") is not { } policiesNode)
            {
                diagnostics.Add(grant, $"grant \"{member.Name}\" is missing \"policies\"");
            }
            else if (policiesNode is not ConfigObject policiesObj)
            {
                diagnostics.Add(policiesNode, $"\"policies\" must be an object mapping server names (or \"*\") to policy files, not {policiesNode.KindName}");
            }
            else
            {
                foreach (var policy in policiesObj.Members)
                {
                    if (policy.Name != "*" && !servers.Any(s => s.Name == policy.Name))
                    {
                        diagnostics.Add(policy.Value.Path, policy.NameLocation,
                            $"grant \"{member.Name}\" names server \"{policy.Name}\", which mcpServers does not have (servers: {string.Join(", ", servers.Select(s => s.Name))}; \"*\" means every other server)");
                        continue;
                    }
                    if (PolicyConfigReader.ReadString(policy.Value, diagnostics) is { } path)
                    {
                        policies[policy.Name] = SidecarConfigReader.ResolvePath(baseDirectory, path);
                    }
                }
            }
            members.ReportUnknown("policies");
            grants[member.Name] = new GrantConfig(member.Name, policies);
        }
        return grants;
    }

    /// <summary><c>identities</c>: API keys by name, each with the hex SHA-256 of the key and a grant <paramref name="grants"/> has.</summary>
    public static IdentitiesConfig? ReadIdentities(ConfigNode node, IReadOnlyDictionary<string, GrantConfig> grants, string baseDirectory,
        Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"identities\" must be an object with \"apiKeys\", not {node.KindName}");
            return null;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        var keys = new List<ApiKeyConfig>();
        if (members.Take("apiKeys") is { } keysNode)
        {
            if (keysNode is ConfigObject keysObj)
            {
                foreach (var key in keysObj.Members)
                {
                    if (ReadApiKey(key, grants, keys, diagnostics) is { } apiKey)
                    {
                        keys.Add(apiKey);
                    }
                }
            }
            else
            {
                diagnostics.Add(keysNode, $"\"apiKeys\" must be an object mapping identity names to {{ \"sha256\", \"grant\" }}, not {keysNode.KindName}");
            }
        }
        var jwtNode = members.Take("jwt");
        var jwt = jwtNode is null ? null : ReadJwt(jwtNode, grants, baseDirectory, environment, diagnostics);
        members.ReportUnknown("apiKeys, jwt");
        if (keys.Count == 0 && jwtNode is null)
        {
            diagnostics.Add(obj, "\"identities\" names no identity: add \"apiKeys\" or \"jwt\" (or remove \"identities\" for anonymous agents)");
        }
        return new IdentitiesConfig(keys) { Jwt = jwt };
    }

    private const string JwtFields = "issuer, audiences, keys, hmacKey, identityClaim, grantClaim, defaultGrant, clockSkew, authorizationServers";

    /// <summary><c>identities.jwt</c>, its JWKS file read and checked now (a missing or malformed file is a config error).</summary>
    private static JwtConfig? ReadJwt(ConfigNode node, IReadOnlyDictionary<string, GrantConfig> grants, string baseDirectory,
        Func<string, string?> environment, DiagnosticBag diagnostics)
    {
        if (node is not ConfigObject obj)
        {
            diagnostics.Add(node, $"\"jwt\" must be an object, not {node.KindName}");
            return null;
        }
        var errorsBefore = diagnostics.Items.Count;
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        string? Text(string name) => members.Take(name) is { } n ? PolicyConfigReader.ReadString(n, diagnostics) : null;

        var issuer = Text("issuer");
        if (issuer is null)
        {
            diagnostics.Add(obj, "\"jwt\" needs \"issuer\": tokens from any other issuer are refused");
        }
        var audiencesNode = members.Take("audiences");
        var audiences = audiencesNode is null ? [] : SidecarConfigReader.ReadStringList(audiencesNode, diagnostics);
        if (audiences.Count == 0)
        {
            diagnostics.Add(audiencesNode ?? obj, "\"jwt\" needs \"audiences\" (at least one): a token must be meant for this gateway");
        }
        var keysNode = members.Take("keys");
        var keysPath = keysNode is null ? null : PolicyConfigReader.ReadString(keysNode, diagnostics) is { } k ? SidecarConfigReader.ResolvePath(baseDirectory, k) : null;
        var keys = keysPath is null ? [] : ReadJwks(keysPath, keysNode!, diagnostics);
        var hmacNode = members.Take("hmacKey");
        var hmacKey = hmacNode is null ? null : PolicyConfigReader.ReadString(hmacNode, diagnostics) is { } h ? SidecarConfigReader.Expand(h, hmacNode, environment, diagnostics) : null;
        if (hmacKey is not null && System.Text.Encoding.UTF8.GetByteCount(hmacKey) < 32)
        {
            diagnostics.Add(hmacNode!, "\"hmacKey\" must be at least 32 bytes (HS256 with a shorter key is guessable)");
        }
        if (keysNode is null && hmacNode is null)
        {
            diagnostics.Add(obj, "\"jwt\" needs \"keys\" (a JWKS file, for RS256 and ES256) or \"hmacKey\" (HS256)");
        }
        var identityClaim = Text("identityClaim") ?? "sub";
        var grantClaim = Text("grantClaim") ?? "sidecar_grant";
        var defaultGrantNode = members.Take("defaultGrant");
        string? defaultGrant = null;
        if (defaultGrantNode is not null && defaultGrantNode.Kind != ConfigNodeKind.Null && PolicyConfigReader.ReadString(defaultGrantNode, diagnostics) is { } dg)
        {
            if (grants.ContainsKey(dg))
            {
                defaultGrant = dg;
            }
            else
            {
                diagnostics.Add(defaultGrantNode, $"\"defaultGrant\" is \"{dg}\", which \"grants\" does not define");
            }
        }
        var skew = TimeSpan.FromSeconds(60);
        if (members.Take("clockSkew") is { } skewNode && !PolicyConfigReader.TryReadDuration(skewNode, out skew))
        {
            diagnostics.Add(skewNode, "\"clockSkew\" must be a duration such as \"60s\"");
        }
        var serversNode = members.Take("authorizationServers");
        var servers = serversNode is null ? [] : SidecarConfigReader.ReadStringList(serversNode, diagnostics);
        members.ReportUnknown(JwtFields);
        return diagnostics.Items.Count > errorsBefore
            ? null
            : new JwtConfig(issuer!, audiences, keysPath, keys, hmacKey, identityClaim, grantClaim, defaultGrant, skew, servers);
    }

    /// <summary>The signing keys of a JWKS file: JSON errors with their line, then the keys as the validator reads them.</summary>
    private static List<Microsoft.IdentityModel.Tokens.SecurityKey> ReadJwks(string path, ConfigNode at, DiagnosticBag diagnostics)
    {
        var file = new DiagnosticBag(path);
        var bytes = file.ReadFile(path, "JWKS");
        if (bytes is not null)
        {
            ConfigJsonParser.Parse(bytes, file);
        }
        if (file.Items.Count > 0)
        {
            foreach (var error in file.Items)
            {
                diagnostics.Add(at, $"\"keys\": {error}");
            }
            return [];
        }
        try
        {
            var set = new Microsoft.IdentityModel.Tokens.JsonWebKeySet(System.Text.Encoding.UTF8.GetString(bytes!));
            var keys = new List<Microsoft.IdentityModel.Tokens.SecurityKey>(set.GetSigningKeys());
            if (keys.Count == 0)
            {
                diagnostics.Add(at, $"\"keys\": {path} has no usable signing key (RSA or EC P-256 keys with \"kty\", \"kid\" and their public parameters)");
            }
            return keys;
        }
        catch (ArgumentException ex)
        {
            diagnostics.Add(at, $"\"keys\": {path} is not a JWKS ({{ \"keys\": [ … ] }}): {ex.Message}");
            return [];
        }
    }

    private static ApiKeyConfig? ReadApiKey(ConfigMember key, IReadOnlyDictionary<string, GrantConfig> grants, List<ApiKeyConfig> keys, DiagnosticBag diagnostics)
    {
        if (key.Value is not ConfigObject obj)
        {
            diagnostics.Add(key.Value, $"an API key must be an object with \"sha256\" and \"grant\", not {key.Value.KindName}");
            return null;
        }
        var members = new PolicyConfigReader.MemberReader(obj, diagnostics);
        byte[]? digest = null;
        if (members.Take("sha256") is not { } shaNode)
        {
            diagnostics.Add(obj, $"API key \"{key.Name}\" is missing \"sha256\" (the hex SHA-256 of the key, e.g. from: printf %s \"$KEY\" | sha256sum)");
        }
        else if (PolicyConfigReader.ReadString(shaNode, diagnostics) is { } hex)
        {
            if (hex.Length == 64 && IsHex(hex))
            {
                digest = Convert.FromHexString(hex);
            }
            else
            {
                diagnostics.Add(shaNode, $"\"sha256\" of API key \"{key.Name}\" must be 64 hex digits (the SHA-256 of the key, never the key itself)");
            }
        }
        string? grant = null;
        if (members.Take("grant") is not { } grantNode)
        {
            diagnostics.Add(obj, $"API key \"{key.Name}\" is missing \"grant\"");
        }
        else if (PolicyConfigReader.ReadString(grantNode, diagnostics) is { } g)
        {
            if (grants.ContainsKey(g))
            {
                grant = g;
            }
            else
            {
                diagnostics.Add(grantNode, $"API key \"{key.Name}\" holds grant \"{g}\", which \"grants\" does not define" +
                    (grants.Count == 0 ? "" : $" (grants: {string.Join(", ", grants.Keys)})"));
            }
        }
        members.ReportUnknown("sha256, grant");
        if (digest is not null && keys.Any(k => k.Sha256.AsSpan().SequenceEqual(digest)))
        {
            diagnostics.Add(key.Value, $"API key \"{key.Name}\" has the same sha256 as API key \"{keys.First(k => k.Sha256.AsSpan().SequenceEqual(digest)).Name}\": one key, one identity");
            return null;
        }
        return digest is null || grant is null ? null : new ApiKeyConfig(key.Name, digest, grant, key.NameLocation);
    }

    private static bool IsHex(string value)
    {
        foreach (var c in value)
        {
            if (!char.IsAsciiHexDigit(c))
            {
                return false;
            }
        }
        return true;
    }
}
