using System.Buffers;
using System.Text.Json;
using Microsoft.Extensions.Logging;
using Sidecar.Decisions;
using Sidecar.JsonRpc;

namespace Sidecar.Gateway;

/// <summary>The one place a <c>tools/call</c> is decided, for sessions and stateless requests alike.</summary>
internal static class ToolCallPolicy
{
    /// <summary>
    /// Decides a scanned <c>tools/call</c> against the server's live policy. Returns true when the call is blocked
    /// (the decision says why, <paramref name="tool"/> names it). Allocation-free for an allowed call.
    /// </summary>
    public static bool Decide(ServerRuntime server, ReadOnlySequence<byte> message, in JsonRpcScan scan, in CallContext context,
        string? session, out Decision decision, out string? tool)
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
        var reader = scan.Arguments.IsEmpty
            ? new Utf8JsonReader(DecisionEngine.NoArguments)
            : new Utf8JsonReader(message.Slice(scan.Arguments.Start, scan.Arguments.Length));
        server.Engine.Decide(policy, context, name, reader, approved: false, out decision);
        if (decision.IsAllowed)
        {
            tool = null;
            return false;
        }
        tool = name.ToString();
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
