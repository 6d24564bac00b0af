using Sidecar.Approvals;
using System.Buffers;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Configuration;
using Sidecar.Decisions;

namespace Sidecar.Audit;

/// <summary>
/// The audit writer: takes the recorder's queue off the call path, joins each forwarded call's decision with its
/// completion, writes one redacted, hash-chained JSON line per decision, and ships the lines in batches to every sink.
/// Runs on a thread of its own; the calls never wait for it, except an answer under <c>durability: before_answer</c>,
/// which waits for its record's batch (<see cref="WhenWrittenAsync"/>).
/// </summary>
/// <remarks>
/// The writer sleeps when the queue is empty, until its flush interval passes or a producer wakes it: about once a
/// batch's worth of records (<c>batched</c>), or at each record an answer waits for (<c>before_answer</c>: group
/// commit, whatever arrived while the last batch was written goes into the next). After a full batch it goes on at
/// once, so it keeps up with bursts instead of sleeping through them.
/// Every run starts with an <c>audit_start</c> event and ends with <c>audit_stop</c>. Losses are written into the
/// trail itself: <c>audit_gap</c> (records dropped because the queue was full) and <c>audit_sink_failure</c> (a sink
/// that could neither deliver nor keep a batch). On shutdown the queue is drained, calls still in flight are written
/// with outcome <c>unknown</c>, and every sink is flushed.
/// </remarks>
public sealed class AuditPipeline : IAsyncDisposable
{
    private readonly AuditConfig _config;
    private readonly AuditQueue _queue;
    private readonly IReadOnlyList<IAuditSink> _sinks;
    private readonly ILogger _logger;
    private readonly AuditChain _chain;
    private readonly AuditRedactor _redactor;
    private readonly long _pendingTimeoutTicks;
    private readonly Dictionary<long, PendingCall> _pending = [];
    private readonly ArrayBufferWriter<byte> _event = new(4096);
    private readonly ArrayBufferWriter<byte> _batch = new(64 * 1024);
    private readonly Utf8JsonWriter _json;
    private readonly List<(string Sink, string Events, string Error)> _failedBatches = [];
    private readonly AuditWriterSignal _signal = new();
    private readonly System.Collections.Concurrent.ConcurrentQueue<AuditNotice> _notices = new();
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly bool _beforeAnswer;
    private volatile bool _stopping;
    private long _writtenPosition; // every queue record before this position is in a batch every sink has taken
    private TaskCompletionSource? _nextWrite; // completed (and replaced) after each batch, for the answers waiting on one
    private readonly byte[] _prev;
    private readonly string _source;
    private readonly long _recoveredBytes;
    private readonly long? _uncleanStopAfter; // the previous run's last sequence when it ended without audit_stop
    private readonly long _startSequence;
    private long _sequence;
    private readonly byte[] _random = new byte[4096];
    private int _randomUsed = 4096;
    private long _batchFirst;
    private int _batchCount;
    private long _droppedSeen;
    private long _shedSeen;
    private long _shedLogged;
    private long _orphans;
    private long _written;
    private long _sinkFailures;
    private Thread? _thread;
    private DateTime _anchorUtc = DateTime.UtcNow;
    private long _anchorTimestamp = Stopwatch.GetTimestamp();
    private int _disposed;

    public AuditPipeline(AuditConfig config, IReadOnlyList<IAuditSink> sinks, ILogger logger, TimeSpan pendingTimeout,
        AuditChainHead head, string source)
    {
        _config = config;
        _sinks = sinks;
        _logger = logger;
        _source = source;
        _chain = new AuditChain(config.HmacKey is null ? null : Encoding.UTF8.GetBytes(config.HmacKey));
        _redactor = new AuditRedactor(config.RedactKeys, config.MaxStringLength);
        _queue = new AuditQueue(config.BufferEvents, AuditRecorder.MaxToolBytes + AuditRecorder.MaxIdBytes + config.MaxArgumentBytes);
        _beforeAnswer = config.Durability == AuditDurability.BeforeAnswer;
        Recorder = new AuditRecorder(_queue, _signal, config.OnFull, config.Durability, config.BatchEvents,
            (int)Math.Clamp(Math.Ceiling(config.FlushInterval.TotalMilliseconds), 1, 60_000));
        Recorder.Writer = this;
        _pendingTimeoutTicks = (long)(pendingTimeout.TotalSeconds * Stopwatch.Frequency);
        _sequence = head.Sequence;
        _startSequence = head.Sequence;
        _prev = head.Hash.ToArray();
        _recoveredBytes = head.RecoveredBytes;
        _uncleanStopAfter = head.UncleanStop ? head.Sequence : null;
        _json = new Utf8JsonWriter(_event, new JsonWriterOptions { Indented = false, SkipValidation = false });
    }

