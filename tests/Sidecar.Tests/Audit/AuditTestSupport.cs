using System.Buffers;
using System.Text;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;

namespace Sidecar.Tests.Audit;

/// <summary>A sink that keeps every batch's lines in memory.</summary>
internal sealed class MemorySink : IAuditSink
{
    private readonly List<string> _lines = [];

    public string Name => "memory";

    public int Batches { get; private set; }

    public bool Fail { get; set; }

    public List<string> Lines
    {
        get
        {
            lock (_lines)
            {
                return [.. _lines];
            }
        }
    }

    public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
    {
        if (Fail)
        {
            throw new AuditSinkException("memory sink told to fail");
        }
        var text = Encoding.UTF8.GetString(batch.Lines.Span);
        lock (_lines)
        {
            _lines.AddRange(text.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Batches++;
        }
        return ValueTask.CompletedTask;
    }

    public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

    public ValueTask DisposeAsync() => ValueTask.CompletedTask;
}

internal static class AuditTest
{
    public static AuditConfig Config(int buffer = 1024, int maxArgumentBytes = 2048, string? key = null) => AuditConfig.Default with
    {
        File = null,
        BufferEvents = buffer,
        FlushInterval = TimeSpan.FromMilliseconds(10),
        MaxArgumentBytes = maxArgumentBytes,
        HmacKey = key,
    };

    public static AuditPipeline Pipeline(IAuditSink sink, AuditConfig? config = null, AuditChainHead? head = null)
        => new(config ?? Config(), [sink], NullLogger.Instance, TimeSpan.FromMinutes(1), head ?? AuditChainHead.Empty, "sidecar test");

    /// <summary>Waits (up to 20 s, then fails) for the audit writer to bring something about.</summary>
    public static async Task WaitAsync(Func<bool> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the audit writer");
            await Task.Delay(5);
        }
    }

    public static Decision Decision(DecisionOutcome outcome, string rule = "tools.echo", string reason = "because", bool enforced = true)
        => new() { Outcome = outcome, Enforced = enforced, Rule = rule, Reason = reason, RetryAfterMs = -1, Remaining = -1 };

    /// <summary>
    /// One gateway run on a real audit file (<see cref="FileAuditSink"/>): records <paramref name="calls"/> blocked
    /// calls and shuts down cleanly. With <paramref name="crash"/>, the file is left as it was on disk before the
    /// shutdown (no <c>audit_stop</c>), as a killed process would leave it.
    /// </summary>
    public static async Task RunFileAsync(string path, int calls, bool crash = false)
    {
        var sink = new FileAuditSink(new AuditFileConfig(path, AuditFileConfig.DefaultMaxBytes, 10), NullLogger.Instance);
        var pipeline = new AuditPipeline(Config(), [sink], NullLogger.Instance, TimeSpan.FromMinutes(1), sink.Head, "test");
        pipeline.Start();
        for (var i = 0; i < calls; i++)
        {
            Record(pipeline.Recorder, "echo", $$"""{"i":{{i}}}""", Decision(DecisionOutcome.Deny), forwarded: false);
        }
        byte[]? onDisk = null;
        if (crash)
        {
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (pipeline.Written < calls + 1) // audit_start and the calls
            {
                Assert.True(DateTime.UtcNow < deadline, "timed out waiting for the audit writer");
                await Task.Delay(10);
            }
            onDisk = ReadShared(path);
        }
        await pipeline.DisposeAsync();
        if (onDisk is not null)
        {
            await File.WriteAllBytesAsync(path, onDisk);
        }
    }

    /// <summary>A file's bytes, read while a writer may hold it open.</summary>
    public static byte[] ReadShared(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        var bytes = new byte[stream.Length];
        stream.ReadExactly(bytes);
        return bytes;
    }

    public static long Record(AuditRecorder recorder, string tool, string arguments, in Decision decision, bool forwarded, string id = "1", string session = "s1")
        => recorder.RecordDecision("srv", new CallContext(null, null, session), tool, Encoding.UTF8.GetBytes(id),
            new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(arguments)), decision, forwarded);
}
