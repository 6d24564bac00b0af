using System.Buffers;
using ZLogger;
using ZLogger.Formatters;

namespace Sidecar.Logging;

/// <summary>
/// Wraps a ZLogger formatter so that every log entry is exactly one line with no raw control characters in it.
/// </summary>
/// <remarks>
/// <para>
/// Why: Sidecar logs values an agent or an upstream chooses (tool names, session ids, upstream error messages and
/// stderr lines). A tool name such as <c>"x\nFAKE … Information Sidecar: forged"</c> would otherwise start a forged
/// entry on a line of its own, and <c>"\u001b[31m"</c> or a NUL would reach the operator's terminal or log shipper raw.
/// Escaping here, once for every entry, covers every call site, present and future.
/// </para>
/// <para>
/// What: the inner formatter writes the entry (prefix, message, exception) into a pooled buffer; it is then copied
/// to ZLogger's output with every C0 control byte (0x00–0x1F), DEL (0x7F), every C1 control (U+0080–U+009F, which
/// includes U+0085 NEL and U+009B CSI) and U+2028/U+2029 written as an escape: <c>\n</c>, <c>\r</c>, <c>\t</c>, else
/// <c>\uXXXX</c> (lowercase hex). All other UTF-8 is copied unchanged. The line terminator ZLogger appends after the
/// formatter (<see cref="WithLineBreak"/>) is the only line break left in an entry. A logged exception and its stack
/// trace therefore come out on the entry's one line, their newlines as <c>\n</c>: readable, and nothing on a later
/// line can pass for an entry. Backslashes are not escaped: this makes entries line-safe, not reversible.
/// </para>
/// <para>
/// Cost: no allocation per entry. The buffer is rented from <see cref="ArrayPool{T}"/> once and kept by the formatter
/// (ZLogger uses one formatter per writer loop); a concurrent use, which ZLogger does not make, takes a second one.
/// </para>
/// </remarks>
internal sealed class SafeTextFormatter : IZLoggerFormatter
{
    /// <summary>The bytes that are, or may start, something to escape: C0, DEL, and the lead bytes of C1 and of U+2028/U+2029.</summary>
    private static readonly SearchValues<byte> s_special = SearchValues.Create(
    [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F,
        0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1D, 0x1E, 0x1F,
        0x7F, 0xC2, 0xE2,
    ]);

    private readonly IZLoggerFormatter _inner;
    private EntryBuffer? _spare = new();

    public SafeTextFormatter(IZLoggerFormatter inner) => _inner = inner;

    public bool WithLineBreak => _inner.WithLineBreak;

    public void FormatLogEntry(IBufferWriter<byte> writer, IZLoggerEntry entry)
    {
        var buffer = Interlocked.Exchange(ref _spare, null) ?? new EntryBuffer();
        try
        {
            _inner.FormatLogEntry(buffer, entry);
            Escape(buffer.WrittenSpan, writer);
        }
        finally
        {
            buffer.Reset();
            Volatile.Write(ref _spare, buffer);
        }
    }

    /// <summary>Copies <paramref name="text"/> (UTF-8) to <paramref name="output"/>, control characters escaped.</summary>
    internal static void Escape(ReadOnlySpan<byte> text, IBufferWriter<byte> output)
    {
        var start = 0; // the first byte not copied yet
        var position = 0; // where to look for the next special byte
        while (position < text.Length)
        {
            var found = text[position..].IndexOfAny(s_special);
            if (found < 0)
            {
                break;
            }
            var i = position + found;
            var b = text[i];
            int codePoint;
            int length;
            if (b == 0xC2)
            {
                // C2 80..C2 9F: U+0080..U+009F. Any other C2 sequence (U+00A0..U+00BF) or a cut one stays.
                if (i + 1 >= text.Length || text[i + 1] is < 0x80 or > 0x9F)
                {
                    position = i + 1;
                    continue;
                }
                codePoint = text[i + 1];
                length = 2;
            }
            else if (b == 0xE2)
            {
                // E2 80 A8 / E2 80 A9: U+2028 / U+2029. Everything else led by E2 (dashes, quotes, …) stays.
                if (i + 2 >= text.Length || text[i + 1] != 0x80 || text[i + 2] is not (0xA8 or 0xA9))
                {
                    position = i + 1;
                    continue;
                }
                codePoint = 0x2000 + (text[i + 2] - 0x80);
                length = 3;
            }
            else
            {
                codePoint = b;
                length = 1;
            }
            Copy(text[start..i], output);
            WriteEscape(codePoint, output);
            start = position = i + length;
        }
        Copy(text[start..], output);
    }

