using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Sidecar.Audit;

/// <summary>
/// Writes a call's arguments into an audit event with secrets removed and long values cut: values under secret-like
/// keys (<c>password</c>, <c>token</c>, <c>api_key</c>, <c>authorization</c>, … plus the configured keys) and string
/// values that look like credentials (bearer tokens, JWTs, private keys, well-known API key shapes) become
/// <c>"[REDACTED]"</c>; credentials inside longer strings (<c>token=…</c>, <c>Bearer …</c>, JWTs, API keys, PEM private
/// keys, passwords in URLs) are replaced in place, the rest of the text kept (AuditRedactor.Text.cs). Runs on the
/// audit writer, never on the call's path, and on one thread: it owns its buffers. Strings are read and written as
/// UTF-8; one where nothing is found and nothing is cut costs no allocation.
/// </summary>
public sealed partial class AuditRedactor
{
    public const string Redacted = "[REDACTED]";

    private static ReadOnlySpan<byte> RedactedUtf8 => "[REDACTED]"u8;

    /// <summary>Keys (compared lower-case, without <c>_ - .</c> and spaces) whose value is always redacted when the key contains one.</summary>
    private static readonly string[] SecretKeyParts =
    [
        "password", "passwd", "passphrase", "secret", "token", "apikey", "privatekey", "credential", "accesskey",
        "authorization", "cookie", "sessionid", "signature",
    ];

    /// <summary>Keys redacted only on an exact match (too short to match as parts).</summary>
    private static readonly string[] SecretKeys = ["auth", "pwd", "pass", "pin", "cvv", "cvc", "ssn", "otp", "jwt", "bearer"];

    /// <summary><see cref="SecretKeyParts"/> as ASCII, indexed by their first byte: a key is searched in one pass.</summary>
    private static readonly byte[][]?[] SecretKeyPartsByFirstByte = IndexByFirstByte(SecretKeyParts);

    private static readonly byte[][] SecretKeysUtf8 = [.. SecretKeys.Select(Encoding.ASCII.GetBytes)];

    private static readonly int ShortestSecretKeyPart = SecretKeyParts.Min(part => part.Length);

    private static readonly int ShortestSecretKey = SecretKeys.Min(key => key.Length);

    private static readonly int LongestSecretKey = SecretKeys.Max(key => key.Length);

    /// <summary>What a normalized ASCII key is made of (no upper case, no <c>_ - .</c> or space).</summary>
    private static readonly SearchValues<byte> NormalizedKeyBytes = SearchValues.Create(
        [.. Enumerable.Range(0, 128).Select(b => (byte)b).Where(b => !char.IsAsciiLetterUpper((char)b) && b is not ((byte)'_' or (byte)'-' or (byte)'.' or (byte)' '))]);

    /// <summary>Longer normalized keys take a pooled buffer instead of the stack.</summary>
    private const int StackKeyBytes = 128;

    private readonly string[] _extraKeys;

    /// <summary>The normalized configured keys that are ASCII: the only ones an ASCII key can contain.</summary>
    private readonly byte[][] _extraKeysUtf8;

    /// <summary>Unescaped property names and strings (only those written with escapes).</summary>
    private byte[] _unescaped = new byte[256];

    /// <summary>A string with its embedded credentials replaced, or cut.</summary>
    private byte[] _text = new byte[512];

    public AuditRedactor(IReadOnlyList<string> extraKeys, int maxStringLength)
    {
        var keys = new string[extraKeys.Count];
        var ascii = new List<byte[]>(keys.Length);
        for (var i = 0; i < keys.Length; i++)
        {
            keys[i] = Normalize(extraKeys[i]);
            if (keys[i].Length > 0 && Ascii.IsValid(keys[i]))
            {
                ascii.Add(Encoding.ASCII.GetBytes(keys[i]));
            }
        }
        _extraKeys = keys;
        _extraKeysUtf8 = [.. ascii];
        MaxStringLength = maxStringLength;
    }

    /// <summary>Strings longer than this many characters (UTF-16 code units) are cut (with a note of how much was cut).</summary>
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

