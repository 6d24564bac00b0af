namespace Sidecar.Sessions;

/// <summary>
/// Every message text the session engine answers agents with, in one place (like the scanner's <c>Errors</c>). The
/// JSON around them is built by <see cref="JsonRpcResponses"/>.
/// </summary>
internal static class SessionMessages
{
    public const string UnsupportedId = "Invalid Request: unsupported id";
    public const string AlreadyInitialized = "Invalid Request: this session is already initialized";
    public const string DiscoverInSession = "Method not found: server/discover (this session uses initialize)";
    public const string DuplicateId = "Invalid Request: a request with this id is already in flight";
    public const string SessionClosed = "The session was closed";
    public const string HeldCallClosed = "The session was closed while the call waited for approval; the call was not made";
    public const string ShuttingDown = "Sidecar is shutting down: the call was not answered by the upstream in time (whether it ran is unknown)";

    /// <summary>The <c>error.data.reason</c> of what is answered because the gateway is stopping.</summary>
    public const string ShuttingDownReason = "shutting down";

    /// <summary>A request that arrives while the gateway drains (nothing was decided or forwarded).</summary>
    public const string Draining = "Sidecar is shutting down: it takes no new requests; retry against another instance";

    public const string HeldCallShuttingDown = "Sidecar is shutting down: the call waited for approval and was not made";
    public const string UncheckableToolList = "Internal error: the upstream tools/list response could not be checked";
    public const string InitializeInBatch = "Invalid Request: initialize cannot be part of a batch";
    public const string CallAsNotification = "Invalid Request: tools/call must be a request with an id, not a notification";
    public const string InitializeWithSession = "Invalid Request: initialize starts a new session and must not carry Mcp-Session-Id";
    public const string TooManySessions = "Service Unavailable: too many sessions";
    public const string UnknownSession = "Not Found: unknown or expired session";

    /// <summary>The reason a <c>notifications/cancelled</c> gives the upstream when the agent went away.</summary>
    public const string CancelledClientGone = "the client disconnected";

    /// <summary>The reason a <c>notifications/cancelled</c> gives the upstream when its answer was overdue.</summary>
    public const string CancelledTimeout = "timed out at the gateway";

    public const string AggregateNotInitialized = "Invalid Request: send initialize first";

    public static string AggregateMethodNotFound(string method) => $"Method not found: {method} (the aggregated endpoint routes tools, prompts, resources, completion and logging)";

    public static string AggregateUnknownName(string what, string? name, string separator) =>
        $"Unknown {what}: \"{name}\" (on the aggregated endpoint names are server{separator}name, of a server that is part of it)";

    public static string AggregateUnknownResource(string? uri) => $"Resource not found: \"{uri}\" (no server of the aggregated endpoint listed it)";

    public static string InvalidParams(string? error) => "Invalid params: " + error;

    public static string NoCanonicalArguments(string? error) => "the arguments cannot be put in canonical form for an approval: " + error;

    public static string ApprovalsFull(int max) => $"{max} approvals are pending already (approvals.maxPending); retry later";

    public static string HeldCallAborted(string why) => $"the call waited for approval and was given up: {why}";

    public static string BatchNotAllowed(string? version) =>
        $"Invalid Request: JSON-RPC batches are not part of MCP {version ?? "before initialize"} (only 2025-03-26 has them); send one message per request";

    public static string ServerRemoved(string server) => $"Upstream server \"{server}\" was removed from the config";

    public static string Unavailable(string server, string error) => $"Upstream server \"{server}\" is unavailable: {error}";

    public static string Timeout(string server, double seconds) => $"Upstream server \"{server}\" did not answer within {seconds:0.###} s";

    public static string WentAway(string server, string reason) => $"Upstream server \"{server}\" went away: {reason}";

    public static string Failed(string server, string error) => $"Upstream server \"{server}\" failed: {error}";

    public static string SessionsFull(string scope, int max) => $"Service Unavailable: too many sessions ({max} open, {scope}); retry later";

    public static string UnknownServer(string? name) => $"Not Found: no server named \"{name}\"";

    /// <summary>
    /// The error a shared stdio server (<c>"share": true</c>) gets for a server-to-client request that no single
    /// session can be said to own (this one goes to the server, not to an agent).
    /// </summary>
    public static string SharedRequestUnroutable(string server, string method, string why) =>
        $"Sidecar cannot route this {method} request: the process of server \"{server}\" is shared by all its sessions (\"share\": true) and {why}, so no single agent can be asked";

    /// <summary>The error a shared stdio server gets for a request it sent to a session that then closed.</summary>
    public static string SharedRequestOrphaned(string server) =>
        $"The session of server \"{server}\" this request was sent to has closed";
}
