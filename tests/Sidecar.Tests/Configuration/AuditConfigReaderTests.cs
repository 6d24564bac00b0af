using Sidecar.Configuration;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Configuration;

public sealed class AuditConfigReaderTests
{
    private static (SidecarConfig? Config, DiagnosticBag Diagnostics) Read(string audit, Func<string, string?>? environment = null)
        => ConfigText.Read(audit, environment);

    [Fact]
    public void Without_a_section_the_trail_goes_to_a_file_in_the_working_directory()
    {
        var (config, diagnostics) = Read("");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.True(config!.Audit.Enabled);
        Assert.Equal(Path.GetFullPath(AuditConfig.DefaultFilePath), config.Audit.File!.Path);
        Assert.Null(config.Audit.Http);
        Assert.False(config.Audit.Stdout);
    }

    [Fact]
    public void A_section_that_names_sinks_uses_exactly_those_with_paths_resolved_against_the_config()
    {
        var (config, diagnostics) = Read("""
            , "audit": {
              "stdout": true,
              "http": { "url": "http://127.0.0.1:9000/audit", "headers": { "Authorization": "Bearer ${TOKEN}" }, "spool": "spool", "timeout": "3s" },
              "bufferEvents": 4096, "batchEvents": 100, "flushInterval": "50ms", "maxArgumentBytes": 512, "maxStringLength": 64,
              "redactKeys": ["iban"], "hmacKey": "${KEY}"
            }
            """, name => name switch { "TOKEN" => "t0k3n", "KEY" => "0123456789abcdef0123", _ => null });
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        var audit = config!.Audit;
        Assert.Null(audit.File);
        Assert.True(audit.Stdout);
        Assert.Equal("Bearer t0k3n", audit.Http!.Headers["Authorization"]);
        Assert.Equal(Path.GetFullPath("/etc/sidecar/spool"), audit.Http.SpoolDirectory);
        Assert.Equal(TimeSpan.FromSeconds(3), audit.Http.Timeout);
        Assert.Equal((4096, 100, 512, 64), (audit.BufferEvents, audit.BatchEvents, audit.MaxArgumentBytes, audit.MaxStringLength));
        Assert.Equal(TimeSpan.FromMilliseconds(50), audit.FlushInterval);
        Assert.Equal(["iban"], audit.RedactKeys);
        Assert.Equal("0123456789abcdef0123", audit.HmacKey);
        Assert.DoesNotContain("t0k3n", audit.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("0123456789abcdef", audit.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("\"logs/audit.jsonl\"", "/etc/sidecar/logs/audit.jsonl", AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles)]
    [InlineData("{ \"path\": \"/var/log/a.jsonl\", \"maxBytes\": 1048576, \"maxFiles\": 3 }", "/var/log/a.jsonl", 1048576L, 3)]
    public void A_file_is_a_path_or_an_object(string file, string path, long maxBytes, int maxFiles)
    {
        var (config, diagnostics) = Read($$""", "audit": { "file": {{file}} }""");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal(new AuditFileConfig(Path.GetFullPath(path), maxBytes, maxFiles), config!.Audit.File);
    }

    [Fact]
    public void Audit_can_be_turned_off()
    {
        var (config, _) = Read(""", "audit": { "enabled": false }""");
        Assert.False(config!.Audit.Enabled);
    }

    [Fact]
    public void OnFull_sheds_and_durability_is_batched_unless_the_config_says_otherwise()
    {
        var (config, diagnostics) = Read("");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal((AuditOverflow.Shed, AuditDurability.Batched), (config!.Audit.OnFull, config.Audit.Durability));
        (config, diagnostics) = Read(""", "audit": { "onFull": "drop", "durability": "before_answer" }""");
        Assert.False(diagnostics.HasErrors, diagnostics.ToString());
        Assert.Equal((AuditOverflow.Drop, AuditDurability.BeforeAnswer), (config!.Audit.OnFull, config.Audit.Durability));
        (config, _) = Read(""", "audit": { "onFull": "shed", "durability": "batched" }""");
        Assert.Equal((AuditOverflow.Shed, AuditDurability.Batched), (config!.Audit.OnFull, config.Audit.Durability));
    }

    [Theory]
    [InlineData("""{ "fiel": "x" }""", "$.audit.fiel", "unknown field")]
    [InlineData("""{ "http": { "url": "ftp://x" } }""", "$.audit.http.url", "invalid url")]
    [InlineData("""{ "http": {} }""", "$.audit.http", "needs a \"url\"")]
    [InlineData("""{ "hmacKey": "short" }""", "$.audit.hmacKey", "at least 16")]
    [InlineData("""{ "hmacKey": "${MISSING}" }""", "$.audit.hmacKey", "MISSING")]
    [InlineData("""{ "bufferEvents": 1 }""", "$.audit.bufferEvents", "from 64")]
    [InlineData("""{ "file": { "maxBytes": 10000 } }""", "$.audit.file", "needs a \"path\"")]
    [InlineData("""{ "flushInterval": "2h" }""", "$.audit.flushInterval", "invalid flushInterval")]
    [InlineData("""[]""", "$.audit", "must be an object")]
    [InlineData("""{ "onFull": "block" }""", "$.audit.onFull", "invalid onFull \"block\"")]
    [InlineData("""{ "onFull": true }""", "$.audit.onFull", "string")]
    [InlineData("""{ "durability": "fsync" }""", "$.audit.durability", "invalid durability \"fsync\"")]
    public void Errors_name_the_path_and_line(string audit, string path, string message)
    {
        var (config, diagnostics) = Read(", \"audit\": " + audit);
        Assert.Null(config);
        var error = Assert.Single(diagnostics.Items, d => d.Path.StartsWith(path, StringComparison.Ordinal));
        Assert.Contains(message, error.Message, StringComparison.Ordinal);
        Assert.Equal(1, error.Location.Line);
    }
}
