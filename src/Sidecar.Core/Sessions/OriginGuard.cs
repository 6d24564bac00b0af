using System.Net;

namespace Sidecar.Sessions;

/// <summary>
/// DNS-rebinding protection: which <c>Host</c> and <c>Origin</c> values agents may send. On loopback only loopback
/// names can be legitimate (anything else is DNS rebinding); elsewhere (a pod IP, a service name) the names aren't
/// known in advance, so hosts are checked only when <c>allowedHosts</c> lists them.
/// </summary>
internal sealed class OriginGuard
{
    private readonly HashSet<string> _allowedHosts;
    private readonly HashSet<string>.AlternateLookup<ReadOnlySpan<char>> _allowedHostSpans;
    private readonly HashSet<string> _allowedOrigins;
    private readonly bool _hostsConfigured;

    public OriginGuard(IReadOnlyList<string> allowedHosts, IReadOnlyList<string> allowedOrigins)
    {
        _allowedHosts = new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "localhost", "127.0.0.1", "[::1]", "::1" };
        foreach (var host in allowedHosts)
        {
            _allowedHosts.Add(host);
        }
        _allowedHostSpans = _allowedHosts.GetAlternateLookup<ReadOnlySpan<char>>();
        _allowedOrigins = new HashSet<string>(allowedOrigins, StringComparer.OrdinalIgnoreCase);
        _hostsConfigured = allowedHosts.Count > 0;
    }

    /// <summary>
    /// Why the request may not go on (the caller answers 403), or null. <paramref name="host"/> is the <c>Host</c>
    /// header's value (null when absent); <paramref name="origins"/> the <c>Origin</c> values.
    /// </summary>
    public string? Check(string? host, bool listeningOnLoopback, ReadOnlySpan<string?> origins)
    {
        if ((listeningOnLoopback || _hostsConfigured) && (string.IsNullOrEmpty(host) || !IsAllowedHost(host)))
        {
            return $"Forbidden: Host \"{host}\" is not allowed";
        }
        if (origins.Length > 1)
        {
            return "Forbidden: more than one Origin header";
        }
        if (origins.Length == 1 && origins[0] is { } origin && !IsAllowedOrigin(origin))
        {
            return $"Forbidden: Origin \"{origin}\" is not allowed";
        }
        return null;
    }

    /// <summary>The host name (without the port) or the whole value is allowed. Split without allocating.</summary>
    private bool IsAllowedHost(string host)
    {
        var value = host.AsSpan();
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
                // IPv6 without brackets (and no port): compare it bracketed, as a URL writes it.
                return _allowedHosts.Contains("[" + host + "]");
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
}
