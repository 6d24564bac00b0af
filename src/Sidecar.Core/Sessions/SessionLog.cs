using Microsoft.Extensions.Logging;

namespace Sidecar.Sessions;

/// <summary>The session engine's log messages (<c>[LoggerMessage]</c>: no boxed argument arrays on the call path).</summary>
internal sealed partial class SessionLog(ILogger logger)
{
    private readonly ILogger _logger = logger;

    [LoggerMessage(Level = LogLevel.Information, Message = "Blocked {Server}/{Tool} ({Session}): {Outcome} by {Rule}: {Reason}")]
    public partial void Blocked(string server, string tool, string session, string outcome, string rule, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Shadow mode: {Server}/{Tool} would be {Outcome} by {Rule}: {Reason}")]
    public partial void Shadow(string server, string tool, string outcome, string rule, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a tools/call notification for {Server}: a call without an id can't be answered and never runs")]
    public partial void CallAsNotification(string server);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not forward a message to {Server}: {Error}")]
    public partial void ForwardFailed(string server, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Upstream {Server} did not answer request {Id} in session {Session} in time")]
    public partial void Overdue(string server, RpcId id, string session);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Upstream {Server} ({Transport}) unavailable for session {Session}: {Error}; retry allowed in {Backoff} ms")]
    public partial void ConnectFailed(string server, string transport, string session, string error, long backoff);

    [LoggerMessage(Level = LogLevel.Information, Message = "Re-initialized upstream {Server} for session {Session}")]
    public partial void Reinitialized(string server, string session);

    [LoggerMessage(Level = LogLevel.Error, Message = "Upstream pump for {Server} session {Session} failed")]
    public partial void PumpFailed(Exception exception, string server, string session);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Upstream {Server} ({Transport}) for session {Session} ended: {Reason}")]
    public partial void UpstreamEnded(string server, string transport, string session, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Dropped an invalid message from upstream {Server}: {Error}")]
    public partial void InvalidUpstreamMessage(string server, string? error);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Dropped a response from {Server} for no pending request")]
    public partial void UnmatchedResponse(string server);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Closing the upstream connection of {Server} failed")]
    public partial void CloseFailed(Exception exception, string server);

    [LoggerMessage(Level = LogLevel.Debug, Message = "Removed {Count} tools from tools/list of {Server}")]
    public partial void ToolsRemoved(int count, string server);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Tool {Tool} of {Server} changed since it was pinned (pinned {Pinned}, now {Observed}): it is hidden and its calls are denied until it is pinned again")]
    public partial void PinMismatch(string server, string tool, string pinned, string observed);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a tools/list response from {Server} that could not be filtered: {Error}")]
    public partial void UnfilterableToolList(string server, string error);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a new session for {Server}: {Open} sessions are open ({Limit})")]
    public partial void SessionsFull(string server, int open, string limit);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Refused a request to {Server} from {Remote}: {Reason} (HTTP 401)")]
    public partial void AuthFailure(string server, string reason, string remote);

    [LoggerMessage(Level = LogLevel.Information, Message = "Closing idle session {Session} of {Server}")]
    public partial void IdleSession(string session, string server);

    [LoggerMessage(Level = LogLevel.Error, Message = "Gateway heartbeat failed")]
    public partial void HeartbeatFailed(Exception exception);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Overloaded: shed {Count} requests with 503 ({Total} since start); {InFlight} of {Max} in flight (limits.maxInFlight)")]
    public partial void Shed(long count, long total, int inFlight, int max);

    [LoggerMessage(Level = LogLevel.Information, Message = "Server {Server}: {Transport}, policy {Policy}")]
    public partial void ServerReady(string server, string transport, string policy);

    [LoggerMessage(Level = LogLevel.Information, Message = "Server {Server} removed by a reload: closing its {Count} sessions")]
    public partial void ServerRemoved(string server, int count);

    [LoggerMessage(Level = LogLevel.Information, Message = "Released {Server}/{Tool} by approval {Approval} (session {Session})")]
    public partial void Released(string server, string tool, string approval, string session);

    [LoggerMessage(Level = LogLevel.Error, Message = "A call of {Server}/{Tool} held for approval failed")]
    public partial void HeldCallFailed(string server, string tool, Exception exception);

    [LoggerMessage(Level = LogLevel.Information, Message = "Drained in {Elapsed} ms: {Left} calls still in flight are answered with -32016 (shutting down; limits.shutdownGrace {Grace} ms)")]
    public partial void Drained(long elapsed, int left, long grace);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Aggregated session {Session}: {Server} is down ({Reason}); its tools are withdrawn until it is back")]
    public partial void MemberDown(string session, string server, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "Aggregated session {Session}: {Server} is up; its tools are listed")]
    public partial void MemberUp(string session, string server);

    [LoggerMessage(Level = LogLevel.Information, Message = "Aggregated session {Session}: no server has the tool or prompt {Name} (names are server{Separator}name)")]
    public partial void UnknownPrefix(string session, string name, string separator);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Aggregated session {Session}: dropped an answer of the agent to {Id}, which no server asked")]
    public partial void UnknownServerRequest(string session, string id);
}
