using System.Text;
using System.Text.Json;
using Sidecar.JsonRpc;
using Xunit.Abstractions;
using static Sidecar.Tests.JsonRpc.TestSupport;

namespace Sidecar.Tests.JsonRpc;

/// <summary>
/// Random messages (seeded, so deterministic) scanned by the scanner and judged by <see cref="JsonRpcReference"/>,
/// which is built on System.Text.Json's own DOM parser: the scanner must accept exactly what the reference accepts
/// and must extract exactly what the DOM contains.
/// </summary>
public class JsonRpcScannerDifferentialTests(ITestOutputHelper output)
{
    private const int Count = 6000;

    private static readonly string[] KnownMethods = [.. JsonRpcScannerTests.AllMethods.Select(row => (string)row[0])];

    [Theory]
    [InlineData(20240601, 64, 100)]
    [InlineData(7, 6, 3)]
    public void Scanner_agrees_with_the_dom_reference(int seed, int maxDepth, int maxBatch)
    {
        JsonRpcScannerOptions options = new() { MaxDepth = maxDepth, MaxBatchLength = maxBatch };
        Generator generator = new(new Random(seed), maxDepth);
        Random splits = new(seed + 1);
        Dictionary<string, int> outcomes = [];
        for (int i = 0; i < Count; i++)
        {
            byte[] message = generator.Message();
            string label = Check(message, options, splits);
            outcomes[label] = outcomes.GetValueOrDefault(label) + 1;
        }

        output.WriteLine(string.Join(", ", outcomes.OrderByDescending(kv => kv.Value).Select(kv => $"{kv.Key}={kv.Value}")));
        // The generator must exercise every verdict, and mostly produce messages worth comparing field by field.
        Assert.True(outcomes.GetValueOrDefault("Ok") > Count * 0.25, "too few valid messages");
        foreach (string expected in new[] { "Syntax/ParseError", "Syntax/DuplicateKey", "Syntax/TooDeep", "InvalidUtf8", "InvalidRequest", "InvalidParams", "EmptyBatch" })
        {
            Assert.True(outcomes.ContainsKey(expected), $"no case of {expected}");
        }
    }

    private static string Check(byte[] message, JsonRpcScannerOptions options, Random splits)
    {
        JsonRpcReference.Result expected = JsonRpcReference.Evaluate(message, options);
        ScanStatus status = JsonRpcScanner.Scan(message, out JsonRpcScan scan, options);
        string text = Encoding.UTF8.GetString(message);
        string context = $"message: {text}\nscan: {Describe(scan)}";

        // Split copies must agree exactly with the span scan.
        int cut = message.Length == 0 ? 0 : splits.Next(message.Length + 1);
        JsonRpcScanner.Scan(Split(message, cut, Math.Min(message.Length, cut + splits.Next(1, 5))), out JsonRpcScan split, options);
        Assert.True(Describe(scan) == Describe(split), $"split at {cut}: {Describe(split)}\n{context}");

        switch (expected.Verdict)
        {
            case JsonRpcReference.Verdict.InvalidUtf8:
                Assert.True(status == ScanStatus.InvalidUtf8, context);
                return "InvalidUtf8";
            case JsonRpcReference.Verdict.Syntax:
                Assert.True(status is ScanStatus.ParseError or ScanStatus.DuplicateKey or ScanStatus.TooDeep, $"reference refused the JSON\n{context}");
                return "Syntax/" + status;
        }

        Assert.True(expected.Status == status, $"expected {expected.Status}\n{context}");
        Assert.True(expected.Kind == scan.Kind, $"expected kind {expected.Kind}\n{context}");
        if (status is ScanStatus.Ok or ScanStatus.InvalidParams && scan.Kind != JsonRpcMessageKind.Batch)
        {
            Assert.True(expected.IdKind == scan.IdKind, $"id kind {expected.IdKind}\n{context}");
            Assert.True(expected.IdRaw == Raw(message, scan.Id), $"id {expected.IdRaw}\n{context}");
            Assert.True(expected.Method == scan.Method, $"method {expected.Method}\n{context}");
            Assert.True(expected.MethodRaw == Raw(message, scan.MethodName), $"method raw\n{context}");
            Assert.True(expected.ParamsRaw == Raw(message, scan.Params), $"params raw {expected.ParamsRaw}\n{context}");
            Assert.True(expected.NameRaw == Raw(message, scan.Name), $"name raw {expected.NameRaw}\n{context}");
            Assert.True(expected.UriRaw == Raw(message, scan.Uri), $"uri raw {expected.UriRaw}\n{context}");
            Assert.True(expected.ArgumentsRaw == Raw(message, scan.Arguments), $"arguments {expected.ArgumentsRaw}\n{context}");
            if (expected.NameRaw is not null)
            {
                Assert.True(expected.NameRaw.Contains('\\', StringComparison.Ordinal) == scan.NameEscaped, context);
                char[] buffer = new char[message.Length + 1];
                Assert.True(JsonRpcScanner.TryCopyName(message, scan, buffer, out int written), context);
                Assert.True(expected.Name == new string(buffer, 0, written), $"name {expected.Name}\n{context}");
            }

            if (expected.ArgumentsRaw is not null)
            {
                using JsonDocument fromScan = JsonDocument.Parse(scan.Arguments.SliceOf(message).ToArray());
                using JsonDocument fromReference = JsonDocument.Parse(expected.ArgumentsRaw);
                bool equal;
                try
                {
                    equal = JsonElement.DeepEquals(fromScan.RootElement, fromReference.RootElement);
                }
                catch (InvalidOperationException)
                {
                    // DeepEquals unescapes strings and refuses unpaired surrogates in opaque values; the raw text matched above.
                    equal = true;
                }

                Assert.True(equal, context);
            }
        }

        if (status == ScanStatus.Ok && scan.Kind == JsonRpcMessageKind.Batch)
        {
            List<string> elements = [];
            foreach (TokenRange element in JsonRpcScanner.EnumerateBatch(message))
            {
                byte[] slice = element.SliceOf(message).ToArray();
                elements.Add(Encoding.UTF8.GetString(slice));
                // Each element, scanned on its own, is judged like a single message.
                _ = Check(slice, options, splits);
            }

            Assert.Equal(expected.BatchElements, elements);
            Assert.Equal(elements.Count, scan.BatchLength);
        }

        return status.ToString();
    }

