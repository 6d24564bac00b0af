using System.Text;
using Sidecar.Catalogue;
using Sidecar.Configuration;
using Sidecar.Policy;

namespace Sidecar.Tests.Catalogue;

/// <summary>
/// <c>sidecar tools --pin</c>'s file edit: <c>pins</c> replaced in place or inserted before the closing brace, every
/// other byte of the file kept, the file's indentation and line endings followed, and the result a valid policy
/// whose pins are exactly those written.
/// </summary>
public class PinWriterTests
{
    private const string A = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    private const string B = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    private static readonly KeyValuePair<string, string>[] Two = [new("echo", A), new("get-sum", B)];

    private static string Write(string policy, IReadOnlyList<KeyValuePair<string, string>> pins)
        => Encoding.UTF8.GetString(PinWriter.Write(Encoding.UTF8.GetBytes(policy), pins));

    private static PolicyModel Compile(string policy)
    {
        var diagnostics = new DiagnosticBag("pinned.json");
        return PolicyCompiler.Load(Encoding.UTF8.GetBytes(policy), "t", diagnostics) ?? throw new Xunit.Sdk.XunitException(diagnostics + "\n" + policy);
    }

    private static void AssertPins(string policy, IReadOnlyList<KeyValuePair<string, string>> expected)
        => Assert.Equal(expected.Select(p => (p.Key, p.Value)), Compile(policy).Config.Pins.Select(p => (p.Tool, p.Hash)));

    [Fact]
    public void Pins_are_inserted_after_the_last_member_and_nothing_else_changes()
    {
        const string policy = "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": {\n    \"echo\": {},\n    \"get-sum\": { \"reason\": \"x\" }\n  }\n}\n";
        var written = Write(policy, Two);
        Assert.Equal(
            "{\n  \"version\": \"1\",\n  \"default\": \"deny\",\n  \"tools\": {\n    \"echo\": {},\n    \"get-sum\": { \"reason\": \"x\" }\n  },\n" +
            $"  \"pins\": {{\n    \"echo\": \"{A}\",\n    \"get-sum\": \"{B}\"\n  }}\n}}\n", written);
        AssertPins(written, Two);
    }

    [Fact]
    public void An_existing_pins_member_gets_its_new_value_in_place()
    {
        const string before = "{\n    \"version\": \"1\",\n    \"pins\": { \"old\": \"" + B + "\" },\n";
        const string after = "    \"tools\": { \"echo\": {}, \"get-sum\": {} },\n    \"description\": \"kept as it is\"   \n}";
        var written = Write(before + after, [new("echo", A)]);
        Assert.Equal("{\n    \"version\": \"1\",\n    \"pins\": {\n        \"echo\": \"" + A + "\"\n    },\n" + after, written);
        AssertPins(written, [new("echo", A)]);
    }

    [Fact]
    public void A_one_line_policy_gets_one_line_pins()
    {
        var written = Write("""{ "version": "1", "tools": { "echo": {} } }""", Two);
        Assert.Equal($$"""{ "version": "1", "tools": { "echo": {} }, "pins": { "echo": "{{A}}", "get-sum": "{{B}}" } }""", written);
        AssertPins(written, Two);
    }

    [Fact]
    public void Tabs_crlf_and_a_bom_are_kept()
    {
        var policy = "\uFEFF{\r\n\t\"version\": \"1\",\r\n\t\"tools\": { \"echo\": {} }\r\n}\r\n";
        var written = Write(policy, [new("echo", A)]); // the BOM is the bytes EF BB BF, before and after
        Assert.Equal(policy[..^5] + ",\r\n\t\"pins\": {\r\n\t\t\"echo\": \"" + A + "\"\r\n\t}\r\n}\r\n", written);
        AssertPins(written, [new("echo", A)]);
    }

    [Fact]
    public void No_tools_to_pin_is_an_empty_object()
    {
        var written = Write("{\n  \"version\": \"1\",\n  \"pins\": { \"echo\": \"" + A + "\" }\n}\n", []);
        Assert.Equal("{\n  \"version\": \"1\",\n  \"pins\": {}\n}\n", written);
        Assert.Empty(Compile(written).Pins);
    }

    [Fact]
    public void Only_the_top_level_pins_member_is_replaced_and_names_are_escaped()
    {
        // A tool named "pins" and a description mentioning pins are not the policy's pins.
        const string policy = """{ "version": "1", "description": "\"pins\": {}", "tools": { "pins": {}, "a\"b": {} } }""";
        KeyValuePair<string, string>[] pins = [new("pins", A), new("a\"b", B), new("ünï", A)];
        var written = Write(policy, pins);
        Assert.StartsWith(policy[..^2], written, StringComparison.Ordinal);
        AssertPins(written, pins);
        var again = Write(written, [new("pins", B)]);
        Assert.StartsWith(policy[..^2], again, StringComparison.Ordinal);
        AssertPins(again, [new("pins", B)]);
    }

    [Fact]
    public void A_file_that_is_not_an_object_is_refused()
        => Assert.ThrowsAny<System.Text.Json.JsonException>(() => PinWriter.Write("[1]"u8, Two));
}