    /// <summary>
    /// <see cref="IsSecretKey(string)"/> on a UTF-8 key, without allocating for an ASCII key. A key with non-ASCII bytes
    /// takes the string path: <see cref="char.ToLowerInvariant(char)"/> maps some non-ASCII letters to ASCII ones
    /// (the Kelvin sign to <c>k</c>), which an ASCII lower-casing would miss.
    /// </summary>
    public bool IsSecretKey(ReadOnlySpan<byte> utf8Key)
    {
        if (utf8Key.IndexOfAnyExcept(NormalizedKeyBytes) < 0)
        {
            return IsSecretNormalized(utf8Key); // already lower-case, nothing to drop: most keys
        }
        if (!Ascii.IsValid(utf8Key))
        {
            return IsSecretKey(Encoding.UTF8.GetString(utf8Key));
        }
        byte[]? rented = null;
        var buffer = utf8Key.Length <= StackKeyBytes
            ? stackalloc byte[StackKeyBytes]
            : (rented = ArrayPool<byte>.Shared.Rent(utf8Key.Length));
        var length = 0;
        foreach (var b in utf8Key)
        {
            if (b is not ((byte)'_' or (byte)'-' or (byte)'.' or (byte)' '))
            {
                buffer[length++] = char.IsAsciiLetterUpper((char)b) ? (byte)(b | 0x20) : b;
            }
        }
        var secret = IsSecretNormalized(buffer[..length]);
        if (rented is not null)
        {
            ArrayPool<byte>.Shared.Return(rented);
        }
        return secret;
    }

