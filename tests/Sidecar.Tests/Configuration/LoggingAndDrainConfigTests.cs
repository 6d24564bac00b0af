using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;

namespace Sidecar.Tests.Configuration;

/// <summary><c>logging</c> and <c>limits.shutdownGrace</c> in sidecar.json.</summary>
public sealed class LoggingAndDrainConfigTests
{
    private static (SidecarConfig? Config, string Errors) Read(string fields)
    {
        var json = $$"""{ "mcpServers": { "everything": { "command": "node" } }, {{fields}} }""";
        var diagnostics = new DiagnosticBag("sidecar.json");
        var config = SidecarConfigReader.Read(Encoding.UTF8.GetBytes(json), "/etc/sidecar", diagnostics, _ => null);
        return (config, string.Join("\n", diagnostics.Items));
    }

    [Fact]
    public void By_default_logs_are_json_at_the_command_lines_level_and_the_grace_is_10_seconds()
    {
        var (config, errors) = Read("\"policy\": \"p.json\"");
        Assert.True(config is not null, errors);
        Assert.Equal(LogFormat.Json, config.Logging.Format);
        Assert.Null(config.Logging.Level);
        Assert.Equal(TimeSpan.FromSeconds(10), config.Limits.ShutdownGrace);
    }

    [Theory]
    [InlineData("""{ "format": "text", "level": "debug" }""", LogFormat.Text, LogLevel.Debug)]
    [InlineData("""{ "format": "json", "level": "Warning" }""", LogFormat.Json, LogLevel.Warning)]
    public void Logging_is_read(string logging, LogFormat format, LogLevel level)
    {
        var (config, errors) = Read($"\"logging\": {logging}");
        Assert.True(config is not null, errors);
        Assert.Equal(format, config.Logging.Format);
        Assert.Equal(level, config.Logging.Level);
    }

    [Theory]
    [InlineData("""{ "format": "xml" }""", "$.logging.format", "expected \"json\" or \"text\"")]
    [InlineData("""{ "level": "loud" }""", "$.logging.level", "invalid logging.level")]
    [InlineData("""{ "level": "3" }""", "$.logging.level", "invalid logging.level")]
    [InlineData("""{ "colour": true }""", "$.logging.colour", "unknown field")]
    public void Logging_mistakes_are_reported_with_their_path(string logging, string path, string message)
    {
        var (config, errors) = Read($"\"logging\": {logging}");
        Assert.Null(config);
        Assert.Contains(path, errors, StringComparison.Ordinal);
        Assert.Contains(message, errors, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("\"0s\"", 0)]
    [InlineData("\"2500ms\"", 2.5)]
    [InlineData("30", 30)]
    public void The_grace_is_read(string grace, double seconds)
    {
        var (config, errors) = Read($"\"limits\": {{ \"shutdownGrace\": {grace} }}");
        Assert.True(config is not null, errors);
        Assert.Equal(TimeSpan.FromSeconds(seconds), config.Limits.ShutdownGrace);
    }

    [Theory]
    [InlineData("\"11m\"")]
    [InlineData("\"soon\"")]
    [InlineData("-1")]
    public void A_bad_grace_is_reported(string grace)
    {
        var (config, errors) = Read($"\"limits\": {{ \"shutdownGrace\": {grace} }}");
        Assert.Null(config);
        Assert.Contains("$.limits.shutdownGrace", errors, StringComparison.Ordinal);
    }
}