    /// <summary>The hot-path side: what the gateway records decisions with.</summary>
    public AuditRecorder Recorder { get; }

    /// <summary>Events written to the sinks so far (the last sequence number is <see cref="LastSequence"/>).</summary>
    public long Written => Interlocked.Read(ref _written);

    public long LastSequence => Interlocked.Read(ref _sequence);

    /// <summary>Batches a sink could neither deliver nor keep.</summary>
    public long SinkFailures => Interlocked.Read(ref _sinkFailures);

    /// <summary>Calls forwarded and not yet completed.</summary>
    public int InFlight => _pending.Count;

    public IReadOnlyList<IAuditSink> Sinks => _sinks;

    /// <summary>Writes <c>audit_start</c> and starts the background writer.</summary>
    public void Start()
    {
        if (_thread is not null)
        {
            return;
        }
        // audit_start is written by the writer itself: hashing loads the crypto library, which need not delay start-up.
        // A thread of its own: its file writes block, and it must not wait behind a busy thread pool.
        _thread = new Thread(Run) { IsBackground = true, Name = "sidecar-audit-writer" };
        _thread.Start();
    }

    private void Run()
    {
        try
        {
            WriteLifecycle("audit_start");
            while (!_stopping)
            {
                WriteNotices();
                var drained = Drain();
                Ship();
                if (drained >= _config.BatchEvents || (_beforeAnswer && drained > 0))
                {
                    continue; // a full batch (more is waiting), or answers are waiting: go on at once
                }
                _signal.PrepareWait();
                if (_stopping || !_notices.IsEmpty || (_queue.TryPeek(out _) && (_beforeAnswer || _queue.Count >= _config.BatchEvents)))
                {
                    _signal.CancelWait();
                    continue;
                }
                _signal.Wait(_config.FlushInterval);
            }
        }
        catch (Exception ex)
        {
            _logger.LogCritical(ex, "The audit writer failed; decisions are no longer being recorded");
            ReleaseWaiters(long.MaxValue); // answers waiting for their records must not hang
        }
        finally
        {
            _stopped.TrySetResult();
        }
    }

    /// <summary>
    /// Queues an event that is not a call (a config reload, say): written by the writer in its next pass, in the same
    /// chain. Rare by nature, so it may allocate; the call path never uses it.
    /// </summary>
    public void Notify(AuditNotice notice)
    {
        if (Volatile.Read(ref _disposed) != 0)
        {
            return;
        }
        _notices.Enqueue(notice);
        _signal.WakeAlways();
    }

    private void WriteNotices()
    {
        while (_notices.TryDequeue(out var notice))
        {
            BeginEvent(notice.Type, DateTime.UtcNow);
            notice.Write(_json);
            EndEvent();
        }
    }

    /// <summary>
    /// Completes once the record with <paramref name="ticket"/> (from <see cref="AuditRecorder"/>; 0 = none) is in a
    /// batch every sink has taken (written to the OS by the file sink). Completes at once for 0 and for records
    /// already written; waiting allocates nothing per call beyond the continuation's place in the batch's list.
    /// </summary>
    public ValueTask WhenWrittenAsync(long ticket)
        => ticket <= Volatile.Read(ref _writtenPosition) ? ValueTask.CompletedTask : WaitWrittenAsync(ticket);

