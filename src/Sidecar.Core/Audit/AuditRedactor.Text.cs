using System.Buffers;
using System.Text;

namespace Sidecar.Audit;

/// <summary>
/// Credentials inside longer strings, found in one left-to-right pass over the UTF-8 bytes. A vectorized search for
/// the few bytes a credential shape can be recognized by (<see cref="Triggers"/>) skips ordinary text; at each such
/// byte the shapes it can belong to are checked with bounded look-behind and a forward scan, no backtracking. What is
/// replaced (the rest of the text is kept):
/// <list type="bullet">
/// <item><c>KEY=VALUE</c>, <c>KEY: VALUE</c>, <c>"KEY":"VALUE"</c> where KEY is secret by <see cref="IsSecretKey(ReadOnlySpan{byte})"/>:
/// the VALUE, up to white space, <c>&amp; ; , " ' #</c> or the end (a quoted VALUE up to its closing quote);
/// after a scheme word (<c>Authorization: Bearer …</c>) the word is kept.</item>
/// <item><c>Bearer</c>/<c>Basic</c> (any case, at a word boundary), spaces, then a token of at least
/// <see cref="MinSchemeToken"/> characters that is not a plain word: the token.</item>
/// <item>JWTs (<c>eyJ…</c>, three or more base64url segments) and well-known API keys (<see cref="KeyPrefixes"/>,
/// AWS access key ids) at a token boundary: the whole token.</item>
/// <item>PEM private key blocks: from <c>-----BEGIN … PRIVATE KEY-----</c> to the end of the matching
/// <c>-----END …-----</c> line, or to the end of the string.</item>
/// <item>URL passwords (<c>scheme://user:password@host</c>): the password.</item>
/// </list>
/// </summary>
public sealed partial class AuditRedactor
{
    /// <summary>
    /// The bytes a credential shape is recognized by: the separators of KEY=VALUE and URLs, the <c>-</c>/<c>_</c> of
    /// API key prefixes and PEM dashes, the <c>J</c> of <c>eyJ</c>, the <c>K</c>/<c>S</c> of <c>AKIA</c>/<c>ASIA</c>,
    /// the <c>z</c> of <c>AIza</c>, the <c>b</c>/<c>B</c> of <c>Bearer</c>/<c>Basic</c>: rare in prose, except b.
    /// </summary>
    private static readonly SearchValues<byte> Triggers = SearchValues.Create(":=-_JKSzbB"u8);

    /// <summary>What an API key (after its prefix) is made of.</summary>
    private static readonly SearchValues<byte> KeyTextBytes =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"u8);

    /// <summary>What a JWT is made of (base64url, with the padding and base64 characters some encoders leave).</summary>
    private static readonly SearchValues<byte> JwtTextBytes =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/"u8);

    /// <summary>
    /// One segment of a JWT inside text: base64url (padding, <c>=</c>, only at its end). Not <c>+ / =</c> within it:
    /// those are also where a JWT may start, so a run of them could be scanned again from every <c>eyJ</c> in it.
    /// </summary>
    private static readonly SearchValues<byte> JwtSegmentBytes =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"u8);

    /// <summary>What the token after <c>Bearer</c>/<c>Basic</c> is made of (RFC 6750's b64token).</summary>
    private static readonly SearchValues<byte> SchemeTokenBytes =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/="u8);

    /// <summary>The end of an unquoted VALUE after a secret KEY.</summary>
    private static readonly SearchValues<byte> ValueEnd = SearchValues.Create(" \t\r\n\f\v&;,\"'#"u8);

    /// <summary>The end of a URL's authority (where <c>user:password@host</c> can be).</summary>
    private static readonly SearchValues<byte> AuthorityEnd = SearchValues.Create("/?# \t\r\n\f\v\"'<>\\"u8);

