using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Tests.Audit;

/// <summary>
/// A run that ended without <c>audit_stop</c> (a crash, SIGKILL, out of memory): the file sink's head says so, the next
/// run's <c>audit_start</c> records it, and <see cref="AuditVerifier"/> warns about it.
/// </summary>
public sealed class AuditUncleanStopTests : IDisposable
{
    private readonly string _folder = Path.Combine(Path.GetTempPath(), "sidecar-audit-unclean-" + Guid.NewGuid().ToString("N"));

    public AuditUncleanStopTests() => Directory.CreateDirectory(_folder);

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string FilePath => Path.Combine(_folder, "audit.jsonl");

    private Task RunAsync(int calls, bool crash = false) => AuditTest.RunFileAsync(FilePath, calls, crash);

    private async Task<AuditChainHead> HeadAsync()
    {
        var sink = new FileAuditSink(new AuditFileConfig(FilePath, AuditFileConfig.DefaultMaxBytes, 10), NullLogger.Instance);
        try
        {
            return sink.Head;
        }
        finally
        {
            await sink.DisposeAsync();
        }
    }

    private AuditVerifyResult Verify() => AuditVerifier.Verify(Directory.GetFiles(_folder, "*.jsonl"), null);

    private List<JsonElement> Events() => File.ReadAllLines(FilePath).Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    /// <summary>Moves the file to the rotated name for the sequence numbers it holds, as a rotation does.</summary>
    private void RotateByHand(long first, long last)
        => File.Move(FilePath, Path.Combine(_folder, $"audit.{first:D12}-{last:D12}.jsonl"));

    [Fact]
    public async Task A_new_trail_is_not_an_unclean_stop()
    {
        var head = await HeadAsync();
        Assert.Equal(0, head.Sequence);
        Assert.False(head.UncleanStop);
    }

    [Fact]
    public async Task A_trail_ending_in_audit_stop_is_a_clean_stop()
    {
        await RunAsync(2);
        var head = await HeadAsync();
        Assert.Equal(4, head.Sequence); // start, 2 calls, stop
        Assert.False(head.UncleanStop);
        Assert.Equal(0, head.RecoveredBytes);
    }

    [Fact]
    public async Task A_trail_ending_without_audit_stop_is_an_unclean_stop()
    {
        await RunAsync(2, crash: true);
        Assert.Equal("tool_call", Events()[^1].GetProperty("type").GetString());
        var head = await HeadAsync();
        Assert.Equal(3, head.Sequence); // start, 2 calls
        Assert.True(head.UncleanStop);
        Assert.Equal(0, head.RecoveredBytes);
    }

    [Fact]
    public async Task A_cut_last_line_is_an_unclean_stop_even_after_audit_stop()
    {
        await RunAsync(2);
        await File.AppendAllTextAsync(FilePath, """{"seq":5,"id":"half a line""");
        var head = await HeadAsync();
        Assert.Equal(4, head.Sequence);
        Assert.True(head.UncleanStop);
        Assert.True(head.RecoveredBytes > 0);
    }

    [Fact]
    public async Task With_an_empty_file_the_newest_rotated_file_decides()
    {
        await RunAsync(1);
        await RunAsync(2, crash: true); // seq 4..6, no stop
        RotateByHand(1, 6);
        await File.WriteAllBytesAsync(FilePath, []);
        var head = await HeadAsync();
        Assert.Equal(6, head.Sequence);
        Assert.True(head.UncleanStop);

        foreach (var file in Directory.GetFiles(_folder, "*.jsonl"))
        {
            File.Delete(file);
        }
        await RunAsync(1);
        RotateByHand(1, 3);
        await File.WriteAllBytesAsync(FilePath, []);
        head = await HeadAsync();
        Assert.Equal(3, head.Sequence);
        Assert.False(head.UncleanStop);

        // The file holds only a line cut by a crash: the rotated file ends cleanly, but the run after it did not.
        await File.WriteAllTextAsync(FilePath, """{"seq":4,"id":"half a line""");
        head = await HeadAsync();
        Assert.Equal(3, head.Sequence);
        Assert.True(head.UncleanStop);
        Assert.True(head.RecoveredBytes > 0);
    }

