using System.Buffers;
using System.Text.Json;
using BenchmarkDotNet.Attributes;
using Sidecar.JsonRpc;

namespace Sidecar.Benchmarks;

/// <summary>
/// <see cref="JsonRpcScanner.Scan(ReadOnlySpan{byte}, out JsonRpcScan, JsonRpcScannerOptions?)"/>: UTF-8 validation,
/// one <see cref="System.Text.Json.Utf8JsonReader"/> pass, duplicate-key tracking and envelope extraction; and
/// <see cref="JsonRpcScanner.TryCopyName(ReadOnlySpan{byte}, in JsonRpcScan, Span{char}, out int)"/>.
/// </summary>
[MemoryDiagnoser]
[Config(typeof(BenchConfig))]
public class ScanBenchmarks
{
    private byte[] _typical = null!;
    private byte[] _escaped = null!;
    private byte[] _large = null!;
    private ReadOnlySequence<byte> _singleSegment;
    private ReadOnlySequence<byte> _multiSegment;
    private JsonRpcScan _typicalScan;
    private JsonRpcScan _escapedScan;
    private JsonRpcScan _multiSegmentScan;

    [GlobalSetup]
    public void Setup()
    {
        _typical = Payloads.TypicalCall;
        _escaped = Payloads.EscapedNameCall;
        _large = Payloads.LargeCall;
        _singleSegment = Payloads.TypicalSingleSegment;
        _multiSegment = Payloads.TypicalMultiSegment;

        _typicalScan = ScanOk(_typical);
        _escapedScan = ScanOk(_escaped);
        _ = ScanOk(_large);
        if (_large.Length is < 3900 or > 4300)
        {
            throw new InvalidOperationException($"the ~4 KB fixture is {_large.Length} bytes");
        }
        if (JsonRpcScanner.Scan(_multiSegment, out _multiSegmentScan) != ScanStatus.Ok || _multiSegment.IsSingleSegment)
        {
            throw new InvalidOperationException("multi-segment fixture does not scan");
        }
        ExpectName(CopyName(), "typical");
        ExpectName(CopyEscapedName(), "escaped");
        ExpectName(CopyNameMultiSegment(), "multi-segment");
    }

    private static JsonRpcScan ScanOk(byte[] message)
    {
        if (JsonRpcScanner.Scan(message, out var scan) != ScanStatus.Ok || scan.Method != McpMethod.ToolsCall || scan.Arguments.IsEmpty)
        {
            throw new InvalidOperationException($"fixture does not scan as a tools/call with arguments: {scan.Status} {scan.Error}");
        }
        return scan;
    }

    private static void ExpectName(int length, string fixture)
    {
        if (length != Payloads.TypicalTool.Length)
        {
            throw new InvalidOperationException($"TryCopyName on the {fixture} fixture gave {length} chars");
        }
    }

    [Benchmark(Baseline = true, Description = "Scan typical (span, ~300 B)")]
    public ScanStatus ScanTypical() => JsonRpcScanner.Scan(_typical, out _);

    [Benchmark(Description = "Scan typical (1-segment sequence)")]
    public ScanStatus ScanTypicalSingleSegment() => JsonRpcScanner.Scan(_singleSegment, out _);

    [Benchmark(Description = "Scan typical (multi-segment, 64 B segments)")]
    public ScanStatus ScanTypicalMultiSegment() => JsonRpcScanner.Scan(_multiSegment, out _);

    [Benchmark(Description = "Scan escaped tool name")]
    public ScanStatus ScanEscapedName() => JsonRpcScanner.Scan(_escaped, out _);

    [Benchmark(Description = "Scan ~4 KB call")]
    public ScanStatus ScanLarge() => JsonRpcScanner.Scan(_large, out _);

    /// <summary>A floor for the scan: the same bytes through a bare reader, no UTF-8 check, no key tracking, no extraction.</summary>
    [Benchmark(Description = "Reference: bare Utf8JsonReader pass (typical)")]
    public int ReaderOnly()
    {
        var reader = new Utf8JsonReader(_typical);
        var tokens = 0;
        while (reader.Read())
        {
            tokens++;
        }
        return tokens;
    }

    [Benchmark(Description = "TryCopyName (plain)")]
    public int CopyName()
    {
        Span<char> name = stackalloc char[128];
        return JsonRpcScanner.TryCopyName(_typical, _typicalScan, name, out var written) ? written : -1;
    }

    [Benchmark(Description = "TryCopyName (escaped)")]
    public int CopyEscapedName()
    {
        Span<char> name = stackalloc char[128];
        return JsonRpcScanner.TryCopyName(_escaped, _escapedScan, name, out var written) ? written : -1;
    }

    [Benchmark(Description = "TryCopyName (multi-segment)")]
    public int CopyNameMultiSegment()
    {
        Span<char> name = stackalloc char[128];
        return JsonRpcScanner.TryCopyName(_multiSegment, _multiSegmentScan, name, out var written) ? written : -1;
    }
}
