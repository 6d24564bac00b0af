using System.Buffers;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace Sidecar.Approvals;

/// <summary>
/// The canonical form of a tool call's <c>arguments</c>: an approval covers exactly one call, and two calls are the
/// same call when their identity, tool and canonical arguments are equal, whatever their key order or whitespace.
/// </summary>
/// <remarks>
/// <para>
/// The input is the UTF-8 JSON of <c>params.arguments</c>: an object, or nothing at all (no arguments, the same as
/// <c>{}</c>). It is written back as JSON in one form only, in the spirit of RFC 8785 (JCS) but with exact numbers:
/// </para>
/// <list type="bullet">
/// <item><b>Objects</b>: members sorted by key, comparing the keys' UTF-16 code units as unsigned numbers (as JCS);
/// a key that appears twice in one object is an error.</item>
/// <item><b>Arrays</b>: elements in their order.</item>
/// <item><b>Whitespace</b>: none outside strings.</item>
/// <item><b>Strings</b> (keys too): unescaped, then written with the fewest escapes: <c>\"</c>, <c>\\</c>,
/// <c>\b \f \n \r \t</c>, and <c>\u00xx</c> (lowercase hex) for the other characters below U+0020; everything else,
/// non-ASCII included, as raw UTF-8. So <c>"\u0041"</c> and <c>"A"</c> are the same string. Invalid UTF-8 and
/// unpaired surrogate escapes are errors.</item>
/// <item><b>Numbers</b>: compared by exact decimal value, never through a double: <c>1</c>, <c>1.0</c>, <c>10e-1</c>
/// and <c>0.1E1</c> are one number, <c>-0</c> is <c>0</c>, and 9007199254740993 stays apart from 9007199254740992.
/// With the significant digits <c>d1d2…dk</c> (no leading or trailing zeros) and the value
/// <c>d1.d2…dk × 10^N</c>, a number is written as plain decimal when <c>-6 ≤ N ≤ 20</c> (<c>100</c>, <c>1.5</c>,
/// <c>0.000001</c>), else as <c>d1.d2…dke+N</c> or <c>d1.d2…dke-N</c> (<c>1e+21</c>, <c>1.5e-7</c>), with a leading
/// <c>-</c> when negative: the layout of ECMAScript's <c>Number.prototype.toString</c> (and so of JCS), with every
/// digit of the literal kept. Zero is <c>0</c>. A number whose <c>|N|</c> exceeds <see cref="MaxExponent"/> is an
/// error, and so is an exponent written with more than nine digits, even on zero.</item>
/// <item><b>Literals</b>: <c>true</c>, <c>false</c>, <c>null</c> as they are; a member whose value is <c>null</c> is
/// not the same as an absent member.</item>
/// <item><b>Depth</b>: at most <see cref="MaxDepth"/> nested objects and arrays, the arguments object included.</item>
/// </list>
/// <para>
/// Not on a hot path (once per call that needs an approval): it allocates freely, and nothing is written to the
/// output unless the whole input is accepted.
/// </para>
/// </remarks>
public static class CanonicalArguments
{
    /// <summary>The deepest nesting accepted: objects and arrays, the arguments object counting as one.</summary>
    public const int MaxDepth = 64;

    /// <summary>The largest power of ten a number may have (<c>|N|</c> in <c>d.ddd × 10^N</c>).</summary>
    public const int MaxExponent = 10000;

    // Bytes a string can hold as they are: everything but the quote, the backslash and the C0 controls.
    private static readonly SearchValues<byte> s_escaped = SearchValues.Create(
        "\"\\\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f"u8);

    private static readonly JsonReaderOptions s_options = new()
    {
        CommentHandling = JsonCommentHandling.Disallow,
        AllowTrailingCommas = false,
        AllowMultipleValues = false,
        // One level more than ours, so that our own, distinct TooDeep error fires first.
        MaxDepth = MaxDepth + 1,
    };

    /// <summary>Writes the canonical form of <paramref name="arguments"/> to <paramref name="output"/>.</summary>
    /// <returns>False, with the reason in <paramref name="error"/> and nothing written, if the input is refused.</returns>
    public static bool TryWrite(ReadOnlySpan<byte> arguments, IBufferWriter<byte> output, out string? error)
    {
        ArgumentNullException.ThrowIfNull(output);
        var canonical = Canonicalize(arguments, out error);
        if (canonical is null)
        {
            return false;
        }
        output.Write(canonical.Written);
        return true;
    }

