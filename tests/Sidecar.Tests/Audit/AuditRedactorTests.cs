using System.Buffers;
using System.Text;
using System.Text.Json;
using Sidecar.Audit;

namespace Sidecar.Tests.Audit;

public sealed class AuditRedactorTests
{
    private static (JsonElement Arguments, bool Cut) Write(string raw, bool complete = true, int maxString = 256, params string[] extraKeys)
    {
        var redactor = new AuditRedactor(extraKeys, maxString);
        var buffer = new ArrayBufferWriter<byte>();
        bool cut;
        using (var writer = new Utf8JsonWriter(buffer))
        {
            writer.WriteStartObject();
            cut = redactor.WriteArguments(writer, Encoding.UTF8.GetBytes(raw), complete);
            writer.WriteEndObject();
        }
        return (JsonDocument.Parse(buffer.WrittenMemory).RootElement.GetProperty("arguments").Clone(), cut);
    }

    [Theory]
    [InlineData("password")]
    [InlineData("db_password")]
    [InlineData("apiKey")]
    [InlineData("API-KEY")]
    [InlineData("access_token")]
    [InlineData("Authorization")]
    [InlineData("client_secret")]
    [InlineData("private_key")]
    [InlineData("pwd")]
    [InlineData("auth")]
    public void Values_under_secret_keys_are_redacted_at_any_depth(string key)
    {
        var (args, _) = Write($$$"""{"outer":{"list":[{"{{{key}}}":"s3cr3t-value"}]},"{{{key}}}":{"nested":"x"}}""");
        Assert.Equal(AuditRedactor.Redacted, args.GetProperty("outer").GetProperty("list")[0].GetProperty(key).GetString());
        Assert.Equal(AuditRedactor.Redacted, args.GetProperty(key).GetString());
        Assert.DoesNotContain("s3cr3t", args.GetRawText(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("key")]
    [InlineData("author")]
    [InlineData("url")]
    [InlineData("message")]
    [InlineData("keyboard")]
    public void Ordinary_keys_are_kept(string key)
    {
        var (args, _) = Write($$"""{"{{key}}":"listen_host"}""");
        Assert.Equal("listen_host", args.GetProperty(key).GetString());
    }

    [Fact]
    public void Configured_keys_are_redacted_too()
    {
        var (args, _) = Write("""{"ssn_number":"1","customer_iban":"DE00","name":"x"}""", extraKeys: ["IBAN"]);
        Assert.Equal(AuditRedactor.Redacted, args.GetProperty("customer_iban").GetString());
        Assert.Equal("x", args.GetProperty("name").GetString());
    }

    [Theory]
    [InlineData("Bearer abcdef.ghijkl")]
    [InlineData("basic dXNlcjpwYXNz")]
    [InlineData("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWhlcmU")]
    [InlineData("sk-proj-abcdefghijklmnop1234")]
    [InlineData("ghp_abcdefghijklmnopqrstuvwxyz012345")]
    [InlineData("AKIAABCDEFGHIJKLMNOP")]
    [InlineData("-----BEGIN RSA PRIVATE KEY-----\nMIIE")]
    public void Credential_shaped_values_are_redacted_whatever_their_key(string value)
    {
        var (args, _) = Write(JsonSerializer.Serialize(new Dictionary<string, string> { ["note"] = value }));
        Assert.Equal(AuditRedactor.Redacted, args.GetProperty("note").GetString());
    }

    [Theory]
    [InlineData("hello world")]
    [InlineData("sk-short")]
    [InlineData("AKIA is an acronym")]
    [InlineData("https://api.example.com/v1")]
    public void Ordinary_values_are_kept(string value)
    {
        var (args, _) = Write(JsonSerializer.Serialize(new Dictionary<string, string> { ["note"] = value }));
        Assert.Equal(value, args.GetProperty("note").GetString());
    }

    [Fact]
    public void A_password_in_a_url_is_replaced_and_the_rest_kept()
    {
        var (args, _) = Write("""{"url":"https://alice:hunter2@db.example.com:5432/x?y=1"}""");
        Assert.Equal("https://alice:[REDACTED]@db.example.com:5432/x?y=1", args.GetProperty("url").GetString());
    }

    [Fact]
    public void Long_strings_are_cut_with_a_note_of_how_much()
    {
        var (args, cut) = Write($$"""{"text":"{{new string('a', 100)}}"}""", maxString: 40);
        Assert.True(cut);
        Assert.Equal(new string('a', 40) + "…[60 more chars]", args.GetProperty("text").GetString());
    }

    [Fact]
    public void Numbers_booleans_and_null_are_copied_exactly()
    {
        var (args, cut) = Write("""{"a":1.50e3,"b":true,"c":null,"d":[-0,false]}""");
        Assert.False(cut);
        Assert.Equal("""{"a":1.50e3,"b":true,"c":null,"d":[-0,false]}""", args.GetRawText());
    }

    [Theory]
    [InlineData("""{"a":"x","b":[1,2""")]
    [InlineData("""{"a":{"b":{"c":"unfinished str""")]
    [InlineData("""{"password":{"x":[1,2""")]
    [InlineData("""{"a":""")]
    [InlineData("""{""")]
    public void Arguments_cut_anywhere_are_closed_into_valid_json(string prefix)
    {
        var (args, cut) = Write(prefix, complete: false);
        Assert.True(cut);
        Assert.Equal(JsonValueKind.Object, args.ValueKind);
        Assert.DoesNotContain("unfinished", args.GetRawText(), StringComparison.Ordinal);
    }

    [Fact]
    public void Every_prefix_of_real_arguments_gives_valid_json()
    {
        var raw = """{"url":"https://u:p@h/x","password":"pw","list":[1,{"k":"v"},"é😀"],"n":-1.5e-3,"ok":true}""";
        var bytes = Encoding.UTF8.GetBytes(raw);
        for (var i = 0; i <= bytes.Length; i++)
        {
            var redactor = new AuditRedactor([], 256);
            var buffer = new ArrayBufferWriter<byte>();
            using (var writer = new Utf8JsonWriter(buffer))
            {
                writer.WriteStartObject();
                redactor.WriteArguments(writer, bytes.AsSpan(0, i), complete: i == bytes.Length);
                writer.WriteEndObject();
            }
            using var document = JsonDocument.Parse(buffer.WrittenMemory);
            Assert.DoesNotContain("\"pw\"", Encoding.UTF8.GetString(buffer.WrittenSpan), StringComparison.Ordinal);
        }
    }

    /// <summary>A string value under an ordinary key, written as raw UTF-8 (only <c>" \ \n \t</c> escaped) or with every
    /// non-ASCII and HTML-sensitive character escaped (<c>\u…</c>, as <see cref="JsonSerializer"/> writes it).</summary>
    private static (string? Note, bool Cut) Note(string value, bool escaped = false, int maxString = 256, params string[] extraKeys)
    {
        var raw = escaped
            ? JsonSerializer.Serialize(new Dictionary<string, string> { ["note"] = value })
            : "{\"note\":\"" + value.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal)
                .Replace("\n", "\\n", StringComparison.Ordinal).Replace("\t", "\\t", StringComparison.Ordinal) + "\"}";
        var (args, cut) = Write(raw, maxString: maxString, extraKeys: extraKeys);
        return (args.GetProperty("note").GetString(), cut);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Strings_are_cut_in_utf16_code_units_never_inside_a_pair(bool escaped)
    {
        // 5 + 2 per emoji: the 12th and 13th code units are one emoji, which is kept whole or not at all.
        var value = "abcde" + string.Concat(Enumerable.Repeat("😀", 10));
        var (note, cut) = Note(value, escaped, maxString: 12);
        Assert.True(cut);
        Assert.Equal("abcde😀😀😀…[14 more chars]", note);
        (note, cut) = Note(value, escaped, maxString: 25);
        Assert.False(cut);
        Assert.Equal(value, note);
    }

    [Theory]
    [InlineData("password")]
    [InlineData("X-Api-Key")]
    [InlineData("user.session_id")]
    [InlineData("keyboard")]
    [InlineData("ssn")]
    [InlineData("ssn_number")]
    [InlineData("TO\u212AEN")] // the Kelvin sign lower-cases to k: the string path decides
    [InlineData("Paßword")]
    [InlineData("")]
    public void Keys_as_utf8_are_judged_as_strings(string key)
    {
        var redactor = new AuditRedactor(["iban", "K"], 256);
        Assert.Equal(redactor.IsSecretKey(key), redactor.IsSecretKey(Encoding.UTF8.GetBytes(key)));
        var plain = new AuditRedactor([], 256);
        Assert.Equal(plain.IsSecretKey(key), plain.IsSecretKey(Encoding.UTF8.GetBytes(key)));
    }

    [Fact]
    public void Strings_with_nothing_to_redact_are_written_exactly_as_the_string_writer_writes_them()
    {
        string[] values = ["plain", "é ü ß 日本 😀", "quote \" backslash \\ tab \t nl \n", "<html> & 'amp' +", "\u0001\u001f\u007f", "\u2028\u2029"];
        foreach (var value in values)
        {
            var expected = new ArrayBufferWriter<byte>();
            using (var writer = new Utf8JsonWriter(expected))
            {
                writer.WriteStartObject();
                writer.WritePropertyName("arguments"u8);
                writer.WriteStartObject();
                writer.WriteString("note", value);
                writer.WriteEndObject();
                writer.WriteEndObject();
            }
            foreach (var escaped in new[] { false, true })
            {
                var raw = escaped ? JsonSerializer.Serialize(new Dictionary<string, string> { ["note"] = value }) : "{\"note\":" + JsonSerializer.Serialize(value, new JsonSerializerOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }) + "}";
                var actual = new ArrayBufferWriter<byte>();
                using (var writer = new Utf8JsonWriter(actual))
                {
                    writer.WriteStartObject();
                    new AuditRedactor([], 256).WriteArguments(writer, Encoding.UTF8.GetBytes(raw), complete: true);
                    writer.WriteEndObject();
                }
                Assert.Equal(Encoding.UTF8.GetString(expected.WrittenSpan), Encoding.UTF8.GetString(actual.WrittenSpan));
            }
        }
    }
}
