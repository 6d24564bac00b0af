using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Tests.Audit;

namespace Sidecar.Tests.Cli;

/// <summary><c>sidecar audit verify</c> on real trails: warnings, and the exit codes with and without <c>--strict</c>.</summary>
public sealed class AuditVerifyCliTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-audit-cli-" + Guid.NewGuid().ToString("N"));

    public AuditVerifyCliTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string FilePath => Path.Combine(_folder, "audit.jsonl");

    private static Task<(int Exit, string Out, string Err)> Run(params string[] args) => CliTests.Run(args);

    [Fact]
    public async Task A_complete_trail_passes_with_and_without_strict()
    {
        await AuditTest.RunFileAsync(FilePath, 2);
        await AuditTest.RunFileAsync(FilePath, 1);
        foreach (var args in new[] { new[] { "audit", "verify", _folder }, ["audit", "verify", "--strict", _folder] })
        {
            var (exit, output, error) = await Run(args);
            Assert.Equal(0, exit);
            Assert.Equal("", error);
            Assert.DoesNotContain("warning:", output, StringComparison.Ordinal);
            Assert.Contains("audit trail intact: 7 events, seq 1..7, 1 file, chain sha256", output, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task A_crashed_run_is_a_warning_and_fails_only_with_strict()
    {
        await AuditTest.RunFileAsync(FilePath, 2, crash: true); // 1..3
        await AuditTest.RunFileAsync(FilePath, 1);              // 4..6

        var (exit, output, error) = await Run("audit", "verify", _folder);
        Assert.Equal(0, exit);
        Assert.Equal("", error);
        Assert.Contains($"warning: {FilePath}:4: seq 4: audit_start follows seq 3 (tool_call), not audit_stop", output, StringComparison.Ordinal);
        Assert.Contains("audit trail intact: 6 events, seq 1..6, 1 file, chain sha256; 1 warning", output, StringComparison.Ordinal);

        (exit, output, error) = await Run("audit", "verify", "--strict", _folder);
        Assert.Equal(1, exit);
        Assert.Contains("warning: ", output, StringComparison.Ordinal);
        Assert.DoesNotContain("audit trail intact:", output, StringComparison.Ordinal);
        Assert.Equal("audit trail intact but not complete (--strict): 1 warning; 6 events, seq 1..6, 1 file, chain sha256", error.Trim());
    }

    [Fact]
    public async Task A_trail_that_ends_without_audit_stop_fails_with_strict()
    {
        await AuditTest.RunFileAsync(FilePath, 1, crash: true);
        var (exit, output, _) = await Run("audit", "verify", FilePath);
        Assert.Equal(0, exit);
        Assert.Contains($"warning: {FilePath}:2: the trail ends without audit_stop at seq 2", output, StringComparison.Ordinal);

        var (strictExit, _, error) = await Run("audit", "verify", "--strict", FilePath);
        Assert.Equal(1, strictExit);
        Assert.Contains("audit trail intact but not complete (--strict): 1 warning;", error, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Dropped_records_and_sink_failures_fail_with_strict()
    {
        var sink = new FileAuditSink(new AuditFileConfig(FilePath, AuditFileConfig.DefaultMaxBytes, 10), NullLogger.Instance);
        var failing = new MemorySink { Fail = true };
        var pipeline = new AuditPipeline(AuditTest.Config(buffer: 64) with { OnFull = AuditOverflow.Drop }, [sink, failing], NullLogger.Instance, TimeSpan.FromMinutes(1), sink.Head, "test");
        // Not started yet: nothing drains, so 36 of the 100 records find the queue full.
        for (var i = 0; i < 100; i++)
        {
            AuditTest.Record(pipeline.Recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        }
        pipeline.Start();
        await pipeline.DisposeAsync();

        var (exit, output, _) = await Run("audit", "verify", FilePath);
        Assert.Equal(0, exit);
        Assert.Contains("the trail records 36 dropped records", output, StringComparison.Ordinal);

        var (strictExit, _, error) = await Run("audit", "verify", "--strict", FilePath);
        Assert.Equal(1, strictExit);
        Assert.Matches(@"^audit trail intact but not complete \(--strict\): 36 dropped records, \d+ sink failures?; ", error);
    }

    [Fact]
    public async Task A_broken_trail_is_still_exit_1_with_strict()
    {
        await AuditTest.RunFileAsync(FilePath, 3);
        var lines = await File.ReadAllLinesAsync(FilePath);
        await File.WriteAllLinesAsync(FilePath, [.. lines.Take(2), .. lines.Skip(3)]);
        foreach (var args in new[] { new[] { "audit", "verify", FilePath }, ["audit", "verify", "--strict", FilePath] })
        {
            var (exit, _, error) = await Run(args);
            Assert.Equal(1, exit);
            Assert.Contains("audit trail BROKEN: 1 problem in 1 file", error, StringComparison.Ordinal);
            Assert.DoesNotContain("--strict", error, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Usage_errors_are_still_exit_2_and_help_explains_strict()
    {
        var (exit, _, _) = await Run("audit", "verify", "--strict", Path.Combine(_folder, "missing.jsonl"));
        Assert.Equal(2, exit);

        var (helpExit, output, _) = await Run("audit", "verify", "--help");
        Assert.Equal(0, helpExit);
        Assert.Contains("--strict", output, StringComparison.Ordinal);
        Assert.Contains("audit_stop", output, StringComparison.Ordinal);
    }
}
