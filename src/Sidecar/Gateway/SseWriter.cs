using System.IO.Pipelines;

namespace Sidecar.Gateway;

/// <summary>Writes Server-Sent Events. JSON payloads are written on one <c>data:</c> line: raw CR/LF bytes, which in valid
/// JSON are only insignificant whitespace, become spaces so a message can never break the event framing.</summary>
internal static class SseWriter
{
    public static void WriteEvent(PipeWriter writer, ReadOnlySpan<byte> eventName, ReadOnlySpan<byte> data)
    {
        var length = 7 + eventName.Length + 1 + 6 + data.Length + 2;
        var span = writer.GetSpan(length);
        "event: "u8.CopyTo(span);
        var pos = 7;
        eventName.CopyTo(span[pos..]);
        pos += eventName.Length;
        span[pos++] = (byte)'\n';
        "data: "u8.CopyTo(span[pos..]);
        pos += 6;
        var target = span.Slice(pos, data.Length);
        data.CopyTo(target);
        target.Replace((byte)'\n', (byte)' ');
        target.Replace((byte)'\r', (byte)' ');
        pos += data.Length;
        span[pos++] = (byte)'\n';
        span[pos++] = (byte)'\n';
        writer.Advance(pos);
    }

    public static void WriteComment(PipeWriter writer, ReadOnlySpan<byte> text)
    {
        var span = writer.GetSpan(text.Length + 3);
        span[0] = (byte)':';
        text.CopyTo(span[1..]);
        span[text.Length + 1] = (byte)'\n';
        span[text.Length + 2] = (byte)'\n';
        writer.Advance(text.Length + 3);
    }
}
