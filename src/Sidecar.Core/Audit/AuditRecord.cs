using Sidecar.Decisions;

namespace Sidecar.Audit;

/// <summary>What happened to a call after the decision.</summary>
public enum AuditOutcome : byte
{
    /// <summary>Not known yet (the call is in flight), or never learned (the completion was lost).</summary>
    Unknown,
    /// <summary>Blocked by the gateway: never forwarded.</summary>
    Blocked,
    /// <summary>The upstream answered with a result.</summary>
    Ok,
    /// <summary>The upstream answered with a tool result marked <c>isError: true</c>.</summary>
    ToolError,
    /// <summary>The upstream answered with a JSON-RPC error.</summary>
    Error,
    /// <summary>The upstream could not be reached, crashed, or closed the session.</summary>
    Unavailable,
    /// <summary>The upstream did not answer in time.</summary>
    Timeout,
    /// <summary>The agent went away before the answer came.</summary>
    Cancelled,
}

public static class AuditOutcomeNames
{
    /// <summary>The outcome's name in audit events.</summary>
    public static string ToWireName(this AuditOutcome outcome) => outcome switch
    {
        AuditOutcome.Blocked => "blocked",
        AuditOutcome.Ok => "ok",
        AuditOutcome.ToolError => "tool_error",
        AuditOutcome.Error => "error",
        AuditOutcome.Unavailable => "upstream_unavailable",
        AuditOutcome.Timeout => "upstream_timeout",
        AuditOutcome.Cancelled => "cancelled",
        _ => "unknown",
    };
}

internal enum AuditRecordKind : byte
{
    /// <summary>A decision whose call was forwarded: the event is written when its completion arrives.</summary>
    Decision,
    /// <summary>A decision that is final at once (the call was blocked): written as it is.</summary>
    Final,
    /// <summary>The end of a forwarded call: outcome and upstream latency for an earlier <see cref="Decision"/>.</summary>
    Completion,
}

/// <summary>
/// One record in the audit queue. Strings are ones the gateway already holds (server name, session id, the compiled
/// policy's rule and reason); the tool name, request id and arguments are copied as bytes into the queue slot's own
/// buffer, so recording allocates nothing.
/// </summary>
internal struct AuditEntry
{
    public AuditRecordKind Kind;
    public long CallId;

    /// <summary>
    /// <see cref="System.Diagnostics.Stopwatch"/> timestamp: the decision's, or the completion's. One clock read: the
    /// writer derives the event's wall-clock time from it against a fresh (UTC, timestamp) anchor.
    /// </summary>
    public long Timestamp;

    public string Server;
    public string? Session;
    public string? Identity;
    public string? Grant;

    public DecisionOutcome Decision;
    public bool Enforced;
    public string? Rule;
    public string? Reason;
    public long RetryAfterMs;
    public long Remaining;

    /// <summary>The approval the call waited for or was released by (null: none), and where it stood.</summary>
    public string? ApprovalId;
    public Approvals.ApprovalStatus ApprovalStatus;

    public AuditOutcome Outcome;
    public int ErrorCode;

    /// <summary>Layout of the slot buffer: tool name (UTF-8), then the raw request id, then the raw arguments.</summary>
    public int ToolLength;
    public int IdLength;
    public int ArgumentsLength;

    /// <summary>The arguments' full length: more than <see cref="ArgumentsLength"/> when they were cut.</summary>
    public int ArgumentsTotalLength;

    public bool IdTruncated;
}