    private async ValueTask WaitWrittenAsync(long ticket)
    {
        while (true)
        {
            var next = Volatile.Read(ref _nextWrite);
            if (next is null)
            {
                var created = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
                next = Interlocked.CompareExchange(ref _nextWrite, created, null) ?? created;
            }
            // Looked at again after the wait object is in place: the writer moves the position first, then completes
            // whatever wait object it finds.
            if (ticket <= Volatile.Read(ref _writtenPosition))
            {
                return;
            }
            await next.Task.ConfigureAwait(false);
            if (ticket <= Volatile.Read(ref _writtenPosition))
            {
                return;
            }
        }
    }

    /// <summary>After a batch: everything before <paramref name="position"/> is written; wakes the answers waiting for it.</summary>
    private void ReleaseWaiters(long position)
    {
        Volatile.Write(ref _writtenPosition, position);
        Interlocked.Exchange(ref _nextWrite, null)?.TrySetResult();
    }

    /// <summary>
    /// One pass of the writer on the caller's thread (drain up to a batch, ship it): what the writer thread does in
    /// its loop, for benchmarks of a pipeline that was not started. Returns how many records it took.
    /// </summary>
    internal int RunOnce()
    {
        WriteNotices();
        var drained = Drain();
        Ship();
        return drained;
    }

    /// <summary>Moves queued records into the batch; returns how many records it took.</summary>
    private int Drain()
    {
        // Re-anchored on every pass, so event times follow the wall clock (NTP steps included) to within a pass.
        _anchorUtc = DateTime.UtcNow;
        _anchorTimestamp = Stopwatch.GetTimestamp();
        NoteDrops();
        NoteShed();
        var taken = 0;
        while (taken < _config.BatchEvents && _queue.TryPeek(out var position))
        {
            ref readonly var entry = ref _queue.EntryAt(position);
            var buffer = _queue.BufferAt(position);
            switch (entry.Kind)
            {
                case AuditRecordKind.Final:
                    WriteCall(entry, buffer, AuditOutcome.Blocked, entry.ErrorCode, -1);
                    break;
                case AuditRecordKind.Decision:
                    var used = entry.ToolLength + entry.IdLength + entry.ArgumentsLength;
                    var bytes = ArrayPool<byte>.Shared.Rent(Math.Max(used, 1));
                    buffer[..used].CopyTo(bytes);
                    _pending[entry.CallId] = new PendingCall(entry, bytes);
                    break;
                case AuditRecordKind.Completion:
                    if (_pending.Remove(entry.CallId, out var call))
                    {
                        WriteCall(call.Entry, call.Bytes, entry.Outcome, entry.ErrorCode, entry.Timestamp - call.Entry.Timestamp);
                        ArrayPool<byte>.Shared.Return(call.Bytes);
                    }
                    else
                    {
                        _orphans++; // its decision record was dropped: already counted in the gap
                    }
                    break;
            }
            _queue.Release(position);
            taken++;
        }
        ExpirePending(Stopwatch.GetTimestamp() - _pendingTimeoutTicks);
        return taken;
    }

    /// <summary>Writes calls whose completion never came (lost to a full queue) once they are far past any timeout.</summary>
    private void ExpirePending(long before)
    {
        if (_pending.Count == 0)
        {
            return;
        }
        List<long>? expired = null;
        foreach (var (id, call) in _pending)
        {
            if (call.Entry.Timestamp < before)
            {
                (expired ??= []).Add(id);
            }
        }
        if (expired is null)
        {
            return;
        }
        expired.Sort();
        foreach (var id in expired)
        {
            _pending.Remove(id, out var call);
            WriteCall(call.Entry, call.Bytes, AuditOutcome.Unknown, 0, -1);
            ArrayPool<byte>.Shared.Return(call.Bytes);
        }
    }

    /// <summary>Logs the calls refused for lack of room (<c>onFull: shed</c>), at most once a second.</summary>
    private void NoteShed()
    {
        var shed = Recorder.Shed;
        if (shed == _shedSeen || Environment.TickCount64 - _shedLogged < 1000)
        {
            return;
        }
        _logger.LogWarning("The audit queue was full: refused {Count} calls with -32015 audit_backlog ({Total} in total; audit.onFull: shed); nothing unrecorded was forwarded",
            shed - _shedSeen, shed);
        _shedSeen = shed;
        _shedLogged = Environment.TickCount64;
    }

