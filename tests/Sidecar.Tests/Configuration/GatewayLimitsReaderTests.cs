using Sidecar.Configuration;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Configuration;

public sealed class GatewayLimitsReaderTests
{
    private static (SidecarConfig? Config, DiagnosticBag Diagnostics) Read(string limits) => ConfigText.Read(limits);

    [Fact]
    public void Without_a_section_the_defaults_apply()
    {
        var (config, diagnostics) = Read("");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal(GatewayLimits.Default, config!.Limits);
        Assert.Equal(1024, config.Limits.MaxInFlight);
    }

    [Fact]
    public void Every_limit_is_read()
    {
        var (config, diagnostics) = Read("""
            , "limits": { "maxMessageBytes": 65536, "upstreamTimeout": "5s", "connectTimeout": "2s", "maxSessions": 7,
                          "sessionIdleTimeout": "1m", "maxInFlight": 64 }
            """);
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal(new GatewayLimits(65536, TimeSpan.FromSeconds(5), TimeSpan.FromSeconds(2), 7, TimeSpan.FromMinutes(1), 64), config!.Limits);
    }

    [Theory]
    [InlineData("0", "maxInFlight")]
    [InlineData("-3", "maxInFlight")]
    [InlineData("1.5", "maxInFlight")]
    [InlineData("\"64\"", "maxInFlight")]
    [InlineData("0", "maxSessions")]
    public void A_count_that_is_not_a_whole_number_of_at_least_one_is_an_error_with_its_path_and_line(string value, string name)
    {
        var (_, diagnostics) = Read($$"""
            ,
            "limits": {
              "{{name}}": {{value}}
            }
            """);
        var error = Assert.Single(diagnostics.Items);
        Assert.Equal("$.limits." + name, error.Path);
        Assert.Equal(3, error.Location.Line);
        Assert.Contains($"\"{name}\" must be a whole number, at least 1", error.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void An_unknown_limit_is_an_error_that_lists_the_known_ones()
    {
        var (_, diagnostics) = Read(""", "limits": { "maxInflight": 5 }""");
        var error = Assert.Single(diagnostics.Items);
        Assert.Contains("maxInFlight", error.Message, StringComparison.Ordinal);
    }
}
