using System.Buffers;
using System.Text.Json;
using Sidecar.Approvals;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;
using Sidecar.Policy;

namespace Sidecar.Sessions;

/// <summary>What the gateway does with a decided <c>tools/call</c>: a value, like YARP's <c>ForwarderError</c>.</summary>
internal enum CallVerdict : byte
{
    /// <summary>Allowed: forward it upstream.</summary>
    Forward,

    /// <summary>The policy would block it, but runs in shadow mode: forward it (the audit trail says what it would have got).</summary>
    Shadow,

    /// <summary>Answer it with the decision's error (or <c>isError</c> result); nothing leaves.</summary>
    Blocked,

    /// <summary>Refuse it with -32015 <c>audit_backlog</c>: its audit record found no room (<c>audit.onFull: shed</c>).</summary>
    AuditBacklog,

    /// <summary>
    /// Its rule is <c>require_approval</c> and the admin API is on: hold it until a person approves or denies it, or
    /// the hold runs out. Nothing is recorded yet.
    /// </summary>
    Hold,

    /// <summary>
    /// Allowed so far, with shared limits still to take in Redis (<c>rateLimits.store: redis</c>): await
    /// <see cref="ToolCalls.SettleAsync"/> for the real verdict. Nothing is recorded yet. Never with the memory store.
    /// </summary>
    Settle,
}

/// <summary>A decision once its shared limits were taken (or not), recorded: what <see cref="ToolCalls.SettleAsync"/> gives.</summary>
internal readonly record struct Settled(CallVerdict Verdict, Decision Decision, long AuditId, long Ticket);

/// <summary>The one place a <c>tools/call</c> is decided, for sessions and stateless requests alike.</summary>
internal sealed class ToolCalls(DecisionEngine decisions, AuditRecorder audit, SessionLog log, Metrics.GatewayMetrics? metrics = null)
{
    /// <summary>
    /// Decides a scanned <c>tools/call</c> against <paramref name="server"/>'s policy and records the decision in the
    /// audit trail, under the policy <paramref name="caller"/>'s grant gives the server. For <see cref="CallVerdict.Forward"/> and <see cref="CallVerdict.Shadow"/>,
    /// <paramref name="auditId"/> is what <see cref="AuditRecorder.RecordCompletion"/> takes once the call ends; for
    /// <see cref="CallVerdict.Blocked"/>, <paramref name="ticket"/> is what the answer waits for
    /// (<see cref="AuditRecorder.WhenWrittenAsync"/>). A call whose record found no room is refused when
    /// <c>audit.onFull</c> is <c>shed</c>, its tokens given back. <paramref name="tool"/> names the call unless it is
    /// forwarded. Allocation-free for an allowed call.
    /// </summary>
    public CallVerdict Decide(ServerState server, in Caller caller, GatewayOptions options, ReadOnlySequence<byte> message, in JsonRpcScan scan, in CallContext context,
        in ReadOnlySequence<byte> rawId, out Decision decision, out string? tool, out long auditId, out long ticket)
    {
        Span<char> stackName = stackalloc char[128];
        var name = stackName;
        if (!JsonRpcScanner.TryCopyName(message, scan, name, out var length))
        {
            name = new char[scan.Name.Length];
            if (!JsonRpcScanner.TryCopyName(message, scan, name, out length))
            {
                length = 0;
            }
        }
        name = name[..length];

        var arguments = scan.Arguments.IsEmpty ? default : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        var reader = scan.Arguments.IsEmpty ? new Utf8JsonReader(DecisionEngine.NoArguments) : new Utf8JsonReader(arguments);
        var policy = server.PolicyFor(caller);
        decisions.Decide(policy, context, name, reader, approved: false, out decision, server.Pins.Watch);
        if (decision.Outcome == DecisionOutcome.RequireApproval && decision.Enforced && options.ApprovalsEnabled)
        {
            // Held for a person (McpSession.Hold): recorded once it ends, approved, refused or not decided in time.
            auditId = 0;
            ticket = 0;
            tool = name.ToString();
            return CallVerdict.Hold;
        }
        if (decision.NeedsShared)
        {
            // Shared limits to take in Redis: recorded once they are (SettleAsync).
            auditId = 0;
            ticket = 0;
            tool = name.ToString();
            return CallVerdict.Settle;
        }
        // An id split across body segments is rare (ids are short): only then is it copied.
        var id = rawId.IsSingleSegment ? rawId.FirstSpan : rawId.ToArray();
        var verdict = Record(server.Name, policy, context, name, id, arguments, ref decision, out auditId, out ticket);
        tool = verdict == CallVerdict.Forward ? null : name.ToString();
        return verdict;
    }

