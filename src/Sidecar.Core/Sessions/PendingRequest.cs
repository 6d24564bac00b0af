using Sidecar.Decisions;
using Sidecar.Policy;

namespace Sidecar.Sessions;

/// <summary>An agent request forwarded upstream and waiting for its response.</summary>
internal sealed class PendingRequest(RpcId key, byte[] rawId, MessageSink sink, long correlation)
{
    public RpcId Key { get; } = key;

    /// <summary>The agent's id token, echoed back verbatim.</summary>
    public byte[] RawId { get; } = rawId;

    public MessageSink Sink { get; } = sink;

    public long Correlation { get; } = correlation;

    /// <summary>For a <c>tools/list</c>: the policy (of the snapshot the request ran under) its result is filtered through.</summary>
    public PolicyModel? ToolListPolicy { get; init; }

    /// <summary>For a <c>tools/list</c>: the server's pins, checked (and its pinned tools' definitions recorded) as the result is filtered.</summary>
    public Decisions.ServerPins? ToolListPins { get; init; }

    /// <summary>The agent's <c>initialize</c>: its result says which protocol version the session speaks.</summary>
    public bool IsInitialize { get; init; }

    /// <summary><c>limits.upstreamTimeout</c> (ms) when the request was sent, for the timeout's message.</summary>
    public int TimeoutMs { get; init; }

    /// <summary>The tool name of a <c>tools/call</c>, for errors and logs.</summary>
    public string? Tool { get; init; }

    private Charge[]? _charges;

    /// <summary>The request is a <c>tools/call</c> the policy let through.</summary>
    public bool HasDecision { get; init; }

    /// <summary>The tokens the decision took (null: none): they go back if the call fails upstream.</summary>
    public Charge[]? Charges
    {
        init => _charges = value;
    }

    /// <summary>Takes the charges for a refund; only the first caller gets them.</summary>
    public Charge[]? TakeCharges() => Interlocked.Exchange(ref _charges, null);

    /// <summary>The audit record of the decision, completed when the call ends (0: none).</summary>
    public long AuditId { get; init; }

    /// <summary>When the gateway gives up waiting (<see cref="Environment.TickCount64"/> milliseconds); pushed back by related traffic.</summary>
    public long Deadline { get; set; }

    /// <summary>Which upstream connection of the session carries it: a connection that dies fails only its own requests.</summary>
    public int Generation { get; set; }

    /// <summary><see cref="System.Diagnostics.Stopwatch"/> ticks: when the session took the request, and when it was forwarded.</summary>
    public long Arrived { get; init; }

    public long Sent { get; set; }

    /// <summary>Set for the gateway's own requests (re-initialization): completes with the response.</summary>
    public TaskCompletionSource<ReadOnlyMemory<byte>>? Internal { get; init; }
}
