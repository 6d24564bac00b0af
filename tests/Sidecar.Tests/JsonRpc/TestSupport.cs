using System.Buffers;
using System.Text;
using Sidecar.JsonRpc;

namespace Sidecar.Tests.JsonRpc;

/// <summary>A minimal sequence segment, to build multi-segment messages.</summary>
internal sealed class TestSegment : ReadOnlySequenceSegment<byte>
{
    public TestSegment(ReadOnlyMemory<byte> memory, long runningIndex)
    {
        Memory = memory;
        RunningIndex = runningIndex;
    }

    public TestSegment Append(ReadOnlyMemory<byte> memory)
    {
        TestSegment next = new(memory, RunningIndex + Memory.Length);
        Next = next;
        return next;
    }
}

internal static class TestSupport
{
    public static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    /// <summary>Splits <paramref name="data"/> at the given offsets (each piece copied to its own array; empty pieces allowed).</summary>
    public static ReadOnlySequence<byte> Split(byte[] data, params int[] cuts)
    {
        TestSegment? first = null;
        TestSegment? last = null;
        int previous = 0;
        foreach (int cut in cuts.Append(data.Length))
        {
            byte[] piece = data[previous..cut];
            if (first is null)
            {
                first = last = new TestSegment(piece, 0);
            }
            else
            {
                last = last!.Append(piece);
            }

            previous = cut;
        }

        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    /// <summary>Splits <paramref name="data"/> into segments of <paramref name="size"/> bytes.</summary>
    public static ReadOnlySequence<byte> Chunks(byte[] data, int size)
    {
        List<int> cuts = [];
        for (int i = size; i < data.Length; i += size)
        {
            cuts.Add(i);
        }

        return Split(data, [.. cuts]);
    }

    public static JsonRpcScan Scan(string json, JsonRpcScannerOptions? options = null) => Scan(Utf8(json), options);

    public static JsonRpcScan Scan(byte[] json, JsonRpcScannerOptions? options = null)
    {
        ScanStatus status = JsonRpcScanner.Scan(json, out JsonRpcScan scan, options);
        Assert.Equal(status, scan.Status);
        Assert.Equal(status == ScanStatus.Ok, scan.Error is null);
        return scan;
    }

    public static string Text(byte[] message, TokenRange range) => Encoding.UTF8.GetString(range.SliceOf(message));

    public static string? Name(byte[] message, in JsonRpcScan scan)
    {
        Span<char> buffer = stackalloc char[256];
        return JsonRpcScanner.TryCopyName(message, scan, buffer, out int written) ? new string(buffer[..written]) : null;
    }

    /// <summary>Every field of a scan, as text, so that two scans can be compared with a readable diff.</summary>
    public static string Describe(in JsonRpcScan s)
        => $"{s.Status} err@{s.ErrorOffset} {s.Kind} id={s.IdKind}{s.Id} m={s.Method}{s.MethodName} p={s.Params} "
            + $"n={s.Name}{(s.NameEscaped ? "esc" : "")} u={s.Uri} a={s.Arguments} b={s.BatchLength} '{s.Error}'";
}