    private void NoteDrops()
    {
        var dropped = Recorder.Dropped;
        if (dropped == _droppedSeen)
        {
            return;
        }
        var count = dropped - _droppedSeen;
        _droppedSeen = dropped;
        _logger.LogError("The audit queue was full: {Count} records were dropped ({Total} in total); the trail records the gap", count, dropped);
        BeginEvent("audit_gap", DateTime.UtcNow);
        _json.WriteNumber("dropped"u8, count);
        _json.WriteString("reason"u8, "the audit queue was full (sinks too slow or failing)"u8);
        EndEvent();
    }

    private void WriteCall(in AuditEntry entry, ReadOnlySpan<byte> bytes, AuditOutcome outcome, int errorCode, long latencyTicks)
    {
        BeginEvent("tool_call", WallClock(entry.Timestamp));
        var json = _json;
        WriteOptional(json, "server"u8, entry.Server);
        WriteOptional(json, "session"u8, entry.Session);
        WriteOptional(json, "identity"u8, entry.Identity);
        WriteOptional(json, "grant"u8, entry.Grant);
        json.WriteString("tool"u8, bytes[..entry.ToolLength]);
        var id = bytes.Slice(entry.ToolLength, entry.IdLength);
        if (entry.IdTruncated || id.IsEmpty)
        {
            json.WriteString("requestId"u8, Encoding.UTF8.GetString(id) + (entry.IdTruncated ? "…" : ""));
        }
        else
        {
            // The raw id token as the agent sent it: the scanner checked that it is one JSON string or number.
            json.WritePropertyName("requestId"u8);
            json.WriteRawValue(id, skipInputValidation: true);
        }
        WriteOptional(json, "decision"u8, entry.Decision.ToWireName());
        json.WriteBoolean("enforced"u8, entry.Enforced);
        WriteOptional(json, "rule"u8, entry.Rule);
        WriteOptional(json, "reason"u8, entry.Reason);
        if (entry.RetryAfterMs >= 0)
        {
            json.WriteNumber("retryAfterMs"u8, entry.RetryAfterMs);
        }
        if (entry.Remaining >= 0)
        {
            json.WriteNumber("remaining"u8, entry.Remaining);
        }
        if (entry.ApprovalId is { } approvalId)
        {
            json.WriteString("approvalId"u8, approvalId);
            json.WriteString("approvalStatus"u8, entry.ApprovalStatus.ToWireName());
        }
        // Exactly the arguments' bytes: a blocked call's record is read in its slot, whose buffer goes on past them.
        var arguments = bytes.Slice(entry.ToolLength + entry.IdLength, entry.ArgumentsLength);
        var complete = entry.ArgumentsLength == entry.ArgumentsTotalLength;
        if (_redactor.WriteArguments(json, arguments, complete))
        {
            json.WriteBoolean("argumentsTruncated"u8, true);
            json.WriteNumber("argumentsBytes"u8, entry.ArgumentsTotalLength);
        }
        WriteOptional(json, "outcome"u8, outcome.ToWireName());
        if (errorCode != 0)
        {
            json.WriteNumber("errorCode"u8, errorCode);
        }
        if (latencyTicks >= 0)
        {
            WriteMilliseconds(json, "upstreamMs"u8, latencyTicks);
        }
        EndEvent();
    }

    private DateTime WallClock(long timestamp)
        => _anchorUtc - TimeSpan.FromSeconds((double)(_anchorTimestamp - timestamp) / Stopwatch.Frequency);

    /// <summary>
    /// A duration as milliseconds with up to three decimals (<c>0.812</c>), written from whole microseconds: formatting
    /// a double (shortest round trip) cost more than everything else in the number's field.
    /// </summary>
    private static void WriteMilliseconds(Utf8JsonWriter json, ReadOnlySpan<byte> name, long ticks)
    {
        var microseconds = (long)Math.Round(ticks * 1_000_000.0 / Stopwatch.Frequency);
        Span<byte> text = stackalloc byte[24];
        System.Buffers.Text.Utf8Formatter.TryFormat(microseconds / 1000, text, out var at);
        var fraction = (int)(microseconds % 1000);
        if (fraction != 0)
        {
            text[at++] = (byte)'.';
            text[at++] = (byte)('0' + (fraction / 100));
            text[at++] = (byte)('0' + (fraction / 10 % 10));
            text[at++] = (byte)('0' + (fraction % 10));
            while (text[at - 1] == (byte)'0')
            {
                at--;
            }
        }
        json.WritePropertyName(name);
        json.WriteRawValue(text[..at], skipInputValidation: true);
    }

