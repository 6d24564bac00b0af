using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Audit;
using Sidecar.Decisions;
using Sidecar.JsonRpc;

namespace Sidecar.Gateway;

/// <summary>The one place a <c>tools/call</c> is decided, for sessions and stateless requests alike.</summary>
internal static class ToolCallPolicy
{
    /// <summary>
    /// Decides a scanned <c>tools/call</c> against the server's live policy and records the decision in the audit
    /// trail. Returns true when the call is blocked (the decision says why, <paramref name="tool"/> names it).
    /// Otherwise <paramref name="auditId"/> is what <see cref="AuditRecorder.RecordCompletion"/> takes once the call
    /// ends. Allocation-free for an allowed call.
    /// </summary>
    public static bool Decide(ServerRuntime server, ReadOnlySequence<byte> message, in JsonRpcScan scan, in CallContext context,
        in ReadOnlySequence<byte> rawId, out Decision decision, out string? tool, out long auditId)
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
        auditId = server.Audit.RecordDecision(server.Name, context, name, id, arguments, decision, forwarded: !decision.Blocks);
        if (decision.IsAllowed)
        {
            tool = null;
            return false;
        }
        tool = name.ToString();
        var session = context.Session;
        if (!decision.Enforced)
        {
            server.Logger.LogInformation("Shadow mode: {Server}/{Tool} would be {Outcome} by {Rule}: {Reason}",
                server.Name, tool, decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
            return false;
        }
        server.Logger.LogInformation("Blocked {Server}/{Tool} ({Session}): {Outcome} by {Rule}: {Reason}",
            server.Name, tool, session ?? "stateless", decision.Outcome.ToWireName(), decision.Rule, decision.Reason);
        return true;
    }
}
