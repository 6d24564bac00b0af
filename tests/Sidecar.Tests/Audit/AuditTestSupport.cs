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

    public static Decision Decision(DecisionOutcome outcome, string rule = "tools.echo", string reason = "because", bool enforced = true)
        => new() { Outcome = outcome, Enforced = enforced, Rule = rule, Reason = reason, RetryAfterMs = -1, Remaining = -1 };

    public static long Record(AuditRecorder recorder, string tool, string arguments, in Decision decision, bool forwarded, string id = "1", string session = "s1")
        => recorder.RecordDecision("srv", new CallContext(null, null, session), tool, Encoding.UTF8.GetBytes(id),
            new ReadOnlySequence<byte>(Encoding.UTF8.GetBytes(arguments)), decision, forwarded);
}