    [Fact]
    public async Task Audit_start_after_a_killed_run_says_so_with_the_last_sequence()
    {
        await RunAsync(1);              // 1 start, 2 call, 3 stop
        await RunAsync(2, crash: true); // 4 start, 5..6 calls, killed
        await RunAsync(0);              // 7 start, 8 stop
        var events = Events();
        Assert.Equal(8, events.Count);

        var clean = events[3];
        Assert.Equal("audit_start", clean.GetProperty("type").GetString());
        Assert.False(clean.TryGetProperty("uncleanStop", out _));
        Assert.False(clean.TryGetProperty("lastSequence", out _));

        var afterCrash = events[6];
        Assert.Equal("audit_start", afterCrash.GetProperty("type").GetString());
        Assert.Equal(7, afterCrash.GetProperty("seq").GetInt64());
        Assert.True(afterCrash.GetProperty("uncleanStop").GetBoolean());
        Assert.Equal(6, afterCrash.GetProperty("lastSequence").GetInt64());
        Assert.False(afterCrash.TryGetProperty("recoveredBytes", out _));

        Assert.True(Verify().Intact);
    }

    [Fact]
    public async Task Audit_start_after_a_cut_audit_stop_line_keeps_recovered_and_says_unclean()
    {
        await RunAsync(2); // 1 start, 2..3 calls, 4 stop
        var bytes = await File.ReadAllBytesAsync(FilePath);
        var cut = bytes.Length - 10; // into the audit_stop line, its newline gone
        await File.WriteAllBytesAsync(FilePath, bytes[..cut]);
        await RunAsync(0);
        var start = Events()[3];
        Assert.Equal("audit_start", start.GetProperty("type").GetString());
        Assert.Equal(4, start.GetProperty("seq").GetInt64());
        Assert.True(start.GetProperty("uncleanStop").GetBoolean());
        Assert.Equal(3, start.GetProperty("lastSequence").GetInt64());
        var lastLineLength = cut - (Array.LastIndexOf(bytes, (byte)'\n', cut - 1) + 1);
        Assert.Equal(lastLineLength, start.GetProperty("recoveredBytes").GetInt64());
        Assert.NotNull(start.GetProperty("recovered").GetString());
    }

    [Fact]
    public async Task Clean_runs_verify_without_warnings()
    {
        await RunAsync(2);
        await RunAsync(1);
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        Assert.Empty(result.Warnings);
        Assert.True(result.Complete);
    }

    [Fact]
    public async Task Verify_warns_about_a_run_that_ended_without_audit_stop()
    {
        await RunAsync(2, crash: true); // 1 start, 2..3 calls
        await RunAsync(1);              // 4 start, 5 call, 6 stop
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        Assert.False(result.Complete);
        var warning = Assert.Single(result.Warnings);
        Assert.Equal($"{FilePath}:4: seq 4: audit_start follows seq 3 (tool_call), not audit_stop: the run before ended without shutting down (crash, SIGKILL, out of memory); its last batch may be lost", warning);
    }

    [Fact]
    public async Task Verify_warns_about_a_trail_that_ends_without_audit_stop()
    {
        await RunAsync(1);
        await RunAsync(2, crash: true); // 4 start, 5..6 calls
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        var warning = Assert.Single(result.Warnings);
        Assert.Equal($"{FilePath}:6: the trail ends without audit_stop at seq 6: the gateway is still running, or it died without shutting down; its last batch may be lost", warning);
    }

    [Fact]
    public async Task Verify_warns_when_audit_start_says_the_run_before_was_cut_after_its_audit_stop()
    {
        await RunAsync(1); // 1..3
        await File.AppendAllTextAsync(FilePath, """{"seq":4,"id":"half a line""");
        await RunAsync(1); // 4 start (uncleanStop, lastSequence 3), 5 call, 6 stop
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        var warning = Assert.Single(result.Warnings);
        Assert.StartsWith($"{FilePath}:4: seq 4: audit_start says the run before ended without audit_stop (last seq 3)", warning, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Warnings_are_found_across_rotated_files()
    {
        await RunAsync(1, crash: true); // 1 start, 2 call
        RotateByHand(1, 2);
        await File.WriteAllBytesAsync(FilePath, []);
        await RunAsync(1); // 3 start, 4 call, 5 stop
        var result = Verify();
        Assert.True(result.Intact, string.Join("\n", result.Problems));
        var warning = Assert.Single(result.Warnings);
        Assert.StartsWith($"{FilePath}:1: seq 3: audit_start follows seq 2 (tool_call), not audit_stop", warning, StringComparison.Ordinal);
        Assert.True(Events()[0].GetProperty("uncleanStop").GetBoolean());
    }

    [Fact]
    public void Type_is_read_from_a_whole_line()
    {
        Assert.True(AuditChain.TryReadType("""{"seq":1,"id":"x","args":{"type":"inner"},"type":"audit_stop","prev":"00"}"""u8, out var type));
        Assert.Equal("audit_stop", type);
        Assert.False(AuditChain.TryReadType("""{"seq":1}"""u8, out _));
        Assert.False(AuditChain.TryReadType("""{"seq":1,"type":"""u8, out _));
        Assert.False(AuditChain.TryReadType(Encoding.UTF8.GetBytes("not json"), out _));
    }
}