    /// <summary>Well-known API key prefixes; a key is the prefix and at least <see cref="KeyPrefixMinTail"/> more of <see cref="KeyTextBytes"/>.</summary>
    private static readonly byte[][] KeyPrefixes =
    [
        .. new[]
        {
            "sk-", "sk_live_", "sk_test_", "rk_live_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
            "xoxb-", "xoxp-", "xoxa-", "xoxs-", "glpat-", "AIza", "npm_", "hf_",
        }.Select(Encoding.ASCII.GetBytes),
    ];

    private const int KeyPrefixMinTail = 16;

    /// <summary>What a value <see cref="LooksSecret(ReadOnlySpan{byte})"/> is true for starts with (Bearer, Basic, PEM, JWT, API keys).</summary>
    private static readonly SearchValues<byte> WholeSecretFirstBytes = SearchValues.Create([(byte)'B', (byte)'b', (byte)'-', (byte)'e', .. KeyPrefixes.Select(prefix => prefix[0])]);

    /// <summary>Letters and digits before the first <c>-</c>/<c>_</c> of a prefix, at most (<c>github</c> of <c>github_pat_</c>).</summary>
    private const int KeyPrefixMaxWord = 6;

    /// <summary>AWS access key ids: <c>AKIA</c>/<c>ASIA</c> and 16 upper-case letters or digits.</summary>
    private const int AwsKeyIdLength = 20;

    /// <summary>The shortest token after <c>Bearer</c>/<c>Basic</c> that is redacted.</summary>
    private const int MinSchemeToken = 8;

    /// <summary>Longer runs before a <c>=</c> or <c>:</c> are data (base64 padding), not a key.</summary>
    private const int MaxEmbeddedKey = StackKeyBytes;

    /// <summary>Bytes searched for the label of <c>-----BEGIN …-----</c> and <c>-----END …-----</c>.</summary>
    private const int MaxPemLabel = 64;

    /// <summary>
    /// <paramref name="value"/> with the credentials inside it replaced by <see cref="Redacted"/>: the input itself when
    /// there is none, otherwise the result in <see cref="_text"/>.
    /// </summary>
    private ReadOnlySpan<byte> RedactEmbedded(ReadOnlySpan<byte> value)
    {
        var from = 0;
        var length = -1;
        while (TryFindSecret(value, from, out var start, out var end))
        {
            length = Math.Max(length, 0);
            EnsureText(length + (start - from) + RedactedUtf8.Length, preserve: true);
            value[from..start].CopyTo(_text.AsSpan(length));
            length += start - from;
            RedactedUtf8.CopyTo(_text.AsSpan(length));
            length += RedactedUtf8.Length;
            from = end; // every match ends after the byte it was found at, so this always moves on
        }
        if (length < 0)
        {
            return value;
        }
        EnsureText(length + (value.Length - from), preserve: true);
        value[from..].CopyTo(_text.AsSpan(length));
        return _text.AsSpan(0, length + (value.Length - from));
    }

