namespace Sidecar.Audit;

/// <summary>
/// A batch of audit events as the sinks receive them: complete, hash-chained JSON lines, each ending in <c>\n</c>,
/// with consecutive sequence numbers <see cref="FirstSequence"/>..<see cref="LastSequence"/>.
/// </summary>
/// <remarks><see cref="Lines"/> is only valid during <see cref="IAuditSink.WriteAsync"/>: a sink that keeps it must copy it.</remarks>
public readonly struct AuditBatch(ReadOnlyMemory<byte> lines, int count, long firstSequence, long lastSequence)
{
    public ReadOnlyMemory<byte> Lines { get; } = lines;

    public int Count { get; } = count;

    public long FirstSequence { get; } = firstSequence;

    public long LastSequence { get; } = lastSequence;
}

/// <summary>Where audit batches go: a JSONL file, stdout, an HTTP collector.</summary>
/// <remarks>
/// The audit writer calls a sink from one thread, in sequence order. A sink that cannot deliver right now (a collector
/// that is down) must not lose the batch: it keeps it (spools it to disk) and delivers it later, in order. A sink
/// throws only when the batch cannot be kept at all; the writer then records the loss in the trail itself.
/// </remarks>
public interface IAuditSink : IAsyncDisposable
{
    /// <summary>A short name for logs and metrics: <c>file</c>, <c>stdout</c>, <c>http</c>.</summary>
    string Name { get; }

    /// <summary>Takes a batch. Returns once the batch is delivered or safely kept.</summary>
    ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken);

    /// <summary>
    /// On shutdown: delivers what it still holds until <paramref name="cancellationToken"/> fires, and leaves the rest
    /// where the next start will find and deliver it (the spool).
    /// </summary>
    ValueTask FlushAsync(CancellationToken cancellationToken);
}
