using System.Buffers;
using System.Text;
using System.Text.Json;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;

namespace Sidecar.Tests.Audit;

public sealed class AuditPipelineTests
{
    private static List<JsonElement> Events(MemorySink sink) => sink.Lines.Select(l => JsonDocument.Parse(l).RootElement.Clone()).ToList();

    private static List<JsonElement> Calls(MemorySink sink) => Events(sink).Where(e => e.GetProperty("type").GetString() == "tool_call").ToList();

    [Fact]
    public async Task A_blocked_call_is_written_at_once_and_a_forwarded_one_when_it_completes()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink);
        pipeline.Start();
        var recorder = pipeline.Recorder;

        AuditTest.Record(recorder, "drop_flow", """{"id":7}""", AuditTest.Decision(DecisionOutcome.Deny, "tools.drop_flow", "no"), forwarded: false, id: "\"a\"");
        var call = AuditTest.Record(recorder, "echo", """{"message":"hi"}""", AuditTest.Decision(DecisionOutcome.Allow), forwarded: true, id: "2");
        Assert.NotEqual(0, call);
        await WaitAsync(() => Calls(sink).Count == 1);
        Assert.Equal("blocked", Calls(sink)[0].GetProperty("outcome").GetString());
        Assert.Equal(-32010, Calls(sink)[0].GetProperty("errorCode").GetInt32());
        Assert.Equal("a", Calls(sink)[0].GetProperty("requestId").GetString());

        recorder.RecordCompletion(call, AuditOutcome.ToolError);
        await WaitAsync(() => Calls(sink).Count == 2);
        var second = Calls(sink)[1];
        Assert.Equal("echo", second.GetProperty("tool").GetString());
        Assert.Equal(2, second.GetProperty("requestId").GetInt32());
        Assert.Equal("tool_error", second.GetProperty("outcome").GetString());
        Assert.True(second.GetProperty("upstreamMs").GetDouble() >= 0);
        // Milliseconds with at most three decimals (microseconds), and no trailing zeros.
        Assert.Matches(@"^(0|[1-9][0-9]*)(\.[0-9]{0,2}[1-9])?$", second.GetProperty("upstreamMs").GetRawText());
        Assert.Equal("hi", second.GetProperty("arguments").GetProperty("message").GetString());
        await pipeline.DisposeAsync();

        var types = Events(sink).Select(e => e.GetProperty("type").GetString()).ToList();
        Assert.Equal(["audit_start", "tool_call", "tool_call", "audit_stop"], types);
    }

    [Fact]
    public async Task Every_event_has_a_distinct_uuid_v7_id_carrying_its_time()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink);
        pipeline.Start();
        for (var i = 0; i < 1000; i++) // more than one refill of the random buffer
        {
            AuditTest.Record(pipeline.Recorder, "drop_flow", "{}", AuditTest.Decision(DecisionOutcome.Deny, "tools.drop_flow", "no"), forwarded: false);
        }
        await pipeline.DisposeAsync();

        var ids = new HashSet<Guid>();
        foreach (var e in Events(sink))
        {
            var text = e.GetProperty("id").GetString()!;
            var id = Guid.Parse(text);
            Assert.True(ids.Add(id), "duplicate id " + text);
            Assert.Equal(7, id.Version);
            Assert.Contains(text[19], "89ab"); // RFC 9562 variant: 10xx
            var time = e.GetProperty("time").GetDateTimeOffset().ToUnixTimeMilliseconds();
            Assert.Equal(time, Convert.ToInt64(text.Replace("-", "", StringComparison.Ordinal)[..12], 16));
        }
        Assert.Equal(1002, ids.Count);
    }

    [Fact]
    public async Task Calls_still_in_flight_at_shutdown_are_written_as_unknown()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink);
        pipeline.Start();
        AuditTest.Record(pipeline.Recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Allow), forwarded: true);
        await pipeline.DisposeAsync();
        var call = Assert.Single(Calls(sink));
        Assert.Equal("unknown", call.GetProperty("outcome").GetString());
    }

    [Fact]
    public async Task Shadow_decisions_are_recorded_as_not_enforced_with_the_real_outcome()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink);
        pipeline.Start();
        var id = AuditTest.Record(pipeline.Recorder, "set_option", """{"key":"mode"}""", AuditTest.Decision(DecisionOutcome.Deny, enforced: false), forwarded: true);
        pipeline.Recorder.RecordCompletion(id, AuditOutcome.Ok);
        await pipeline.DisposeAsync();
        var call = Assert.Single(Calls(sink));
        Assert.Equal("deny", call.GetProperty("decision").GetString());
        Assert.False(call.GetProperty("enforced").GetBoolean());
        Assert.Equal("ok", call.GetProperty("outcome").GetString());
        Assert.Equal("mode", call.GetProperty("arguments").GetProperty("key").GetString()); // "key" is not a secret name
    }

    [Fact]
    public async Task A_full_queue_drops_records_and_the_trail_says_how_many()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink, AuditTest.Config(buffer: 64) with { OnFull = AuditOverflow.Drop });
        // Not started: nothing drains, so the 65th record onwards find the queue full.
        for (var i = 0; i < 100; i++)
        {
            AuditTest.Record(pipeline.Recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        }
        Assert.Equal(36, pipeline.Recorder.Dropped);
        pipeline.Start();
        await pipeline.DisposeAsync();
        var gap = Assert.Single(Events(sink), e => e.GetProperty("type").GetString() == "audit_gap");
        Assert.Equal(36, gap.GetProperty("dropped").GetInt64());
        Assert.Equal(64, Calls(sink).Count);
    }

    [Fact]
    public async Task A_failing_sink_is_recorded_in_the_trail_and_the_other_sinks_keep_everything()
    {
        var failing = new MemorySink { Fail = true };
        var good = new MemorySink();
        var pipeline = new AuditPipeline(AuditTest.Config(), [failing, good], Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance,
            TimeSpan.FromMinutes(1), AuditChainHead.Empty, "test");
        pipeline.Start();
        AuditTest.Record(pipeline.Recorder, "echo", "{}", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        await WaitAsync(() => Events(good).Any(e => e.GetProperty("type").GetString() == "audit_sink_failure"));
        failing.Fail = false;
        await pipeline.DisposeAsync();
        var failure = Events(good).First(e => e.GetProperty("type").GetString() == "audit_sink_failure");
        Assert.Equal("memory", failure.GetProperty("sink").GetString());
        // The first batch it lost starts with audit_start (how many events it held depends on the writer's timing).
        Assert.StartsWith("1..", failure.GetProperty("events").GetString(), StringComparison.Ordinal);
        Assert.Single(Calls(good));
        Assert.True(pipeline.SinkFailures >= 1);
    }

    [Fact]
    public async Task A_blocked_call_without_arguments_is_written_with_empty_arguments_and_the_writer_goes_on()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink);
        pipeline.Start();
        // A longer record first, so the slot buffers hold old bytes past the next records' own.
        AuditTest.Record(pipeline.Recorder, "echo", """{"message":"a much longer argument than none at all"}""", AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        await WaitAsync(() => Calls(sink).Count == 1);
        for (var i = 0; i < 1000; i++) // fewer than the queue holds (1024)
        {
            pipeline.Recorder.RecordDecision("srv", new CallContext(null, null, "s1"), "get-env", "2"u8, default,
                AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        }
        await pipeline.DisposeAsync();
        var calls = Calls(sink);
        Assert.Equal(1001, calls.Count);
        Assert.All(calls.Skip(1), c => Assert.Equal(JsonValueKind.Object, c.GetProperty("arguments").ValueKind));
        Assert.Equal("{}", calls[^1].GetProperty("arguments").GetRawText());
    }

    [Fact]
    public async Task Arguments_of_every_shape_cut_anywhere_never_stop_the_writer()
    {
        // Valid JSON as the scanner lets it through (escapes, non-ASCII, surrogate pairs, nesting, secrets inside text),
        // cut by the recorder at every length up to the whole: each record is still written as one valid event.
        var arguments = """{"a":"t\u00e9st \ud83d\ude00 token=sk-live-0123456789abcdefghij","n":[1,-2.5e3,true,null,{"k":"Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}],"url":"https://u:p@h/x?api_key=zzzzzzzz","é":"ü\"q\\"}""";
        var total = Encoding.UTF8.GetByteCount(arguments);
        for (var cap = 0; cap <= total; cap += 3)
        {
            var sink = new MemorySink();
            var pipeline = AuditTest.Pipeline(sink, AuditTest.Config(maxArgumentBytes: cap));
            pipeline.Start();
            AuditTest.Record(pipeline.Recorder, "echo", arguments, AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
            var call = AuditTest.Record(pipeline.Recorder, "echo", arguments, AuditTest.Decision(DecisionOutcome.Allow), forwarded: true);
            pipeline.Recorder.RecordCompletion(call, AuditOutcome.Ok);
            await pipeline.DisposeAsync();
            var calls = Calls(sink);
            Assert.True(calls.Count == 2, $"cap {cap}: {calls.Count} events");
            Assert.All(calls, c => Assert.Contains(c.GetProperty("arguments").ValueKind, new[] { JsonValueKind.Object, JsonValueKind.Null }));
            Assert.All(sink.Lines, l => Assert.DoesNotContain("sk-live-0123456789", l, StringComparison.Ordinal));
            Assert.Equal("audit_stop", Events(sink)[^1].GetProperty("type").GetString());
        }
    }

    [Fact]
    public async Task Long_arguments_are_cut_at_the_cap_and_still_written_as_valid_json()
    {
        var sink = new MemorySink();
        var pipeline = AuditTest.Pipeline(sink, AuditTest.Config(maxArgumentBytes: 64));
        pipeline.Start();
        var arguments = """{"a":"short","list":[1,2,3,{"deep":"x"}],"long":""" + "\"" + new string('y', 200) + "\"}";
        AuditTest.Record(pipeline.Recorder, "echo", arguments, AuditTest.Decision(DecisionOutcome.Deny), forwarded: false);
        await pipeline.DisposeAsync();
        var call = Assert.Single(Calls(sink));
        Assert.True(call.GetProperty("argumentsTruncated").GetBoolean());
        Assert.Equal(Encoding.UTF8.GetByteCount(arguments), call.GetProperty("argumentsBytes").GetInt32());
        Assert.Equal("short", call.GetProperty("arguments").GetProperty("a").GetString());
    }

    [Fact]
    public void Recording_allocates_nothing_once_the_queue_slots_are_warm()
    {
        var pipeline = AuditTest.Pipeline(new MemorySink(), AuditTest.Config(buffer: 64));
        var recorder = pipeline.Recorder;
        var queue = recorder.Queue!;
        var decision = AuditTest.Decision(DecisionOutcome.Allow);
        var arguments = new ReadOnlySequence<byte>("""{"message":"hello","n":1}"""u8.ToArray());
        var id = "17"u8.ToArray();
        var context = new CallContext(null, null, "session");

        void Cycle()
        {
            for (var i = 0; i < 32; i++)
            {
                var call = recorder.RecordDecision("srv", context, "echo", id, arguments, decision, forwarded: true);
                recorder.RecordCompletion(call, AuditOutcome.Ok);
            }
            // Consume like the writer does, without serializing (that is the writer's allocation, off the call path).
            while (queue.TryPeek(out var position))
            {
                queue.Release(position);
            }
        }

        Cycle(); // every slot gets its buffer
        var before = GC.GetAllocatedBytesForCurrentThread();
        Cycle();
        Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
    }

    private static Task WaitAsync(Func<bool> condition) => AuditTest.WaitAsync(condition);
}
