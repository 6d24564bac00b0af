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
