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
/// Runs as one background loop; the calls never wait for it.
/// </summary>
/// <remarks>
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
    private readonly CancellationTokenSource _stop = new();
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
    private long _orphans;
    private long _written;
    private long _sinkFailures;
    private Task? _loop;
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
        Recorder = new AuditRecorder(_queue);
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
        if (_loop is not null)
        {
            return;
        }
        // audit_start is written by the writer itself: hashing loads the crypto library, which need not delay start-up.
        _loop = Task.Run(RunAsync);
    }

    private async Task RunAsync()
    {
        try
        {
            WriteLifecycle("audit_start");
            while (!_stop.IsCancellationRequested)
            {
                var drained = Drain();
                await ShipAsync(CancellationToken.None).ConfigureAwait(false);
                if (drained < _config.BatchEvents)
                {
                    try
                    {
                        await Task.Delay(_config.FlushInterval, _stop.Token).ConfigureAwait(false);
                    }
                    catch (OperationCanceledException)
                    {
                        // Stopping: the final drain runs in DisposeAsync.
                    }
                }
            }
        }
        catch (Exception ex)
        {
            _logger.LogCritical(ex, "The audit writer failed; decisions are no longer being recorded");
        }
    }

    /// <summary>Moves queued records into the batch; returns how many records it took.</summary>
    private int Drain()
    {
        // Re-anchored on every pass, so event times follow the wall clock (NTP steps included) to within a pass.
        _anchorUtc = DateTime.UtcNow;
        _anchorTimestamp = Stopwatch.GetTimestamp();
        NoteDrops();
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
                    _pending[entry.CallId] = new PendingCall(entry, buffer[..used].ToArray());
                    break;
                case AuditRecordKind.Completion:
                    if (_pending.Remove(entry.CallId, out var call))
                    {
                        WriteCall(call.Entry, call.Bytes, entry.Outcome, entry.ErrorCode, entry.Timestamp - call.Entry.Timestamp);
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
        }
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
        json.WriteString("server"u8, entry.Server);
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
            json.WritePropertyName("requestId"u8);
            json.WriteRawValue(id, skipInputValidation: false);
        }
        json.WriteString("decision"u8, entry.Decision.ToWireName());
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
        var arguments = bytes[(entry.ToolLength + entry.IdLength)..];
        var complete = entry.ArgumentsLength == entry.ArgumentsTotalLength;
        if (_redactor.WriteArguments(json, arguments, complete))
        {
            json.WriteBoolean("argumentsTruncated"u8, true);
            json.WriteNumber("argumentsBytes"u8, entry.ArgumentsTotalLength);
        }
        json.WriteString("outcome"u8, outcome.ToWireName());
        if (errorCode != 0)
        {
            json.WriteNumber("errorCode"u8, errorCode);
        }
        if (latencyTicks >= 0)
        {
            json.WriteNumber("upstreamMs"u8, Math.Round(latencyTicks * 1000.0 / Stopwatch.Frequency, 3));
        }
        EndEvent();
    }

    private DateTime WallClock(long timestamp)
        => _anchorUtc - TimeSpan.FromSeconds((double)(_anchorTimestamp - timestamp) / Stopwatch.Frequency);

    private static void WriteOptional(Utf8JsonWriter json, ReadOnlySpan<byte> name, string? value)
    {
        if (value is null)
        {
            json.WriteNull(name);
        }
        else
        {
            json.WriteString(name, value);
        }
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
    private Guid NewEventId(DateTime time)
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

    /// <summary>Hands the batch to every sink, in order; a sink that fails is recorded in the next batch.</summary>
    private async ValueTask ShipAsync(CancellationToken cancellationToken)
    {
        if (_batchCount == 0)
        {
            return;
        }
        var batch = new AuditBatch(_batch.WrittenMemory, _batchCount, _batchFirst, _sequence);
        foreach (var sink in _sinks)
        {
            try
            {
                await sink.WriteAsync(batch, cancellationToken).ConfigureAwait(false);
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
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_loop is not null)
        {
            await _loop.ConfigureAwait(false);
        }
        while (Drain() > 0)
        {
            await ShipAsync(CancellationToken.None).ConfigureAwait(false);
        }
        ExpirePending(long.MaxValue);
        if (_loop is not null)
        {
            WriteLifecycle("audit_stop");
        }
        await ShipAsync(CancellationToken.None).ConfigureAwait(false);

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
        _stop.Dispose();
    }

    private readonly record struct PendingCall(AuditEntry Entry, byte[] Bytes);
}
