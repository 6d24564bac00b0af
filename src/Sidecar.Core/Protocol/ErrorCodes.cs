using Sidecar.Decisions;

namespace Sidecar.Protocol;

/// <summary>
/// JSON-RPC error codes the gateway returns. Decisions use distinct codes in -32010..-32019 (inside the
/// implementation-defined server range -32000..-32099, clear of -32000/-32001 that SDKs use for connection closed and
/// request timeout, -32002 (resource not found) and -32020..-32099 that MCP 2026-07-28 reserves).
/// Protocol failures keep JSON-RPC's own codes.
/// </summary>
public static class ErrorCodes
{
    /// <summary>Denied by policy: an explicit deny, <c>hide</c>, the default, a <c>deny_if</c> condition, or a pin the tool's definition no longer matches.</summary>
    public const int PolicyDenied = -32010;

    /// <summary>A rate limit has no room; <c>error.data.retryAfterMs</c> says when it will.</summary>
    public const int RateLimited = -32011;

    /// <summary>
    /// The tool requires a person's approval that was not (yet) given: <c>error.data.approvalId</c>, and
    /// <c>error.data.status</c> <c>pending</c> (retry after <c>retryAfterMs</c>) or <c>expired</c>.
    /// </summary>
    public const int ApprovalRequired = -32012;

    /// <summary>A person refused the approval; <c>error.data.reason</c> is theirs.</summary>
    public const int ApprovalDenied = -32013;

    /// <summary>The arguments fail a <c>require</c> condition, or a limit's <c>increment_from</c> is missing or negative.</summary>
    public const int InvalidArguments = -32014;

    /// <summary>
    /// The gateway is at <c>limits.maxInFlight</c> requests and shed this one (HTTP 503, <c>Retry-After</c>); nothing
    /// was decided or forwarded. <c>error.data.retryAfterMs</c> says when to try again.
    /// </summary>
    public const int Overloaded = -32015;

    /// <summary>The upstream server could not be reached, crashed, or closed the session.</summary>
    public const int UpstreamUnavailable = -32016;

    /// <summary>The upstream server did not answer in time.</summary>
    public const int UpstreamTimeout = -32017;

    /// <summary>A call needs a shared rate-limit counter and the shared store (Redis) is unreachable, with <c>failMode: closed</c>.</summary>
    public const int SharedStoreUnavailable = -32018;

    /// <summary>MCP's "resource not found" (<c>resources/read</c> of an unknown URI).</summary>
    public const int ResourceNotFound = -32002;

    public const int ParseError = -32700;
    public const int InvalidRequest = -32600;
    public const int MethodNotFound = -32601;
    public const int InvalidParams = -32602;
    public const int InternalError = -32603;

    /// <summary>Generic server error used by Streamable HTTP for transport-level problems (bad session, bad headers).</summary>
    public const int ServerError = -32000;

    /// <summary>The first code of the range MCP reserves for the specification (-32020..-32099): never ours to invent.</summary>
    public const int SpecificationReservedFirst = -32099;

    /// <summary>The last code of the range MCP reserves for the specification.</summary>
    public const int SpecificationReservedLast = -32020;

    /// <summary>MCP 2026-07-28: an <c>Mcp-*</c> header does not say what the body says (the specification's code).</summary>
    public const int HeaderMismatch = -32020;

    /// <summary>MCP 2026-07-28: the requested protocol version is not supported (the specification's code).</summary>
    public const int UnsupportedProtocolVersion = -32022;

    /// <summary>Whether <paramref name="code"/> lies in the range the MCP specification reserves.</summary>
    public static bool IsSpecificationReserved(int code) => code is >= SpecificationReservedFirst and <= SpecificationReservedLast;

    /// <summary>The code of a blocked decision: <see cref="For(DecisionOutcome)"/>, and -32013 for an approval a person denied.</summary>
    public static int For(in Decision decision)
        => decision.Outcome == DecisionOutcome.RequireApproval && decision.ApprovalStatus == Approvals.ApprovalStatus.Denied ? ApprovalDenied : For(decision.Outcome);

    public static int For(DecisionOutcome outcome) => outcome switch
    {
        DecisionOutcome.Deny => PolicyDenied,
        DecisionOutcome.RateLimited => RateLimited,
        DecisionOutcome.RequireApproval => ApprovalRequired,
        DecisionOutcome.InvalidArguments => InvalidArguments,
        DecisionOutcome.StoreUnavailable => SharedStoreUnavailable,
        _ => InternalError,
    };
}