    private const int MaxEncoded = 4096;

    /// <summary>
    /// Strings the gateway hands over again and again (server names, session ids, rules, reasons), escaped once and
    /// kept by reference: the recorder passes the very string objects the gateway holds, so a lookup is a pointer
    /// comparison. Bounded: cleared when it holds <see cref="MaxEncoded"/> strings.
    /// </summary>
    private readonly Dictionary<string, JsonEncodedText> _encoded = new(ReferenceEqualityComparer.Instance);

    private void WriteOptional(Utf8JsonWriter json, ReadOnlySpan<byte> name, string? value)
    {
        if (value is null)
        {
            json.WriteNull(name);
            return;
        }
        if (!_encoded.TryGetValue(value, out var encoded))
        {
            if (_encoded.Count >= MaxEncoded)
            {
                _encoded.Clear();
            }
            encoded = JsonEncodedText.Encode(value);
            _encoded[value] = encoded;
        }
        json.WriteString(name, encoded);
    }

    private void WriteLifecycle(string type)
    {
        BeginEvent(type, DateTime.UtcNow);
        _json.WriteString("source"u8, _source);
        _json.WriteNumber("pid"u8, Environment.ProcessId);
        if (type == "audit_start")
        {
            _json.WriteString("chain"u8, _chain.Algorithm);
            if (_recoveredBytes > 0)
            {
                _json.WriteNumber("recoveredBytes"u8, _recoveredBytes);
                _json.WriteString("recovered"u8, "an unterminated last line (the previous run stopped mid-write) was removed"u8);
            }
            if (_uncleanStopAfter is { } lastSequence)
            {
                _json.WriteBoolean("uncleanStop"u8, true);
                _json.WriteNumber("lastSequence"u8, lastSequence);
            }
        }
        else
        {
            _json.WriteNumber("events"u8, _sequence - _startSequence + 1); // this run's, this one included
            _json.WriteNumber("dropped"u8, Recorder.Dropped);
            _json.WriteNumber("shed"u8, Recorder.Shed);
        }
        EndEvent();
    }

    private void BeginEvent(string type, DateTime time)
    {
        _event.ResetWrittenCount();
        _json.Reset(_event);
        _json.WriteStartObject();
        _json.WriteNumber("seq"u8, _sequence + 1);
        _json.WriteString("id"u8, NewEventId(time));
        _json.WriteString("time"u8, time);
        _json.WriteString("type"u8, type);
    }

    /// <summary>
    /// A UUIDv7 (RFC 9562: 48-bit Unix milliseconds, version 7, variant, 74 random bits) for the event. The random bits
    /// come from a buffer refilled from the OS every 409 events: <see cref="Guid.CreateVersion7(DateTimeOffset)"/>
    /// asks the OS for each one (a system call per event on the writer thread).
    /// </summary>
    internal Guid NewEventId(DateTime time)
    {
        const int RandomBytes = 10;
        if (_randomUsed + RandomBytes > _random.Length)
        {
            System.Security.Cryptography.RandomNumberGenerator.Fill(_random);
            _randomUsed = 0;
        }
        var random = _random.AsSpan(_randomUsed, RandomBytes);
        _randomUsed += RandomBytes;
        Span<byte> bytes = stackalloc byte[16];
        var milliseconds = new DateTimeOffset(time).ToUnixTimeMilliseconds();
        System.Buffers.Binary.BinaryPrimitives.WriteInt64BigEndian(bytes, milliseconds << 16); // the top 48 bits, then 2 bytes overwritten below
        random.CopyTo(bytes[6..]);
        bytes[6] = (byte)(0x70 | (bytes[6] & 0x0F));
        bytes[8] = (byte)(0x80 | (bytes[8] & 0x3F));
        return new Guid(bytes, bigEndian: true);
    }

