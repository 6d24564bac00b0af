using System.Diagnostics;
using System.Text;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.IntegrationTests.TestSupport;

namespace Sidecar.IntegrationTests.Audit;

/// <summary>The HTTP audit sink against a real collector (Kestrel on loopback) and a real spool directory.</summary>
public sealed class HttpAuditSinkTests : IDisposable
{
    private static readonly TimeSpan s_wait = TimeSpan.FromSeconds(30);

    private readonly string _spool = Path.Combine(Path.GetTempPath(), "sidecar-spool-" + Guid.NewGuid().ToString("N"));
    private readonly TestLoggerFactory _loggers = new();

    private ILogger Logger => _loggers.CreateLogger("Sidecar.Audit");

    public void Dispose()
    {
        try
        {
            Directory.Delete(_spool, recursive: true);
        }
        catch (DirectoryNotFoundException)
        {
        }
    }

    [Fact]
    public async Task Batches_arrive_in_order_with_body_content_type_headers_and_sequence_range()
    {
        await using var collector = await AuditCollector.StartAsync();
        var headers = new Dictionary<string, string>
        {
            ["Authorization"] = "Bearer tok-1a2b3c",
            ["X-Tenant"] = "acme",
            ["Content-Type"] = "text/plain", // the sink sets it itself: ignored, with a warning naming the header
        };
        await using var sink = new HttpAuditSink(Config(collector.Url, headers), Logger);

        var batches = Enumerable.Range(0, 5).Select(i => Batch(1 + (i * 3), 3)).ToList();
        foreach (var batch in batches)
        {
            await sink.WriteAsync(batch, CancellationToken.None);
        }
        await Until(() => sink.DeliveredBatches == 5, "5 batches delivered");

        var received = collector.Accepted;
        Assert.Equal(5, received.Count);
        for (var i = 0; i < 5; i++)
        {
            Assert.Equal(Text(batches[i]), received[i].Body);
            Assert.Equal("application/x-ndjson", received[i].ContentType);
            Assert.Equal($"{batches[i].FirstSequence}-{batches[i].LastSequence}", received[i].Sequence);
            Assert.Equal("Bearer tok-1a2b3c", received[i].Headers["Authorization"]);
            Assert.Equal("acme", received[i].Headers["X-Tenant"]);
        }
        Assert.Equal("1-3", received[0].Sequence);
        Assert.Equal(15, sink.DeliveredEvents);
        Assert.Equal(0, sink.FailedAttempts);
        Assert.Null(sink.LastError);
        Assert.Equal(0, sink.SpooledFiles);
        Assert.Empty(SpoolFiles());
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3106 && e.Message.Contains("Content-Type", StringComparison.Ordinal));