    private static string? Raw(byte[] message, TokenRange range) => range.IsEmpty ? null : Encoding.UTF8.GetString(range.SliceOf(message));

    /// <summary>Builds random JSON-RPC-like messages, valid and broken in many ways.</summary>
    private sealed class Generator(Random random, int maxDepth)
    {
        private static readonly string[] KeyPool = ["a", "b", "name", "uri", "arguments", "id", "method", "x", "é", "😀", "", "k/1", "params"];
        private static readonly string[] StringPool = ["", "x", "read_file", "tools/call", "2.0", "hé", "日本", "😀", "a\"b", "back\\slash", "line\nbreak", "tab\t", "/path/to", "\u0001"];

        private bool Chance(double p) => random.NextDouble() < p;

        private T Pick<T>(IReadOnlyList<T> items) => items[random.Next(items.Count)];

        public byte[] Message()
        {
            string text = random.Next(100) switch
            {
                < 8 => Batch(),
                < 10 => Value(1),
                _ => Envelope(),
            };
            byte[] bytes = Utf8(text);
            return Chance(0.1) ? Damage(bytes) : bytes;
        }

        private string Batch()
        {
            int n = random.Next(0, 5);
            return "[" + string.Join(",", Enumerable.Range(0, n).Select(_ => Chance(0.9) ? Envelope() : Value(2))) + Ws() + "]";
        }

        private string Envelope()
        {
            List<(string Key, string Value)> members = [];
            if (Chance(0.93))
            {
                members.Add(("jsonrpc", Chance(0.94) ? "\"2.0\"" : Pick(["\"2\\u002e0\"", "\"\\u0032.0\"", "\"1.0\"", "2.0", "null", "[\"2.0\"]", "\"2.0 \"", "\"2.0\\ud800\""])));
            }

            bool method = Chance(0.8);
            if (method)
            {
                members.Add(("method", random.Next(10) switch
                {
                    < 5 => Str(Chance(0.6) ? "tools/call" : Pick(KnownMethods), escape: 0.03),
                    < 7 => Str(Pick(KnownMethods), escape: 0.3),
                    < 9 => Str(Pick(["foo/bar", "Tools/Call", "", "tools/call ", "tools\u0000call", "rpc.x"]), escape: 0.1),
                    _ => Value(2),
                }));
            }

            if (Chance(method ? 0.7 : 0.85))
            {
                members.Add(("id", random.Next(24) switch
                {
                    0 => "123456789012345678901234567890",
                    1 => "-7",
                    2 => "3.25e-2",
                    3 => "null",
                    4 => "true",
                    5 => "{}",
                    6 => "[1]",
                    7 => Str(Pick(StringPool), escape: 0.2),
                    _ => random.Next(1000).ToString(System.Globalization.CultureInfo.InvariantCulture),
                }));
            }

            if (Chance(method ? 0.8 : 0.1))
            {
                members.Add(("params", random.Next(10) switch
                {
                    < 8 => Params(),
                    8 => Array(2),
                    _ => Pick(["1", "\"x\"", "null", "true"]),
                }));
            }

            if (!method || Chance(0.05))
            {
                if (Chance(0.6))
                {
                    members.Add(("result", Value(2)));
                }

                if (Chance(0.45))
                {
                    members.Add(("error", "{\"code\":-32000,\"message\":" + Str(Pick(StringPool), 0.1) + "}"));
                }
            }

            int extra = random.Next(3);
            for (int i = 0; i < extra; i++)
            {
                members.Add((Pick(["_meta", "extra", "x"]), Value(2)));
            }

            return Object(members);
        }

