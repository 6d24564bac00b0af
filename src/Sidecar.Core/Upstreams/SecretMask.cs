namespace Sidecar.Upstreams;

/// <summary>
/// The configured credentials (header values, a URL's user info or query) to mask in error texts and logs: exception
/// messages and collectors' reason phrases may quote what was sent. Built once per client; masking replaces each
/// secret with <c>***</c>, longest first so that a secret's prefix never leaves its tail behind.
/// </summary>
internal sealed class SecretMask
{
    /// <summary>Shorter values are not treated as secrets (they would mask ordinary words).</summary>
    private const int MinLength = 4;

    /// <summary>Longest first. Filled while the client is built, only read afterwards.</summary>
    private readonly List<string> _secrets = [];

    /// <summary>
    /// The configured headers an outbound HTTP client (a sink, a webhook) can send, and this mask filled with what to
    /// hide in failure reasons: their values (and a scheme's token on its own), and the URL's user info and query,
    /// which can hold credentials too. A <paramref name="reserved"/> header, a content header or an invalid name is
    /// left out and named to <paramref name="ignored"/>.
    /// </summary>
    public KeyValuePair<string, string>[] PrepareHeaders(IReadOnlyDictionary<string, string> configured, Uri url, string[] reserved, Action<string> ignored)
    {
        var headers = new List<KeyValuePair<string, string>>();
        Add(url.UserInfo);
        Add(url.Query.TrimStart('?'));
        using var probe = new HttpRequestMessage();
        foreach (var (name, value) in configured)
        {
            // A content header (or an invalid name) cannot be a request header; the probe tells which without guessing.
            if (Array.Exists(reserved, r => string.Equals(r, name, StringComparison.OrdinalIgnoreCase))
                || !probe.Headers.TryAddWithoutValidation(name, value))
            {
                ignored(name);
                continue;
            }
            headers.Add(new(name, value));
            AddHeaderValue(value);
        }
        return [.. headers];
    }

    /// <summary>Adds a header value, and for <c>Scheme token</c> values ("Bearer abc") the token on its own too.</summary>
    public void AddHeaderValue(string value)
    {
        Add(value);
        var space = value.IndexOf(' ', StringComparison.Ordinal);
        if (space > 0)
        {
            Add(value[(space + 1)..]);
        }
    }

    public void Add(string secret)
    {
        if (secret.Length >= MinLength)
        {
            _secrets.Add(secret);
            _secrets.Sort((a, b) => b.Length.CompareTo(a.Length));
        }
    }

    /// <summary>The text with every secret replaced by <c>***</c>.</summary>
    public string Redact(string text)
    {
        foreach (var secret in _secrets)
        {
            text = text.Replace(secret, "***", StringComparison.Ordinal);
        }
        return text;
    }
}