    /// <summary>
    /// A decision of <see cref="CallVerdict.Settle"/>: its shared limits are taken in Redis (one round trip), then it is
    /// recorded like any other, and the verdict is what it would have been with every counter local.
    /// </summary>
    public async ValueTask<Settled> SettleAsync(ServerState server, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, CallContext context,
        byte[] rawId, string tool, Decision decision)
    {
        var policy = server.PolicyFor(caller);
        decision = await decisions.SettleSharedAsync(policy, context, decision).ConfigureAwait(false);
        var arguments = scan.Arguments.IsEmpty ? default : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        var verdict = Record(server.Name, policy, context, tool, rawId, arguments, ref decision, out var auditId, out var ticket);
        return new Settled(verdict, decision, auditId, ticket);
    }

    /// <summary>
    /// A held call a person approved (<paramref name="approvalId"/>): decided again as approved (its limits are taken
    /// now) and recorded with the approval's id. <see cref="CallVerdict.Forward"/> unless a limit refuses it now or its
    /// record finds no room.
    /// </summary>
    public ValueTask<Settled> ReleaseAsync(ServerState server, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, CallContext context,
        byte[] rawId, string tool, string approvalId)
    {
        var arguments = scan.Arguments.IsEmpty ? default : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        var reader = scan.Arguments.IsEmpty ? new Utf8JsonReader(DecisionEngine.NoArguments) : new Utf8JsonReader(arguments);
        var policy = server.PolicyFor(caller);
        decisions.Decide(policy, context, tool, reader, approved: true, out var decision, server.Pins.Watch);
        decision.ApprovalId = approvalId;
        decision.ApprovalStatus = ApprovalStatus.Used;
        if (decision.NeedsShared)
        {
            return SettleAsync(server, caller, message, scan, context, rawId, tool, decision);
        }
        var verdict = Record(server.Name, policy, context, tool, rawId, arguments, ref decision, out var auditId, out var ticket);
        return new ValueTask<Settled>(new Settled(verdict, decision, auditId, ticket));
    }

    /// <summary>
    /// A held call that ends without being made: <paramref name="decision"/> (<c>require_approval</c>, with the approval's
    /// id and status) is recorded. Returns the ticket its answer waits for.
    /// </summary>
    public long RecordRefusal(ServerState server, in Caller caller, in CallContext context, ReadOnlySequence<byte> message, in JsonRpcScan scan, ReadOnlySpan<byte> rawId,
        string tool, ref Decision decision)
    {
        var arguments = scan.Arguments.IsEmpty ? default : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        // No room for the record: the answer is a refusal either way, and the recorder counts what it could not keep.
        Record(server.Name, server.PolicyFor(caller), context, tool, rawId, arguments, ref decision, out _, out var ticket);
        return ticket;
    }

