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

    private static readonly (string Value, string Expected)[] Embedded =
    [
        ("token=sk-live-abcdef1234567890abcd", "token=[REDACTED]"),
        ("GET https://api.example.com/v1/items?api_key=XYZ123&page=2", "GET https://api.example.com/v1/items?api_key=[REDACTED]&page=2"),
        ("retry with password: hunter2 later", "retry with password: [REDACTED] later"),
        ("db_password:hunter2;host=db1", "db_password:[REDACTED];host=db1"),
        ("PASSWORD = 'correct horse battery' # from the vault", "PASSWORD = '[REDACTED]' # from the vault"),
        ("{\"client_secret\":\"abc def\",\"name\":\"x\"}", "{\"client_secret\":\"[REDACTED]\",\"name\":\"x\"}"),
        ("{\"password\": \"hun\\\"ter2\"} was sent", "{\"password\": \"[REDACTED]\"} was sent"),
        ("body {\\\"api_key\\\":\\\"k-123 456\\\",\\\"n\\\":1}", "body {\\\"api_key\\\":\\\"[REDACTED]\\\",\\\"n\\\":1}"),
        ("Cookie: session=abc123; theme=dark", "Cookie: [REDACTED]; theme=dark"),
        ("https://app.example.com/cb#access_token=ya29.a0Af&state=xyz", "https://app.example.com/cb#access_token=[REDACTED]&state=xyz"),
        ("export GITHUB_TOKEN=abc123 && make", "export GITHUB_TOKEN=[REDACTED] && make"),
        ("Authorization: token 0123456789abcdef", "Authorization: token [REDACTED]"),
        ("secret_key := 'abc' in main.go", "secret_key := '[REDACTED]' in main.go"),
        ("Authorization: Bearer abc123def456ghi", "Authorization: Bearer [REDACTED]"),
        ("curl -H 'authorization: basic dXNlcjpwYXNz' https://x", "curl -H 'authorization: basic [REDACTED]' https://x"),
        ("use Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWhlcmU now", "use Bearer [REDACTED] now"),
        ("login with BASIC dXNlcjpwYXNzd29yZA== please", "login with BASIC [REDACTED] please"),
        ("the bearer\tmF_9.B5f-4.1JqM expired.", "the bearer\t[REDACTED] expired."),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWhlcmU in the log", "jwt [REDACTED] in the log"),
        ("cookie was (eyJhbGciOiJub25lIn0.eyJzdWIiOiIxMjM0NTY3In0.)", "cookie was ([REDACTED])"),
        ("key ghp_abcdefghijklmnopqrstuvwxyz012345 leaked", "key [REDACTED] leaked"),
        ("(sk-proj-abcdefghijklmnop1234)", "([REDACTED])"),
        ("see github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "see [REDACTED]"),
        ("slack xoxb-1234567890-abcdefghijkl, gitlab glpat-ABCDEFGHIJ0123456789", "slack [REDACTED], gitlab [REDACTED]"),
        ("npm_abcdefghijklmnop0123 and hf_abcdefghijklmnopqrstu", "[REDACTED] and [REDACTED]"),
        ("aws AKIAABCDEFGHIJKLMNOP, role ASIAABCDEFGHIJ012345.", "aws [REDACTED], role [REDACTED]."),
        ("maps key=AIzaSyA1234567890abcdefghijklmnopqrstu", "maps key=[REDACTED]"),
        ("maps AIzaSyA1234567890abcdefghijklmnopqrstu ok", "maps [REDACTED] ok"),
        ("conn postgres://app:s3cr3t@db:5432/x and more", "conn postgres://app:[REDACTED]@db:5432/x and more"),
        ("a https://u:p1@h1/ b redis://:p2@h2", "a https://u:[REDACTED]@h1/ b redis://:[REDACTED]@h2"),
        ("key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEabc\n-----END RSA PRIVATE KEY-----\nthanks",
            "key:\n[REDACTED]\nthanks"),
        ("here -----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA", "here [REDACTED]"),
        ("Schlüssel für den Zugang: token=sk-live-abcdef1234567890abcd — danke 😀", "Schlüssel für den Zugang: token=[REDACTED] — danke 😀"),
        ("日本語 Bearer abc123def456ghi 終わり", "日本語 Bearer [REDACTED] 終わり"),
        ("pässwort=geheim Authorization=Basic dXNlcjpwYXNz", "pässwort=geheim Authorization=Basic [REDACTED]"),
    ];

    public static TheoryData<string, string, bool> EmbeddedCases()
    {
        var data = new TheoryData<string, string, bool>();
        foreach (var (value, expected) in Embedded)
        {
            data.Add(value, expected, false);
            data.Add(value, expected, true);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(EmbeddedCases))]
    public void Credentials_inside_longer_strings_are_replaced_in_place(string value, string expected, bool escaped)
    {
        var (note, cut) = Note(value, escaped);
        Assert.Equal(expected, note);
        Assert.False(cut);
    }

    [Fact]
    public void Escapes_inside_strings_are_read_before_looking()
    {
        // \u0020 is the space after Bearer; \" closes nothing inside the JSON text the string holds.
        var (args, _) = Write("""{"a":"use Bearer\u0020abc123def456ghi","b":"{\"password\":\"x\\\"y\",\"n\":1}","c":"\u0074oken=abc"}""");
        Assert.Equal("use Bearer [REDACTED]", args.GetProperty("a").GetString());
        Assert.Equal("""{"password":"[REDACTED]","n":1}""", args.GetProperty("b").GetString());
        Assert.Equal("token=[REDACTED]", args.GetProperty("c").GetString());
    }

    [Fact]
    public void Configured_keys_count_inside_text_too()
    {
        Assert.Equal("pay to iban=[REDACTED] today", Note("pay to iban=DE89370400440532013000 today", extraKeys: ["IBAN"]).Note);
        Assert.Equal("pay to iban=DE89370400440532013000 today", Note("pay to iban=DE89370400440532013000 today").Note);
    }

    [Fact]
    public void A_credential_across_the_cut_leaves_nothing_of_itself()
    {
        var (note, cut) = Note(new string('x', 30) + " sk-live-abcdef1234567890abcd", maxString: 40);
        Assert.True(cut);
        Assert.Equal(new string('x', 30) + " [REDACTED…[1 more chars]", note);

        (note, cut) = Note("é€ " + new string('y', 20) + " password=hunter2hunter2hunter2 and more text after it", escaped: true, maxString: 36);
        Assert.True(cut);
        Assert.Equal("é€ " + new string('y', 20) + " password=[RE…[30 more chars]", note);
        Assert.DoesNotContain("hunter", note, StringComparison.Ordinal);
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
    [InlineData("The client sends a bearer token in the Authorization header.")]
    [InlineData("We use Basic authentication, deprecated; use a token instead.")]
    [InlineData("A bearer token-based scheme and basic Authentication/Authorization are fine words.")]
    [InlineData("The bearer of this letter will bring the token to you.")]
    [InlineData("my password is long and the secret is safe")]
    [InlineData("ask-me-anything about the sk-short key and sk-abc123")]
    [InlineData("see https://example.com/login?user=alice&next=/home#top")]
    [InlineData("mailto://alice@example.com and ftp://files.example.com:21/pub")]
    [InlineData("the token is valid until 10:15, see page=2")]
    [InlineData("if (token == null || password != expected) return; x => token; a::token")]
    [InlineData("eyJ alone is not a token, nor eyJhbGciOiJIUzI1NiJ9 without its dots")]
    [InlineData("AKIA is an acronym; AKIAABCDEFGHIJKLMNOPQ is too long; xAKIAABCDEFGHIJKLMNOP is inside a word")]
    [InlineData("tasks: ghp_short, mysk-abcdefghijklmnopqrstuvwxyz, -----BEGIN PUBLIC KEY-----")]
    [InlineData("-- a -----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----")]
    [InlineData("token: ")]
    [InlineData("Ünïcödé prose — with “quotes”, 😀 and a bearer of good news.")]
    public void Ordinary_text_with_credential_words_is_kept(string value)
    {
        Assert.Equal(value, Note(value).Note);
        Assert.Equal(value, Note(value, escaped: true).Note);
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
    public void Whole_credentials_stay_whole()
    {
        Assert.Equal(AuditRedactor.Redacted, Note("  Bearer abc  ").Note);
        Assert.Equal(AuditRedactor.Redacted, Note("\u00a0ghp_abcdefghijklmnopqrstuvwxyz012345\u3000").Note);
        Assert.Equal(AuditRedactor.Redacted, Note("-----BEGIN CERTIFICATE-----\nMIIB").Note);
        Assert.True(AuditRedactor.LooksSecret("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlLWhlcmU"));
        Assert.False(AuditRedactor.LooksSecret("token=sk-live-abcdef1234567890abcd"));
    }

    [Fact]
    public void Url_passwords_are_replaced_in_every_url()
    {
        Assert.Equal("a https://u:[REDACTED]@h1/x b ftp://:[REDACTED]@h2", AuditRedactor.RedactUrlPassword("a https://u:p1@h1/x b ftp://:p2@h2"));
        Assert.Equal("https://api.example.com/v1", AuditRedactor.RedactUrlPassword("https://api.example.com/v1"));
    }
    [Fact]
    public void Credentials_are_found_wherever_they_fall_in_the_text()
    {
        // Every offset from the start and from the end: the vectorized search's blocks and the scalar rest.
        foreach (var (value, expected) in Embedded)
        {
            for (var pad = 1; pad <= 40; pad += 3)
            {
                var spaces = new string(' ', pad);
                Assert.Equal("x" + spaces + expected, Note("x" + spaces + value).Note);
                if (!value.Contains("-----BEGIN", StringComparison.Ordinal) || value.Contains("-----END", StringComparison.Ordinal))
                {
                    Assert.Equal(expected + spaces + "x", Note(value + spaces + "x").Note); // an unterminated key runs to the end
                }
            }
        }
    }

    [Fact]
    public void Long_texts_grow_the_buffers_and_are_cut_after_redaction()
    {
        var words = string.Concat(Enumerable.Repeat("word ", 300));
        Assert.Equal(words + "token=[REDACTED] " + words, Note(words + "token=abc " + words, maxString: 100_000).Note);
        Assert.Equal(words + "token=[REDACTED] é" + words, Note(words + "token=abc é" + words, escaped: true, maxString: 100_000).Note);

        var (note, cut) = Note(new string('x', 300) + " token=abc " + new string('y', 300));
        Assert.True(cut);
        Assert.Equal(new string('x', 256) + "…[" + (300 + 18 + 300 - 256) + " more chars]", note);
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
    [Theory]
    [InlineData("eyJ/")]
    [InlineData("eyJ=")]
    [InlineData("eyJ+x.")]
    [InlineData("a=")]
    [InlineData("password =")]
    [InlineData(" :")]
    [InlineData("x:// a:b ")]
    [InlineData("-")]
    [InlineData("_ghp")]
    [InlineData("bearer x-")]
    [InlineData("Basic ")]
    [InlineData("AKIA")]
    [InlineData("-----BEGIN X-----")]
    [InlineData("\\\"k\\\":")]
    public void Redaction_takes_linear_time_on_repeated_shapes(string unit)
    {
        // 2 MB of the same near-miss: milliseconds; a rule that rescanned what follows each candidate takes a minute.
        var value = string.Concat(Enumerable.Repeat(unit, (2 << 20) / unit.Length));
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var (note, _) = Note(value, maxString: 4 << 20);
        Assert.NotNull(note);
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(5), $"{watch.Elapsed} for {unit}");
    }
}