        using var timeout = new CancellationTokenSource(s_wait);
        await sink.FlushAsync(timeout.Token);
        Assert.False(timeout.IsCancellationRequested, "a flush with nothing pending returns at once");
    }

    [Fact]
    public async Task Nothing_listening_spools_to_disk_then_a_collector_that_comes_up_gets_everything_in_order()
    {
        var port = EverythingServer.FreeLoopbackPort();
        await using var sink = new HttpAuditSink(Config(new Uri($"http://127.0.0.1:{port}/audit")), Logger);

        for (var i = 0; i < 4; i++)
        {
            await sink.WriteAsync(Batch(1 + (i * 2), 2), CancellationToken.None);
        }
        await Until(() => sink.SpooledFiles == 4 && sink.FailedAttempts >= 2, "4 batches spooled and a retry failed");
        Assert.Equal(4, SpoolFiles().Length);
        Assert.Equal(0, sink.QueuedBatches);
        Assert.True(sink.SpooledBytes > 0);
        Assert.NotNull(sink.LastError);

        // Newer batches queue behind the spooled ones, on disk too.
        await sink.WriteAsync(Batch(9, 2), CancellationToken.None);
        Assert.Equal(5, sink.SpooledFiles);

        await using var collector = await AuditCollector.StartAsync(port);
        await sink.WriteAsync(Batch(11, 2), CancellationToken.None);
        await Until(() => sink.DeliveredBatches == 6 && sink.SpooledFiles == 0, "6 batches delivered, spool empty");

        Assert.Equal(["1-2", "3-4", "5-6", "7-8", "9-10", "11-12"], collector.Accepted.Select(r => r.Sequence));
        Assert.Equal(Text(Batch(5, 2)), collector.Accepted[2].Body);
        Assert.Empty(SpoolFiles());
        Assert.Equal(0, sink.SpooledBytes);
        Assert.Equal(12, sink.DeliveredEvents);
        // State changes are logged once, not per retry.
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3101);
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3102);
        await Until(() => _loggers.Entries.Any(e => e.EventId.Id == 3103), "spool drained logged");
    }

    [Fact]
    public async Task A_new_sink_on_the_same_spool_delivers_what_the_previous_one_left_first()
    {
        await using var collector = await AuditCollector.StartAsync();
        collector.Status = 503;

        var first = new HttpAuditSink(Config(collector.Url), Logger);
        for (var i = 0; i < 3; i++)
        {
            await first.WriteAsync(Batch(1 + i, 1), CancellationToken.None);
        }
        await Until(() => first.SpooledFiles == 3, "3 batches spooled by the first sink");
        using (var shortly = new CancellationTokenSource(TimeSpan.FromMilliseconds(200)))
        {
            await first.FlushAsync(shortly.Token);
        }
        await first.DisposeAsync();
        Assert.Equal(3, SpoolFiles().Length);
        // A crash mid-write leaves a temp file: never delivered, removed at start.
        var half = Path.Combine(_spool, "0000000000000000099.9-9.ndjson.tmp");
        await File.WriteAllTextAsync(half, "{\"seq\":9,\"half");

        await using var second = new HttpAuditSink(Config(collector.Url), Logger);
        Assert.Equal(3, second.SpooledFiles);
        Assert.False(File.Exists(half));
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3105);
        await second.WriteAsync(Batch(4, 1), CancellationToken.None);
        await second.WriteAsync(Batch(5, 1), CancellationToken.None);

        collector.Status = 200;
        await Until(() => second.DeliveredBatches == 5 && second.SpooledFiles == 0, "5 batches delivered by the second sink");
        Assert.Equal(["1-1", "2-2", "3-3", "4-4", "5-5"], collector.Accepted.Select(r => r.Sequence));
        Assert.Equal(Text(Batch(1, 1)), collector.Accepted[0].Body);
        Assert.Empty(SpoolFiles());
    }

    [Fact]
    public async Task A_batch_that_would_exceed_the_spool_limit_throws_and_the_earlier_batches_are_kept()
    {
        await using var collector = await AuditCollector.StartAsync();
        collector.Status = 503;
        var batches = Enumerable.Range(0, 4).Select(i => Batch(1 + (i * 2), 2)).ToList();
        var limit = batches.Take(3).Sum(b => (long)b.Lines.Length) + (batches[3].Lines.Length / 2);
        await using var sink = new HttpAuditSink(Config(collector.Url) with { MaxSpoolBytes = limit }, Logger);

        for (var i = 0; i < 3; i++)
        {
            await sink.WriteAsync(batches[i], CancellationToken.None);
        }
        var ex = await Assert.ThrowsAsync<AuditSinkException>(() => sink.WriteAsync(batches[3], CancellationToken.None).AsTask());
        Assert.Contains("7-8", ex.Message, StringComparison.Ordinal);
        Assert.Contains("spool limit", ex.Message, StringComparison.Ordinal);

        await Until(() => sink.SpooledFiles == 3, "the 3 accepted batches spooled");
        collector.Status = 200;
        await Until(() => sink.DeliveredBatches == 3, "the 3 accepted batches delivered");
        Assert.Equal(["1-2", "3-4", "5-6"], collector.Accepted.Select(r => r.Sequence));

        // Room again: the refused batch can be written now.
        await sink.WriteAsync(batches[3], CancellationToken.None);
        await Until(() => sink.DeliveredBatches == 4, "the 4th batch delivered");
        Assert.Equal("7-8", collector.Accepted[^1].Sequence);
    }

    [Fact]
    public async Task A_failed_spool_write_throws_with_the_reason()
    {
        await using var collector = await AuditCollector.StartAsync();
        collector.Status = 503;
        await using var sink = new HttpAuditSink(Config(collector.Url), Logger);
        await sink.WriteAsync(Batch(1, 2), CancellationToken.None);
        await Until(() => sink.SpooledFiles == 1, "the first batch spooled");

        Directory.Delete(_spool, recursive: true); // the disk went away under the spool

        var ex = await Assert.ThrowsAsync<AuditSinkException>(() => sink.WriteAsync(Batch(3, 2), CancellationToken.None).AsTask());
        Assert.Contains("cannot spool batch 3-4", ex.Message, StringComparison.Ordinal);
        Assert.IsAssignableFrom<IOException>(ex.InnerException);
    }

    [Fact]
    public async Task Flush_with_a_collector_that_never_answers_leaves_the_queued_batches_in_the_spool()
    {
        await using var collector = await AuditCollector.StartAsync();
        collector.Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var batches = Enumerable.Range(0, 3).Select(i => Batch(1 + (i * 2), 2)).ToList();

        await using (var sink = new HttpAuditSink(Config(collector.Url), Logger))
        {
            foreach (var batch in batches)
            {
                await sink.WriteAsync(batch, CancellationToken.None);
            }
            await Until(() => collector.Arrived >= 1, "the first POST in flight");
            Assert.Equal(3, sink.QueuedBatches); // the collector takes the request but never answers: nothing failed yet
            Assert.Equal(0, sink.SpooledFiles);

            using var shortly = new CancellationTokenSource(TimeSpan.FromMilliseconds(300));
            await sink.FlushAsync(shortly.Token);

            Assert.Equal(0, sink.QueuedBatches);
            Assert.Equal(3, sink.SpooledFiles);
            Assert.Equal(0, sink.DeliveredBatches);
            // After the flush the sink still keeps what it is given, in the spool.
            await sink.WriteAsync(Batch(7, 2), CancellationToken.None);
            Assert.Equal(4, sink.SpooledFiles);
        }

        // One file per batch, lexical order = batch order, each holding exactly the batch's lines.
        var files = SpoolFiles();
        Assert.Equal(4, files.Length);
        Assert.Equal([.. batches.Select(Text), Text(Batch(7, 2))], files.Select(File.ReadAllText));
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3112);
    }

    [Fact]
    public async Task A_full_memory_queue_spools_the_newer_batches_and_order_is_kept()
    {
        await using var collector = await AuditCollector.StartAsync();
        collector.Hold = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var sink = new HttpAuditSink(Config(collector.Url), Logger);
        const int Total = HttpAuditSink.MemoryQueueBatches + 20;

        for (var i = 1; i <= Total; i++)
        {
            await sink.WriteAsync(Batch(i, 1), CancellationToken.None);
        }
        Assert.Equal(HttpAuditSink.MemoryQueueBatches, sink.QueuedBatches);
        Assert.Equal(20, sink.SpooledFiles);
        Assert.Equal(20, SpoolFiles().Length);

        collector.Release();
        await Until(() => sink.DeliveredBatches == Total && sink.SpooledFiles == 0, $"{Total} batches delivered");
        Assert.Equal(Enumerable.Range(1, Total).Select(i => $"{i}-{i}"), collector.Accepted.Select(r => r.Sequence));
        Assert.Equal(0, sink.FailedAttempts);
        Assert.Single(_loggers.Entries, e => e.EventId.Id == 3104);
    }

    [Fact]
    public async Task Header_values_and_the_url_query_never_appear_in_logs_or_errors()
    {
        const string Token = "tok-9f8e7d-secret";
        const string ApiKey = "key-5c4b3a-secret";
        const string QueryToken = "qs-secret-123";
        await using var collector = await AuditCollector.StartAsync();
        collector.Status = 503;
        collector.ReasonPhrase = $"Unavailable for Bearer {Token}"; // a collector that echoes credentials back
        var headers = new Dictionary<string, string> { ["Authorization"] = $"Bearer {Token}", ["X-Api-Key"] = ApiKey };
        var url = new Uri(collector.Url, $"?token={QueryToken}");

        string? lastError;
        string description;
        await using (var sink = new HttpAuditSink(Config(url, headers), Logger))
        {
            description = sink.ToString();
            await sink.WriteAsync(Batch(1, 2), CancellationToken.None);
            await sink.WriteAsync(Batch(3, 2), CancellationToken.None);
            await Until(() => sink.FailedAttempts >= 2, "2 failed attempts");
            lastError = sink.LastError;
            collector.Status = 200;
            await Until(() => sink.DeliveredBatches == 2, "2 batches delivered");
        }

        Assert.Equal($"Bearer {Token}", collector.Accepted[0].Headers["Authorization"]);
        Assert.Equal(ApiKey, collector.Accepted[0].Headers["X-Api-Key"]);
        Assert.NotNull(lastError);
        Assert.Contains("503", lastError, StringComparison.Ordinal);
        Assert.Contains("***", lastError, StringComparison.Ordinal);
        var logs = _loggers.Dump();
        Assert.Contains(_loggers.Entries, e => e.EventId.Id == 3101); // the failure was logged...
        foreach (var secret in new[] { Token, ApiKey, QueryToken })
        {
            Assert.DoesNotContain(secret, logs, StringComparison.Ordinal); // ...without a secret
            Assert.DoesNotContain(secret, lastError, StringComparison.Ordinal);
            Assert.DoesNotContain(secret, description, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Two_sinks_cannot_share_a_spool_directory()
    {
        await using var collector = await AuditCollector.StartAsync();
        await using var first = new HttpAuditSink(Config(collector.Url), Logger);
        var ex = Assert.Throws<AuditSinkException>(() => new HttpAuditSink(Config(collector.Url), Logger));
        Assert.Contains(Path.GetFullPath(_spool), ex.Message, StringComparison.Ordinal);
    }

    /// <summary>A 30 s request timeout: long enough that a held request never times out during a test.</summary>
    private AuditHttpConfig Config(Uri url, IReadOnlyDictionary<string, string>? headers = null) =>
        new(url, headers ?? new Dictionary<string, string>(), _spool, AuditHttpConfig.DefaultMaxSpoolBytes, TimeSpan.FromSeconds(30));

    private string[] SpoolFiles() =>
        Directory.Exists(_spool) ? [.. Directory.GetFiles(_spool, "*.ndjson").Order(StringComparer.Ordinal)] : [];

    /// <summary>A batch of <paramref name="count"/> JSON lines with consecutive sequences from <paramref name="first"/>.</summary>
    private static AuditBatch Batch(long first, int count)
    {
        var text = new StringBuilder();
        for (var seq = first; seq < first + count; seq++)
        {
            text.Append("{\"seq\":").Append(seq).Append(",\"decision\":\"allow\",\"tool\":\"echo\",\"args\":{\"text\":\"héllo\"}}\n");
        }
        return new AuditBatch(Encoding.UTF8.GetBytes(text.ToString()), count, first, first + count - 1);
    }

    private static string Text(AuditBatch batch) => Encoding.UTF8.GetString(batch.Lines.Span);

    private async Task Until(Func<bool> condition, string what)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed > s_wait)
            {
                Assert.Fail($"timed out waiting for: {what}\n{_loggers.Dump()}");
            }
            await Task.Delay(20);
        }
    }
}
