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
    public static IdentitiesConfig? ReadIdentities(ConfigNode node, IReadOnlyDictionary<string, GrantConfig> grants, DiagnosticBag diagnostics)
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
        if (jwtNode is not null)
        {
            diagnostics.Add(jwtNode, "JWT identities (\"identities.jwt\") are not available in this version yet: use \"apiKeys\"");
        }
        members.ReportUnknown("apiKeys, jwt");
        if (keys.Count == 0 && jwtNode is null)
        {
            diagnostics.Add(obj, "\"identities\" names no identity: add \"apiKeys\" (or remove \"identities\" for anonymous agents)");
        }
        return new IdentitiesConfig(keys);
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
