using System.Text.Json;
using System.Security.Cryptography;

namespace Sidecar.Audit;

/// <summary>
/// The hash chain that makes the trail tamper-evident. Each event is a JSON object E whose last field is
/// <c>"prev"</c>, the previous event's hash; its hash is SHA-256(E), or HMAC-SHA256(key, E) when a key is configured
/// (then nobody without the key can rewrite the chain after an edit). The line written is E with
/// <c>,"hash":"&lt;64 hex&gt;"</c> added as its last field. Editing, removing or reordering any event breaks every
/// link after it; <c>sidecar audit verify</c> finds the first break.
/// </summary>
public sealed class AuditChain
{
    public const int HashBytes = 32;

    /// <summary>The <c>prev</c> of a chain's first event.</summary>
    public static ReadOnlySpan<byte> Genesis => new byte[HashBytes];

    private static ReadOnlySpan<byte> HashField => ",\"hash\":\""u8;

    private readonly byte[]? _key;

    // One hash object reused for every event: SHA256.HashData sets up a new OpenSSL context per call (1.67 µs for a
    // ~560-byte event line, against 1.33 µs reusing one: bench/RESULTS.md). Not thread-safe: a chain has one writer.
    private readonly IncrementalHash _hash;

    public AuditChain(byte[]? key)
    {
        _key = key is { Length: > 0 } ? key : null;
        _hash = _key is null ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : IncrementalHash.CreateHMAC(HashAlgorithmName.SHA256, _key);
    }

    /// <summary><c>sha256</c>, or <c>hmac-sha256</c> when keyed.</summary>
    public string Algorithm => _key is null ? "sha256" : "hmac-sha256";

    public bool IsKeyed => _key is not null;

    public void Hash(ReadOnlySpan<byte> eventJson, Span<byte> destination)
    {
        _hash.AppendData(eventJson);
        _hash.GetHashAndReset(destination);
    }

    /// <summary>The number of bytes <see cref="AppendLine"/> adds to an event.</summary>
    public static int LineOverhead => HashField.Length + HashBytes * 2 + 3;

    /// <summary>Writes the line for <paramref name="eventJson"/> (which ends with <c>}</c>) and its hash into <paramref name="line"/>.</summary>
    public static int AppendLine(ReadOnlySpan<byte> eventJson, ReadOnlySpan<byte> hash, Span<byte> line)
    {
        var body = eventJson[..^1];
        body.CopyTo(line);
        var at = body.Length;
        HashField.CopyTo(line[at..]);
        at += HashField.Length;
        Convert.TryToHexStringLower(hash, line[at..], out var written);
        at += written;
        line[at++] = (byte)'"';
        line[at++] = (byte)'}';
        line[at++] = (byte)'\n';
        return at;
    }

    /// <summary>
    /// Reads an event's <c>seq</c>, which the writer always puts first. <paramref name="json"/> may be only the start
    /// of a line.
    /// </summary>
    public static bool TryReadSequence(ReadOnlySpan<byte> json, out long sequence)
    {
        sequence = 0;
        var reader = new Utf8JsonReader(json, isFinalBlock: false, state: default);
        try
        {
            return reader.Read() && reader.TokenType == JsonTokenType.StartObject && reader.Read()
                && reader.ValueTextEquals("seq"u8) && reader.Read() && reader.TryGetInt64(out sequence);
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Reads an event's <c>type</c> (the first top-level <c>"type"</c> string) from a whole line. False when there is
    /// none or the line is not JSON.
    /// </summary>
    public static bool TryReadType(ReadOnlySpan<byte> line, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out string? type)
    {
        type = null;
        var reader = new Utf8JsonReader(line);
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
            {
                return false;
            }
            while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
            {
                var isType = reader.ValueTextEquals("type"u8);
                reader.Read();
                if (isType)
                {
                    if (reader.TokenType != JsonTokenType.String)
                    {
                        return false;
                    }
                    type = reader.GetString()!;
                    return true;
                }
                reader.Skip();
            }
            return false;
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>
    /// Splits a line (without its newline) into the event it hashes and the hash it claims. The event is rebuilt into
    /// <paramref name="eventJson"/> (the line minus the hash field). False when the line has no trailing hash field.
    /// </summary>
    public static bool TrySplitLine(ReadOnlySpan<byte> line, Span<byte> eventJson, out int eventLength, Span<byte> claimedHash)
    {
        eventLength = 0;
        var suffix = HashField.Length + HashBytes * 2 + 2;
        if (line.Length < suffix + 2 || line[^1] != (byte)'}' || line[^2] != (byte)'"')
        {
            return false;
        }
        var fieldAt = line.Length - suffix;
        if (!line.Slice(fieldAt, HashField.Length).SequenceEqual(HashField))
        {
            return false;
        }
        var hex = line.Slice(fieldAt + HashField.Length, HashBytes * 2);
        if (Convert.FromHexString(hex, claimedHash, out _, out var written) != System.Buffers.OperationStatus.Done || written != HashBytes)
        {
            return false;
        }
        line[..fieldAt].CopyTo(eventJson);
        eventJson[fieldAt] = (byte)'}';
        eventLength = fieldAt + 1;
        return true;
    }
}