        private string Params()
        {
            List<(string Key, string Value)> members = [];
            if (Chance(0.85))
            {
                members.Add(("name", Chance(0.9) ? Str(Pick(["read_file", "start_proxy", "shell", "日本語", "a\"b", "x\ud83d\ude00"]), escape: 0.15) : Value(3)));
            }

            if (Chance(0.15))
            {
                members.Add(("uri", Chance(0.9) ? Str(Pick(["file:///a/b", "https://x.test/?q=1", "é"]), escape: 0.15) : Value(3)));
            }

            if (Chance(0.75))
            {
                members.Add(("arguments", Chance(0.9) ? ObjectValue(3) : Pick(["[]", "\"{}\"", "null", "1"])));
            }

            if (Chance(0.3))
            {
                members.Add(("_meta", "{\"progressToken\":" + Str(Pick(StringPool), 0.1) + "}"));
            }

            return Object(members);
        }

        /// <summary>Serialises members in random order, sometimes duplicating one, sometimes escaping key characters.</summary>
        private string Object(List<(string Key, string Value)> members)
        {
            if (members.Count > 0 && Chance(0.015))
            {
                (string key, _) = Pick(members);
                members.Add((key, Value(3)));
            }

            (string Key, string Value)[] shuffled = [.. members.OrderBy(_ => random.Next())];
            return "{" + string.Join(",", shuffled.Select(m => Ws() + Str(m.Key, escape: 0.05) + Ws() + ":" + Ws() + m.Value + Ws())) + "}";
        }

        private string Value(int depth)
        {
            int roll = random.Next(depth >= maxDepth + 1 ? 6 : 10);
            if (Chance(0.003))
            {
                // Occasionally nest well past the limit.
                int extra = maxDepth + random.Next(3);
                return new string('[', extra) + new string(']', extra);
            }

            return roll switch
            {
                0 => "null",
                1 => Chance(0.5) ? "true" : "false",
                2 => Pick(["0", "-1", "1.5", "1e10", "-0.0", "12345678901234567890"]),
                3 or 4 or 5 => Str(Pick(StringPool), escape: 0.1),
                6 or 7 => ObjectValue(depth + 1),
                _ => Array(depth + 1),
            };
        }

        private string ObjectValue(int depth)
        {
            int n = random.Next(0, Chance(0.05) ? 30 : 5);
            List<(string Key, string Value)> members = [];
            HashSet<string> used = [];
            for (int i = 0; i < n; i++)
            {
                string key = Chance(0.5) ? Pick(KeyPool) : "k" + random.Next(100).ToString(System.Globalization.CultureInfo.InvariantCulture);
                if (used.Add(key) || Chance(0.02))
                {
                    members.Add((key, Value(depth)));
                }
            }

            return Object(members);
        }

        private string Array(int depth)
            => "[" + string.Join(",", Enumerable.Range(0, random.Next(0, 4)).Select(_ => Ws() + Value(depth))) + "]";

        private string Ws() => Chance(0.1) ? Pick([" ", "\n", "\t", "\r\n", "  "]) : "";

        /// <summary>A JSON string literal; each character is \u-escaped with probability <paramref name="escape"/>.</summary>
        private string Str(string value, double escape)
        {
            StringBuilder sb = new("\"");
            for (int i = 0; i < value.Length; i++)
            {
                char c = value[i];
                if (char.IsHighSurrogate(c) && i + 1 < value.Length)
                {
                    sb.Append(Chance(escape) ? $"\\u{(int)c:x4}\\u{(int)value[i + 1]:X4}" : value.Substring(i, 2));
                    i++;
                }
                else if (c is '"' or '\\' || c < 0x20 || Chance(escape))
                {
                    sb.Append(c == '/' && Chance(0.5) ? "\\/" : c == '"' && Chance(0.5) ? "\\\"" : $"\\u{(int)c:x4}");
                }
                else
                {
                    sb.Append(c);
                }
            }

            if (Chance(0.004))
            {
                sb.Append(Pick(["\\ud800", "\\udc00", "\\ud83d\\u0041"]));
            }

            return sb.Append('"').ToString();
        }

        private byte[] Damage(byte[] bytes)
        {
            List<byte> list = [.. bytes];
            int at = random.Next(list.Count + 1);
            switch (random.Next(6))
            {
                case 0:
                    list.RemoveRange(at, list.Count - at);
                    break;
                case 1 when at < list.Count:
                    list.RemoveAt(at);
                    break;
                case 2:
                    list.Insert(at, (byte)Pick("{}[],:\"\\ x\u0001".ToCharArray()));
                    break;
                case 3:
                    list.AddRange(Utf8(Pick([" x", "}", ",", " {}", "\n{\"a\":1}", "//"])));
                    break;
                case 4:
                    list.Insert(at, Pick(new byte[] { 0xFF, 0xC0, 0x80, 0xED }));
                    break;
                default:
                    list.InsertRange(at, Utf8(Pick([",", "/*c*/", "NaN", "01"])));
                    break;
            }

            return [.. list];
        }
    }
}
