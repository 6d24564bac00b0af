using System.Buffers;
using System.Diagnostics;
using System.Text;
using Sidecar.JsonRpc;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

public class JsonRpcScannerAdversarialTests
{
    private const string Valid =
        """{"jsonrpc":"2.0","id":"r-1","method":"tools/call","params":{"name":"fetch\u005furl","arguments":{"url":"https://example.test/?q=\"x\"","depth":[1,{"k":"v"}],"ok":true,"n":null,"f":-1.5e3}}}""";

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}""")]
    [InlineData("""{"jsonrpc":"2.0","jsonrpc":"2.0","id":1,"method":"ping"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"evil"}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1,"a":2}}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":{"b":{"c":1,"c":1}}}}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":[1,{"z":1,"z":2}]}}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"x","params":[[{"k":1},{"k":1,"k":1}]]}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"a","name":"b"}]}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","extra":{"x":1,"x":1}}""")]
    [InlineData("""{"a":1,"\u0061":2}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"\u006dethod":"tools/call","method":"ping"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","n\u0061me":"y"}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","name":"x"}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"":1,"":2}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"é":1,"\u00e9":2}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"😀":1,"\ud83d\ude00":2}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\/":1,"/":2}}""")]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping","method":"x"}]""")]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"ping","params":{"q":[{"a":1,"a":1}]}}]""")]
    public void Duplicate_keys_anywhere_are_rejected(string json)
    {
        JsonRpcScan s = Scan(json);
        Assert.Equal(ScanStatus.DuplicateKey, s.Status);
        Assert.Equal(JsonRpcMessageKind.Invalid, s.Kind);
        Assert.InRange(s.ErrorOffset, 1, json.Length);
    }

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":{"a":1},"b":{"a":2,"b":3},"c":[{"a":1},{"a":1}]}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1,"A":2,"\u00e9":3,"e\u0301":4,"ab":5,"ba":6}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\u0061":{"\u0062":1,"\u0063":2},"\u0064":{"\u0065":1},"b":3,"c":4,"e":5}}""")]
    public void Same_names_in_different_objects_are_fine(string json)
        => Assert.Equal(ScanStatus.Ok, Scan(json).Status);

    [Fact]
    public void Escaped_parent_names_survive_nested_objects()
    {
        // The parent's copied name must not be overwritten by names copied (and released) in nested objects.
        Assert.Equal(ScanStatus.DuplicateKey, Scan("""{"\u0061":{"\u0062":1,"\u0063":{"\u0078":2}},"\u0064":{"\u0065":1},"\u0061":3}""").Status);
        Assert.Equal(ScanStatus.DuplicateKey, Scan("""{"\u0061":{"\u0062":1},"a":3}""").Status);
    }

    [Theory]
    [InlineData(17, 0, 16)]
    [InlineData(17, 15, 16)]
    [InlineData(40, 0, 39)]
    [InlineData(40, 20, 21)]
    [InlineData(1000, 3, 998)]
    [InlineData(1000, 999, 0)]
    public void Duplicates_in_large_objects_are_found(int count, int first, int second)
    {
        string[] keys = [.. Enumerable.Range(0, count).Select(i => $"key{i}")];
        keys[second] = keys[first];
        string body = string.Join(",", keys.Select((k, i) => $"\"{k}\":{i}"));
        Assert.Equal(ScanStatus.DuplicateKey, Scan("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{""" + body + "}}").Status);
        // Escaped spelling of the duplicate, and the duplicate in the envelope itself.
        keys[second] = string.Concat(keys[first].Select(c => $"\\u{(int)c:x4}"));
        body = string.Join(",", keys.Select((k, i) => $"\"{k}\":{i}"));
        Assert.Equal(ScanStatus.DuplicateKey, Scan("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{""" + body + "}}").Status);
        Assert.Equal(ScanStatus.DuplicateKey, Scan("""{"jsonrpc":"2.0","id":1,"method":"ping",""" + body + "}").Status);
    }

    [Fact]
    public void Large_objects_with_distinct_keys_are_fine()
    {
        for (int count = 15; count <= 19; count++)
        {
            string body = string.Join(",", Enumerable.Range(0, count).Select(i => $"\"k{i}\":{{\"k{i}\":{i}}}"));
            Assert.Equal(ScanStatus.Ok, Scan("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{""" + body + """},"x":{""" + body + "}}").Status);
        }
    }

    /// <summary>
    /// A denial-of-service guard, not a speed goal (those live in bench/): duplicate detection must not be quadratic.
    /// Quadratic pairwise checks on 200,000 keys would take minutes; the sort-based check takes tens of milliseconds,
    /// so a bound of seconds separates the two on any machine, however loaded.
    /// </summary>
    [Fact]
    public void Two_hundred_thousand_keys_are_not_quadratic()
    {
        StringBuilder sb = new("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"bulk","arguments":{""");
        for (int i = 0; i < 200_000; i++)
        {
            sb.Append(i == 0 ? "" : ",").Append("\"k").Append(i).Append("\":0");
        }

        byte[] distinct = Utf8(sb.Append("}}}").ToString());
        Assert.True(distinct.Length < JsonRpcScannerOptions.Default.MaxMessageBytes);
        sb.Length -= 3;
        byte[] duplicated = Utf8(sb.Append(",\"k123456\":1}}}").ToString());
        sb.Length -= 3;
        byte[] escapedDuplicate = Utf8(sb.Replace(",\"k123456\":1", ",\"k\\u0031\\u0032\\u0033\\u0034\\u0035\\u0036\":1").Append("}}}").ToString());

        _ = Scan(distinct); // warm up
        Stopwatch watch = Stopwatch.StartNew();
        JsonRpcScan s = Scan(distinct);
        TimeSpan elapsed = watch.Elapsed;
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.True(elapsed < TimeSpan.FromSeconds(10), $"took {elapsed.TotalMilliseconds} ms");
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(Chunks(distinct, 4096), out _));

        watch.Restart();
        Assert.Equal(ScanStatus.DuplicateKey, Scan(duplicated).Status);
        Assert.Equal(ScanStatus.DuplicateKey, Scan(escapedDuplicate).Status);
        Assert.Equal(ScanStatus.DuplicateKey, JsonRpcScanner.Scan(Chunks(escapedDuplicate, 1000), out _));
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"took {watch.Elapsed.TotalMilliseconds} ms");
    }

    [Theory]
    [InlineData(new byte[] { 0xC0, 0x80 })]                 // overlong NUL
    [InlineData(new byte[] { 0xE0, 0x80, 0xAF })]           // overlong '/'
    [InlineData(new byte[] { 0xC1, 0xAF })]                 // overlong '/'
    [InlineData(new byte[] { 0x80 })]                       // lone continuation
    [InlineData(new byte[] { 0xBF })]
    [InlineData(new byte[] { 0xED, 0xA0, 0x80 })]           // encoded surrogate
    [InlineData(new byte[] { 0xF4, 0x90, 0x80, 0x80 })]     // above U+10FFFF
    [InlineData(new byte[] { 0xF5, 0x80, 0x80, 0x80 })]
    [InlineData(new byte[] { 0xFF })]
    [InlineData(new byte[] { 0xE2, 0x82 })]                 // truncated in the middle
    [InlineData(new byte[] { 0xC3, 0x41 })]
    public void Invalid_utf8_is_rejected_wherever_it_is(byte[] bad)
    {
        string[] templates =
        [
            """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"X"}}""",
            """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","arguments":{"X":1}}}""",
            """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}}X""",
            """X{"jsonrpc":"2.0","id":1,"method":"ping"}""",
        ];
        foreach (string template in templates)
        {
            int at = template.IndexOf('X', StringComparison.Ordinal);
            byte[] m = [.. Utf8(template[..at]), .. bad, .. Utf8(template[(at + 1)..])];
            JsonRpcScan s = Scan(m);
            Assert.Equal(ScanStatus.InvalidUtf8, s.Status);
            Assert.Equal(at, s.ErrorOffset);
            for (int cut = 0; cut <= m.Length; cut++)
            {
                Assert.Equal(ScanStatus.InvalidUtf8, JsonRpcScanner.Scan(Split(m, cut), out JsonRpcScan split));
                Assert.Equal(at, split.ErrorOffset);
            }
        }

        // Truncated multi-byte character at the very end.
        byte[] tail = [.. Utf8("""{"jsonrpc":"2.0","method":"ping"}"""), 0xF0, 0x9F, 0x98];
        Assert.Equal(ScanStatus.InvalidUtf8, Scan(tail).Status);
        Assert.Equal(ScanStatus.InvalidUtf8, JsonRpcScanner.Scan(Chunks(tail, 1), out _));
    }

    [Fact]
    public void Reader_itself_does_not_validate_utf8_inside_strings()
    {
        // Documents why the explicit UTF-8 pass exists: Utf8JsonReader accepts this string.
        byte[] m = [(byte)'"', 0xC0, 0x80, (byte)'"'];
        System.Text.Json.Utf8JsonReader reader = new(m);
        Assert.True(reader.Read());
        Assert.Equal(ScanStatus.InvalidUtf8, Scan(m).Status);
    }

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"\ud800":1}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a\udc00b":1}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":{"\ud83d\u0041":1}}}""")]
    [InlineData("""{"\ud800jsonrpc":"2.0","id":1,"method":"ping"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call\ud800"}""")]
    [InlineData("""{"jsonrpc":"2.0\udfff","id":1,"method":"ping"}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"run\ud800"}}""")]
    [InlineData("""{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"uri":"file:///\udc00"}}""")]
    public void Unpaired_surrogate_escapes_in_interpreted_strings_are_parse_errors(string json)
    {
        JsonRpcScan s = Scan(json);
        Assert.Equal(ScanStatus.ParseError, s.Status);
        Assert.InRange(s.ErrorOffset, 1, json.Length);
    }

    [Fact]
    public void Error_offsets_point_at_the_offending_token()
    {
        string json = """{"jsonrpc":"2.0","id":1,"method":"ping","params":{"ok":1,"b\ud800":2}}""";
        Assert.Equal(json.IndexOf("\"b\\", StringComparison.Ordinal), Scan(json).ErrorOffset);

        json = """{"jsonrpc":"2.0","id":1,"method":"ping","params":{"a":1,"b":2,"a":3}}""";
        Assert.Equal(json.LastIndexOf("\"a\"", StringComparison.Ordinal), Scan(json).ErrorOffset);

        string body = string.Join(",", Enumerable.Range(0, 30).Select(i => $"\"k{i}\":{i}")) + ",\"k7\":0,\"z\":1";
        json = """{"jsonrpc":"2.0","id":1,"method":"ping","params":{""" + body + "}}";
        Assert.Equal(json.LastIndexOf("\"k7\"", StringComparison.Ordinal), Scan(json).ErrorOffset);

        json = """{"jsonrpc":"2.0","id":1,"method":"ping","params":[[[1]]]}""";
        Assert.Equal(json.IndexOf("[[1", StringComparison.Ordinal) + 1, Scan(json, new JsonRpcScannerOptions { MaxDepth = 3 }).ErrorOffset);
    }

    [Fact]
    public void Unpaired_surrogates_in_opaque_values_are_forwarded()
    {
        // The scanner never interprets these values; they are passed on byte for byte.
        JsonRpcScan s = Scan("""{"jsonrpc":"2.0","id":"\ud800","method":"tools/call","params":{"name":"x","arguments":{"a":"\udc00"}}}""");
        Assert.Equal(ScanStatus.Ok, s.Status);
    }

    [Fact]
    public void Every_prefix_of_a_valid_message_is_rejected()
    {
        foreach (string json in new[] { Valid, """[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","id":2,"result":{}}]""", """{"jsonrpc":"2.0","id":12345,"result":[]}""" })
        {
            byte[] m = Utf8(json);
            Assert.Equal(ScanStatus.Ok, Scan(m).Status);
            for (int length = 0; length < m.Length; length++)
            {
                byte[] prefix = m[..length];
                JsonRpcScan s = Scan(prefix);
                Assert.NotEqual(ScanStatus.Ok, s.Status);
                Assert.NotNull(s.Error);
                if (length > 1)
                {
                    Assert.NotEqual(ScanStatus.Ok, JsonRpcScanner.Scan(Split(prefix, length / 2), out JsonRpcScan split));
                    Assert.Equal(s.Status, split.Status);
                }
            }
        }
    }

    [Fact]
    public void Nesting_up_to_max_depth_is_accepted_and_one_more_is_too_deep()
    {
        foreach (int max in new[] { 3, 10, 64, 200 })
        {
            JsonRpcScannerOptions options = new() { MaxDepth = max };
            // Root object (1) + params (2) + arguments (3) + nested arrays/objects.
            Assert.Equal(ScanStatus.Ok, Scan(Nested(max - 3), options).Status);
            JsonRpcScan s = Scan(Nested(max - 2), options);
            Assert.Equal(ScanStatus.TooDeep, s.Status);
            Assert.Equal(ScanStatus.TooDeep, JsonRpcScanner.Scan(Chunks(Utf8(Nested(max - 2)), 5), out _, options));
        }

        Assert.Equal(ScanStatus.Ok, Scan(Nested(61)).Status);
        Assert.Equal(ScanStatus.TooDeep, Scan(Nested(62)).Status);
        Assert.Equal(ScanStatus.TooDeep, Scan(new string('[', 65) + new string(']', 65)).Status);
        Assert.Equal(ScanStatus.InvalidRequest, Scan(new string('[', 64) + new string(']', 64)).Status);

        static string Nested(int extra)
        {
            StringBuilder inner = new("1");
            for (int i = 0; i < extra; i++)
            {
                inner.Insert(0, i % 2 == 0 ? "[" : "{\"k\":").Append(i % 2 == 0 ? "]" : "}");
            }

            return """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"v":""" + inner + "}}}";
        }
    }

    [Fact]
    public void Very_deep_nesting_is_rejected_without_recursion()
    {
        byte[] deep = Utf8(new string('[', 1_000_000));
        Assert.Equal(ScanStatus.TooDeep, Scan(deep).Status);
        Assert.Equal(ScanStatus.TooDeep, JsonRpcScanner.Scan(Chunks(deep, 4096), out _));
        Assert.Equal(ScanStatus.TooDeep, Scan(Utf8(string.Concat(Enumerable.Repeat("{\"a\":", 100_000)))).Status);
    }

    [Fact]
    public void Size_limit_is_checked_first()
    {
        byte[] m = Utf8(Valid);
        JsonRpcScannerOptions exact = new() { MaxMessageBytes = m.Length };
        JsonRpcScannerOptions smaller = new() { MaxMessageBytes = m.Length - 1 };
        Assert.Equal(ScanStatus.Ok, Scan(m, exact).Status);
        JsonRpcScan s = Scan(m, smaller);
        Assert.Equal(ScanStatus.TooLarge, s.Status);
        Assert.Equal(-1, s.ErrorOffset);
        Assert.Equal(ScanStatus.TooLarge, JsonRpcScanner.Scan(Split(m, 10), out _, smaller));
        Assert.Equal(ScanStatus.Ok, JsonRpcScanner.Scan(Split(m, 10), out _, exact));
        // Even garbage is reported as too large, before parsing or UTF-8 checks.
        Assert.Equal(ScanStatus.TooLarge, Scan([0xFF, 0xFF, 0xFF], new JsonRpcScannerOptions { MaxMessageBytes = 2 }).Status);
        Assert.Equal(ScanStatus.TooLarge, Scan(new byte[JsonRpcScannerOptions.Default.MaxMessageBytes + 1]).Status);
    }

    [Theory]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"} x""", 34)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"}}""", 33)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"},""", 33)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"}{"jsonrpc":"2.0","method":"ping"}""", 33)]
    [InlineData("{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\n{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}", 34)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping",}""", 33)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping","params":[1,]}""", 45)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"/*c*/}""", 32)]
    [InlineData("""{"jsonrpc":"2.0","method":"ping"}//c""", 33)]
    [InlineData("""{"jsonrpc":"2.0","id":NaN,"method":"ping"}""", 22)]
    [InlineData("""{"jsonrpc":"2.0","id":Infinity,"method":"ping"}""", 22)]
    [InlineData("""{"jsonrpc":"2.0","id":01,"method":"ping"}""", 23)]
    [InlineData("""{"jsonrpc":"2.0","id":+1,"method":"ping"}""", 22)]
    [InlineData("""{"jsonrpc":"2.0","id":.5,"method":"ping"}""", 22)]
    [InlineData("""{"jsonrpc":"2.0","id":0x1,"method":"ping"}""", 23)]
    [InlineData("""{'jsonrpc':"2.0","method":"ping"}""", 1)]
    [InlineData("""{jsonrpc:"2.0","method":"ping"}""", 1)]
    [InlineData("""{"jsonrpc":"2.0","method":"pi\xng"}""", 30)]
    [InlineData("""{"jsonrpc":"2.0","method":"pi\u12g4"}""", 33)]
    [InlineData("{\"jsonrpc\":\"2.0\",\"method\":\"pi\tng\"}", 29)]
    [InlineData("{\"jsonrpc\":\"2.0\",\"method\":\"ping\"\f}", 32)]
    [InlineData("{\"jsonrpc\":\"2.0\",\"method\":\"ping\"\u00a0}", 32)]
    [InlineData("\ufeff{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}", 0)]
    [InlineData("", 0)]
    [InlineData("   ", 3)]
    [InlineData("1 2", 2)]
    [InlineData("{\n\"jsonrpc\":\"2.0\",\n  \"method\":ping}", 30)]
    public void Syntax_errors_are_parse_errors_with_offsets(string json, long offset)
    {
        byte[] m = Utf8(json);
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.ParseError, s.Status);
        Assert.Equal(offset, s.ErrorOffset);
        Assert.Equal(JsonRpcMessageKind.Invalid, s.Kind);
        if (m.Length > 1)
        {
            JsonRpcScanner.Scan(Split(m, m.Length / 2), out JsonRpcScan split);
            Assert.Equal(ScanStatus.ParseError, split.Status);
            Assert.Equal(offset, split.ErrorOffset);
        }
    }

    [Theory]
    [InlineData("1")]
    [InlineData("\"tools/call\"")]
    [InlineData("null")]
    [InlineData("true")]
    [InlineData(" -0.5e1 ")]
    public void Scalar_roots_are_invalid_requests(string json)
        => Assert.Equal(ScanStatus.InvalidRequest, Scan(json).Status);

    [Fact]
    public void Surrounding_whitespace_is_allowed()
        => Assert.Equal(ScanStatus.Ok, Scan(" \t\r\n{\"jsonrpc\":\"2.0\",\"method\":\"ping\"}\r\n \t").Status);

    [Fact]
    public void Batches_are_validated_and_enumerated()
    {
        string[] elements =
        [
            """{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u005fb","arguments":{"x":[1,2]}}}""",
            """{"jsonrpc":"2.0","method":"notifications/initialized"}""",
            """{"jsonrpc":"2.0","id":"r","result":{"content":[]}}""",
            """{"jsonrpc":"2.0","id":3,"error":{"code":1,"message":"m"}}""",
        ];
        byte[] m = Utf8("[ " + string.Join(" ,\n", elements) + " ]");
        JsonRpcScan s = Scan(m);
        Assert.Equal(ScanStatus.Ok, s.Status);
        Assert.Equal(JsonRpcMessageKind.Batch, s.Kind);
        Assert.Equal(4, s.BatchLength);
        Assert.True(s.Id.IsEmpty && s.MethodName.IsEmpty && s.Name.IsEmpty);

        JsonRpcMessageKind[] kinds = [JsonRpcMessageKind.Request, JsonRpcMessageKind.Notification, JsonRpcMessageKind.Response, JsonRpcMessageKind.ErrorResponse];
        List<TokenRange> fromSpan = [];
        foreach (TokenRange element in JsonRpcScanner.EnumerateBatch(m))
        {
            fromSpan.Add(element);
        }

        List<TokenRange> fromSequence = [];
        foreach (TokenRange element in JsonRpcScanner.EnumerateBatch(Chunks(m, 3)))
        {
            fromSequence.Add(element);
        }

        Assert.Equal(fromSpan, fromSequence);
        Assert.Equal(elements.Length, fromSpan.Count);
        for (int i = 0; i < elements.Length; i++)
        {
            byte[] element = fromSpan[i].SliceOf(m).ToArray();
            Assert.Equal(elements[i], Encoding.UTF8.GetString(element));
            JsonRpcScan e = Scan(element);
            Assert.Equal(ScanStatus.Ok, e.Status);
            Assert.Equal(kinds[i], e.Kind);
        }

        JsonRpcScan call = Scan(fromSpan[0].SliceOf(m).ToArray());
        Assert.Equal(McpMethod.ToolsCall, call.Method);
        Assert.Equal("a_b", Name(fromSpan[0].SliceOf(m).ToArray(), call));
    }

    [Theory]
    [InlineData("[]", ScanStatus.EmptyBatch)]
    [InlineData(" [ \n ] ", ScanStatus.EmptyBatch)]
    [InlineData("""[1]""", ScanStatus.InvalidRequest)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},"x"]""", ScanStatus.InvalidRequest)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},null]""", ScanStatus.InvalidRequest)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},[]]""", ScanStatus.InvalidRequest)]
    [InlineData("""[[{"jsonrpc":"2.0","method":"ping"}]]""", ScanStatus.InvalidRequest)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},{}]""", ScanStatus.InvalidRequest)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"tools/call","id":1}]""", ScanStatus.InvalidParams)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},{"jsonrpc":"2.0","method":"tools/call","id":1,"params":{"name":"x"}}]""", ScanStatus.Ok)]
    [InlineData("""[{"jsonrpc":"2.0","method":"ping"},]""", ScanStatus.ParseError)]
    [InlineData("""[{"jsonrpc":"1.0","method":"ping"},{"jsonrpc":"2.0","method":"ping"} x]""", ScanStatus.ParseError)]
    [InlineData("""[{"jsonrpc":"1.0","method":"ping"},{"a":1,"a":2}]""", ScanStatus.DuplicateKey)]
    public void Batch_rules(string json, ScanStatus expected)
    {
        JsonRpcScan s = Scan(json);
        Assert.Equal(expected, s.Status);
        Assert.Equal(expected == ScanStatus.Ok ? JsonRpcMessageKind.Batch : JsonRpcMessageKind.Invalid, s.Kind);
    }

    [Fact]
    public void Batch_length_limit()
    {
        string element = """{"jsonrpc":"2.0","method":"ping"}""";
        string Batch(int n) => "[" + string.Join(",", Enumerable.Repeat(element, n)) + "]";
        Assert.Equal(ScanStatus.Ok, Scan(Batch(100)).Status);
        Assert.Equal(100, Scan(Batch(100)).BatchLength);
        Assert.Equal(ScanStatus.InvalidRequest, Scan(Batch(101)).Status);
        JsonRpcScannerOptions two = new() { MaxBatchLength = 2 };
        Assert.Equal(ScanStatus.Ok, Scan(Batch(2), two).Status);
        Assert.Equal(ScanStatus.InvalidRequest, Scan(Batch(3), two).Status);
        Assert.Equal(ScanStatus.InvalidRequest, Scan(Batch(1), new JsonRpcScannerOptions { MaxBatchLength = 0 }).Status);
    }

    [Fact]
    public void Enumerating_a_non_batch_yields_nothing()
    {
        int count = 0;
        foreach (TokenRange _ in JsonRpcScanner.EnumerateBatch(Utf8("""{"jsonrpc":"2.0","method":"ping"}""")))
        {
            count++;
        }

        foreach (TokenRange _ in JsonRpcScanner.EnumerateBatch(new ReadOnlySequence<byte>(Utf8("[]"))))
        {
            count++;
        }

        Assert.Equal(0, count);
    }
}
