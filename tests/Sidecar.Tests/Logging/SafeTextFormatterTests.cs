using System.Buffers;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Logging;
using ZLogger;

namespace Sidecar.Tests.Logging;

/// <summary>
/// Every log entry is exactly one line: control characters (C0, DEL, C1 with U+0085, and U+2028/U+2029) in the
/// formatted text are written as escapes, other UTF-8 is left alone.
/// </summary>
public sealed class SafeTextFormatterTests
{
    [Theory]
    [InlineData("a\nb", "a\\nb")]
    [InlineData("a\rb", "a\\rb")]
    [InlineData("a\r\nb", "a\\r\\nb")]
    [InlineData("a\tb", "a\\tb")]
    [InlineData("\u001b[31mred", "\\u001b[31mred")]
    [InlineData("a\0b", "a\\u0000b")]
    [InlineData("a\u007fb", "a\\u007fb")]
    [InlineData("a\u0001\u001fb", "a\\u0001\\u001fb")]
    [InlineData("a\u2028b", "a\\u2028b")]
    [InlineData("a\u2029b", "a\\u2029b")]
    [InlineData("a\u0085b", "a\\u0085b")]
    [InlineData("a\u009b31mb", "a\\u009b31mb")] // C1 CSI
    [InlineData("\n", "\\n")]
    [InlineData("", "")]
    public void Control_characters_are_escaped(string text, string expected)
    {
        Assert.Equal(expected, Escape(Encoding.UTF8.GetBytes(text)));
    }

    [Theory]
    [InlineData("café")]
    [InlineData("日本")]
    [InlineData("😀 🇯🇵")]
    [InlineData("— … ‘quoted’ € ™ ← \u2027 \u202a")] // E2-led sequences that are not U+2028/U+2029
    [InlineData("\u00a0 \u00a9 \u00bf")] // C2-led, above the C1 range
    [InlineData(@"C:\path\n is a backslash and an n")]
    public void Other_text_is_unchanged(string text)
    {
        Assert.Equal(text, Escape(Encoding.UTF8.GetBytes(text)));
    }

    [Theory]
    [InlineData(new byte[] { 0x61, 0xC2 })]
    [InlineData(new byte[] { 0x61, 0xE2 })]
    [InlineData(new byte[] { 0x61, 0xE2, 0x80 })]
    [InlineData(new byte[] { 0xE2, 0x80, 0x61 })]
    public void A_cut_sequence_is_copied_as_it_is(byte[] bytes)
    {
        var output = new ArrayBufferWriter<byte>();
        SafeTextFormatter.Escape(bytes, output);
        Assert.Equal(bytes, output.WrittenSpan.ToArray());
    }

    [Fact]
    public void A_long_text_with_many_control_characters_is_escaped_whole()
    {
        var text = string.Concat(Enumerable.Repeat("line\n\u001b日本\u2028", 20_000));
        var expected = string.Concat(Enumerable.Repeat("line\\n\\u001b日本\\u2028", 20_000));
        Assert.Equal(expected, Escape(Encoding.UTF8.GetBytes(text)));
    }

    [Fact]
    public void A_forged_line_in_a_value_stays_in_its_entry()
    {
        const string tool = "x\nFAKE 2026-12-01T00:00:00.000Z Information Sidecar: forged";
        var log = Log(logger => logger.LogInformation("Blocked {Server}/{Tool} ({Session}): denied", "everything", tool, "s\r\n1"));

        var line = Assert.Single(Lines(log));
        Assert.Equal("Blocked everything/x\\nFAKE 2026-12-01T00:00:00.000Z Information Sidecar: forged (s\\r\\n1): denied", line);
    }

    [Fact]
    public void Escape_nul_del_and_separators_in_values_leave_one_line_per_entry()
    {
        var log = Log(logger =>
        {
            logger.LogWarning("tool {Tool}", "\u001b[31mred");
            logger.LogWarning("tool {Tool}", "a\0b\u007f");
            logger.LogWarning("tool {Tool}", "p\u2028q\u2029r\u0085s");
            logger.LogWarning("tool {Tool}", "café 日本 😀");
        });

        Assert.Equal(["tool \\u001b[31mred", "tool a\\u0000b\\u007f", "tool p\\u2028q\\u2029r\\u0085s", "tool café 日本 😀"], Lines(log));
        Assert.DoesNotContain(log, c => (c < 0x20 && c != '\n') || c == 0x7f || c is '\u0085' or '\u2028' or '\u2029');
    }

    [Fact]
    public void The_prefix_is_kept_and_the_message_after_it_is_escaped()
    {
        var log = Log(logger => logger.LogInformation("hello {Name}", "a\nb"), formatter => formatter.SetPrefixFormatter($"{0} {1}: ",
            (in MessageTemplate template, in LogInfo info) => template.Format(info.LogLevel, info.Category)));

        Assert.Equal(["Information Test: hello a\\nb"], Lines(log));
    }

    [Fact]
    public void An_exception_with_its_stack_trace_is_one_escaped_line()
    {
        Exception caught;
        try
        {
            throw new InvalidOperationException("bad\nFAKE line", new FormatException("inner"));
        }
        catch (InvalidOperationException ex)
        {
            caught = ex;
        }
        var log = Log(logger => logger.LogError(caught, "failed {What}", "x"));

        var line = Assert.Single(Lines(log));
        Assert.StartsWith("failed x\\nSystem.InvalidOperationException: bad\\nFAKE line\\n ---> System.FormatException: inner", line, StringComparison.Ordinal);
        Assert.Contains("\\n   at Sidecar.Tests.Logging.SafeTextFormatterTests.", line, StringComparison.Ordinal);
    }

    private static string Escape(byte[] bytes)
    {
        var output = new ArrayBufferWriter<byte>();
        SafeTextFormatter.Escape(bytes, output);
        return Encoding.UTF8.GetString(output.WrittenSpan);
    }

    /// <summary>The lines written, each with its terminator checked and removed; the text must end with a terminator.</summary>
    private static string[] Lines(string log)
    {
        Assert.EndsWith(Environment.NewLine, log, StringComparison.Ordinal);
        return log[..^Environment.NewLine.Length].Split(Environment.NewLine);
    }

    /// <summary>What a ZLogger stream provider with the safe formatter wrote for <paramref name="write"/>.</summary>
    private static string Log(Action<ILogger> write, Action<ZLogger.Formatters.PlainTextZLoggerFormatter>? configure = null)
    {
        var stream = new MemoryStream();
        using (var factory = LoggerFactory.Create(logging => logging.AddZLoggerStream(stream, options => options.UseSafePlainTextFormatter(configure))))
        {
            write(factory.CreateLogger("Test"));
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }
}
