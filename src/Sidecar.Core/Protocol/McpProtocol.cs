namespace Sidecar.Protocol;

/// <summary>
/// The MCP protocol's names in one place: versions and what each allows, and the HTTP header names of the Streamable
/// HTTP transport. Error codes are in <see cref="ErrorCodes"/>, method names in <see cref="JsonRpc.McpMethod"/>.
/// </summary>
public static class McpProtocol
{
    /// <summary>The legacy HTTP+SSE era.</summary>
    public const string V20241105 = "2024-11-05";

    /// <summary>The first Streamable HTTP version, and the only one with JSON-RPC batches.</summary>
    public const string V20250326 = "2025-03-26";

    public const string V20250618 = "2025-06-18";

    public const string V20251125 = "2025-11-25";

    /// <summary>The stateless era (<c>server/discover</c>, no sessions).</summary>
    public const string V20260728 = "2026-07-28";

    /// <summary>The session-era versions this gateway serves, oldest first.</summary>
    public static readonly string[] SessionVersions = [V20241105, V20250326, V20250618, V20251125];

    /// <summary>The version assumed when a Streamable HTTP request carries no <c>MCP-Protocol-Version</c> header.</summary>
    public const string DefaultHttpVersion = V20250326;

    public const string SessionIdHeader = "Mcp-Session-Id";
    public const string ProtocolVersionHeader = "MCP-Protocol-Version";
    public const string MethodHeader = "Mcp-Method";
    public const string NameHeader = "Mcp-Name";
    public const string ParamHeaderPrefix = "Mcp-Param-";
    public const string LastEventIdHeader = "Last-Event-ID";

    /// <summary>The <c>Mcp-*</c> headers of a stateless request passed upstream as they are (besides <see cref="ParamHeaderPrefix"/>).</summary>
    public static readonly string[] ForwardedStatelessHeaders = [ProtocolVersionHeader, MethodHeader, NameHeader];

    public static bool IsSessionVersion(string? version) => version is not null && Array.IndexOf(SessionVersions, version) >= 0;

    /// <summary>
    /// JSON-RPC batches exist only in 2025-03-26: 2025-06-18 removed them. A session that negotiated a later version
    /// gets -32600 for a batch.
    /// </summary>
    public static bool AllowsBatches(string? negotiatedVersion) => negotiatedVersion == V20250326;

    /// <summary>A known version as its constant (one string per version, however many sessions hold it), else the value itself.</summary>
    public static string? Intern(string? version)
    {
        foreach (var known in SessionVersions)
        {
            if (known == version)
            {
                return known;
            }
        }
        return version == V20260728 ? V20260728 : version;
    }

    /// <summary>The supported session versions as a list for messages.</summary>
    public static string SessionVersionList { get; } = string.Join(", ", SessionVersions);
}
