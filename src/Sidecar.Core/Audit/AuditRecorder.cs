using System.Buffers;
using System.Diagnostics;
using System.Text.Unicode;
using Sidecar.Decisions;

namespace Sidecar.Audit;

/// <summary>
/// The gateway's side of the audit trail: records each <c>tools/call</c> decision, and for a forwarded call its
/// completion (outcome, upstream latency). Lock-free and allocation-free: a record is one slot claimed in a bounded
/// ring; the tool name, request id and (cut) arguments are copied as bytes. Serialising, redacting, hash-chaining and
/// shipping happen later on the audit writer (<see cref="AuditPipeline"/>), never on the call's path.
/// </summary>
/// <remarks>
/// When the ring is full (the sinks are far behind), the record is dropped and counted; the writer writes an
/// <c>audit_gap</c> event into the trail with the count, so a loss is never silent.
/// </remarks>
public sealed class AuditRecorder
{
    /// <summary>At most this many bytes of a tool name are kept.</summary>
    internal const int MaxToolBytes = 256;

    /// <summary>At most this many bytes of a request id are kept.</summary>
    internal const int MaxIdBytes = 128;

    private readonly AuditQueue? _queue;
    private long _nextCallId;
    private long _dropped;

    private readonly int _maxArgumentBytes;

    internal AuditRecorder(AuditQueue? queue)
    {
        _queue = queue;
        _maxArgumentBytes = queue is null ? 0 : Math.Max(0, queue.BufferBytes - MaxToolBytes - MaxIdBytes);
    }

    /// <summary>A recorder that records nothing (<c>"audit": {"enabled": false}</c>).</summary>
    public static AuditRecorder Disabled { get; } = new(null);

    public bool IsEnabled => _queue is not null;

    /// <summary>Records dropped because the queue was full.</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    internal AuditQueue? Queue => _queue;

    /// <summary>
    /// Records a decision. For a call that goes upstream (<paramref name="forwarded"/>: allowed, or shadow mode),
    /// returns the id to pass to <see cref="RecordCompletion"/> once it ends; for a blocked call the event is final
    /// and 0 is returned. 0 is also returned when nothing was recorded.
    /// </summary>
    public long RecordDecision(string server, in CallContext context, ReadOnlySpan<char> tool, ReadOnlySpan<byte> rawId,
        in ReadOnlySequence<byte> arguments, in Decision decision, bool forwarded)
    {
        if (_queue is null)
        {
            return 0;
        }
        if (!_queue.TryClaim(out var position, out var buffer))
        {
            Interlocked.Increment(ref _dropped);
            return 0;
        }

        var callId = forwarded ? Interlocked.Increment(ref _nextCallId) : 0;
        ref var entry = ref _queue.EntryAt(position);
        entry.Kind = forwarded ? AuditRecordKind.Decision : AuditRecordKind.Final;
        entry.CallId = callId;
        entry.Timestamp = Stopwatch.GetTimestamp(); // the writer turns it into wall-clock time
        entry.Server = server;
        entry.Session = context.Session;
        entry.Identity = context.Identity;
        entry.Grant = context.Grant;
        entry.Decision = decision.Outcome;
        entry.Enforced = decision.Enforced;
        entry.Rule = decision.Rule;
        entry.Reason = decision.Reason;
        entry.RetryAfterMs = decision.RetryAfterMs;
        entry.Remaining = decision.Remaining;
        entry.Outcome = forwarded ? AuditOutcome.Unknown : AuditOutcome.Blocked;
        entry.ErrorCode = forwarded ? 0 : ErrorCodes.For(decision.Outcome);

        Utf8.FromUtf16(tool, buffer[..Math.Min(MaxToolBytes, buffer.Length)], out _, out var toolBytes);
        entry.ToolLength = toolBytes;
        var rest = buffer[toolBytes..];

        var idBytes = Math.Min(rawId.Length, Math.Min(MaxIdBytes, rest.Length));
        rawId[..idBytes].CopyTo(rest);
        entry.IdLength = idBytes;
        entry.IdTruncated = idBytes < rawId.Length;
        rest = rest[idBytes..];

        var argumentBytes = (int)Math.Min(arguments.Length, Math.Min(rest.Length, _maxArgumentBytes));
        arguments.Slice(0, argumentBytes).CopyTo(rest);
        entry.ArgumentsLength = argumentBytes;
        entry.ArgumentsTotalLength = (int)Math.Min(arguments.Length, int.MaxValue);

        _queue.Publish(position);
        return callId;
    }

    /// <summary>Records how a forwarded call ended. Does nothing for <paramref name="callId"/> 0.</summary>
    public void RecordCompletion(long callId, AuditOutcome outcome, int errorCode = 0)
    {
        if (_queue is null || callId == 0)
        {
            return;
        }
        if (!_queue.TryClaim(out var position, out _))
        {
            Interlocked.Increment(ref _dropped);
            return;
        }
        ref var entry = ref _queue.EntryAt(position);
        entry.Kind = AuditRecordKind.Completion;
        entry.CallId = callId;
        entry.Timestamp = Stopwatch.GetTimestamp();
        entry.Outcome = outcome;
        entry.ErrorCode = errorCode;
        _queue.Publish(position);
    }
}
