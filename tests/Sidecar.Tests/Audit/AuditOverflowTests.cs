using System.Text.Json;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;

namespace Sidecar.Tests.Audit;

/// <summary>
/// audit.onFull and audit.durability at the recorder and writer: a forwarded call holds its completion's place, a
/// full queue sheds (or drops) what it cannot hold, and before_answer releases an answer only after its batch is written.
/// </summary>
public sealed class AuditOverflowTests
{
    [Fact]
    public void A_forwarded_call_keeps_a_place_for_its_completion_so_the_completion_always_fits()
    {
        var pipeline = AuditTest.Pipeline(new MemorySink(), AuditTest.Config(buffer: 64)); // not started: nothing drains
        var recorder = pipeline.Recorder;
        var allowed = AuditTest.Decision(DecisionOutcome.Allow);
        var calls = new List<long>();
        for (var i = 0; i < 32; i++)
        {
            var id = AuditTest.Record(recorder, "echo", "{}", allowed, forwarded: true);
            Assert.NotEqual(0, id);
            calls.Add(id);
        }
        // 32 decisions hold 64 places: no room for another call, forwarded or blocked.
        Assert.Equal(0, AuditTest.Record(recorder, "echo", "{}", allowed, forwarded: true));
        Assert.False(recorder.TryRecordDecision("srv", new CallContext(null, null, "s"), "echo", "1"u8, default,
            AuditTest.Decision(DecisionOutcome.Deny), forwarded: false, out _, out _));
        Assert.Equal(2, recorder.Shed);
        // ... yet every forwarded call's completion is recorded.
        foreach (var id in calls)
        {
            recorder.RecordCompletion(id, AuditOutcome.Ok);
        }
        Assert.Equal(0, recorder.Dropped);
        Assert.Equal(64, recorder.Queue!.Count);
    }

