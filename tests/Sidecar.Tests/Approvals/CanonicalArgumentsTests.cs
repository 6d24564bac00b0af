using System.Buffers;
using System.Security.Cryptography;
using System.Text;
using Sidecar.Approvals;

namespace Sidecar.Tests.Approvals;

/// <summary>
/// The canonical form of a call's arguments: what must not matter (key order, whitespace, escapes, number spelling)
/// and what must (every value, exactly).
/// </summary>
public class CanonicalArgumentsTests
{
    private static string Canonical(string json) => Canonical(Encoding.UTF8.GetBytes(json));

    private static string Canonical(byte[] json)
    {
        var output = new ArrayBufferWriter<byte>();
        Assert.True(CanonicalArguments.TryWrite(json, output, out var error), error);
        Assert.Null(error);
        return Encoding.UTF8.GetString(output.WrittenSpan);
    }

    private static string Refused(string json) => Refused(Encoding.UTF8.GetBytes(json));

    private static string Refused(byte[] json)
    {
        var output = new ArrayBufferWriter<byte>();
        Assert.False(CanonicalArguments.TryWrite(json, output, out var error));
        Assert.Equal(0, output.WrittenCount); // nothing written for a refused input
        Assert.False(string.IsNullOrEmpty(error));
        Assert.False(CanonicalArguments.TryHash(json, out var hash, out var hashError));
        Assert.Equal(string.Empty, hash);
        Assert.Equal(error, hashError);
        return error!;
    }

    private static string Hash(string json)
    {
        Assert.True(CanonicalArguments.TryHash(Encoding.UTF8.GetBytes(json), out var hash, out var error), error);
        return hash;
    }

    private static void Same(string a, string b)
    {
        Assert.Equal(Canonical(a), Canonical(b));
        Assert.Equal(Hash(a), Hash(b));
    }

    private static void Different(string a, string b)
    {
        Assert.NotEqual(Canonical(a), Canonical(b));
        Assert.NotEqual(Hash(a), Hash(b));
    }