    private bool IsSecretNormalized(ReadOnlySpan<byte> key)
    {
        for (var i = 0; i <= key.Length - ShortestSecretKeyPart; i++)
        {
            if (SecretKeyPartsByFirstByte[key[i]] is { } parts)
            {
                foreach (var part in parts)
                {
                    if (key[i..].StartsWith(part))
                    {
                        return true;
                    }
                }
            }
        }
        if (key.Length >= ShortestSecretKey && key.Length <= LongestSecretKey)
        {
            foreach (var exact in SecretKeysUtf8)
            {
                if (key.SequenceEqual(exact))
                {
                    return true;
                }
            }
        }
        foreach (var extra in _extraKeysUtf8)
        {
            if (key.IndexOf(extra) >= 0)
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>
    /// True when a string value as a whole (without surrounding white space) looks like a credential whatever its key:
    /// <c>Bearer …</c>/<c>Basic …</c>, a PEM block (<c>-----BEGIN</c>), a JWT, a well-known API key shape, an AWS
    /// access key id. Credentials inside longer text are found by <see cref="WriteArguments"/>, not by this.
    /// </summary>
    public static bool LooksSecret(string value) => LooksSecret(Encoding.UTF8.GetBytes(value));

    /// <inheritdoc cref="LooksSecret(string)"/>
    public static bool LooksSecret(ReadOnlySpan<byte> utf8Value)
    {
        // Every shape starts with one of a few bytes: most strings are done here, without trimming (ASCII white space is <= ' ').
        if (utf8Value.IsEmpty || (utf8Value[0] is > (byte)' ' and < 0x80 && !WholeSecretFirstBytes.Contains(utf8Value[0])))
        {
            return false;
        }
        var v = TrimWhiteSpace(utf8Value);
        if (v.IsEmpty || !WholeSecretFirstBytes.Contains(v[0]))
        {
            return false;
        }
        if (StartsWithIgnoreCase(v, "Bearer "u8) || StartsWithIgnoreCase(v, "Basic "u8) || v.StartsWith("-----BEGIN"u8))
        {
            return true;
        }
        // JSON Web Tokens: three base64url segments, the header a JSON object ("eyJ").
        if (v.StartsWith("eyJ"u8) && v.Count((byte)'.') == 2 && v.Length > 20 && v.IndexOfAnyExcept(JwtTextBytes) < 0)
        {
            return true;
        }
        foreach (var prefix in KeyPrefixes)
        {
            if (prefix[0] == v[0] && v.StartsWith(prefix) && v.Length >= prefix.Length + KeyPrefixMinTail && v.IndexOfAnyExcept(KeyTextBytes) < 0)
            {
                return true;
            }
        }
        return v.Length == AwsKeyIdLength && IsAwsKeyIdAt(v, 0);
    }

    /// <summary>Every URL password (<c>scheme://user:password@host</c>) in <paramref name="value"/> replaced; other text kept.</summary>
    public static string RedactUrlPassword(string value)
    {
        if (!value.Contains("://", StringComparison.Ordinal))
        {
            return value;
        }
        var text = Encoding.UTF8.GetBytes(value);
        var result = new StringBuilder(value.Length);
        var from = 0;
        for (var i = text.AsSpan().IndexOf("://"u8); i >= 0; i = NextIndexOf(text, "://"u8, i + 3))
        {
            if (TryUrlPassword(text, i, out var start, out var end) && start >= from)
            {
                result.Append(Encoding.UTF8.GetString(text, from, start - from)).Append(Redacted);
                from = end;
            }
        }
        return from == 0 ? value : result.Append(Encoding.UTF8.GetString(text, from, text.Length - from)).ToString();
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
                                writer.WriteStringValue(RedactedUtf8);
                                awaitingValue = false;
                                goto done;
                            }
                            writer.WriteStringValue(RedactedUtf8);
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
                        var name = Unescaped(ref reader);
                        writer.WritePropertyName(name);
                        redactNext = IsSecretKey(name);
                        awaitingValue = true;
                        break;
                    case JsonTokenType.String:
                        if (redactNext)
                        {
                            writer.WriteStringValue(RedactedUtf8);
                        }
                        else
                        {
                            cut |= WriteString(writer, Unescaped(ref reader));
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
                            writer.WriteStringValue(RedactedUtf8);
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

    /// <summary>The current property name or string as UTF-8: the input itself, or unescaped into <see cref="_unescaped"/>.</summary>
    private ReadOnlySpan<byte> Unescaped(ref Utf8JsonReader reader)
    {
        // The reader reads one span (never a sequence), so ValueSpan is the whole token.
        if (!reader.ValueIsEscaped)
        {
            return reader.ValueSpan;
        }
        if (_unescaped.Length < reader.ValueSpan.Length)
        {
            _unescaped = new byte[Math.Max(reader.ValueSpan.Length, _unescaped.Length * 2)];
        }
        return _unescaped.AsSpan(0, reader.CopyString(_unescaped));
    }

    /// <summary>
    /// Writes a string value, redacted or cut as needed; true when it was cut. Embedded credentials are replaced before
    /// the cut, so that a credential across the cut cannot leave its start in the trail.
    /// </summary>
    private bool WriteString(Utf8JsonWriter writer, ReadOnlySpan<byte> value)
    {
        if (LooksSecret(value))
        {
            writer.WriteStringValue(RedactedUtf8);
            return false;
        }
        var text = RedactEmbedded(value);
        // A UTF-8 string has at least as many bytes as UTF-16 code units: most strings need no count.
        var chars = text.Length <= MaxStringLength ? text.Length : Encoding.UTF8.GetCharCount(text);
        if (chars <= MaxStringLength)
        {
            writer.WriteStringValue(text);
            return false;
        }
        writer.WriteStringValue(Cut(text, chars));
        return true;
    }

    /// <summary>
    /// The first <see cref="MaxStringLength"/> UTF-16 code units of <paramref name="text"/> (one fewer rather than half
    /// a surrogate pair) and <c>…[N more chars]</c>, in <see cref="_text"/>. <paramref name="text"/> (of
    /// <paramref name="total"/> code units) is either the input or already at the start of <see cref="_text"/>.
    /// </summary>
    private ReadOnlySpan<byte> Cut(ReadOnlySpan<byte> text, int total)
    {
        int keepBytes, keepChars;
        if (Ascii.IsValid(text[..MaxStringLength]))
        {
            keepBytes = keepChars = MaxStringLength;
        }
        else
        {
            keepBytes = keepChars = 0;
            while (keepBytes < text.Length)
            {
                var lead = text[keepBytes];
                var (bytes, chars) = lead < 0x80 ? (1, 1) : lead < 0xE0 ? (2, 1) : lead < 0xF0 ? (3, 1) : (4, 2);
                if (keepChars + chars > MaxStringLength)
                {
                    break;
                }
                keepBytes += bytes;
                keepChars += chars;
            }
        }
        var inPlace = text.Overlaps(_text);
        EnsureText(keepBytes + 32, preserve: inPlace);
        if (!inPlace)
        {
            text[..keepBytes].CopyTo(_text);
        }
        var length = keepBytes;
        "…["u8.CopyTo(_text.AsSpan(length));
        length += "…["u8.Length;
        (total - keepChars).TryFormat(_text.AsSpan(length), out var digits, provider: System.Globalization.CultureInfo.InvariantCulture);
        length += digits;
        " more chars]"u8.CopyTo(_text.AsSpan(length));
        return _text.AsSpan(0, length + " more chars]"u8.Length);
    }

    private void EnsureText(int length, bool preserve)
    {
        if (_text.Length < length)
        {
            var larger = new byte[Math.Max(length, _text.Length * 2)];
            if (preserve)
            {
                _text.CopyTo(larger, 0);
            }
            _text = larger;
        }
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

    private static byte[][]?[] IndexByFirstByte(string[] words)
    {
        var index = new byte[][]?[256];
        foreach (var word in words)
        {
            var bytes = Encoding.ASCII.GetBytes(word);
            index[bytes[0]] = [.. index[bytes[0]] ?? [], bytes];
        }
        return index;
    }

    private static int NextIndexOf(ReadOnlySpan<byte> text, ReadOnlySpan<byte> value, int from)
    {
        var i = text[from..].IndexOf(value);
        return i < 0 ? -1 : from + i;
    }
}
