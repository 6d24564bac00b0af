using System.Buffers;
using System.Diagnostics;
using System.Text.Unicode;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Protocol;

namespace Sidecar.Audit;

/// <summary>
/// The gateway's side of the audit trail: records each <c>tools/call</c> decision, and for a forwarded call its
/// completion (outcome, upstream latency). Lock-free and allocation-free: a record is one slot claimed in a bounded
/// ring; the tool name, request id and (cut) arguments are copied as bytes. Serialising, redacting, hash-chaining and
/// shipping happen later on the audit writer (<see cref="AuditPipeline"/>), never on the call's path.
/// </summary>
/// <remarks>
/// <para>
/// A forwarded call's decision takes two places in the ring, its own and its completion's, so a forwarded call's
/// completion is never lost. When there is no room for a record, <see cref="TryRecordDecision"/> says so and the
/// gateway applies <c>audit.onFull</c>: <see cref="AuditOverflow.Shed"/> refuses the call before anything is forwarded
/// (counted in <see cref="Shed"/>); <see cref="AuditOverflow.Drop"/> lets it go on unrecorded (counted in
/// <see cref="Dropped"/>; the writer writes an <c>audit_gap</c> event with the count, so a loss is never silent).
/// </para>
/// <para>
/// With <c>audit.durability: before_answer</c> every record returns a ticket: the answer waits for
/// <see cref="AuditPipeline.WhenWrittenAsync"/> of it before it is released to the agent.
/// </para>
/// </remarks>
public sealed class AuditRecorder
{
    /// <summary>At most this many bytes of a tool name are kept.</summary>
    internal const int MaxToolBytes = 256;

    /// <summary>At most this many bytes of a request id are kept.</summary>
    internal const int MaxIdBytes = 128;

    private readonly AuditQueue? _queue;
    private readonly AuditWriterSignal? _signal;
    private readonly int _maxArgumentBytes;
    private readonly long _wakeMask;
    private readonly bool _beforeAnswer;
    private long _nextCallId;
    private long _dropped;
    private long _shed;