    /// <inheritdoc cref="TryWrite(ReadOnlySpan{byte}, IBufferWriter{byte}, out string?)"/>
    public static bool TryWrite(in ReadOnlySequence<byte> arguments, IBufferWriter<byte> output, out string? error) =>
        arguments.IsSingleSegment
            ? TryWrite(arguments.FirstSpan, output, out error)
            : TryWrite(arguments.ToArray(), output, out error);

    /// <summary>The SHA-256 of the canonical form of <paramref name="arguments"/>, as 64 lowercase hex digits.</summary>
    /// <returns>False, with the reason in <paramref name="error"/> and an empty hash, if the input is refused.</returns>
    public static bool TryHash(ReadOnlySpan<byte> arguments, out string sha256Hex, out string? error)
    {
        var canonical = Canonicalize(arguments, out error);
        if (canonical is null)
        {
            sha256Hex = string.Empty;
            return false;
        }
        Span<byte> hash = stackalloc byte[SHA256.HashSizeInBytes];
        SHA256.HashData(canonical.Written, hash);
        sha256Hex = Convert.ToHexStringLower(hash);
        return true;
    }

    /// <inheritdoc cref="TryHash(ReadOnlySpan{byte}, out string, out string?)"/>
    public static bool TryHash(in ReadOnlySequence<byte> arguments, out string sha256Hex, out string? error) =>
        arguments.IsSingleSegment
            ? TryHash(arguments.FirstSpan, out sha256Hex, out error)
            : TryHash(arguments.ToArray(), out sha256Hex, out error);

    /// <summary>The canonical form, or null with the reason.</summary>
    private static Buffer? Canonicalize(ReadOnlySpan<byte> arguments, out string? error)
    {
        var buffer = new Buffer(arguments.Length + 16);
        if (arguments.IsEmpty)
        {
            buffer.Append("{}"u8);
            error = null;
            return buffer;
        }
        // Checked once here: strings can then be copied as they are, and only escapes need decoding.
        if (!Utf8.IsValid(arguments))
        {
            error = Errors.InvalidUtf8;
            return null;
        }
        var reader = new Utf8JsonReader(arguments, s_options);
        try
        {
            if (!reader.Read())
            {
                error = Errors.Syntax;
                return null;
            }
            if (reader.TokenType != JsonTokenType.StartObject)
            {
                error = Errors.NotObject;
                return null;
            }
            error = WriteValue(ref reader, buffer);
            if (error is null && reader.Read())
            {
                error = Errors.Syntax; // unreachable: the reader refuses a second value itself
            }
        }
        catch (JsonException)
        {
            error = Errors.Syntax;
        }
        catch (InvalidOperationException)
        {
            // CopyString refuses an escape that is half of a surrogate pair.
            error = Errors.BadSurrogate;
        }
        return error is null ? buffer : null;
    }

    /// <summary>Writes the value the reader is on (its last token consumed); null, or why not.</summary>
    private static string? WriteValue(ref Utf8JsonReader reader, Buffer output)
    {
        switch (reader.TokenType)
        {
            case JsonTokenType.StartObject:
                return reader.CurrentDepth >= MaxDepth ? Errors.TooDeep : WriteObject(ref reader, output);
            case JsonTokenType.StartArray:
                return reader.CurrentDepth >= MaxDepth ? Errors.TooDeep : WriteArray(ref reader, output);
            case JsonTokenType.String:
                WriteString(Unescaped(ref reader), output);
                return null;
            case JsonTokenType.Number:
                return WriteNumber(reader.ValueSpan, output);
            case JsonTokenType.True:
                output.Append("true"u8);
                return null;
            case JsonTokenType.False:
                output.Append("false"u8);
                return null;
            case JsonTokenType.Null:
                output.Append("null"u8);
                return null;
            default:
                return Errors.Syntax;
        }
    }

    private static string? WriteArray(ref Utf8JsonReader reader, Buffer output)
    {
        output.Append((byte)'[');
        var first = true;
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
        {
            if (!first)
            {
                output.Append((byte)',');
            }
            first = false;
            if (WriteValue(ref reader, output) is { } error)
            {
                return error;
            }
        }
        output.Append((byte)']');
        return null;
    }

