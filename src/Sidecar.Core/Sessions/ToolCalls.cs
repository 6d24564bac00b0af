using System.Buffers;
using System.Text.Json;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.Identity;
using Sidecar.JsonRpc;

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
}

/// <summary>The one place a <c>tools/call</c> is decided, for sessions and stateless requests alike.</summary>
internal sealed class ToolCalls(DecisionEngine decisions, AuditRecorder audit, SessionLog log)
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
        decisions.Decide(server.PolicyFor(caller), context, name, reader, approved: false, out decision);
        // An id split across body segments is rare (ids are short): only then is it copied.
        var id = rawId.IsSingleSegment ? rawId.FirstSpan : rawId.ToArray();
        var forwarded = !decision.Blocks;
        if (!audit.TryRecordDecision(server.Name, context, name, id, arguments, decision, forwarded, out auditId, out ticket)
            && audit.OnFull == AuditOverflow.Shed)
        {
            // No forwarded call goes unrecorded: refused before anything leaves, tokens given back. Counted by the
            // recorder and logged by the audit writer (not here: this is what a flood looks like).
            decisions.Refund(ref decision);
            tool = name.ToString();
            return CallVerdict.AuditBacklog;
        }
        if (decision.IsAllowed)
        {
            tool = null;
            return CallVerdict.Forward;
        }
        tool = name.ToString();
        if (!decision.Enforced)
        {
            log.Shadow(server.Name, tool, decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
            return CallVerdict.Shadow;
        }
        log.Blocked(server.Name, tool, context.Session ?? "stateless", decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
        return CallVerdict.Blocked;
    }

    /// <summary>The gateway's own answer to a call it did not forward (<see cref="CallVerdict.Blocked"/> or <see cref="CallVerdict.AuditBacklog"/>).</summary>
    public static byte[] Answer(CallVerdict verdict, ReadOnlySpan<byte> rawId, string server, string tool, in Decision decision,
        BlockedCallStyle style, int retryAfterMs)
        => verdict == CallVerdict.AuditBacklog
            ? JsonRpcResponses.AuditBacklog(rawId, server, tool, retryAfterMs)
            : JsonRpcResponses.Blocked(rawId, server, tool, decision, style == BlockedCallStyle.ToolResult);
}
