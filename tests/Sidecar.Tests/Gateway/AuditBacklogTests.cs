using System.Buffers;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Sessions;
using Sidecar.Tests.Audit;
using Sidecar.Tests.TestSupport;

namespace Sidecar.Tests.Gateway;

/// <summary>
/// audit.onFull at the gateway: a session whose audit queue has no room refuses a tools/call with -32015
/// audit_backlog before anything reaches the upstream (and gives its tokens back), or forwards it unrecorded with
/// onFull: drop; with before_answer the answer carries the ticket its writer waits for.
/// </summary>
public sealed class AuditBacklogTests
{
    private const string Policy = """
        { "version": "1", "default": "deny", "tools": {
            "echo": { "limits": [ { "counter": "echo_rate", "window": "hour", "max": 1, "scope": "session" } ] } } }
        """;

    private static readonly byte[] EchoCall = """{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"""u8.ToArray();
    private static readonly byte[] DeniedCall = """{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"get-env","arguments":{}}}"""u8.ToArray();

    [Fact]
    public async Task A_call_whose_record_finds_no_room_is_refused_before_the_upstream_sees_it_and_keeps_its_tokens()
    {
        var (session, connector, pipeline) = SessionHarness.Create(AuditTest.Config(buffer: 64), Policy);
        FillQueue(pipeline.Recorder);

        var answer = await SessionHarness.CallAsync(session, EchoCall);
        var error = answer.GetProperty("error");
        Assert.Equal(-32015, error.GetProperty("code").GetInt32());
        Assert.Equal(7, answer.GetProperty("id").GetInt32());
        var data = error.GetProperty("data");
        Assert.Equal("audit_backlog", data.GetProperty("reason").GetString());
        Assert.Equal("echo", data.GetProperty("tool").GetString());
        Assert.Equal("srv", data.GetProperty("server").GetString());
        Assert.Equal(10, data.GetProperty("retryAfterMs").GetInt64()); // the test config's flushInterval
        Assert.Contains("\"echo\"", error.GetProperty("message").GetString(), StringComparison.Ordinal);
        // A blocked call that finds no room is refused the same way.
        var denied = await SessionHarness.CallAsync(session, DeniedCall);
        Assert.Equal("audit_backlog", denied.GetProperty("error").GetProperty("data").GetProperty("reason").GetString());
        Assert.Equal(0, connector.Sent);
        Assert.Equal(1 + 2, pipeline.Recorder.Shed); // the filler that found the queue full, and both calls

        // Room again: the refused call spent no token of its one-an-hour limit, so the next one goes through.
        while (pipeline.RunOnce() > 0)
        {
        }
        var allowed = await SessionHarness.CallAsync(session, EchoCall);
        Assert.True(allowed.TryGetProperty("result", out _), allowed.ToString());
        Assert.Equal(1, connector.Sent);
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task With_onFull_drop_the_call_goes_through_unrecorded_and_is_counted()
    {
        var (session, connector, pipeline) = SessionHarness.Create(AuditTest.Config(buffer: 64) with { OnFull = AuditOverflow.Drop }, Policy);
        FillQueue(pipeline.Recorder);
        var answer = await SessionHarness.CallAsync(session, EchoCall);
        Assert.True(answer.TryGetProperty("result", out _), answer.ToString());
        Assert.Equal(1, connector.Sent);
        Assert.Equal(1 + 1, pipeline.Recorder.Dropped); // the filler that found the queue full, and the call
        Assert.Equal(0, pipeline.Recorder.Shed);
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    [Fact]
    public async Task With_before_answer_every_answer_to_a_call_carries_its_records_ticket()
    {
        var (session, _, pipeline) = SessionHarness.Create(AuditTest.Config() with { Durability = AuditDurability.BeforeAnswer }, Policy);
        var sink = new MessageSink(acceptsRelatedMessages: false);
        Assert.True(await session.ProcessAsync(new ReadOnlySequence<byte>(EchoCall), SessionHarness.Scan(EchoCall), sink, CancellationToken.None));
        var forwarded = await SessionHarness.ReadAsync(sink);
        Assert.NotEqual(0, forwarded.AuditTicket);
        var denied = new MessageSink(acceptsRelatedMessages: false);
        Assert.True(await session.ProcessAsync(new ReadOnlySequence<byte>(DeniedCall), SessionHarness.Scan(DeniedCall), denied, CancellationToken.None));
        var blocked = await SessionHarness.ReadAsync(denied);
        Assert.True(blocked.AuditTicket > forwarded.AuditTicket);
        // The records behind the tickets are written once the writer has run.
        Assert.False(pipeline.Recorder.WhenWrittenAsync(blocked.AuditTicket).IsCompleted);
        while (pipeline.RunOnce() > 0)
        {
        }
        Assert.True(pipeline.Recorder.WhenWrittenAsync(blocked.AuditTicket).IsCompletedSuccessfully);
        await session.DisposeAsync();
        await pipeline.DisposeAsync();
    }

    private static void FillQueue(AuditRecorder recorder)
    {
        var deny = AuditTest.Decision(DecisionOutcome.Deny);
        while (recorder.TryRecordDecision("srv", new CallContext(null, null, "x"), "filler", "1"u8, default, deny, forwarded: false, out _, out _))
        {
        }
        Assert.Equal(1, recorder.Shed + recorder.Dropped); // the one that found the queue full
    }
}
