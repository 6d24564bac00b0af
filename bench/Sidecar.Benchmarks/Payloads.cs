using System.Buffers;
using System.Globalization;
using System.Text;

namespace Sidecar.Benchmarks;

/// <summary>
/// JSON-RPC messages the benchmarks scan and decide. Built once; every benchmark reads the same bytes.
/// </summary>
public static class Payloads
{
    /// <summary>The tool every typical call targets (governed by a 2-condition, 1-limit rule in <see cref="Policies"/>).</summary>
    public const string TypicalTool = "send_request";

    /// <summary>
    /// A typical MCP <c>tools/call</c> (~300 bytes): numeric id, <c>params.name</c>, <c>params.arguments</c> with a URL,
    /// an HTTP method, a small headers object and a number, and <c>params._meta.progressToken</c>.
    /// </summary>
    public static readonly byte[] TypicalCall = Encoding.UTF8.GetBytes(
        """{"jsonrpc":"2.0","id":1287,"method":"tools/call","params":{"name":"send_request","arguments":{"url":"https://api.example.com/v2/orders?status=open&limit=50","method":"GET","headers":{"Accept":"application/json","X-Request-Id":"5f0c6a2e-9b7d-4f1a-8e3c-2d9b7a6c1e04"},"timeout_ms":5000},"_meta":{"progressToken":"pt-6f9a1c"}}}""");

    /// <summary>The typical call with its tool name written <c>send\u005frequest</c> (unescapes to the same name).</summary>
    public static readonly byte[] EscapedNameCall = Encoding.UTF8.GetBytes(
        """{"jsonrpc":"2.0","id":1287,"method":"tools/call","params":{"name":"send\u005frequest","arguments":{"url":"https://api.example.com/v2/orders?status=open&limit=50","method":"GET","headers":{"Accept":"application/json","X-Request-Id":"5f0c6a2e-9b7d-4f1a-8e3c-2d9b7a6c1e04"},"timeout_ms":5000},"_meta":{"progressToken":"pt-6f9a1c"}}}""");

    /// <summary>A ~4 KB <c>tools/call</c>: a POST whose <c>arguments.body</c> is an order with 42 line items.</summary>
    public static readonly byte[] LargeCall = BuildLargeCall();

    /// <summary>The typical call as one segment (what a pipe hands over most of the time).</summary>
    public static readonly ReadOnlySequence<byte> TypicalSingleSegment = new(TypicalCall);

    /// <summary>The typical call split every <see cref="SegmentSize"/> bytes (tokens, including the tool name, straddle segments).</summary>
    public static readonly ReadOnlySequence<byte> TypicalMultiSegment = Split(TypicalCall, SegmentSize);

    public const int SegmentSize = 64;

    private const int LargeCallItems = 42;

    private static byte[] BuildLargeCall()
    {
        var sb = new StringBuilder(4200);
        // Single quotes keep the fixture readable; they become double quotes below.
        sb.Append("{'jsonrpc':'2.0','id':90211,'method':'tools/call','params':{'name':'send_request','arguments':{");
        sb.Append("'url':'https://api.example.com/v2/orders','method':'POST',");
        sb.Append("'headers':{'Accept':'application/json','Content-Type':'application/json',");
        sb.Append("'X-Request-Id':'0b8e1f9c-3a4d-4e2b-9c7f-6a5d4e3c2b1a','Idempotency-Key':'ord-2024-11-30-000871'},");
        sb.Append("'body':{'customer':{'id':'cus_8H2kLm41','email':'ops@example.com','tier':'gold'},'currency':'EUR','items':[");
        for (var i = 0; i < LargeCallItems; i++)
        {
            sb.Append(i == 0 ? "" : ",").Append(CultureInfo.InvariantCulture,
                $"{{'sku':'SKU-{10400 + (i * 37)}','qty':{(i % 5) + 1},'unit_price':{12.5 + i:0.00},'note':'line {i}, gift-wrapped: no'}}");
        }
        sb.Append("],'shipping':{'method':'express','address':{'line1':'221B Baker Street','city':'London','postcode':'NW1 6XE','country':'GB'}}},");
        sb.Append("'timeout_ms':15000},'_meta':{'progressToken':'pt-large-01'}}}");
        sb.Replace('\'', '"');
        return Encoding.UTF8.GetBytes(sb.ToString());
    }

    /// <summary>Splits <paramref name="data"/> into a chain of segments of at most <paramref name="size"/> bytes.</summary>
    public static ReadOnlySequence<byte> Split(byte[] data, int size)
    {
        var first = new Segment(data.AsMemory(0, Math.Min(size, data.Length)), 0);
        var last = first;
        for (var offset = size; offset < data.Length; offset += size)
        {
            last = last.Append(data.AsMemory(offset, Math.Min(size, data.Length - offset)));
        }
        return new ReadOnlySequence<byte>(first, 0, last, last.Memory.Length);
    }

    /// <summary>The smallest <see cref="ReadOnlySequenceSegment{T}"/> that chains buffers.</summary>
    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(ReadOnlyMemory<byte> memory, long runningIndex)
        {
            Memory = memory;
            RunningIndex = runningIndex;
        }

        public Segment Append(ReadOnlyMemory<byte> memory)
        {
            var next = new Segment(memory, RunningIndex + Memory.Length);
            Next = next;
            return next;
        }
    }
}
