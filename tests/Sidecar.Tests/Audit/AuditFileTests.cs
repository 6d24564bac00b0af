using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;

namespace Sidecar.Tests.Audit;

/// <summary>The JSONL file sink (rotation, restart, crash recovery) and <see cref="AuditVerifier"/> on real files.</summary>
public sealed class AuditFileTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-audit-test-" + Guid.NewGuid().ToString("N"));

    public AuditFileTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string FilePath => Path.Combine(_folder, "audit.jsonl");

    /// <summary>One gateway run: opens the file, records <paramref name="calls"/> blocked calls, shuts down.</summary>
    private async Task RunAsync(int calls, long maxBytes = AuditFileConfig.DefaultMaxBytes, int maxFiles = 10, string? key = null, int batch = 512)
    {
        var sink = new FileAuditSink(new AuditFileConfig(FilePath, maxBytes, maxFiles), NullLogger.Instance);
        var config = AuditTest.Config(key: key) with { BatchEvents = batch };
        var pipeline = new AuditPipeline(config, [sink], NullLogger.Instance, TimeSpan.FromMinutes(1), sink.Head, "test");
        pipeline.Start();
        for (var i = 0; i < calls; i++)
        {
            AuditTest.Record(pipeline.Recorder, "echo", $$"""{"i":{{i}}}""", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
            if (i % 50 == 49)
            {
                await Task.Delay(20); // several batches
            }
        }
        await pipeline.DisposeAsync();
    }

    private AuditVerifyResult Verify(byte[]? key = null) => AuditVerifier.Verify(Directory.GetFiles(_folder, "*.jsonl"), key);

    [Fact]
    public async Task A_trail_written_by_several_runs_verifies_as_one_chain()
    {
        await RunAsync(5);
        await RunAsync(3);
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        Assert.Equal(12, result.Events); // 2 × (start + stop) + 8 calls
        Assert.Equal(1, result.FirstSequence);
        Assert.Equal(12, result.LastSequence);
    }

    [Fact]
    public async Task Rotation_keeps_the_chain_across_files_and_deletes_the_oldest_beyond_max_files()
    {
        await RunAsync(400, maxBytes: 16 * 1024, maxFiles: 100, batch: 20);
        var rotated = Directory.GetFiles(_folder, "audit.*-*.jsonl");
        Assert.True(rotated.Length >= 3, $"expected rotations, got {rotated.Length}");
        foreach (var file in rotated)
        {
            Assert.True(new FileInfo(file).Length <= 16 * 1024 + 20 * 1024, "a file grew far past maxBytes");
        }
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        Assert.Equal(402, result.Events);

        await RunAsync(400, maxBytes: 16 * 1024, maxFiles: 2, batch: 20);
        Assert.Equal(2, Directory.GetFiles(_folder, "audit.*-*.jsonl").Length);
        result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        Assert.Contains(result.Notes, n => n.Contains("rotated away", StringComparison.Ordinal));
        Assert.Equal(804, result.LastSequence);
    }

    [Fact]
    public async Task A_line_cut_by_a_crash_is_removed_on_restart_and_noted()
    {
        await RunAsync(2);
        const string Half = """{"seq":5,"id":"half a line""";
        await File.AppendAllTextAsync(FilePath, Half);
        await RunAsync(1);
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        var lines = await File.ReadAllLinesAsync(FilePath);
        var restart = JsonDocument.Parse(lines[4]).RootElement;
        Assert.Equal("audit_start", restart.GetProperty("type").GetString());
        Assert.Equal(Half.Length, restart.GetProperty("recoveredBytes").GetInt64());
    }

    [Fact]
    public async Task Verify_finds_edits_removals_reordering_and_insertions()
    {
        await RunAsync(6);
        var original = await File.ReadAllLinesAsync(FilePath);

        async Task<AuditVerifyResult> WithAsync(string[] lines)
        {
            await File.WriteAllLinesAsync(FilePath, lines);
            return Verify();
        }

        var edited = (string[])original.Clone();
        edited[3] = edited[3].Replace("\"i\":2", "\"i\":9", StringComparison.Ordinal);
        var result = await WithAsync(edited);
        Assert.False(result.Intact);
        Assert.Contains($"{FilePath}:4: seq 4: the hash does not match", result.Problems[0], StringComparison.Ordinal);

        result = await WithAsync([.. original.Take(2), .. original.Skip(3)]);
        Assert.Contains("events 3..3 are missing", result.Problems[0], StringComparison.Ordinal);

        result = await WithAsync([original[0], original[2], original[1], .. original.Skip(3)]);
        Assert.False(result.Intact);

        // A removed event re-chained by someone without the key: the hash of the next event no longer matches.
        result = await WithAsync([.. original.Take(3), original[2], .. original.Skip(3)]);
        Assert.Contains("repeated or out of order", result.Problems[0], StringComparison.Ordinal);

        result = await WithAsync([.. original.SkipLast(1), original[^1][..^5]]);
        Assert.Contains("not an audit event", result.Problems[0], StringComparison.Ordinal);

        result = await WithAsync(original);
        Assert.True(result.Intact);
    }

    [Fact]
    public async Task A_keyed_chain_needs_the_key()
    {
        var key = "a-key-of-sixteen-chars";
        await RunAsync(2, key: key);
        Assert.True(Verify(Encoding.UTF8.GetBytes(key)).Intact);
        var without = Verify();
        Assert.False(without.Intact);
        Assert.Contains("HMAC", without.Problems[0], StringComparison.Ordinal);
        Assert.False(Verify(Encoding.UTF8.GetBytes("another-key-of-16")).Intact);
    }

    [Fact]
    public async Task A_second_writer_on_the_same_file_is_refused_with_a_clear_error()
    {
        var config = new AuditFileConfig(FilePath, AuditFileConfig.DefaultMaxBytes, 10);
        var first = new FileAuditSink(config, NullLogger.Instance);
        try
        {
            var ex = Assert.Throws<AuditSinkException>(() => new FileAuditSink(config, NullLogger.Instance));
            Assert.Contains(FilePath, ex.Message, StringComparison.Ordinal);
        }
        finally
        {
            await first.DisposeAsync();
        }
    }

    [Fact]
    public async Task A_file_whose_last_line_is_not_an_event_stops_start_up()
    {
        await File.WriteAllTextAsync(FilePath, "this is not audit\n");
        var ex = Assert.Throws<AuditSinkException>(() => new FileAuditSink(new AuditFileConfig(FilePath, AuditFileConfig.DefaultMaxBytes, 10), NullLogger.Instance));
        Assert.Contains("not an audit event", ex.Message, StringComparison.Ordinal);
    }
}
