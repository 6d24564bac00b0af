using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Configuration;
using Sidecar.Decisions;
using Sidecar.JsonRpc;

namespace Sidecar.Gateway;

/// <summary>What the gateway does with a decided <c>tools/call</c>.</summary>
internal enum ToolCallVerdict : byte
{
    /// <summary>Forward it upstream (allowed, or blocked only in shadow mode).</summary>
    Forward,

    /// <summary>Answer it with the decision's error (or <c>isError</c> result).</summary>
    Blocked,

    /// <summary>Refuse it with -32015 <c>audit_backlog</c>: its audit record found no room (<c>audit.onFull: shed</c>).</summary>
    AuditBacklog,
}

/// <summary>The one place a <c>tools/call</c> is decided, for sessions and stateless requests alike.</summary>
internal static class ToolCallPolicy
{
    /// <summary>
    /// Decides a scanned <c>tools/call</c> against the server's live policy and records the decision in the audit
    /// trail. For <see cref="ToolCallVerdict.Forward"/>, <paramref name="auditId"/> is what
    /// <see cref="AuditRecorder.RecordCompletion"/> takes once the call ends; for <see cref="ToolCallVerdict.Blocked"/>,
    /// <paramref name="ticket"/> is what the answer waits for (<see cref="AuditRecorder.WhenWrittenAsync"/>). A call
    /// whose record found no room is refused when <c>audit.onFull</c> is <c>shed</c>, its tokens given back.
    /// <paramref name="tool"/> names the call unless it is forwarded. Allocation-free for an allowed call.
    /// </summary>
    public static ToolCallVerdict Decide(ServerRuntime server, ReadOnlySequence<byte> message, in JsonRpcScan scan, in CallContext context,
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

        var policy = server.Policy;
        var arguments = scan.Arguments.IsEmpty ? default : message.Slice(scan.Arguments.Start, scan.Arguments.Length);
        var reader = scan.Arguments.IsEmpty ? new Utf8JsonReader(DecisionEngine.NoArguments) : new Utf8JsonReader(arguments);
        server.Engine.Decide(policy, context, name, reader, approved: false, out decision);
        // An id split across body segments is rare (ids are short): only then is it copied.
        var id = rawId.IsSingleSegment ? rawId.FirstSpan : rawId.ToArray();
        var forwarded = !decision.Blocks;
        if (!server.Audit.TryRecordDecision(server.Name, context, name, id, arguments, decision, forwarded, out auditId, out ticket)
            && server.Audit.OnFull == AuditOverflow.Shed)
        {
            // No forwarded call goes unrecorded: refused before anything leaves, tokens given back. Counted by the
            // recorder and logged by the audit writer (not here: this is what a flood looks like).
            server.Engine.Refund(ref decision);
            tool = name.ToString();
            return ToolCallVerdict.AuditBacklog;
        }
        if (decision.IsAllowed)
        {
            tool = null;
            return ToolCallVerdict.Forward;
        }
        tool = name.ToString();
        var session = context.Session;
        if (!decision.Enforced)
        {
            server.Logger.LogInformation("Shadow mode: {Server}/{Tool} would be {Outcome} by {Rule}: {Reason}",
                server.Name, tool, decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
            return ToolCallVerdict.Forward;
        }
        server.Logger.LogInformation("Blocked {Server}/{Tool} ({Session}): {Outcome} by {Rule}: {Reason}",
            server.Name, tool, session ?? "stateless", decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
        return ToolCallVerdict.Blocked;
    }
}