    [Fact]
    public async Task Shed_refusals_are_counted_but_leave_no_gap_in_the_trail()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink, AuditTest.Config(buffer: 64));
        for (var i = 0; i < 100; i++)
        {
            AuditTest.Record(pipeline.Recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        }
        Assert.Equal(36, pipeline.Recorder.Shed);
        Assert.Equal(0, pipeline.Recorder.Dropped);
        pipeline.Start();
        await pipeline.DisposeAsync();
        var events = sink.Lines.Select(l => JsonDocument.Parse(l).RootElement).ToList();
        Assert.DoesNotContain(events, e => e.GetProperty("type").GetString() == "audit_gap");
        Assert.Equal(64, events.Count(e => e.GetProperty("type").GetString() == "tool_call"));
        var stop = events.Single(e => e.GetProperty("type").GetString() == "audit_stop");
        Assert.Equal(36, stop.GetProperty("shed").GetInt64());
        Assert.Equal(0, stop.GetProperty("dropped").GetInt64());
    }

    [Fact]
    public async Task A_freed_queue_takes_records_again_after_shedding()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink, AuditTest.Config(buffer: 64));
        var recorder = pipeline.Recorder;
        for (var i = 0; i < 64; i++)
        {
            AuditTest.Record(recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        }
        Assert.False(recorder.TryRecordDecision("srv", new CallContext(null, null, "s"), "echo", "1"u8, default,
            AuditTest.Decision(DecisionOutcome.Deny), forwarded: false, out _, out _));
        pipeline.Start();
        await WaitAsync(() => recorder.Queue!.Credits == 0);
        Assert.True(recorder.TryRecordDecision("srv", new CallContext(null, null, "s"), "echo", "1"u8, default,
            AuditTest.Decision(DecisionOutcome.Deny), forwarded: false, out _, out _));
        await pipeline.DisposeAsync();
        Assert.Equal(65, sink.Lines.Count(l => l.Contains("\"type\":\"tool_call\"", StringComparison.Ordinal)));
    }

    [Fact]
    public async Task Before_answer_releases_an_answer_only_once_its_batch_has_been_written()
    {
        var sink = new GatedSink();
        var config = AuditTest.Config() with { Durability = AuditDurability.BeforeAnswer, FlushInterval = TimeSpan.FromMinutes(1) };
        var pipeline = AuditTest.Pipeline(sink, config);
        pipeline.Start();
        await WaitAsync(() => sink.Writes >= 1); // audit_start is through: every later write is held at the gate
        sink.Hold();

        var recorder = pipeline.Recorder;
        var id = AuditTest.Record(recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Allow), forwarded: true);
        var ticket = recorder.RecordCompletion(id, AuditOutcome.Ok);
        Assert.NotEqual(0, ticket);
        var released = recorder.WhenWrittenAsync(ticket).AsTask();
        await WaitAsync(() => sink.Waiting); // the writer was woken at once (the flush interval is a minute) and is writing
        Assert.False(released.IsCompleted);
        Assert.Empty(sink.Lines);

        sink.Open();
        await released.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Contains(sink.Lines, l => l.Contains("\"type\":\"tool_call\"", StringComparison.Ordinal));
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task Before_answer_answers_of_a_blocked_call_wait_too_and_many_waits_are_released_together()
    {
        var sink = new MemorySink();
        var config = AuditTest.Config() with { Durability = AuditDurability.BeforeAnswer, FlushInterval = TimeSpan.FromMinutes(1) };
        var pipeline = AuditTest.Pipeline(sink, config);
        pipeline.Start();
        var recorder = pipeline.Recorder;
        var waits = new List<Task>();
        for (var i = 0; i < 200; i++)
        {
            Assert.True(recorder.TryRecordDecision("srv", new CallContext(null, null, "s"), "echo", "1"u8, default,
                AuditTest.Decision(DecisionOutcome.Deny), forwarded: false, out _, out var ticket));
            Assert.NotEqual(0, ticket);
            waits.Add(recorder.WhenWrittenAsync(ticket).AsTask());
        }
        await Task.WhenAll(waits).WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(200, sink.Lines.Count(l => l.Contains("\"type\":\"tool_call\"", StringComparison.Ordinal)));
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task Batched_gives_no_tickets_and_a_busy_queue_wakes_the_writer_before_its_flush_interval()
    {
        var sink = new MemorySink();
        var config = AuditTest.Config() with { BatchEvents = 64, FlushInterval = TimeSpan.FromMinutes(1) };
        var pipeline = AuditTest.Pipeline(sink, config);
        pipeline.Start();
        await WaitAsync(() => sink.Lines.Count >= 1); // audit_start; then the writer sleeps for a minute
        var recorder = pipeline.Recorder;
        for (var i = 0; i < 256; i++)
        {
            Assert.True(recorder.TryRecordDecision("srv", new CallContext(null, null, "s"), "echo", "1"u8, default,
                AuditTest.Decision(DecisionOutcome.Deny), forwarded: false, out _, out var ticket));
            Assert.Equal(0, ticket);
        }
        // Woken by the records, not by the minute: at least the first full batches are written.
        await WaitAsync(() => sink.Lines.Count(l => l.Contains("\"type\":\"tool_call\"", StringComparison.Ordinal)) >= 192);
        await pipeline.DisposeAsync();
        Assert.Equal(256, sink.Lines.Count(l => l.Contains("\"type\":\"tool_call\"", StringComparison.Ordinal)));
    }

    [Fact]
    public void Recording_with_before_answer_allocates_nothing_either()
    {
        var config = AuditTest.Config(buffer: 64) with { Durability = AuditDurability.BeforeAnswer };
        var pipeline = AuditTest.Pipeline(new MemorySink(), config);
        var recorder = pipeline.Recorder;
        var queue = recorder.Queue!;
        var decision = AuditTest.Decision(DecisionOutcome.Allow);
        var arguments = new System.Buffers.ReadOnlySequence<byte>("""{"message":"hello"}"""u8.ToArray());
        var context = new CallContext(null, null, "session");

        void Cycle()
        {
            for (var i = 0; i < 32; i++)
            {
                recorder.TryRecordDecision("srv", context, "echo", "7"u8, arguments, decision, forwarded: true, out var call, out _);
                recorder.RecordCompletion(call, AuditOutcome.Ok);
            }
            while (queue.TryPeek(out var position))
            {
                queue.Release(position);
            }
        }

        Cycle();
        var before = GC.GetAllocatedBytesForCurrentThread();
        Cycle();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    private static Task WaitAsync(Func<bool> condition) => AuditTest.WaitAsync(condition);

    /// <summary>A sink whose writes can be held at a gate, to see what waits for them.</summary>
    private sealed class GatedSink : IAuditSink
    {
        private readonly ManualResetEventSlim _gate = new(true);
        private readonly List<string> _lines = [];
        private int _writes;
        private volatile bool _waiting;

        public string Name => "gated";

        public int Writes => Volatile.Read(ref _writes);

        public bool Waiting => _waiting;

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

        public void Hold() => _gate.Reset();

        public void Open() => _gate.Set();

        public ValueTask WriteAsync(AuditBatch batch, CancellationToken cancellationToken)
        {
            Interlocked.Increment(ref _writes);
            var text = System.Text.Encoding.UTF8.GetString(batch.Lines.Span);
            _waiting = !_gate.IsSet;
            _gate.Wait(cancellationToken);
            _waiting = false;
            lock (_lines)
            {
                if (Writes > 1)
                {
                    _lines.AddRange(text.Split('\n', StringSplitOptions.RemoveEmptyEntries));
                }
            }
            return ValueTask.CompletedTask;
        }

        public ValueTask FlushAsync(CancellationToken cancellationToken) => ValueTask.CompletedTask;

        public ValueTask DisposeAsync()
        {
            _gate.Dispose();
            return ValueTask.CompletedTask;
        }
    }
}