    /// <summary>The first credential in <paramref name="text"/> that starts at or after <paramref name="from"/>.</summary>
    private bool TryFindSecret(ReadOnlySpan<byte> text, int from, out int start, out int end)
    {
        for (var i = from; i < text.Length; i++)
        {
            var hit = text[i..].IndexOfAny(Triggers);
            if (hit < 0)
            {
                break;
            }
            i += hit;
            switch (text[i])
            {
                case (byte)':':
                    if (text[(i + 1)..].StartsWith("//"u8))
                    {
                        if (TryUrlPassword(text, i, out start, out end))
                        {
                            return true;
                        }
                        i += 2;
                        break;
                    }
                    goto case (byte)'=';
                case (byte)'=':
                    if (TryKeyValue(text, from, i, out start, out end))
                    {
                        return true;
                    }
                    break;
                case (byte)'-':
                    // A run of dashes: a PEM header starts 5 before its end; a key prefix ends at its first dash.
                    var dashes = text[i..].IndexOfAnyExcept((byte)'-');
                    dashes = dashes < 0 ? text.Length - i : dashes;
                    if ((dashes >= 5 && TryPem(text, i + dashes - 5, out start, out end)) || TryKeyPrefixBefore(text, from, i, out start, out end))
                    {
                        return true;
                    }
                    i += dashes - 1;
                    break;
                case (byte)'_':
                    if (TryKeyPrefixBefore(text, from, i, out start, out end))
                    {
                        return true;
                    }
                    break;
                case (byte)'J': // eyJ
                    if (i - 2 >= from && text[i - 2] == 'e' && text[i - 1] == 'y' && TryJwt(text, i - 2, out start, out end))
                    {
                        return true;
                    }
                    break;
                case (byte)'K' or (byte)'S': // AKIA, ASIA
                    if (i - 1 >= from && text[i - 1] == 'A' && IsAwsKeyIdAt(text, i - 1))
                    {
                        (start, end) = (i - 1, i - 1 + AwsKeyIdLength);
                        return true;
                    }
                    break;
                case (byte)'z': // AIza
                    if (i - 2 >= from && text[i - 2] == 'A' && text[i - 1] == 'I' && TryKeyPrefixAt(text, i - 2, out start, out end))
                    {
                        return true;
                    }
                    break;
                default: // b, B: Bearer, Basic
                    if (i + 2 < text.Length && (text[i + 1] | 0x20) is (byte)'e' or (byte)'a' && TrySchemeToken(text, i, out start, out end))
                    {
                        return true;
                    }
                    break;
            }
        }
        start = end = 0;
        return false;
    }

    /// <summary><c>KEY=VALUE</c>, <c>KEY: VALUE</c>, <c>"KEY":"VALUE"</c> with the separator at <paramref name="i"/> and a secret KEY: the VALUE.</summary>
    private bool TryKeyValue(ReadOnlySpan<byte> text, int from, int i, out int start, out int end)
    {
        start = end = 0;
        var next = i + 1 < text.Length ? text[i + 1] : (byte)0;
        var previous = i > 0 ? text[i - 1] : (byte)0;
        // Comparisons, arrows and scopes (==, !=, <=, >=, =>, ::) are not assignments; := is one, found at its colon.
        if (text[i] == '=' ? next is (byte)'=' or (byte)'>' || previous is (byte)'=' or (byte)'!' or (byte)'<' or (byte)'>' or (byte)':'
                           : next == ':' || previous == ':')
        {
            return false;
        }
        var separatorEnd = text[i] == ':' && next == '=' ? i + 2 : i + 1;
        // The key: back over spaces and one closing quote, then over letters, digits, _ - . (bounded: see MaxEmbeddedKey).
        var k = i;
        while (k > from && text[k - 1] is (byte)' ' or (byte)'\t')
        {
            k--;
        }
        if (k > from && text[k - 1] is (byte)'"' or (byte)'\'')
        {
            k--;
            if (k > from && text[k - 1] == '\\')
            {
                k--; // JSON inside a JSON string: {\"key\":\"value\"}
            }
        }
        var keyEnd = k;
        while (k > from && keyEnd - k <= MaxEmbeddedKey && IsKeyByte(text[k - 1]))
        {
            k--;
        }
        if (k == keyEnd || keyEnd - k > MaxEmbeddedKey || !IsSecretKey(text[k..keyEnd]))
        {
            return false;
        }

        var v = separatorEnd;
        while (v < text.Length && text[v] is (byte)' ' or (byte)'\t')
        {
            v++;
        }
        if (v == text.Length)
        {
            return false;
        }
        if (text[v] is (byte)'"' or (byte)'\'')
        {
            // A quoted value, up to its closing quote (a backslash escapes the next byte) or the end.
            var quote = text[v];
            var close = v + 1;
            while (close < text.Length)
            {
                var found = text[close..].IndexOfAny(quote, (byte)'\\');
                if (found < 0)
                {
                    close = text.Length;
                    break;
                }
                close += found;
                if (text[close] == quote)
                {
                    break;
                }
                close = Math.Min(close + 2, text.Length);
            }
            (start, end) = (v + 1, close);
            return close > v + 1;
        }
        if (text[v] == '\\' && v + 1 < text.Length && text[v + 1] is (byte)'"' or (byte)'\'')
        {
            // Quoted with escaped quotes (JSON inside a JSON string), up to the next backslash and that quote.
            ReadOnlySpan<byte> closing = [(byte)'\\', text[v + 1]];
            var close = text[(v + 2)..].IndexOf(closing);
            (start, end) = (v + 2, close < 0 ? text.Length : v + 2 + close);
            return end > start;
        }
        v = AfterSchemeWord(text, v);
        var valueEnd = text[v..].IndexOfAny(ValueEnd);
        (start, end) = (v, valueEnd < 0 ? text.Length : v + valueEnd);
        return end > start;
    }