    /// <summary>Closes the event with its <c>prev</c>, hashes it and appends the line to the batch.</summary>
    private void EndEvent()
    {
        Span<byte> hex = stackalloc byte[AuditChain.HashBytes * 2];
        Convert.TryToHexStringLower(_prev, hex, out _);
        _json.WriteString("prev"u8, hex);
        _json.WriteEndObject();
        _json.Flush();

        var eventJson = _event.WrittenSpan;
        Span<byte> hash = stackalloc byte[AuditChain.HashBytes];
        _chain.Hash(eventJson, hash);
        var line = _batch.GetSpan(eventJson.Length + AuditChain.LineOverhead);
        _batch.Advance(AuditChain.AppendLine(eventJson, hash, line));
        hash.CopyTo(_prev);
        _sequence++;
        if (_batchCount++ == 0)
        {
            _batchFirst = _sequence;
        }
    }

    /// <summary>
    /// Hands the batch to every sink, in order (a sink that fails is recorded in the next batch), then releases the
    /// answers waiting for the records drained so far. Runs on the writer thread: a sink that does not complete at
    /// once is waited for here.
    /// </summary>
    private void Ship()
    {
        var drainedTo = _queue.DequeuePosition;
        if (_batchCount > 0)
        {
            ShipBatch();
        }
        if (drainedTo > Volatile.Read(ref _writtenPosition))
        {
            ReleaseWaiters(drainedTo);
        }
    }

    private void ShipBatch()
    {
        var batch = new AuditBatch(_batch.WrittenMemory, _batchCount, _batchFirst, _sequence);
        foreach (var sink in _sinks)
        {
            try
            {
                var write = sink.WriteAsync(batch, CancellationToken.None);
                if (write.IsCompletedSuccessfully)
                {
                    write.GetAwaiter().GetResult();
                }
                else
                {
                    write.AsTask().GetAwaiter().GetResult();
                }
            }
            catch (Exception ex) when (ex is not OperationCanceledException)
            {
                Interlocked.Increment(ref _sinkFailures);
                _logger.LogError("Audit sink {Sink} lost events {First}..{Last}: {Error}", sink.Name, batch.FirstSequence, batch.LastSequence, ex.Message);
                _failedBatches.Add((sink.Name, $"{batch.FirstSequence}..{batch.LastSequence}", ex.Message));
            }
        }
        Interlocked.Add(ref _written, _batchCount);
        _batch.ResetWrittenCount();
        _batchCount = 0;
        if (_batch.Capacity > 4 * 1024 * 1024)
        {
            _batch.Clear(); // a burst grew it; the next GetSpan sizes it again
        }

        foreach (var (sink, events, error) in _failedBatches)
        {
            BeginEvent("audit_sink_failure", DateTime.UtcNow);
            _json.WriteString("sink"u8, sink);
            _json.WriteString("events"u8, events);
            _json.WriteString("error"u8, error);
            EndEvent();
        }
        _failedBatches.Clear();
    }

    /// <summary>Drains the queue, writes calls still in flight as <c>unknown</c>, writes <c>audit_stop</c> and flushes every sink.</summary>
    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _stopping = true;
        _signal.WakeAlways();
        if (_thread is not null)
        {
            await _stopped.Task.ConfigureAwait(false);
        }
        WriteNotices();
        while (Drain() > 0)
        {
            Ship();
        }
        ExpirePending(long.MaxValue);
        if (_thread is not null)
        {
            WriteLifecycle("audit_stop");
        }
        Ship();
        ReleaseWaiters(long.MaxValue);

        using var flush = new CancellationTokenSource(TimeSpan.FromSeconds(5));
        foreach (var sink in _sinks)
        {
            try
            {
                await sink.FlushAsync(flush.Token).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                _logger.LogError("Audit sink {Sink} could not flush: {Error}", sink.Name, ex.Message);
            }
            await sink.DisposeAsync().ConfigureAwait(false);
        }
        _json.Dispose();
        _signal.Dispose();
    }

    private readonly record struct PendingCall(AuditEntry Entry, byte[] Bytes);
}
