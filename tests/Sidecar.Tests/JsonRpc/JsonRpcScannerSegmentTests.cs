using System.Buffers;
using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

/// <summary>A message split over segments must scan exactly like the same bytes in one span.</summary>
public class JsonRpcScannerSegmentTests
{
    public static TheoryData<string> Messages => new()
    {
        """{"jsonrpc":"2.0","id":"req-éß","method":"tools/call","params":{"name":"start\u005fproxy","arguments":{"host":"h\u00e9llo 😀","port":8080,"opts":[true,false,null,{"k":-1.5e-3}]}}}""",
        """{"params":{"arguments":{"a":{"b":[1,2,3]}},"name":"日本語ツール"},"method":"tools\/call","id":123456789012345678901234567890,"jsonrpc":"2\u002e0"}""",
        """{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":50,"total":100}}""",
        """{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}""",
        """{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///tmp/\u00e9t\u00e9.txt"}}""",
        """[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"tools/call","params":{"name":"n"}},{"jsonrpc":"2.0","id":"x","result":{}}]""",
        """{"jsonrpc":"2.0","id":1,"method":"ping","params":{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k\u0031\u0037":17}}""",
        // Rejections must be identical too (status, offset, message).
        """{"jsonrpc":"2.0","id":1,"method":"ping","params":{"k0":0,"k1":1,"k2":2,"k3":3,"k4":4,"k5":5,"k6":6,"k7":7,"k8":8,"k9":9,"k10":10,"k11":11,"k12":12,"k13":13,"k14":14,"k15":15,"k16":16,"k\u0031\u0035":17}}""",
        """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","n\u0061me":"b"}}""",
        """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x\ud800"}}""",
        """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}""",
        """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"}} {"x":1}""",
        """{"jsonrpc":"2.0","id":01,"method":"ping"}""",
        "{\"jsonrpc\":\"2.0\",\n\"id\":1,\n\"method\":\"ping\",\n\"params\":[1,2,]}",
        """{"jsonrpc":"1.0","id":1,"method":"ping"}""",
        """{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}""",
        "12345",
        "\"tools/call\"",
        "[]",
        "",
    };

    [Theory]
    [MemberData(nameof(Messages))]
    public void Every_split_point_gives_the_same_scan(string json)
    {
        byte[] m = Utf8(json);
        JsonRpcScanner.Scan(m, out JsonRpcScan expected);
        string describe = Describe(expected);
        string? name = expected.Name.IsEmpty ? null : Name(m, expected);

        for (int cut = 0; cut <= m.Length; cut++)
        {
            Check(Split(m, cut), $"cut {cut}");
        }

        for (int a = 1; a < m.Length; a += 7)
        {
            for (int b = a; b < m.Length; b += 5)
            {
                Check(Split(m, a, b), $"cuts {a},{b}");
            }
        }

        Check(Chunks(m, 1), "1-byte segments");
        Check(Chunks(m, 2), "2-byte segments");
        Check(Chunks(m, 3), "3-byte segments");
        Check(new ReadOnlySequence<byte>(m), "single segment");

        void Check(ReadOnlySequence<byte> sequence, string how)
        {
            ScanStatus status = JsonRpcScanner.Scan(sequence, out JsonRpcScan actual);
            Assert.Equal(actual.Status, status);
            Assert.True(describe == Describe(actual), $"{how}: expected {describe}, got {Describe(actual)}");
            if (name is not null)
            {
                Span<char> buffer = stackalloc char[128];
                Assert.True(JsonRpcScanner.TryCopyName(sequence, actual, buffer, out int written), how);
                Assert.Equal(name, new string(buffer[..written]));
            }
        }
    }

    [Theory]
    [InlineData("t")]
    [InlineData("[tr")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":fals""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":[true,nul""")]
    public void Truncated_literal_before_empty_trailing_segments_is_a_parse_error(string json)
    {
        // Utf8JsonReader (.NET 10) throws IndexOutOfRangeException on these layouts; Scan must still just reject.
        byte[] m = Utf8(json);
        JsonRpcScanner.Scan(m, out JsonRpcScan expected);
        Assert.Equal(ScanStatus.ParseError, expected.Status);
        for (int a = 0; a <= m.Length; a++)
        {
            foreach (ReadOnlySequence<byte> sequence in new[] { Split(m, a, m.Length), Split(m, a, a, m.Length), Split(m, m.Length, m.Length) })
            {
                Assert.Equal(ScanStatus.ParseError, JsonRpcScanner.Scan(sequence, out JsonRpcScan actual));
                Assert.Equal(Describe(expected), Describe(actual));
            }
        }
    }

    [Fact]
    public void Every_prefix_split_with_an_empty_last_segment_matches_the_span_scan()
    {
        byte[] m = Utf8("""{"jsonrpc":"2.0","id":-1.5e3,"method":"tools/call","params":{"name":"a\u0062","arguments":{"t":true,"f":false,"n":null,"s":"x","a":[1,2]}}}""");
        for (int length = 0; length <= m.Length; length++)
        {
            byte[] prefix = m[..length];
            JsonRpcScanner.Scan(prefix, out JsonRpcScan expected);
            for (int a = 0; a <= length; a++)
            {
                JsonRpcScanner.Scan(Split(prefix, a, length), out JsonRpcScan actual);
                Assert.True(Describe(expected) == Describe(actual), $"length {length} split {a}: {Describe(expected)} vs {Describe(actual)}");
            }
        }
    }

    [Fact]
    public void Batch_enumeration_is_the_same_over_segments()
    {
        byte[] m = Utf8("""[ {"jsonrpc":"2.0","id":1,"method":"ping"} , {"jsonrpc":"2.0","method":"tools/call","params":{"name":"n","arguments":{"a":[{}]}}},{"jsonrpc":"2.0","id":"x","result":"ok"}]""");
        List<TokenRange> expected = [];
        foreach (TokenRange r in JsonRpcScanner.EnumerateBatch(m))
        {
            expected.Add(r);
        }

        Assert.Equal(3, expected.Count);
        for (int cut = 0; cut <= m.Length; cut++)
        {
            List<TokenRange> actual = [];
            foreach (TokenRange r in JsonRpcScanner.EnumerateBatch(Split(m, cut)))
            {
                actual.Add(r);
            }

            Assert.Equal(expected, actual);
        }
    }
}
