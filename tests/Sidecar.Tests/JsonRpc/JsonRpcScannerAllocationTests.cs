using System.Buffers;
using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

public class JsonRpcScannerAllocationTests
{
    // ~300 bytes: the common case the gateway sees.
    private static readonly byte[] ToolsCall = Utf8(
        """{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"search_files","arguments":{"path":"/home/user/projects","pattern":"*.cs","recursive":true,"maxResults":100,"exclude":["bin","obj"]},"_meta":{"progressToken":"abc-123","traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}}}""");

    private static readonly byte[] Escaped = Utf8(
        """{"jsonrpc":"2\u002e0","id":"r\u0031","me\u0074hod":"tools\/call","params":{"n\u0061me":"start\u005fproxy","arguments":{"k\u0065y":"v\u00e9","o":{"p":[1,2]}}}}""");

    private static readonly byte[] Batch = Utf8(
        """[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]""");

    [Fact]
    public void Common_path_allocates_nothing()
    {
        Assert.InRange(ToolsCall.Length, 280, 320);
        ReadOnlySequence<byte> single = new(ToolsCall);
        long checksum = Run(ToolsCall, single, 2000); // warm up (tiering, statics, pools)

        long before = GC.GetAllocatedBytesForCurrentThread();
        checksum += Run(ToolsCall, single, 5000);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.NotEqual(0, checksum);
    }

    [Fact]
    public void Escaped_multi_segment_and_batch_paths_allocate_nothing_either()
    {
        ReadOnlySequence<byte> segments = Chunks(Escaped, 7);
        ReadOnlySequence<byte> batchSegments = Chunks(Batch, 5);
        ReadOnlySequence<byte> plainSegments = Chunks(ToolsCall, 64);
        long checksum = Run(Escaped, segments, 2000) + Run(ToolsCall, plainSegments, 2000) + RunBatch(batchSegments, 2000);

        long before = GC.GetAllocatedBytesForCurrentThread();
        checksum += Run(Escaped, segments, 3000);
        checksum += Run(ToolsCall, plainSegments, 3000);
        checksum += RunBatch(batchSegments, 3000);
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;

        Assert.Equal(0, allocated);
        Assert.NotEqual(0, checksum);
    }

    private static long Run(byte[] span, ReadOnlySequence<byte> sequence, int iterations)
    {
        long sum = 0;
        Span<char> name = stackalloc char[64];
        for (int i = 0; i < iterations; i++)
        {
            ScanStatus a = JsonRpcScanner.Scan(span, out JsonRpcScan s1);
            ScanStatus b = JsonRpcScanner.Scan(sequence, out JsonRpcScan s2);
            if (a != ScanStatus.Ok || b != ScanStatus.Ok || s1.Method != McpMethod.ToolsCall || s2.Arguments != s1.Arguments)
            {
                return long.MinValue;
            }

            if (JsonRpcScanner.TryCopyName(span, s1, name, out int written1) && JsonRpcScanner.TryCopyName(sequence, s2, name, out int written2))
            {
                sum += written1 + written2 + s1.Arguments.Length;
            }
        }

        return sum;
    }

    private static long RunBatch(ReadOnlySequence<byte> batch, int iterations)
    {
        long sum = 0;
        for (int i = 0; i < iterations; i++)
        {
            if (JsonRpcScanner.Scan(batch, out JsonRpcScan scan) != ScanStatus.Ok)
            {
                return long.MinValue;
            }

            foreach (TokenRange element in JsonRpcScanner.EnumerateBatch(batch))
            {
                sum += element.Length + scan.BatchLength;
            }
        }

        return sum;
    }
}
