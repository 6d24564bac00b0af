using Sidecar.Policy;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Policy;

/// <summary><c>pins</c> in a policy file: read, compiled for a lookup by span, and every mistake reported with its path and line.</summary>
public class PolicyPinsReaderTests
{
    private const string Echo = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    private const string Sum = "sha256:60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    [Fact]
    public void Pins_are_read_and_found_by_span()
    {
        var model = Policies.Compile($$"""
            { "version": "1", "tools": { "echo": {} }, "pins": { "echo": "{{Echo}}", "get-sum": "{{Sum}}" } }
            """);
        Assert.True(model.HasPins);
        Assert.Equal([("echo", Echo), ("get-sum", Sum)], model.Config.Pins.Select(p => (p.Tool, p.Hash)));
        Assert.True(model.TryGetPin("get-sum".AsSpan(), out var pin));
        Assert.Equal(Sum, pin);
        Assert.False(model.TryGetPin("other".AsSpan(), out _));
    }

    [Fact]
    public void A_policy_without_pins_has_none()
    {
        var model = Policies.Compile("""{ "version": "1", "tools": { "echo": {} } }""");
        Assert.False(model.HasPins);
        Assert.Empty(model.Pins);
        Assert.False(model.TryGetPin("echo".AsSpan(), out _));
    }

    [Theory]
    [InlineData("""{ "version": "1", "pins": [] }""", "$.pins", "must be an object mapping tool names")]
    [InlineData("""{ "version": "1", "pins": { "echo": 5 } }""", "$.pins.echo", "a pin must be a string")]
    [InlineData("""{ "version": "1", "pins": { "echo": null } }""", "$.pins.echo", "a pin must be a string")]
    [InlineData("""{ "version": "1", "pins": { "echo": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" } }""", "$.pins.echo", "invalid pin")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08" } }""", "$.pins.echo", "lowercase hex")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0" } }""", "$.pins.echo", "invalid pin")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08a" } }""", "$.pins.echo", "invalid pin")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a0g" } }""", "$.pins.echo", "invalid pin")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha512:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" } }""", "$.pins.echo", "invalid pin")]
    [InlineData("""{ "version": "1", "pins": { "": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" } }""", "$.pins[\"\"]", "cannot be empty")]
    [InlineData("""{ "version": "1", "pins": { "echo": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", "echo": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" } }""", "$.pins.echo", "duplicate key")]
    public void Invalid_pins_name_the_path(string json, string path, string message)
    {
        var errors = Policies.Errors(json);
        Assert.Contains(errors, e => e.Path == path && e.Message.Contains(message, StringComparison.Ordinal));
    }

    [Fact]
    public void Every_bad_pin_is_reported_with_its_line()
    {
        var errors = Policies.Errors($$"""
            {
              "version": "1",
              "pins": {
                "a": "{{Echo}}",
                "b": "sha256:nothex",
                "c": true
              }
            }
            """);
        Assert.Equal(2, errors.Count);
        Assert.Contains(errors, e => e.Path == "$.pins.b" && e.Location.Line == 5 && e.Message.Contains("tool \"b\"", StringComparison.Ordinal));
        Assert.Contains(errors, e => e.Path == "$.pins.c" && e.Location.Line == 6 && e.Message.Contains("not true", StringComparison.Ordinal));
        Assert.All(errors, e => Assert.StartsWith("test.json:", e.ToString(), StringComparison.Ordinal));
    }

    [Fact]
    public void Pins_are_a_known_field()
    {
        var errors = Policies.Errors("""{ "version": "1", "pin": {} }""");
        Assert.Contains(errors, e => e.Path == "$.pin" && e.Message.Contains("pins", StringComparison.Ordinal));
    }
}