    /// <summary>
    /// A <see cref="CallVerdict.Hold"/> call that cannot be held (a stateless request: no session to answer it
    /// later): the approval is asked for, or found, at once. Released by an approval for exactly this call it is
    /// decided again as approved (<see cref="Release"/>); otherwise it is refused with -32012 (pending) or -32013
    /// (denied), recorded with the approval's id.
    /// </summary>
    public async ValueTask<Settled> AskAsync(ApprovalBook book, ServerState server, Caller caller, ReadOnlySequence<byte> message, JsonRpcScan scan, CallContext context,
        byte[] rawId, string tool, Decision decision)
    {
        var arguments = scan.Arguments.IsEmpty ? ReadOnlySequence<byte>.Empty : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        var contiguous = arguments.IsSingleSegment ? arguments.First : arguments.ToArray();
        if (!CanonicalArguments.TryHash(contiguous.Span, out var sha, out var error))
        {
            decision.Outcome = DecisionOutcome.InvalidArguments;
            decision.Reason = SessionMessages.NoCanonicalArguments(error);
            return new Settled(CallVerdict.Blocked, decision, 0, RecordRefusal(server, caller, context, message, scan, rawId, tool, ref decision));
        }
        var opened = book.Open(new ApprovalKey(server.Name, caller.Identity, caller.Grant, tool, sha), contiguous.Span, decision.ApprovalTimeout, out var approval);
        if (opened == ApprovalTicket.Released)
        {
            var released = await ReleaseAsync(server, caller, message, scan, context, rawId, tool, approval!.Id).ConfigureAwait(false);
            if (released.Verdict is CallVerdict.Blocked or CallVerdict.AuditBacklog)
            {
                book.Restore(approval);
            }
            return released;
        }
        decision.ApprovalId = approval?.Id;
        switch (opened)
        {
            case ApprovalTicket.Denied:
                decision.ApprovalStatus = ApprovalStatus.Denied;
                decision.Reason = approval!.Reason ?? decision.Reason;
                break;
            case ApprovalTicket.Full:
                decision.Reason = SessionMessages.ApprovalsFull(book.MaxPending);
                break;
            default:
                decision.ApprovalStatus = ApprovalStatus.Pending;
                decision.RetryAfterMs = McpSession.PendingRetryAfterMs;
                break;
        }
        return new Settled(CallVerdict.Blocked, decision, 0, RecordRefusal(server, caller, context, message, scan, rawId, tool, ref decision));
    }

    /// <summary>Records a decision and says what to do with the call; a record with no room under <c>onFull: shed</c> refuses it.</summary>
    private CallVerdict Record(string server, PolicyModel policy, in CallContext context, ReadOnlySpan<char> name, ReadOnlySpan<byte> id,
        in ReadOnlySequence<byte> arguments, ref Decision decision, out long auditId, out long ticket)
    {
        metrics?.RecordCall(server, policy.NameOf(name, Metrics.GatewayMetrics.OtherTool), decision.Outcome);
        var forwarded = !decision.Blocks;
        if (!audit.TryRecordDecision(server, context, name, id, arguments, decision, forwarded, out auditId, out ticket)
            && audit.OnFull == AuditOverflow.Shed)
        {
            // No forwarded call goes unrecorded: refused before anything leaves, tokens given back. Counted by the
            // recorder and logged by the audit writer (not here: this is what a flood looks like).
            decisions.Refund(ref decision);
            return CallVerdict.AuditBacklog;
        }
        if (decision.IsAllowed)
        {
            return CallVerdict.Forward;
        }
        var tool = name.ToString();
        if (!decision.Enforced)
        {
            log.Shadow(server, tool, decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
            return CallVerdict.Shadow;
        }
        log.Blocked(server, tool, context.Session ?? "stateless", decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
        return CallVerdict.Blocked;
    }

    /// <summary>The gateway's own answer to a call it did not forward (<see cref="CallVerdict.Blocked"/> or <see cref="CallVerdict.AuditBacklog"/>).</summary>
    public static byte[] Answer(CallVerdict verdict, ReadOnlySpan<byte> rawId, string server, string tool, in Decision decision,
        BlockedCallStyle style, int retryAfterMs)
        => verdict == CallVerdict.AuditBacklog
            ? JsonRpcResponses.AuditBacklog(rawId, server, tool, retryAfterMs)
            : JsonRpcResponses.Blocked(rawId, server, tool, decision, style == BlockedCallStyle.ToolResult);
}
