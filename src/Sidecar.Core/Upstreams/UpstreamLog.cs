using Microsoft.Extensions.Logging;

namespace Sidecar.Upstreams;

/// <summary>
/// Log messages of the upstream connectors (source-generated: no boxing, no reflection, AOT-safe).
/// Header values and message bodies are never logged: they may hold credentials or user data.
/// </summary>
internal static partial class UpstreamLog
{
    public const string Category = "Sidecar.Upstreams";

    [LoggerMessage(EventId = 2001, Level = LogLevel.Information, Message = "{Server}: {Line}")]
    public static partial void StderrLine(ILogger logger, string server, string line);

    [LoggerMessage(EventId = 2002, Level = LogLevel.Warning,
        Message = "{Server}: dropped a message of more than {MaxBytes} bytes from the upstream ({Transport})")]
    public static partial void MessageTooLarge(ILogger logger, string server, string transport, int maxBytes);

    [LoggerMessage(EventId = 2003, Level = LogLevel.Information, Message = "{Server}: started upstream process {ProcessId} ({Command})")]
    public static partial void ProcessStarted(ILogger logger, string server, int processId, string command);

    [LoggerMessage(EventId = 2004, Level = LogLevel.Information, Message = "{Server}: upstream process {ProcessId} exited with code {ExitCode}")]
    public static partial void ProcessExited(ILogger logger, string server, int processId, int exitCode);

    [LoggerMessage(EventId = 2005, Level = LogLevel.Warning,
        Message = "{Server}: upstream process {ProcessId} did not exit within {GraceMs} ms of closing its stdin; killing its process tree")]
    public static partial void ProcessKilled(ILogger logger, string server, int processId, int graceMs);

    [LoggerMessage(EventId = 2006, Level = LogLevel.Warning, Message = "{Server}: upstream connection closed: {Reason}")]
    public static partial void ConnectionFailed(ILogger logger, string server, string reason);

    [LoggerMessage(EventId = 2007, Level = LogLevel.Debug, Message = "{Server}: send {Correlation} failed: {Reason}")]
    public static partial void SendFailed(ILogger logger, string server, long correlation, string reason);

    [LoggerMessage(EventId = 2008, Level = LogLevel.Warning,
        Message = "{Server}: ignoring configured header {Header}: the transport sets it itself")]
    public static partial void ReservedHeaderIgnored(ILogger logger, string server, string header);

    [LoggerMessage(EventId = 2009, Level = LogLevel.Debug, Message = "{Server}: the upstream offers no GET stream (HTTP 405)")]
    public static partial void NoGetStream(ILogger logger, string server);

    [LoggerMessage(EventId = 2010, Level = LogLevel.Information,
        Message = "{Server}: the upstream GET stream ended ({Reason}); reconnecting in {DelayMs} ms")]
    public static partial void GetStreamReconnecting(ILogger logger, string server, string reason, int delayMs);

    [LoggerMessage(EventId = 2011, Level = LogLevel.Warning, Message = "{Server}: giving up on the upstream GET stream: {Reason}")]
    public static partial void GetStreamAbandoned(ILogger logger, string server, string reason);

    [LoggerMessage(EventId = 2012, Level = LogLevel.Debug, Message = "{Server}: ignoring an SSE event of type {EventType}")]
    public static partial void IgnoredSseEvent(ILogger logger, string server, string eventType);

    [LoggerMessage(EventId = 2013, Level = LogLevel.Debug, Message = "{Server}: session DELETE failed: {Reason}")]
    public static partial void DeleteFailed(ILogger logger, string server, string reason);

    [LoggerMessage(EventId = 2014, Level = LogLevel.Warning, Message = "{Server}: could not kill upstream process {ProcessId}: {Reason}")]
    public static partial void KillFailed(ILogger logger, string server, int processId, string reason);

    [LoggerMessage(EventId = 2015, Level = LogLevel.Information,
        Message = "{Server}: the event stream of send {Correlation} ended before its answer ({Reason}); resuming it with GET and Last-Event-ID in {DelayMs} ms")]
    public static partial void ResumingStream(ILogger logger, string server, long correlation, string reason, int delayMs);

    [LoggerMessage(EventId = 2016, Level = LogLevel.Warning, Message = "{Server}: could not resume the event stream of send {Correlation}: {Reason}")]
    public static partial void ResumeAbandoned(ILogger logger, string server, long correlation, string reason);

    [LoggerMessage(EventId = 2017, Level = LogLevel.Information,
        Message = "{Server}: shared upstream process {ProcessId} serves every session of this server (share: true)")]
    public static partial void SharedProcessStarted(ILogger logger, string server, int processId);

    [LoggerMessage(EventId = 2018, Level = LogLevel.Warning,
        Message = "{Server}: shared upstream process {ProcessId} ended ({Reason}); {Lanes} sessions lose their calls in flight and reconnect on their next message")]
    public static partial void SharedProcessEnded(ILogger logger, string server, int processId, string reason, int lanes);

    [LoggerMessage(EventId = 2019, Level = LogLevel.Warning,
        Message = "{Server}: refused the server's {Method} request: {Reason}")]
    public static partial void ServerRequestUnroutable(ILogger logger, string server, string method, string reason);

    [LoggerMessage(EventId = 2020, Level = LogLevel.Debug,
        Message = "{Server}: dropped a {Kind} from the shared upstream that belongs to no session (its session is gone, or it was cancelled)")]
    public static partial void SharedMessageUnrouted(ILogger logger, string server, string kind);

    [LoggerMessage(EventId = 2021, Level = LogLevel.Warning, Message = "{Server}: dropped an unreadable message from the shared upstream: {Error}")]
    public static partial void SharedMessageInvalid(ILogger logger, string server, string error);

    [LoggerMessage(EventId = 2022, Level = LogLevel.Warning,
        Message = "{Server}: shared upstream process {ProcessId} did not answer initialize within {TimeoutMs} ms; stopping it")]
    public static partial void SharedInitializeTimedOut(ILogger logger, string server, int processId, int timeoutMs);

    [LoggerMessage(EventId = 2023, Level = LogLevel.Debug,
        Message = "{Server}: answered initialize from shared upstream process {ProcessId}'s first initialize")]
    public static partial void SharedInitializeAnswered(ILogger logger, string server, int processId);
}