    /// <summary>After <c>Bearer</c>, <c>Basic</c>, <c>Token</c> or <c>Digest</c> and its spaces when a value follows; otherwise <paramref name="v"/>.</summary>
    private static int AfterSchemeWord(ReadOnlySpan<byte> text, int v)
    {
        var word = 0;
        while (v + word < text.Length && word <= 6 && char.IsAsciiLetter((char)text[v + word]))
        {
            word++;
        }
        if (word is < 5 or > 6)
        {
            return v;
        }
        var scheme = text.Slice(v, word);
        if (!(Ascii.EqualsIgnoreCase(scheme, "bearer"u8) || Ascii.EqualsIgnoreCase(scheme, "basic"u8)
              || Ascii.EqualsIgnoreCase(scheme, "token"u8) || Ascii.EqualsIgnoreCase(scheme, "digest"u8)))
        {
            return v;
        }
        var after = v + word;
        while (after < text.Length && text[after] is (byte)' ' or (byte)'\t')
        {
            after++;
        }
        return after > v + word && after < text.Length && !ValueEnd.Contains(text[after]) ? after : v;
    }

    /// <summary><c>Bearer</c>/<c>Basic</c> at <paramref name="i"/> at a word boundary, spaces, and a credential-like token: the token.</summary>
    private static bool TrySchemeToken(ReadOnlySpan<byte> text, int i, out int start, out int end)
    {
        start = end = 0;
        if (i > 0 && char.IsAsciiLetterOrDigit((char)text[i - 1]))
        {
            return false;
        }
        var rest = text[i..];
        var word = StartsWithIgnoreCase(rest, "bearer"u8) ? 6 : StartsWithIgnoreCase(rest, "basic"u8) ? 5 : 0;
        if (word == 0)
        {
            return false;
        }
        var t = i + word;
        while (t < text.Length && text[t] is (byte)' ' or (byte)'\t')
        {
            t++;
        }
        if (t == i + word)
        {
            return false;
        }
        var length = text[t..].IndexOfAnyExcept(SchemeTokenBytes);
        var tokenEnd = length < 0 ? text.Length : t + length;
        while (tokenEnd > t && text[tokenEnd - 1] == '.')
        {
            tokenEnd--; // the end of the sentence
        }
        (start, end) = (t, tokenEnd);
        return tokenEnd - t >= MinSchemeToken && !IsPlainWord(text[t..tokenEnd]);
    }

    /// <summary>
    /// Letters only (with <c>-</c> or <c>/</c> between words), each word lower-case, capitalized or upper-case:
    /// <c>authentication</c>, <c>Token-based</c>, <c>HTTP/Basic</c>, not <c>dXNlcjpwYXNz</c>.
    /// </summary>
    private static bool IsPlainWord(ReadOnlySpan<byte> token)
    {
        var first = true;
        var firstUpper = false;
        var innerUpper = false;
        var innerLower = false;
        foreach (var b in token)
        {
            if (b is (byte)'-' or (byte)'/')
            {
                if (innerUpper && !(firstUpper && !innerLower))
                {
                    return false;
                }
                first = true;
                innerUpper = innerLower = false;
                continue;
            }
            if (!char.IsAsciiLetter((char)b))
            {
                return false;
            }
            var upper = char.IsAsciiLetterUpper((char)b);
            if (first)
            {
                firstUpper = upper;
                first = false;
            }
            else if (upper)
            {
                innerUpper = true;
            }
            else
            {
                innerLower = true;
            }
        }
        return !innerUpper || (firstUpper && !innerLower);
    }

