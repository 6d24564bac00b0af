using System.Buffers;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Sidecar.Catalogue;

/// <summary>
/// Writes a policy file's <c>pins</c> (<c>sidecar tools --pin</c>) and leaves every other byte of the file as it was:
/// an existing top-level <c>pins</c> member gets a new value in place; otherwise one is inserted after the last member,
/// before the closing brace. Indentation and line endings follow the file's own (a one-line policy gets a one-line
/// <c>pins</c>). Pure: bytes in, bytes out; the caller validates the result before writing it.
/// </summary>
public static class PinWriter
{
    private static readonly JsonWriterOptions s_options = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>
    /// <paramref name="policy"/> (a policy file: a JSON object) with <c>pins</c> set to <paramref name="pins"/> (tool
    /// name → <c>sha256:…</c>, in the order given). Throws <see cref="JsonException"/> when the file is not a JSON object.
    /// </summary>
    public static byte[] Write(ReadOnlySpan<byte> policy, IReadOnlyList<KeyValuePair<string, string>> pins)
    {
        var start = policy.StartsWith("\uFEFF"u8) ? 3 : 0;
        var body = policy[start..];
        var reader = new Utf8JsonReader(body, new JsonReaderOptions { MaxDepth = 256 });
        if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
        {
            throw new JsonException("a policy must be a JSON object");
        }
        var open = (int)reader.TokenStartIndex;
        int? firstName = null;
        var lastValueEnd = -1;
        (int Name, int ValueStart, int ValueEnd)? existing = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var name = (int)reader.TokenStartIndex;
            firstName ??= name;
            var isPins = reader.ValueTextEquals("pins"u8);
            reader.Read();
            var valueStart = (int)reader.TokenStartIndex;
            reader.Skip();
            lastValueEnd = (int)reader.BytesConsumed;
            if (isPins)
            {
                existing = (name, valueStart, lastValueEnd);
            }
        }
        if (reader.TokenType != JsonTokenType.EndObject)
        {
            throw new JsonException("a policy must be a JSON object");
        }

        var newline = body.IndexOf("\r\n"u8) >= 0 ? "\r\n" : "\n";
        var output = new ArrayBufferWriter<byte>(policy.Length + 128 + pins.Count * 100);
        output.Write(policy[..start]);
        if (existing is { } member)
        {
            var indent = LineIndent(body, member.Name);
            output.Write(body[..member.ValueStart]);
            WriteValue(output, pins, indent is null ? null : (indent, indent + Unit(body, open, indent)), newline);
            output.Write(body[member.ValueEnd..]);
        }
        else if (firstName is { } first)
        {
            var indent = LineIndent(body, first);
            output.Write(body[..lastValueEnd]);
            Append(output, indent is null ? ", " : "," + newline + indent);
            Append(output, "\"pins\": ");
            WriteValue(output, pins, indent is null ? null : (indent, indent + Unit(body, open, indent)), newline);
            output.Write(body[lastValueEnd..]);
        }
        else
        {
            output.Write(body[..(open + 1)]);
            Append(output, "\"pins\": ");
            WriteValue(output, pins, null, newline);
            output.Write(body[(open + 1)..]);
        }
        return output.WrittenSpan.ToArray();
    }

    /// <summary>The <c>pins</c> object: one member a line at <c>Inner</c> and the closing brace at <c>Member</c>, or on one line when <paramref name="indent"/> is null.</summary>
    private static void WriteValue(ArrayBufferWriter<byte> output, IReadOnlyList<KeyValuePair<string, string>> pins, (string Member, string Inner)? indent,
        string newline)
    {
        if (pins.Count == 0)
        {
            Append(output, "{}");
            return;
        }
        Append(output, indent is null ? "{ " : "{" + newline);
        for (var i = 0; i < pins.Count; i++)
        {
            if (indent is { } multiline)
            {
                Append(output, multiline.Inner);
            }
            WriteString(output, pins[i].Key);
            Append(output, ": ");
            WriteString(output, pins[i].Value);
            if (i < pins.Count - 1)
            {
                Append(output, indent is null ? ", " : "," + newline);
            }
        }
        Append(output, indent is { } m ? newline + m.Member + "}" : " }");
    }

    /// <summary>
    /// The white space before <paramref name="offset"/> on its line, when nothing else precedes it there (the member
    /// starts a line); null when the member shares its line with other content (a one-line object).
    /// </summary>
    private static string? LineIndent(ReadOnlySpan<byte> text, int offset)
    {
        var i = offset;
        while (i > 0 && text[i - 1] is (byte)' ' or (byte)'\t')
        {
            i--;
        }
        return i == 0 || text[i - 1] == (byte)'\n' ? Encoding.ASCII.GetString(text[i..offset]) : null;
    }

    /// <summary>One level of indentation: the members' indent beyond the root brace's own (two spaces when that says nothing).</summary>
    private static string Unit(ReadOnlySpan<byte> text, int open, string memberIndent)
    {
        var rootIndent = LineIndent(text, open) ?? "";
        return memberIndent.Length > rootIndent.Length && memberIndent.StartsWith(rootIndent, StringComparison.Ordinal)
            ? memberIndent[rootIndent.Length..]
            : "  ";
    }

    private static void WriteString(ArrayBufferWriter<byte> output, string value)
    {
        using var json = new Utf8JsonWriter(output, s_options);
        json.WriteStringValue(value);
    }

    private static void Append(ArrayBufferWriter<byte> output, string text) => output.Write(Encoding.UTF8.GetBytes(text));
}
