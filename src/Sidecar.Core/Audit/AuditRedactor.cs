using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Sidecar.Audit;

/// <summary>
/// Writes a call's arguments into an audit event with secrets removed and long values cut: values under secret-like
/// keys (<c>password</c>, <c>token</c>, <c>api_key</c>, <c>authorization</c>, … plus the configured keys) and string
/// values that look like credentials (bearer tokens, JWTs, private keys, well-known API key shapes, passwords in URLs)
/// become <c>"[REDACTED]"</c>. Runs on the audit writer, never on the call's path.
/// </summary>
public sealed class AuditRedactor
{
    public const string Redacted = "[REDACTED]";

    /// <summary>Keys (compared lower-case, without <c>_ - .</c>) whose value is always redacted when the key contains one.</summary>
    private static readonly string[] SecretKeyParts =
    [
        "password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "credential", "accesskey",
        "authorization", "cookie", "sessionid", "signature",
    ];

    /// <summary>Keys redacted only on an exact match (too short to match as parts).</summary>
    private static readonly string[] SecretKeys = ["auth", "pwd", "pass", "pin", "cvv", "cvc", "ssn", "otp", "jwt", "bearer"];

    private readonly string[] _extraKeys;

    public AuditRedactor(IReadOnlyList<string> extraKeys, int maxStringLength)
    {
        var keys = new string[extraKeys.Count];
        for (var i = 0; i < keys.Length; i++)
        {
            keys[i] = Normalize(extraKeys[i]);
        }
        _extraKeys = keys;
        MaxStringLength = maxStringLength;
    }

    /// <summary>Strings longer than this many characters are cut (with a note of how much was cut).</summary>
    public int MaxStringLength { get; }