    [Fact]
    public void A_sample_has_this_exact_canonical_text()
    {
        const string input = """
            {
              "path" : "/tmp/r\u00e9sum\u00E9.txt",
              "mode": "w",
              "options": { "z": [3, 2.50, 1e2, -0, true, null], "a": { "\u0041": "\"q\"\\\n\u0007\/" } },
              "size": 1.0E3,
              "big": 123456789012345678901234567890,
              "tiny": 0.00000012,
              "half": -5e-1,
              "émoji": "😀",
              "": false
            }
            """;
        const string expected =
            """{"":false,"big":1.2345678901234567890123456789e+29,"half":-0.5,"mode":"w","options":{"a":{"A":"\"q\"\\\n\u0007/"},"z":[3,2.5,100,0,true,null]},"path":"/tmp/résumé.txt","size":1000,"tiny":1.2e-7,"émoji":"😀"}""";
        Assert.Equal(expected, Canonical(input));
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(expected))), Hash(input));
    }

    [Fact]
    public void Key_order_and_whitespace_do_not_matter()
    {
        Same("""{"a":1,"b":2}""", """{"b":2,"a":1}""");
        Same("""{"a":1,"b":2}""", " \t\r\n{ \"b\" :\n 2 ,\t\"a\":1 }\n ");
        Assert.Equal("""{"a":1,"b":[1,2]}""", Canonical("""{ "b" : [ 1 , 2 ] , "a" : 1 }"""));
    }

    [Fact]
    public void Nested_objects_are_sorted_too()
    {
        Same("""{"x":{"b":{"d":1,"c":2},"a":[{"z":1,"y":2}]}}""", """{"x":{"a":[{"y":2,"z":1}],"b":{"c":2,"d":1}}}""");
        Assert.Equal("""{"x":{"a":[{"y":2,"z":1}],"b":{"c":2,"d":1}}}""", Canonical("""{"x":{"b":{"d":1,"c":2},"a":[{"z":1,"y":2}]}}"""));
    }

    [Fact]
    public void Keys_are_sorted_by_utf16_code_units_not_utf8_bytes()
    {
        // U+FF61 is one UTF-16 unit 0xFF61; U+1F600 is the pair 0xD83D 0xDE00: UTF-16 puts the emoji first, UTF-8 last.
        Assert.Equal("{\"😀\":2,\"｡\":1}", Canonical("{\"｡\":1,\"😀\":2}"));
        Assert.Equal("""{"A":1,"B":2,"a":3,"b":4}""", Canonical("""{"b":4,"a":3,"B":2,"A":1}"""));
        Assert.Equal("""{"a":1,"aa":2,"ab":3}""", Canonical("""{"ab":3,"aa":2,"a":1}"""));
    }

    [Theory]
    [InlineData("\"\\u0041\"", "\"A\"")]
    [InlineData("\"\\u00e9\"", "\"é\"")]
    [InlineData("\"\\ud83d\\ude00\"", "\"😀\"")]
    [InlineData("\"\\/\"", "\"/\"")]
    [InlineData("\"\\u000a\"", "\"\\n\"")]
    [InlineData("\"\\u0022\"", "\"\\\"\"")]
    [InlineData("\"\\u005C\"", "\"\\\\\"")]
    [InlineData("\"\\u001F\"", "\"\\u001f\"")]
    [InlineData("\"\\u007f\\u2028\"", "\"\u007f\u2028\"")]
    public void Escapes_that_spell_the_same_string_are_equal(string escaped, string plain)
    {
        Same($$"""{"v":{{escaped}}}""", $$"""{"v":{{plain}}}""");
        Same($$"""{{{escaped}}:1}""", $$"""{{{plain}}:1}""");
    }

    [Fact]
    public void Strings_use_the_short_escapes_and_lowercase_hex_for_other_controls()
    {
        Assert.Equal("""{"v":"\b\f\n\r\t\u0000\u001b\"\\"}""", Canonical("""{"v":"\u0008\u000C\u000a\u000D\u0009\u0000\u001B\u0022\u005c"}"""));
        Assert.Equal("{\"v\":\"ü€😀\u007f\"}", Canonical("""{"v":"\u00fc\u20AC\uD83D\uDE00\u007F"}"""));
    }

    [Theory]
    [InlineData("1", "1")]
    [InlineData("1.0", "1")]
    [InlineData("1.00", "1")]
    [InlineData("10e-1", "1")]
    [InlineData("0.1E1", "1")]
    [InlineData("0.1e+1", "1")]
    [InlineData("100e-2", "1")]
    [InlineData("-0", "0")]
    [InlineData("-0.0e5", "0")]
    [InlineData("0e-99999", "0")]
    [InlineData("-1.50", "-1.5")]
    [InlineData("1E2", "100")]
    [InlineData("0.000001", "0.000001")]
    [InlineData("0.0000001", "1e-7")]
    [InlineData("1.25e-7", "1.25e-7")]
    [InlineData("123.456", "123.456")]
    [InlineData("0.5", "0.5")]
    [InlineData("100000000000000000000", "100000000000000000000")]
    [InlineData("1e21", "1e+21")]
    [InlineData("-12.5e20", "-1.25e+21")]
    [InlineData("9007199254740993", "9007199254740993")]
    [InlineData("123456789012345678901", "123456789012345678901")]
    [InlineData("1234567890123456789012", "1.234567890123456789012e+21")]
    [InlineData("0.30000000000000000000000000000001", "0.30000000000000000000000000000001")]
    [InlineData("1e10000", "1e+10000")]
    [InlineData("1e-10000", "1e-10000")]
    [InlineData("0.001e-9997", "1e-10000")]
    public void Numbers_are_written_in_one_exact_form(string literal, string canonical)
    {
        Assert.Equal($$"""{"n":{{canonical}}}""", Canonical($$"""{"n":{{literal}}}"""));
        // The canonical form is itself canonical.
        Assert.Equal($$"""{"n":{{canonical}}}""", Canonical($$"""{"n":{{canonical}}}"""));
    }

    [Fact]
    public void Spellings_of_one_number_are_the_same_number()
    {
        foreach (var one in new[] { "1.0", "1.00", "10e-1", "0.1E1", "1e0", "1E+0", "0.01e2" })
        {
            Same("""{"n":1}""", $$"""{"n":{{one}}}""");
        }
        Same("""{"n":0}""", """{"n":-0}""");
        Same("""{"n":0}""", """{"n":0.0e10}""");
    }

    [Theory]
    [InlineData("""{"v":"1"}""", """{"v":1}""")]
    [InlineData("""{"v":1}""", """{"v":2}""")]
    [InlineData("""{"v":9007199254740993}""", """{"v":9007199254740992}""")]
    [InlineData("""{"v":0.1}""", """{"v":0.10000000000000001}""")]
    [InlineData("""{"v":1}""", """{"v":-1}""")]
    [InlineData("""{"v":1e21}""", """{"v":1e22}""")]
    [InlineData("""{"v":[1,2]}""", """{"v":[2,1]}""")]
    [InlineData("""{"v":[1]}""", """{"v":[1,1]}""")]
    [InlineData("""{"v":null}""", """{}""")]
    [InlineData("""{"v":null}""", """{"v":false}""")]
    [InlineData("""{"v":true}""", """{"v":"true"}""")]
    [InlineData("""{"v":{}}""", """{"v":[]}""")]
    [InlineData("""{"v":""}""", """{"v":null}""")]
    [InlineData("""{"v":"a"}""", """{"v":"A"}""")]
    [InlineData("""{"v":"a "}""", """{"v":"a"}""")]
    [InlineData("""{"a":1}""", """{"A":1}""")]
    [InlineData("""{"a":{"b":1}}""", """{"a":{"b":1,"c":2}}""")]
    public void Different_values_stay_different(string a, string b) => Different(a, b);

    [Theory]
    [InlineData("""{"a":1,"a":1}""")]
    [InlineData("""{"a":1,"b":2,"a":3}""")]
    [InlineData("""{"a":1,"\u0061":2}""")]
    [InlineData("""{"x":[{"k":1,"k":2}]}""")]
    public void Duplicate_keys_are_refused(string json) => Assert.Contains("duplicate", Refused(json), StringComparison.Ordinal);

    [Fact]
    public void Nesting_up_to_64_levels_is_accepted_and_beyond_refused()
    {
        // The arguments object is level 1.
        static string Nested(int levels) => "{\"v\":" + string.Concat(Enumerable.Repeat("[", levels - 1)) + string.Concat(Enumerable.Repeat("]", levels - 1)) + "}";

        Assert.Equal(Nested(CanonicalArguments.MaxDepth), Canonical(Nested(CanonicalArguments.MaxDepth)));
        Assert.Contains("64", Refused(Nested(CanonicalArguments.MaxDepth + 1)), StringComparison.Ordinal);
        Assert.Contains("64", Refused(Nested(1000)), StringComparison.Ordinal);

        var objects = new StringBuilder();
        for (var i = 0; i < 65; i++)
        {
            objects.Append("{\"k\":");
        }
        objects.Append('1').Append('}', 65);
        Assert.Contains("64", Refused(objects.ToString()), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{")]
    [InlineData("{\"a\":}")]
    [InlineData("{\"a\":1,}")]
    [InlineData("{\"a\":01}")]
    [InlineData("{\"a\":1.}")]
    [InlineData("{\"a\":.5}")]
    [InlineData("{\"a\":+1}")]
    [InlineData("{\"a\":NaN}")]
    [InlineData("{\"a\":'x'}")]
    [InlineData("{a:1}")]
    [InlineData("{\"a\":1} {}")]
    [InlineData("{\"a\":1}x")]
    [InlineData("{\"a\":1 /* c */}")]
    [InlineData("{\"a\":\"\t\"}")]
    [InlineData("{\"a\":\"\\x\"}")]
    [InlineData(" ")]
    public void Invalid_json_is_refused(string json) => Assert.Contains("JSON", Refused(json), StringComparison.Ordinal);

    [Theory]
    [InlineData("[]")]
    [InlineData("[{\"a\":1}]")]
    [InlineData("\"a\"")]
    [InlineData("1")]
    [InlineData("null")]
    [InlineData("true")]
    public void A_top_level_value_other_than_an_object_is_refused(string json) => Assert.Contains("object", Refused(json), StringComparison.Ordinal);

    [Theory]
    [InlineData("{\"v\":\"\\ud800\"}")]
    [InlineData("{\"v\":\"\\udc00x\"}")]
    [InlineData("{\"v\":\"\\ud83d\\u0041\"}")]
    [InlineData("{\"\\ud800\":1}")]
    public void Unpaired_surrogate_escapes_are_refused(string json) => Assert.Contains("surrogate", Refused(json), StringComparison.Ordinal);

    [Fact]
    public void Invalid_utf8_is_refused()
    {
        Assert.Contains("UTF-8", Refused([.. "{\"v\":\""u8, 0xC3, .. "\"}"u8]), StringComparison.Ordinal);
        Assert.Contains("UTF-8", Refused([.. "{\"v\":\""u8, 0xED, 0xA0, 0x80, .. "\"}"u8]), StringComparison.Ordinal); // an encoded surrogate
        Assert.Contains("UTF-8", Refused([.. "{\"v\":\""u8, 0xFF, .. "\"}"u8]), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("1e10001")]
    [InlineData("1e-10001")]
    [InlineData("0.1e10002")]
    [InlineData("1e99999999999999999999")]
    [InlineData("-1e-4294967296")]
    [InlineData("0e1234567890")]
    public void Numbers_beyond_the_exponent_bound_are_refused(string literal) =>
        Assert.Contains("10000", Refused($$"""{"n":{{literal}}}"""), StringComparison.Ordinal);

    [Fact]
    public void A_long_mantissa_is_kept_digit_for_digit()
    {
        var digits = "1" + new string('0', 5000) + "1";
        Assert.Equal($$"""{"n":1.{{new string('0', 5000)}}1e+5001}""", Canonical($$"""{"n":{{digits}}}"""));
        Different($$"""{"n":{{digits}}}""", $$"""{"n":1{{new string('0', 5001)}}1}""");
    }

    [Fact]
    public void No_arguments_is_the_empty_object()
    {
        Assert.Equal("{}", Canonical([]));
        Assert.Equal("{}", Canonical("{ }"));
        Assert.True(CanonicalArguments.TryHash([], out var empty, out _));
        Assert.Equal(Hash("{}"), empty);
        Assert.Equal(Hash(" {\n} "), empty);
        Assert.Equal("44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", empty); // SHA-256 of "{}"
    }

    [Fact]
    public void The_hash_is_64_lowercase_hex_digits_of_the_canonical_bytes()
    {
        var hash = Hash("""{"b":[1,2.0],"a":"x"}""");
        Assert.Equal(64, hash.Length);
        Assert.Matches("^[0-9a-f]{64}$", hash);
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData("""{"a":"x","b":[1,2]}"""u8)), hash);
    }

    [Fact]
    public void A_sequence_split_anywhere_gives_the_same_result_as_one_span()
    {
        var json = Encoding.UTF8.GetBytes("""{"z":"caf\u00e9 😀","a":[1.50,{"y":null,"x":-0}],"m":12345678901234567890123}""");
        var expected = Canonical(json);
        Assert.True(CanonicalArguments.TryHash(json, out var expectedHash, out _));
        for (var split = 0; split <= json.Length; split++)
        {
            var sequence = Segments(json[..split], json[split..], []);
            var output = new ArrayBufferWriter<byte>();
            Assert.True(CanonicalArguments.TryWrite(sequence, output, out var error), error);
            Assert.Equal(expected, Encoding.UTF8.GetString(output.WrittenSpan));
            Assert.True(CanonicalArguments.TryHash(sequence, out var hash, out _));
            Assert.Equal(expectedHash, hash);
        }
        Assert.True(CanonicalArguments.TryHash(ReadOnlySequence<byte>.Empty, out var empty, out _));
        Assert.Equal(Hash("{}"), empty);
        Assert.False(CanonicalArguments.TryHash(Segments("{\"a\":1,"u8.ToArray(), "\"a\":2}"u8.ToArray(), []), out _, out var duplicate));
        Assert.Contains("duplicate", duplicate, StringComparison.Ordinal);
    }

    [Fact]
    public void Output_is_appended_to_what_the_writer_already_holds()
    {
        var output = new ArrayBufferWriter<byte>();
        output.Write("x"u8);
        Assert.True(CanonicalArguments.TryWrite("""{"b":1,"a":2}"""u8, output, out _));
        Assert.Equal("""x{"a":2,"b":1}""", Encoding.UTF8.GetString(output.WrittenSpan));
    }

    private static ReadOnlySequence<byte> Segments(params byte[][] parts)
    {
        Segment? first = null;
        Segment? last = null;
        foreach (var part in parts)
        {
            var segment = new Segment(part, last);
            first ??= segment;
            last = segment;
        }
        return new ReadOnlySequence<byte>(first!, 0, last!, last!.Memory.Length);
    }

    private sealed class Segment : ReadOnlySequenceSegment<byte>
    {
        public Segment(byte[] memory, Segment? previous)
        {
            Memory = memory;
            if (previous is not null)
            {
                RunningIndex = previous.RunningIndex + previous.Memory.Length;
                previous.Next = this;
            }
        }
    }
}