    /// <summary>A key prefix whose first <c>-</c>/<c>_</c> is at <paramref name="i"/>: its letters before, at a token boundary.</summary>
    private static bool TryKeyPrefixBefore(ReadOnlySpan<byte> text, int from, int i, out int start, out int end)
    {
        var s = i;
        while (s > from && i - s <= KeyPrefixMaxWord && char.IsAsciiLetterOrDigit((char)text[s - 1]))
        {
            s--;
        }
        if (s == i || (s > 0 && char.IsAsciiLetterOrDigit((char)text[s - 1])))
        {
            start = end = 0;
            return false;
        }
        return TryKeyPrefixAt(text, s, out start, out end);
    }

    /// <summary>A well-known API key starting at <paramref name="s"/> (already at a token boundary on its left).</summary>
    private static bool TryKeyPrefixAt(ReadOnlySpan<byte> text, int s, out int start, out int end)
    {
        start = end = 0;
        if (s > 0 && char.IsAsciiLetterOrDigit((char)text[s - 1]))
        {
            return false;
        }
        var rest = text[s..];
        foreach (var prefix in KeyPrefixes)
        {
            if (prefix[0] == rest[0] && rest.StartsWith(prefix))
            {
                var length = rest.IndexOfAnyExcept(KeyTextBytes);
                length = length < 0 ? rest.Length : length;
                if (length >= prefix.Length + KeyPrefixMinTail)
                {
                    (start, end) = (s, s + length);
                    return true;
                }
            }
        }
        return false;
    }

