using System.Buffers;
using System.Text.Json;
using System.Text.Unicode;

namespace Sidecar.JsonRpc;

public static partial class JsonRpcScanner
{
    /// <summary>
    /// Copies the unescaped <c>params.name</c> of a scanned message as UTF-16 (e.g. <c>"start\u005fproxy"</c> gives
    /// <c>start_proxy</c>). False when the scan has no name or <paramref name="destination"/> is too small.
    /// </summary>
    public static bool TryCopyName(ReadOnlySpan<byte> message, in JsonRpcScan scan, Span<char> destination, out int charsWritten)
    {
        charsWritten = 0;
        TokenRange name = scan.Name;
        if (name.Length < 2 || name.Start < 0 || name.Start > message.Length - name.Length)
        {
            return false;
        }

        return TryCopyString(message.Slice(name.Start, name.Length), scan.NameEscaped, destination, out charsWritten);
    }

    /// <inheritdoc cref="TryCopyName(ReadOnlySpan{byte}, in JsonRpcScan, Span{char}, out int)"/>
    public static bool TryCopyName(in ReadOnlySequence<byte> message, in JsonRpcScan scan, Span<char> destination, out int charsWritten)
    {
        if (message.IsSingleSegment)
        {
            return TryCopyName(message.FirstSpan, in scan, destination, out charsWritten);
        }

        charsWritten = 0;
        TokenRange name = scan.Name;
        if (name.Length < 2 || name.Start < 0 || name.Start > message.Length - name.Length)
        {
            return false;
        }

        ReadOnlySequence<byte> token = message.Slice(name.Start, name.Length);
        if (token.IsSingleSegment)
        {
            return TryCopyString(token.FirstSpan, scan.NameEscaped, destination, out charsWritten);
        }

        byte[]? rented = null;
        Span<byte> buffer = name.Length <= StackUnescape
            ? stackalloc byte[StackUnescape]
            : (rented = ArrayPool<byte>.Shared.Rent(name.Length));
        try
        {
            token.CopyTo(buffer);
            return TryCopyString(buffer[..name.Length], scan.NameEscaped, destination, out charsWritten);
        }
        finally
        {
            Return(rented);
        }
    }

    /// <summary>Transcodes a raw JSON string token (with quotes) to UTF-16, unescaping it when needed.</summary>
    private static bool TryCopyString(ReadOnlySpan<byte> token, bool escaped, Span<char> destination, out int charsWritten)
    {
        if (token.Length < 2 || token[0] != (byte)'"' || token[^1] != (byte)'"')
        {
            charsWritten = 0;
            return false;
        }

        return escaped
            ? TryCopyEscapedString(token, destination, out charsWritten)
            : TryTranscode(token[1..^1], destination, out charsWritten);
    }

    private static bool TryTranscode(ReadOnlySpan<byte> utf8, Span<char> destination, out int charsWritten)
    {
        if (Utf8.ToUtf16(utf8, destination, out _, out charsWritten, replaceInvalidSequences: false) == OperationStatus.Done)
        {
            return true;
        }

        charsWritten = 0;
        return false;
    }

    private static bool TryCopyEscapedString(ReadOnlySpan<byte> token, Span<char> destination, out int charsWritten)
    {
        charsWritten = 0;
        Utf8JsonReader reader = new(token);
        byte[]? rented = null;
        Span<byte> buffer = token.Length <= StackUnescape
            ? stackalloc byte[StackUnescape]
            : (rented = ArrayPool<byte>.Shared.Rent(token.Length));
        try
        {
            if (!reader.Read() || reader.TokenType != JsonTokenType.String)
            {
                return false;
            }

            int length = reader.CopyString(buffer);
            return TryTranscode(buffer[..length], destination, out charsWritten);
        }
        catch (JsonException)
        {
            return false;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
        finally
        {
            Return(rented);
        }
    }

    /// <summary>
    /// Enumerates the elements of a batch (call only after <see cref="Scan(in ReadOnlySequence{byte}, out JsonRpcScan, JsonRpcScannerOptions?)"/>
    /// returned <see cref="JsonRpcMessageKind.Batch"/>): yields each element's range, which the caller scans on its own.
    /// Yields nothing when the message is not an array.
    /// </summary>
    public static BatchEnumerator EnumerateBatch(in ReadOnlySequence<byte> message) => new(new Utf8JsonReader(message, BatchEnumerator.Options));

    /// <inheritdoc cref="EnumerateBatch(in ReadOnlySequence{byte})"/>
    public static BatchEnumerator EnumerateBatch(ReadOnlySpan<byte> message) => new(new Utf8JsonReader(message, BatchEnumerator.Options));
}

/// <summary>Enumerates the element ranges of a batch message; use with <c>foreach</c>.</summary>
/// <remarks>Throws <see cref="JsonException"/> if the message is not valid JSON (it must have been scanned first).</remarks>
public ref struct BatchEnumerator
{
    internal static readonly JsonReaderOptions Options = new() { MaxDepth = int.MaxValue };

    private Utf8JsonReader _reader;
    private TokenRange _current;
    private byte _state; // 0 not started, 1 inside the array, 2 done

    internal BatchEnumerator(Utf8JsonReader reader)
    {
        _reader = reader;
        _current = default;
        _state = 0;
    }

    /// <summary>The range of the current element.</summary>
    public readonly TokenRange Current => _current;

    /// <summary>Returns this enumerator (for <c>foreach</c>).</summary>
    public readonly BatchEnumerator GetEnumerator() => this;

    /// <summary>Advances to the next element.</summary>
    public bool MoveNext()
    {
        if (_state == 0)
        {
            _state = _reader.Read() && _reader.TokenType == JsonTokenType.StartArray ? (byte)1 : (byte)2;
        }

        if (_state != 1)
        {
            return false;
        }

        if (!_reader.Read() || _reader.TokenType == JsonTokenType.EndArray)
        {
            _state = 2;
            return false;
        }

        long start = _reader.TokenStartIndex;
        if (_reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray)
        {
            _reader.Skip();
        }

        _current = new TokenRange((int)start, (int)(_reader.BytesConsumed - start));
        return true;
    }
}
