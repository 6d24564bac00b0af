using System.Net;
using Microsoft.AspNetCore.Http;
using Microsoft.Net.Http.Headers;
using Sidecar.Configuration;

namespace Sidecar.Gateway;

/// <summary>
/// Checks every agent request makes before anything is read: DNS-rebinding protection (<c>Host</c> and
/// <c>Origin</c>), media types, and the MCP protocol version header.
/// </summary>
internal sealed class HttpGuards
{
    public static readonly string[] SupportedProtocolVersions = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

    private readonly HashSet<string> _allowedHosts;
    private readonly HashSet<string>.AlternateLookup<ReadOnlySpan<char>> _allowedHostSpans;
    private readonly HashSet<string> _allowedOrigins;
    private readonly bool _checkHost;

    public HttpGuards(SidecarConfig config, bool listeningOnLoopback)
    {
        _allowedHosts = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "localhost", "127.0.0.1", "[::1]", "::1" };
        foreach (var host in config.AllowedHosts)
        {
            _allowedHosts.Add(host);
        }
        _allowedHostSpans = _allowedHosts.GetAlternateLookup<ReadOnlySpan<char>>();
        _allowedOrigins = new HashSet<string>(config.AllowedOrigins, StringComparer.OrdinalIgnoreCase);
        // On loopback only loopback names can be legitimate (anything else is DNS rebinding). Elsewhere (a pod IP,
        // a service name) the names aren't known in advance: checked only when allowedHosts lists them.
        _checkHost = listeningOnLoopback || config.AllowedHosts.Count > 0;
    }

    /// <summary>Returns an error message when the request's Host or Origin is not allowed (the caller answers 403).</summary>
    public string? CheckHostAndOrigin(HttpRequest request)
    {
        if (_checkHost)
        {
            var host = request.Host;
            if (!host.HasValue || !IsAllowedHost(host))
            {
                return $"Forbidden: Host \"{host.Value}\" is not allowed";
            }
        }
        var origins = request.Headers.Origin;
        if (origins.Count > 1)
        {
            return "Forbidden: more than one Origin header";
        }
        if (origins.Count == 1 && origins[0] is { } origin && !IsAllowedOrigin(origin))
        {
            return $"Forbidden: Origin \"{origin}\" is not allowed";
        }
        return null;
    }

    /// <summary>
    /// The host name (without the port) or the whole value is allowed. Names and IPv4 (at most one colon) and bracketed
    /// IPv6 are split here without allocating; anything else goes through <see cref="HostString.Host"/>.
    /// </summary>
    private bool IsAllowedHost(HostString host)
    {
        var value = host.Value.AsSpan();
        if (_allowedHostSpans.Contains(value))
        {
            return true;
        }
        int end;
        if (value.StartsWith('['))
        {
            end = value.IndexOf(']') + 1;
        }
        else
        {
            end = value.IndexOf(':');
            if (end >= 0 && value[(end + 1)..].Contains(':'))
            {
                return _allowedHosts.Contains(host.Host); // IPv6 without brackets: HostString brackets it
            }
        }
        return end > 0 && _allowedHostSpans.Contains(value[..end]);
    }

    private bool IsAllowedOrigin(string origin)
    {
        if (_allowedOrigins.Contains(origin) || _allowedOrigins.Contains("*"))
        {
            return true;
        }
        if (!Uri.TryCreate(origin, UriKind.Absolute, out var uri) || (uri.Scheme != Uri.UriSchemeHttp && uri.Scheme != Uri.UriSchemeHttps))
        {
            return false;
        }
        return uri.IsLoopback && (uri.Host == "localhost" || IPAddress.TryParse(uri.Host.Trim('[', ']'), out _));
    }

    public static bool Accepts(HttpRequest request, string mediaType)
    {
        foreach (var value in request.Headers.Accept)
        {
            if (value is null)
            {
                continue;
            }
            var text = value.AsSpan();
            foreach (var range in text.Split(','))
            {
                var type = text[range].Trim();
                var semicolon = type.IndexOf(';');
                if (semicolon >= 0)
                {
                    type = type[..semicolon].TrimEnd();
                }
                if (type.Equals(mediaType, StringComparison.OrdinalIgnoreCase) || type.SequenceEqual("*/*"))
                {
                    return true;
                }
            }
        }
        return false;
    }

    public static bool IsJsonContent(HttpRequest request)
    {
        var value = request.ContentType;
        // The usual exact value needs no parsing (and no allocation); anything else is parsed.
        return string.Equals(value, "application/json", StringComparison.OrdinalIgnoreCase)
               || (MediaTypeHeaderValue.TryParse(value, out var contentType)
                   && contentType.MediaType.Equals("application/json", StringComparison.OrdinalIgnoreCase));
    }

    /// <summary>Null when the <c>MCP-Protocol-Version</c> header is absent (2025-03-26 is assumed) or supported.</summary>
    public static string? CheckProtocolVersion(HttpRequest request)
    {
        var values = request.Headers["MCP-Protocol-Version"];
        if (values.Count == 0)
        {
            return null;
        }
        if (values.Count > 1)
        {
            return "Bad Request: more than one MCP-Protocol-Version header";
        }
        return Array.IndexOf(SupportedProtocolVersions, values[0]) >= 0
            ? null
            : $"Bad Request: unsupported MCP-Protocol-Version \"{values[0]}\" (supported: {string.Join(", ", SupportedProtocolVersions)})";
    }
}