    /// <summary>True when a value under <paramref name="key"/> must not be recorded.</summary>
    public bool IsSecretKey(string key)
    {
        var normalized = Normalize(key);
        foreach (var part in SecretKeyParts)
        {
            if (normalized.Contains(part, StringComparison.Ordinal))
            {
                return true;
            }
        }
        foreach (var exact in SecretKeys)
        {
            if (normalized == exact)
            {
                return true;
            }
        }
        foreach (var extra in _extraKeys)
        {
            if (extra.Length > 0 && normalized.Contains(extra, StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>True when a string value looks like a credential whatever its key.</summary>
    public static bool LooksSecret(string value)
    {
        var v = value.AsSpan().Trim();
        if (v.StartsWith("Bearer ", StringComparison.OrdinalIgnoreCase) || v.StartsWith("Basic ", StringComparison.OrdinalIgnoreCase)
            || v.Contains("-----BEGIN", StringComparison.Ordinal))
        {
            return true;
        }
        // JSON Web Tokens: three base64url segments, the header a JSON object ("eyJ").
        if (v.StartsWith("eyJ", StringComparison.Ordinal) && v.Count('.') == 2 && v.Length > 20 && IsTokenText(v, allowDots: true))
        {
            return true;
        }
        ReadOnlySpan<string> prefixes = ["sk-", "sk_live_", "sk_test_", "rk_live_", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
            "xoxb-", "xoxp-", "xoxa-", "xoxs-", "glpat-", "AIza", "npm_", "hf_"];
        foreach (var prefix in prefixes)
        {
            if (v.StartsWith(prefix, StringComparison.Ordinal) && v.Length >= prefix.Length + 16 && IsTokenText(v, allowDots: false))
            {
                return true;
            }
        }
        // AWS access key ids: AKIA/ASIA + 16 upper-case letters or digits.
        if (v.Length == 20 && (v.StartsWith("AKIA", StringComparison.Ordinal) || v.StartsWith("ASIA", StringComparison.Ordinal)))
        {
            var rest = v[4..];
            var ok = true;
            foreach (var c in rest)
            {
                ok &= char.IsAsciiLetterUpper(c) || char.IsAsciiDigit(c);
            }
            if (ok)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>A URL's password (<c>scheme://user:password@host</c>) replaced; other strings returned as they are.</summary>
    public static string RedactUrlPassword(string value)
    {
        var scheme = value.IndexOf("://", StringComparison.Ordinal);
        if (scheme <= 0)
        {
            return value;
        }
        var authorityStart = scheme + 3;
        var authorityEnd = value.IndexOfAny(['/', '?', '#'], authorityStart);
        if (authorityEnd < 0)
        {
            authorityEnd = value.Length;
        }
        var at = value.LastIndexOf('@', authorityEnd - 1, authorityEnd - authorityStart);
        if (at < 0)
        {
            return value;
        }
        var colon = value.IndexOf(':', authorityStart, at - authorityStart);
        return colon < 0 ? value : string.Concat(value.AsSpan(0, colon + 1), Redacted, value.AsSpan(at));
    }

    /// <summary>
    /// Writes the arguments object in <paramref name="raw"/> as <c>"arguments"</c>. <paramref name="complete"/> is
    /// false when <paramref name="raw"/> is only the start of the arguments (they were cut at the size cap): what is
    /// whole is written, open objects and arrays are closed, and the result says so. Returns true when anything was
    /// cut (the arguments, or a long string).
    /// </summary>
    public bool WriteArguments(Utf8JsonWriter writer, ReadOnlySpan<byte> raw, bool complete)
    {
        writer.WritePropertyName("arguments"u8);
        if (raw.IsEmpty)
        {
            if (complete)
            {
                writer.WriteStartObject();
                writer.WriteEndObject();
                return false;
            }
            writer.WriteNullValue();
            return true;
        }

        // Utf8JsonReader's default MaxDepth is 64: deeper input throws and is treated as cut.
        Span<bool> isArray = stackalloc bool[65];
        var reader = new Utf8JsonReader(raw, isFinalBlock: complete, state: default);
        var depth = 0;
        var cut = !complete;
        var awaitingValue = false;
        var redactNext = false;
        try
        {
            while (reader.Read())
            {
                switch (reader.TokenType)
                {
                    case JsonTokenType.StartObject:
                    case JsonTokenType.StartArray:
                        if (redactNext)
                        {
                            if (!reader.TrySkip())
                            {
                                writer.WriteStringValue(Redacted);
                                awaitingValue = false;
                                goto done;
                            }
                            writer.WriteStringValue(Redacted);
                            redactNext = false;
                            awaitingValue = false;
                            continue;
                        }
                        if (reader.TokenType == JsonTokenType.StartObject)
                        {
                            writer.WriteStartObject();
                        }
                        else
                        {
                            writer.WriteStartArray();
                        }
                        isArray[depth++] = reader.TokenType == JsonTokenType.StartArray;
                        awaitingValue = false;
                        break;
                    case JsonTokenType.EndObject:
                        writer.WriteEndObject();
                        depth--;
                        break;
                    case JsonTokenType.EndArray:
                        writer.WriteEndArray();
                        depth--;
                        break;
                    case JsonTokenType.PropertyName:
                        var name = reader.GetString()!;
                        writer.WritePropertyName(name);
                        redactNext = IsSecretKey(name);
                        awaitingValue = true;
                        break;
                    case JsonTokenType.String:
                        if (redactNext)
                        {
                            writer.WriteStringValue(Redacted);
                        }
                        else
                        {
                            cut |= WriteString(writer, reader.GetString()!);
                        }
                        redactNext = false;
                        awaitingValue = false;
                        break;
                    case JsonTokenType.Number:
                    case JsonTokenType.True:
                    case JsonTokenType.False:
                    case JsonTokenType.Null:
                        if (redactNext)
                        {
                            writer.WriteStringValue(Redacted);
                        }
                        else
                        {
                            writer.WriteRawValue(reader.ValueSpan, skipInputValidation: true);
                        }
                        redactNext = false;
                        awaitingValue = false;
                        break;
                }
                if (depth == 0)
                {
                    break;
                }
            }
        }
        catch (JsonException)
        {
            // The scanner only lets valid JSON through; a cut can still end mid-token. Keep what is whole.
            cut = true;
        }

    done:
        if (awaitingValue)
        {
            writer.WriteNullValue();
        }
        for (; depth > 0; depth--)
        {
            cut = true;
            if (isArray[depth - 1])
            {
                writer.WriteEndArray();
            }
            else
            {
                writer.WriteEndObject();
            }
        }
        return cut;
    }

    /// <summary>Writes a string value, redacted or cut as needed; true when it was cut.</summary>
    private bool WriteString(Utf8JsonWriter writer, string value)
    {
        if (LooksSecret(value))
        {
            writer.WriteStringValue(Redacted);
            return false;
        }
        value = RedactUrlPassword(value);
        if (value.Length <= MaxStringLength)
        {
            writer.WriteStringValue(value);
            return false;
        }
        var keep = MaxStringLength;
        if (keep > 0 && char.IsHighSurrogate(value[keep - 1]))
        {
            keep--;
        }
        writer.WriteStringValue(string.Concat(value.AsSpan(0, keep), $"…[{value.Length - keep} more chars]"));
        return true;
    }

    private static string Normalize(string key)
    {
        var sb = new StringBuilder(key.Length);
        foreach (var c in key)
        {
            if (c is not ('_' or '-' or '.' or ' '))
            {
                sb.Append(char.ToLowerInvariant(c));
            }
        }
        return sb.ToString();
    }

    private static bool IsTokenText(ReadOnlySpan<char> value, bool allowDots)
    {
        foreach (var c in value)
        {
            if (!(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' || (allowDots && c is '.' or '=' or '+' or '/')))
            {
                return false;
            }
        }
        return true;
    }
}