    /// <summary><c>AKIA</c>/<c>ASIA</c> and 16 upper-case letters or digits at <paramref name="s"/>, a whole token.</summary>
    private static bool IsAwsKeyIdAt(ReadOnlySpan<byte> text, int s)
    {
        if (s + AwsKeyIdLength > text.Length || text[s] != 'A' || text[s + 1] is not ((byte)'K' or (byte)'S')
            || text[s + 2] != 'I' || text[s + 3] != 'A'
            || (s > 0 && char.IsAsciiLetterOrDigit((char)text[s - 1]))
            || (s + AwsKeyIdLength < text.Length && char.IsAsciiLetterOrDigit((char)text[s + AwsKeyIdLength])))
        {
            return false;
        }
        foreach (var b in text.Slice(s + 4, AwsKeyIdLength - 4))
        {
            if (!(char.IsAsciiLetterUpper((char)b) || char.IsAsciiDigit((char)b)))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>A JWT at <paramref name="s"/>: <c>eyJ…</c>, a dot, a segment, a dot, a segment (maybe empty, then maybe more).</summary>
    private static bool TryJwt(ReadOnlySpan<byte> text, int s, out int start, out int end)
    {
        start = end = 0;
        if (s > 0 && (char.IsAsciiLetterOrDigit((char)text[s - 1]) || text[s - 1] is (byte)'-' or (byte)'_' or (byte)'.'))
        {
            return false;
        }
        var e = SegmentEnd(text, s);
        if (e == text.Length || text[e] != '.')
        {
            return false;
        }
        var second = SegmentEnd(text, e + 1);
        if (second == e + 1 || second == text.Length || text[second] != '.')
        {
            return false;
        }
        e = SegmentEnd(text, second + 1);
        while (e + 1 < text.Length && text[e] == '.' && JwtSegmentBytes.Contains(text[e + 1]))
        {
            e = SegmentEnd(text, e + 1); // JWE: five segments
        }
        (start, end) = (s, e);
        return e - s > 20;
    }

    private static int SegmentEnd(ReadOnlySpan<byte> text, int from)
    {
        var length = text[from..].IndexOfAnyExcept(JwtSegmentBytes);
        var end = length < 0 ? text.Length : from + length;
        while (end < text.Length && text[end] == '=')
        {
            end++;
        }
        return end;
    }

    /// <summary>A PEM private key block at <paramref name="s"/>: to the end of its <c>-----END …-----</c>, or of the text.</summary>
    private static bool TryPem(ReadOnlySpan<byte> text, int s, out int start, out int end)
    {
        (start, end) = (s, text.Length);
        if (!text[s..].StartsWith("-----BEGIN "u8))
        {
            return false;
        }
        var afterBegin = s + "-----BEGIN "u8.Length;
        var label = PemLabel(text[afterBegin..]);
        if (label.IndexOf("PRIVATE KEY"u8) < 0)
        {
            return false;
        }
        var endMarker = text[afterBegin..].IndexOf("-----END "u8);
        if (endMarker >= 0)
        {
            var afterEnd = afterBegin + endMarker + "-----END "u8.Length;
            end = afterEnd + PemLabel(text[afterEnd..]).Length;
            if (text[end..].StartsWith("-----"u8))
            {
                end += 5;
            }
        }
        return true;
    }

    /// <summary>The label after <c>-----BEGIN </c>/<c>-----END </c>: up to <c>-----</c>, the end of the line or <see cref="MaxPemLabel"/> bytes.</summary>
    private static ReadOnlySpan<byte> PemLabel(ReadOnlySpan<byte> text)
    {
        var label = text[..Math.Min(text.Length, MaxPemLabel)];
        var dashes = label.IndexOf("-----"u8);
        label = dashes >= 0 ? label[..dashes] : label;
        var line = label.IndexOfAny((byte)'\n', (byte)'\r');
        return line >= 0 ? label[..line] : label;
    }

    /// <summary>The password of a URL whose <c>://</c> is at <paramref name="i"/> (the text between <c>user:</c> and <c>@host</c>).</summary>
    private static bool TryUrlPassword(ReadOnlySpan<byte> text, int i, out int start, out int end)
    {
        start = end = 0;
        if (i == 0)
        {
            return false;
        }
        var authorityStart = i + 3;
        var authority = text[authorityStart..];
        var authorityEnd = authority.IndexOfAny(AuthorityEnd);
        authority = authorityEnd < 0 ? authority : authority[..authorityEnd];
        var at = authority.LastIndexOf((byte)'@');
        var colon = at < 0 ? -1 : authority[..at].IndexOf((byte)':');
        if (colon < 0)
        {
            return false;
        }
        (start, end) = (authorityStart + colon + 1, authorityStart + at);
        return true;
    }

    /// <summary>The characters of an HTTP header or query key (what is left of a <c>=</c> or <c>:</c>).</summary>
    private static bool IsKeyByte(byte b) => char.IsAsciiLetterOrDigit((char)b) || b is (byte)'_' or (byte)'-' or (byte)'.';

    private static bool StartsWithIgnoreCase(ReadOnlySpan<byte> text, ReadOnlySpan<byte> prefix)
        => text.Length >= prefix.Length && Ascii.EqualsIgnoreCase(text[..prefix.Length], prefix);

    /// <summary><paramref name="text"/> without leading and trailing white space (as <see cref="char.IsWhiteSpace(char)"/> sees it).</summary>
    private static ReadOnlySpan<byte> TrimWhiteSpace(ReadOnlySpan<byte> text)
    {
        while (!text.IsEmpty)
        {
            int width;
            if (text[0] < 0x80)
            {
                if (!char.IsWhiteSpace((char)text[0]))
                {
                    break;
                }
                width = 1;
            }
            else if (Rune.DecodeFromUtf8(text, out var rune, out width) != OperationStatus.Done || !Rune.IsWhiteSpace(rune))
            {
                break;
            }
            text = text[width..];
        }
        while (!text.IsEmpty)
        {
            int width;
            if (text[^1] < 0x80)
            {
                if (!char.IsWhiteSpace((char)text[^1]))
                {
                    break;
                }
                width = 1;
            }
            else if (Rune.DecodeLastFromUtf8(text, out var rune, out width) != OperationStatus.Done || !Rune.IsWhiteSpace(rune))
            {
                break;
            }
            text = text[..^width];
        }
        return text;
    }
}