    private static void WriteEscape(int codePoint, IBufferWriter<byte> output)
    {
        var span = output.GetSpan(6);
        span[0] = (byte)'\\';
        switch (codePoint)
        {
            case '\n':
                span[1] = (byte)'n';
                output.Advance(2);
                return;
            case '\r':
                span[1] = (byte)'r';
                output.Advance(2);
                return;
            case '\t':
                span[1] = (byte)'t';
                output.Advance(2);
                return;
        }
        span[1] = (byte)'u';
        span[2] = Hex(codePoint >> 12);
        span[3] = Hex(codePoint >> 8);
        span[4] = Hex(codePoint >> 4);
        span[5] = Hex(codePoint);
        output.Advance(6);
    }

    private static byte Hex(int value) => (byte)"0123456789abcdef"[value & 0xF];

    private static void Copy(ReadOnlySpan<byte> bytes, IBufferWriter<byte> output)
    {
        while (!bytes.IsEmpty)
        {
            // GetSpan(n) returns at least n bytes; asking for a bounded chunk lets the writer keep its own buffer.
            var span = output.GetSpan(Math.Min(bytes.Length, 4096));
            var count = Math.Min(span.Length, bytes.Length);
            bytes[..count].CopyTo(span);
            output.Advance(count);
            bytes = bytes[count..];
        }
    }

    /// <summary>A growable buffer over <see cref="ArrayPool{T}"/> arrays, kept between entries.</summary>
    private sealed class EntryBuffer : IBufferWriter<byte>
    {
        private const int InitialSize = 4096;

        /// <summary>A buffer grown past this for a huge entry goes back to the pool instead of being kept.</summary>
        private const int MaxKeptSize = 64 * 1024;

        private byte[] _array = [];
        private int _written;

        public ReadOnlySpan<byte> WrittenSpan => _array.AsSpan(0, _written);

        public void Advance(int count)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(count);
            if (count > _array.Length - _written)
            {
                throw new InvalidOperationException("advanced past the buffer");
            }
            _written += count;
        }

        public Memory<byte> GetMemory(int sizeHint = 0)
        {
            Ensure(sizeHint);
            return _array.AsMemory(_written);
        }

        public Span<byte> GetSpan(int sizeHint = 0)
        {
            Ensure(sizeHint);
            return _array.AsSpan(_written);
        }

        public void Reset()
        {
            _written = 0;
            if (_array.Length > MaxKeptSize)
            {
                ArrayPool<byte>.Shared.Return(_array);
                _array = [];
            }
        }

        private void Ensure(int sizeHint)
        {
            var needed = Math.Max(sizeHint, 1);
            if (_array.Length - _written >= needed)
            {
                return;
            }
            var size = Math.Max(Math.Max(InitialSize, _array.Length * 2), checked(_written + needed));
            var array = ArrayPool<byte>.Shared.Rent(size);
            _array.AsSpan(0, _written).CopyTo(array);
            if (_array.Length > 0)
            {
                ArrayPool<byte>.Shared.Return(_array);
            }
            _array = array;
        }
    }
}

/// <summary>Registers <see cref="SafeTextFormatter"/> over ZLogger's plain-text formatter.</summary>
internal static class SafeTextFormatterExtensions
{
    /// <summary>Like <see cref="ZLoggerOptions.UsePlainTextFormatter"/>, with every entry's text escaped to one line.</summary>
    public static ZLoggerOptions UseSafePlainTextFormatter(this ZLoggerOptions options, Action<PlainTextZLoggerFormatter>? configure = null) =>
        options.UseFormatter(() =>
        {
            var formatter = new PlainTextZLoggerFormatter();
            configure?.Invoke(formatter);
            return new SafeTextFormatter(formatter);
        });
}