    internal AuditRecorder(AuditQueue? queue, AuditWriterSignal? signal = null, AuditOverflow onFull = AuditOverflow.Shed,
        AuditDurability durability = AuditDurability.Batched, int batchEvents = 512, int retryAfterMs = 200)
    {
        _queue = queue;
        _signal = signal;
        OnFull = onFull;
        _beforeAnswer = durability == AuditDurability.BeforeAnswer && queue is not null;
        _maxArgumentBytes = queue is null ? 0 : Math.Max(0, queue.BufferBytes - MaxToolBytes - MaxIdBytes);
        // Batched: a sleeping writer is woken about once a batch's worth of records (and otherwise every flushInterval).
        _wakeMask = (long)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)Math.Max(1, batchEvents)) - 1;
        RetryAfterMs = retryAfterMs;
    }

    /// <summary>A recorder that records nothing (<c>"audit": {"enabled": false}</c>).</summary>
    public static AuditRecorder Disabled { get; } = new(null);

    public bool IsEnabled => _queue is not null;

    /// <summary><c>audit.onFull</c>: what the gateway does with a call whose record found no room.</summary>
    public AuditOverflow OnFull { get; }

    /// <summary>When a call refused for lack of room (<c>audit_backlog</c>) should try again.</summary>
    public int RetryAfterMs { get; }

    /// <summary>Records dropped because the queue was full (<c>onFull: drop</c>).</summary>
    public long Dropped => Interlocked.Read(ref _dropped);

    /// <summary>Calls refused because the queue had no room for their record (<c>onFull: shed</c>).</summary>
    public long Shed => Interlocked.Read(ref _shed);

    internal AuditQueue? Queue => _queue;

    /// <summary>The writer that takes this recorder's records (set by <see cref="AuditPipeline"/>).</summary>
    internal AuditPipeline? Writer { get; set; }

    /// <summary>Records an event that is not a call (<see cref="AuditPipeline.Notify"/>); nothing when audit is off.</summary>
    public void Notify(AuditNotice notice) => Writer?.Notify(notice);

    /// <summary>
    /// Completes once the record behind <paramref name="ticket"/> has been written by every sink; at once for 0 (no
    /// ticket: <c>batched</c>, audit off, or nothing recorded). The answer of a call waits for this under
    /// <c>durability: before_answer</c>.
    /// </summary>
    public ValueTask WhenWrittenAsync(long ticket)
        => ticket == 0 || Writer is not { } writer ? ValueTask.CompletedTask : writer.WhenWrittenAsync(ticket);

    /// <summary>
    /// Records a decision. For a call that goes upstream (<paramref name="forwarded"/>: allowed, or shadow mode),
    /// <paramref name="callId"/> is what <see cref="RecordCompletion"/> takes once it ends (0 for a blocked call,
    /// whose event is final). <paramref name="ticket"/> is what the blocked call's answer waits for with
    /// <c>before_answer</c> (0: nothing to wait for).
    /// </summary>
    /// <returns>
    /// False when there was no room for the record. The call must then be refused (<see cref="AuditOverflow.Shed"/>:
    /// counted in <see cref="Shed"/>) or goes on unrecorded (<see cref="AuditOverflow.Drop"/>: counted in
    /// <see cref="Dropped"/>, and <paramref name="callId"/> is 0).
    /// </returns>
    public bool TryRecordDecision(string server, in CallContext context, ReadOnlySpan<char> tool, ReadOnlySpan<byte> rawId,
        in ReadOnlySequence<byte> arguments, in Decision decision, bool forwarded, out long callId, out long ticket)
    {
        callId = 0;
        ticket = 0;
        if (_queue is null)
        {
            return true;
        }
        if (!_queue.TryClaim(forwarded ? 2 : 1, out var position, out var buffer))
        {
            Interlocked.Increment(ref OnFull == AuditOverflow.Shed ? ref _shed : ref _dropped);
            return false;
        }

        callId = forwarded ? Interlocked.Increment(ref _nextCallId) : 0;
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
        entry.ErrorCode = forwarded ? 0 : ErrorCodes.For(decision);
        entry.ApprovalId = decision.ApprovalId;
        entry.ApprovalStatus = decision.ApprovalStatus;

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
        if (!forwarded)
        {
            ticket = Published(position);
        }
        else
        {
            WakeWriter(position);
        }
        return true;
    }

    /// <summary>
    /// Records a decision; returns the id for <see cref="RecordCompletion"/> (0 for a blocked call, or when there was
    /// no room for the record).
    /// </summary>
    public long RecordDecision(string server, in CallContext context, ReadOnlySpan<char> tool, ReadOnlySpan<byte> rawId,
        in ReadOnlySequence<byte> arguments, in Decision decision, bool forwarded)
        => TryRecordDecision(server, context, tool, rawId, arguments, decision, forwarded, out var callId, out _) ? callId : 0;

    /// <summary>
    /// Records how a forwarded call ended. Does nothing for <paramref name="callId"/> 0. Its place was taken with the
    /// decision, so it never fails for lack of room. Returns the ticket the call's answer waits for with
    /// <c>before_answer</c> (0: nothing to wait for).
    /// </summary>
    public long RecordCompletion(long callId, AuditOutcome outcome, int errorCode = 0)
    {
        if (_queue is null || callId == 0)
        {
            return 0;
        }
        if (!_queue.TryClaim(0, out var position, out _))
        {
            Interlocked.Increment(ref _dropped); // cannot happen while every decision holds its completion's place
            return 0;
        }
        ref var entry = ref _queue.EntryAt(position);
        entry.Kind = AuditRecordKind.Completion;
        entry.CallId = callId;
        entry.Timestamp = Stopwatch.GetTimestamp();
        entry.Outcome = outcome;
        entry.ErrorCode = errorCode;
        _queue.Publish(position);
        return Published(position);
    }

    /// <summary>After a final record: wakes the writer as needed and returns the answer's ticket.</summary>
    private long Published(long position)
    {
        if (!_beforeAnswer)
        {
            WakeWriter(position);
            return 0;
        }
        // An answer waits for this record: the writer must not sleep through it. The fence orders the publish above
        // before the look at the writer's idle flag (the writer orders them the other way round).
        Interlocked.MemoryBarrier();
        _signal?.Wake();
        return position + 1;
    }

    private void WakeWriter(long position)
    {
        if ((position & _wakeMask) == 0)
        {
            _signal?.Wake();
        }
    }
}
