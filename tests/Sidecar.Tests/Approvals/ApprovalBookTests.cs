using System.Text;
using System.Text.Json;
using Microsoft.Extensions.Logging.Abstractions;
using Sidecar.Approvals;
using Sidecar.Audit;
using Sidecar.Configuration;

namespace Sidecar.Tests.Approvals;

/// <summary>
/// The approval book on its own, on a clock the test moves: one approval per identical call, an approval releases
/// exactly one call, a denial is heard once, pending and unused approvals expire, decided ones are kept for a while.
/// </summary>
public sealed class ApprovalBookTests
{
    private static readonly TimeSpan Minute = TimeSpan.FromMinutes(1);
    private readonly ManualClock _clock = new();

    private ApprovalBook Book(int maxPending = 100)
        => new(new ApprovalsConfig(TimeSpan.FromSeconds(30), maxPending, null), AuditRecorder.Disabled, new AuditRedactor([], 256),
            NullLogger.Instance, _clock);

    private static ApprovalKey Key(string args = "h1", string? identity = "ci-bot", string tool = "drop_flow")
        => new("mitmproxy", identity, "ops", tool, args);

    private static ReadOnlySpan<byte> Args => """{"flow":"f-1"}"""u8;

    [Fact]
    public void Identical_calls_wait_on_one_approval_and_other_calls_get_their_own()
    {
        var book = Book();
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var first));
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var again));
        Assert.Same(first, again);
        book.Open(Key("h2"), Args, Minute, out var otherArgs);
        book.Open(Key(identity: "ops-agent"), Args, Minute, out var otherIdentity);
        book.Open(Key(tool: "kill_flow"), Args, Minute, out var otherTool);
        Assert.Equal(4, new[] { first!.Id, otherArgs!.Id, otherIdentity!.Id, otherTool!.Id }.Distinct().Count());
        Assert.Equal(4, book.PendingCount);
        Assert.Equal(32, first.Id.Length);
        Assert.Equal(ApprovalStatus.Pending, first.Status);
        Assert.Equal(_clock.Now + Minute, first.ExpiresAt);
    }

    [Fact]
    public void An_approval_releases_exactly_one_call()
    {
        var book = Book();
        book.Open(Key(), Args, Minute, out var approval);
        Assert.Equal(ApprovalDecision.Done, book.Decide(approval!.Id, approve: true, "alice", "fine", out _));
        Assert.True(approval.Decided.IsCompleted);
        Assert.Equal("alice", approval.DecidedBy);

        // A held call takes it; the next identical one does not.
        Assert.True(book.TryUse(approval));
        Assert.False(book.TryUse(approval));
        Assert.Equal(ApprovalStatus.Used, approval.Status);
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var next));
        Assert.NotSame(approval, next);
    }

    [Fact]
    public void An_approval_nobody_waited_for_releases_the_next_identical_call_once()
    {
        var book = Book();
        book.Open(Key(), Args, Minute, out var approval);
        book.Decide(approval!.Id, approve: true, null, null, out _);
        Assert.Equal("admin", approval.DecidedBy);
        Assert.Equal(ApprovalTicket.Released, book.Open(Key(), Args, Minute, out var released));
        Assert.Same(approval, released);
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var fresh));
        Assert.NotSame(approval, fresh);
    }

    [Fact]
    public void A_released_call_that_was_then_refused_gives_its_approval_back()
    {
        var book = Book();
        book.Open(Key(), Args, Minute, out var approval);
        book.Decide(approval!.Id, approve: true, null, null, out _);
        Assert.Equal(ApprovalTicket.Released, book.Open(Key(), Args, Minute, out _));
        book.Restore(approval);
        Assert.Equal(ApprovalStatus.Approved, approval.Status);
        Assert.Equal(ApprovalTicket.Released, book.Open(Key(), Args, Minute, out var again));
        Assert.Same(approval, again);
    }

    [Fact]
    public void A_denial_is_heard_by_one_call_and_the_next_identical_call_asks_again()
    {
        var book = Book();
        book.Open(Key(), Args, Minute, out var approval);
        Assert.Equal(ApprovalDecision.Done, book.Decide(approval!.Id, approve: false, "bob", "not today", out _));
        Assert.Equal("not today", approval.Reason);
        Assert.Equal(0, book.PendingCount);

        Assert.Equal(ApprovalTicket.Denied, book.Open(Key(), Args, Minute, out var denied));
        Assert.Same(approval, denied);
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var fresh));
        Assert.NotSame(approval, fresh);
    }

    [Fact]
    public void A_decided_or_unknown_approval_cannot_be_decided()
    {
        var book = Book();
        book.Open(Key(), Args, Minute, out var approval);
        book.Decide(approval!.Id, approve: false, null, null, out _);
        Assert.Equal(ApprovalDecision.Conflict, book.Decide(approval.Id, approve: true, null, null, out var conflicting, out var json));
        Assert.Same(approval, conflicting);
        Assert.Equal("denied", JsonDocument.Parse(json!).RootElement.GetProperty("status").GetString());
        Assert.Equal(ApprovalDecision.NotFound, book.Decide("nope", approve: true, null, null, out var unknown));
        Assert.Null(unknown);
    }

    [Fact]
    public void A_pending_approval_expires_after_its_timeout_and_then_cannot_be_approved()
    {
        var book = Book();
        book.Open(Key(), Args, TimeSpan.FromSeconds(5), out var approval);
        _clock.Advance(TimeSpan.FromSeconds(4));
        book.Sweep();
        Assert.Equal(ApprovalStatus.Pending, approval!.Status);
        _clock.Advance(TimeSpan.FromSeconds(2));
        book.Sweep();
        Assert.Equal(ApprovalStatus.Expired, approval.Status);
        Assert.True(approval.Decided.IsCompleted);
        Assert.Equal("sidecar", approval.DecidedBy);
        Assert.Equal(0, book.PendingCount);
        Assert.Equal(ApprovalDecision.Conflict, book.Decide(approval.Id, approve: true, null, null, out _));
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var fresh));
        Assert.NotSame(approval, fresh);
    }

    [Fact]
    public void Deciding_after_the_timeout_finds_it_expired_even_before_a_sweep()
    {
        var book = Book();
        book.Open(Key(), Args, TimeSpan.FromSeconds(5), out var approval);
        _clock.Advance(TimeSpan.FromSeconds(6));
        Assert.Equal(ApprovalDecision.Conflict, book.Decide(approval!.Id, approve: true, null, null, out _));
        Assert.Equal(ApprovalStatus.Expired, approval.Status);
    }

    [Fact]
    public void An_approval_not_used_within_the_timeout_after_the_decision_expires()
    {
        var book = Book();
        book.Open(Key(), Args, TimeSpan.FromSeconds(10), out var approval);
        _clock.Advance(TimeSpan.FromSeconds(8));
        book.Decide(approval!.Id, approve: true, null, null, out _);
        Assert.Equal(_clock.Now + TimeSpan.FromSeconds(10), approval.ExpiresAt); // the agent has the timeout from the decision
        _clock.Advance(TimeSpan.FromSeconds(11));
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key(), Args, Minute, out var fresh));
        Assert.Equal(ApprovalStatus.Expired, approval.Status);
        Assert.NotSame(approval, fresh);
    }

    [Fact]
    public void Past_max_pending_no_new_approval_is_opened_but_identical_calls_still_find_theirs()
    {
        var book = Book(maxPending: 2);
        book.Open(Key("a"), Args, Minute, out _);
        book.Open(Key("b"), Args, Minute, out var second);
        Assert.Equal(ApprovalTicket.Full, book.Open(Key("c"), Args, Minute, out var none));
        Assert.Null(none);
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key("b"), Args, Minute, out var same));
        Assert.Same(second, same);
        book.Decide(second!.Id, approve: false, null, null, out _);
        Assert.Equal(ApprovalTicket.Pending, book.Open(Key("c"), Args, Minute, out _));
    }

    [Fact]
    public void The_list_has_the_pending_ones_and_with_all_the_decided_ones_until_an_hour_has_passed()
    {
        var book = Book();
        book.Open(Key("a"), Args, TimeSpan.FromHours(3), out var pending);
        _clock.Advance(TimeSpan.FromSeconds(1));
        book.Open(Key("b"), Args, TimeSpan.FromHours(3), out var decided);
        book.Decide(decided!.Id, approve: false, null, null, out _);
        Assert.Equal([pending!.Id], book.List(all: false).Select(a => a.Id));
        Assert.Equal([pending.Id, decided.Id], book.List(all: true).Select(a => a.Id));

        _clock.Advance(TimeSpan.FromMinutes(61));
        Assert.Equal([pending.Id], book.List(all: true).Select(a => a.Id));
        Assert.Null(book.Find(decided.Id));
        Assert.Same(pending, book.Find(pending.Id));
    }

    [Fact]
    public void The_admin_api_shape_has_every_field_and_redacted_arguments()
    {
        var book = Book();
        book.Open(Key(), """{"flow":"f-1","password":"hunter2","note":"token=sk-live-0123456789abcdef"}"""u8, Minute, out var approval);
        var json = JsonDocument.Parse(ApprovalBook.ToJson(approval!)).RootElement;
        foreach (var field in new[] { "id", "server", "tool", "identity", "grant", "arguments", "argumentsSha256", "createdAt", "expiresAt", "status" })
        {
            Assert.True(json.TryGetProperty(field, out _), field);
        }
        Assert.False(json.TryGetProperty("decidedBy", out _));
        var arguments = json.GetProperty("arguments");
        Assert.Equal("f-1", arguments.GetProperty("flow").GetString());
        Assert.Equal(AuditRedactor.Redacted, arguments.GetProperty("password").GetString());
        Assert.DoesNotContain("sk-live", arguments.GetProperty("note").GetString(), StringComparison.Ordinal);
        Assert.DoesNotContain("hunter2", Encoding.UTF8.GetString(ApprovalBook.ToJson(approval!)), StringComparison.Ordinal);

        book.Decide(approval!.Id, approve: true, "alice", "ok", out _, out var decided);
        var after = JsonDocument.Parse(decided!).RootElement;
        Assert.Equal("approved", after.GetProperty("status").GetString());
        Assert.Equal("alice", after.GetProperty("decidedBy").GetString());
        Assert.Equal("ok", after.GetProperty("reason").GetString());
    }

    [Fact]
    public void No_arguments_are_shown_as_an_empty_object()
    {
        var book = Book();
        book.Open(Key(), default, Minute, out var approval);
        Assert.Equal("{}", Encoding.UTF8.GetString(approval!.Arguments));
    }

    private sealed class ManualClock : TimeProvider
    {
        public DateTimeOffset Now { get; private set; } = new(2026, 12, 1, 9, 0, 0, TimeSpan.Zero);

        public void Advance(TimeSpan by) => Now += by;

        public override DateTimeOffset GetUtcNow() => Now;
    }
}