    /// <summary>
    /// Writes each member where the output stands, remembering where its key and value went; then takes the object's
    /// bytes out again and writes the members back in key order.
    /// </summary>
    private static string? WriteObject(ref Utf8JsonReader reader, Buffer output)
    {
        var start = output.Length;
        List<Member>? members = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var name = Unescaped(ref reader);
            var keyStart = output.Length;
            WriteString(name, output);
            var valueStart = output.Length;
            reader.Read();
            if (WriteValue(ref reader, output) is { } error)
            {
                return error;
            }
            (members ??= []).Add(new Member(Encoding.UTF8.GetString(name), keyStart - start, valueStart - start, output.Length - start));
        }
        if (members is null)
        {
            output.Append("{}"u8);
            return null;
        }

        // Ordinal string order is the order of UTF-16 code units, as JCS wants (not the UTF-8 byte order).
        members.Sort(static (a, b) => string.CompareOrdinal(a.Key, b.Key));
        for (var i = 1; i < members.Count; i++)
        {
            if (string.Equals(members[i - 1].Key, members[i].Key, StringComparison.Ordinal))
            {
                return Errors.DuplicateKey;
            }
        }
        var written = output.Written[start..].ToArray();
        output.Truncate(start);
        output.Append((byte)'{');
        for (var i = 0; i < members.Count; i++)
        {
            var member = members[i];
            if (i > 0)
            {
                output.Append((byte)',');
            }
            output.Append(written.AsSpan(member.KeyStart, member.ValueStart - member.KeyStart));
            output.Append((byte)':');
            output.Append(written.AsSpan(member.ValueStart, member.End - member.ValueStart));
        }
        output.Append((byte)'}');
        return null;
    }

    /// <summary>The current string or property name, unescaped (UTF-8; the input was validated).</summary>
    private static ReadOnlySpan<byte> Unescaped(ref Utf8JsonReader reader)
    {
        if (!reader.ValueIsEscaped)
        {
            return reader.ValueSpan;
        }
        // Unescaping never makes a string longer.
        var buffer = new byte[reader.ValueSpan.Length];
        return buffer.AsSpan(0, reader.CopyString(buffer));
    }

    private static void WriteString(ReadOnlySpan<byte> text, Buffer output)
    {
        output.Append((byte)'"');
        while (true)
        {
            var next = text.IndexOfAny(s_escaped);
            if (next < 0)
            {
                output.Append(text);
                break;
            }
            output.Append(text[..next]);
            var b = text[next];
            switch (b)
            {
                case (byte)'"':
                    output.Append("\\\""u8);
                    break;
                case (byte)'\\':
                    output.Append("\\\\"u8);
                    break;
                case (byte)'\b':
                    output.Append("\\b"u8);
                    break;
                case (byte)'\f':
                    output.Append("\\f"u8);
                    break;
                case (byte)'\n':
                    output.Append("\\n"u8);
                    break;
                case (byte)'\r':
                    output.Append("\\r"u8);
                    break;
                case (byte)'\t':
                    output.Append("\\t"u8);
                    break;
                default:
                    output.Append("\\u00"u8);
                    output.Append((byte)"0123456789abcdef"[b >> 4]);
                    output.Append((byte)"0123456789abcdef"[b & 0xF]);
                    break;
            }
            text = text[(next + 1)..];
        }
        output.Append((byte)'"');
    }

    /// <summary>
    /// Writes a number literal (already checked against the JSON grammar by the reader) in the canonical layout; null,
    /// or why not. Works on the decimal digits only: no double, no BigInteger.
    /// </summary>
    private static string? WriteNumber(ReadOnlySpan<byte> literal, Buffer output)
    {
        var i = 0;
        var negative = literal[0] == (byte)'-';
        if (negative)
        {
            i++;
        }

        // value = digits × 10^exponent, digits being the integer and fraction digits run together.
        var digits = new byte[literal.Length];
        var count = 0;
        long exponent = 0;
        for (; i < literal.Length && char.IsAsciiDigit((char)literal[i]); i++)
        {
            digits[count++] = literal[i];
        }
        if (i < literal.Length && literal[i] == (byte)'.')
        {
            for (i++; i < literal.Length && char.IsAsciiDigit((char)literal[i]); i++)
            {
                digits[count++] = literal[i];
                exponent--;
            }
        }
        if (i < literal.Length && (literal[i] | 0x20) == (byte)'e')
        {
            i++;
            var negativeExponent = literal[i] == (byte)'-';
            if (literal[i] is (byte)'-' or (byte)'+')
            {
                i++;
            }
            var written = literal[i..].TrimStart((byte)'0');
            // More than 9 digits is far beyond MaxExponent whatever the mantissa (its length is bounded by an int).
            if (written.Length > 9)
            {
                return Errors.NumberOutOfRange;
            }
            var value = written.IsEmpty ? 0 : int.Parse(written, NumberStyles.None, CultureInfo.InvariantCulture);
            exponent += negativeExponent ? -value : value;
        }

        var significant = digits.AsSpan(0, count);
        var lead = significant.IndexOfAnyExcept((byte)'0');
        if (lead < 0)
        {
            output.Append((byte)'0'); // zero, -0 included, whatever its exponent
            return null;
        }
        var last = significant.LastIndexOfAnyExcept((byte)'0');
        exponent += count - 1 - last;
        significant = significant[lead..(last + 1)];
        var k = significant.Length;

        // value = d1.d2…dk × 10^n
        var n = exponent + k - 1;
        if (n > MaxExponent || n < -MaxExponent)
        {
            return Errors.NumberOutOfRange;
        }
        if (negative)
        {
            output.Append((byte)'-');
        }
        if (n is >= -6 and <= 20)
        {
            var integerDigits = (int)n + 1;
            if (integerDigits <= 0)
            {
                // 0.000ddd
                output.Append("0."u8);
                output.AppendRepeated((byte)'0', -integerDigits);
                output.Append(significant);
            }
            else if (k <= integerDigits)
            {
                // ddd000
                output.Append(significant);
                output.AppendRepeated((byte)'0', integerDigits - k);
            }
            else
            {
                // ddd.ddd
                output.Append(significant[..integerDigits]);
                output.Append((byte)'.');
                output.Append(significant[integerDigits..]);
            }
        }
        else
        {
            output.Append(significant[0]);
            if (k > 1)
            {
                output.Append((byte)'.');
                output.Append(significant[1..]);
            }
            output.Append(n < 0 ? "e-"u8 : "e+"u8);
            Span<byte> power = stackalloc byte[8];
            _ = Math.Abs(n).TryFormat(power, out var length, default, CultureInfo.InvariantCulture);
            output.Append(power[..length]);
        }
        return null;
    }

    /// <summary>One member of an object being written: where its key, its value and its end are, from the object's start.</summary>
    private readonly record struct Member(string Key, int KeyStart, int ValueStart, int End);

    /// <summary>A growable byte buffer that can also be cut back (objects are rewritten in place).</summary>
    private sealed class Buffer(int capacity)
    {
        private byte[] _data = new byte[Math.Max(capacity, 64)];

        public int Length { get; private set; }

        public ReadOnlySpan<byte> Written => _data.AsSpan(0, Length);

        public void Append(byte value)
        {
            Reserve(1);
            _data[Length++] = value;
        }

        public void Append(ReadOnlySpan<byte> value)
        {
            Reserve(value.Length);
            value.CopyTo(_data.AsSpan(Length));
            Length += value.Length;
        }

        public void AppendRepeated(byte value, int count)
        {
            Reserve(count);
            _data.AsSpan(Length, count).Fill(value);
            Length += count;
        }

        public void Truncate(int length) => Length = length;

        private void Reserve(int more)
        {
            if (_data.Length - Length < more)
            {
                Array.Resize(ref _data, Math.Max(_data.Length * 2, Length + more));
            }
        }
    }

    private static class Errors
    {
        public const string InvalidUtf8 = "The arguments are not valid UTF-8.";
        public const string Syntax = "The arguments are not valid JSON.";
        public const string NotObject = "The arguments must be a JSON object.";
        public const string BadSurrogate = "A string in the arguments contains an unpaired UTF-16 surrogate escape.";
        public const string TooDeep = "The arguments are nested more than 64 levels deep.";
        public const string DuplicateKey = "An object in the arguments contains a duplicate key.";
        public const string NumberOutOfRange = "A number in the arguments has a power of ten beyond ±10000.";
    }
}
