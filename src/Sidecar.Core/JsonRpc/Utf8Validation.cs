using System.Buffers;
using System.Text.Unicode;

namespace Sidecar.JsonRpc;

/// <summary>UTF-8 validation of spans and (multi-segment) sequences, with the offset of the first invalid byte.</summary>
internal static class Utf8Validation
{
    /// <summary>True when <paramref name="message"/> is valid UTF-8, also when a character is split across segments.</summary>
    public static bool IsValid(in ReadOnlySequence<byte> message)
    {
        if (message.IsSingleSegment)
        {
            return Utf8.IsValid(message.FirstSpan);
        }

        // At most 3 bytes of an incomplete character are carried from one segment to the next.
        Span<byte> carry = stackalloc byte[4];
        int carried = 0;
        int needed = 0;
        foreach (ReadOnlyMemory<byte> memory in message)
        {
            ReadOnlySpan<byte> segment = memory.Span;
            if (carried > 0)
            {
                int take = Math.Min(needed - carried, segment.Length);
                segment[..take].CopyTo(carry[carried..]);
                carried += take;
                segment = segment[take..];
                if (carried < needed)
                {
                    continue;
                }

                if (!Utf8.IsValid(carry[..needed]))
                {
                    return false;
                }

                carried = 0;
            }

            int cut = IncompleteTailStart(segment, out needed);
            if (!Utf8.IsValid(segment[..cut]))
            {
                return false;
            }

            carried = segment.Length - cut;
            segment[cut..].CopyTo(carry);
        }

        return carried == 0;
    }

    /// <summary>
    /// Where a trailing incomplete (but so far plausible) multi-byte character starts, or the length of
    /// <paramref name="segment"/> when it does not end inside one. <paramref name="needed"/> is that character's length.
    /// </summary>
    private static int IncompleteTailStart(ReadOnlySpan<byte> segment, out int needed)
    {
        needed = 0;
        int i = segment.Length - 1;
        int continuation = 0;
        while (continuation < 3 && i >= 0 && (segment[i] & 0xC0) == 0x80)
        {
            i--;
            continuation++;
        }

        if (i < 0)
        {
            return segment.Length;
        }

        int length = SequenceLength(segment[i]);
        if (length > segment.Length - i)
        {
            needed = length;
            return i;
        }

        return segment.Length;
    }

    /// <summary>Length of the character a lead byte announces; 1 for bytes that cannot start one (validation then fails on them).</summary>
    private static int SequenceLength(byte lead) => lead switch
    {
        >= 0xC2 and <= 0xDF => 2,
        >= 0xE0 and <= 0xEF => 3,
        >= 0xF0 and <= 0xF4 => 4,
        _ => 1,
    };

    /// <summary>Offset of the first byte that does not start a valid UTF-8 character, or -1 when all are valid.</summary>
    public static long FindFirstInvalid(ReadOnlySpan<byte> message)
    {
        Span<char> scratch = stackalloc char[512];
        int offset = 0;
        while (true)
        {
            OperationStatus status = Utf8.ToUtf16(message[offset..], scratch, out int read, out _, replaceInvalidSequences: false, isFinalBlock: true);
            offset += read;
            switch (status)
            {
                case OperationStatus.Done:
                    return -1;
                case OperationStatus.DestinationTooSmall:
                    continue;
                default:
                    return offset;
            }
        }
    }

    /// <summary>Offset of the first byte that does not start a valid UTF-8 character, or -1 when all are valid.</summary>
    public static long FindFirstInvalid(in ReadOnlySequence<byte> message)
    {
        if (message.IsSingleSegment)
        {
            return FindFirstInvalid(message.FirstSpan);
        }

        int length = checked((int)message.Length);
        byte[] copy = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            message.CopyTo(copy);
            return FindFirstInvalid(copy.AsSpan(0, length));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(copy);
        }
    }
}
