using Microsoft.Extensions.Logging;

namespace Sidecar.Audit;

/// <summary>
/// Log messages of the HTTP audit sink (source-generated: no boxing, no reflection, AOT-safe). Only state changes are
/// logged, never each retry; header values and batch contents are never logged (credentials, user data).
/// </summary>
internal static partial class HttpAuditSinkLog
{
    [LoggerMessage(EventId = 3101, Level = LogLevel.Warning,
        Message = "http audit sink: the collector at {Url} is not accepting batches ({Reason}); spooling to {SpoolDirectory} and retrying with backoff")]
    public static partial void CollectorDown(ILogger logger, string url, string reason, string spoolDirectory);

    [LoggerMessage(EventId = 3102, Level = LogLevel.Information,
        Message = "http audit sink: the collector at {Url} is back after {FailedAttempts} failed attempts; draining {Files} spooled batches")]
    public static partial void CollectorBack(ILogger logger, string url, long failedAttempts, int files);

    [LoggerMessage(EventId = 3103, Level = LogLevel.Information, Message = "http audit sink: spool drained; batches go through memory again")]
    public static partial void SpoolDrained(ILogger logger);

    [LoggerMessage(EventId = 3104, Level = LogLevel.Warning,
        Message = "http audit sink: the in-memory queue is full ({Batches} batches); spooling newer batches to {SpoolDirectory}")]
    public static partial void QueueFull(ILogger logger, int batches, string spoolDirectory);

    [LoggerMessage(EventId = 3105, Level = LogLevel.Information,
        Message = "http audit sink: found {Files} spooled batches ({Bytes} bytes) from a previous run in {SpoolDirectory}; delivering them first")]
    public static partial void Recovered(ILogger logger, int files, long bytes, string spoolDirectory);

    [LoggerMessage(EventId = 3106, Level = LogLevel.Warning,
        Message = "http audit sink: ignoring configured header {Header}: the sink sets it itself or it is not a request header")]
    public static partial void HeaderIgnored(ILogger logger, string header);

    [LoggerMessage(EventId = 3107, Level = LogLevel.Error,
        Message = "http audit sink: could not spool {Batches} queued batches ({Reason}); keeping them in memory and retrying")]
    public static partial void SpillFailed(ILogger logger, int batches, string reason);

    [LoggerMessage(EventId = 3108, Level = LogLevel.Error,
        Message = "http audit sink: cannot read spooled batch {File} ({Reason}); retrying with backoff")]
    public static partial void SpoolReadFailed(ILogger logger, string file, string reason);

    [LoggerMessage(EventId = 3109, Level = LogLevel.Error,
        Message = "http audit sink: spooled batch {File} (sequences {First}-{Last}) disappeared before it was delivered; those events are lost")]
    public static partial void SpoolFileMissing(ILogger logger, string file, long first, long last);

    [LoggerMessage(EventId = 3110, Level = LogLevel.Warning,
        Message = "http audit sink: cannot delete delivered batch {File} ({Reason}); it will be sent again after a restart")]
    public static partial void DeleteFailed(ILogger logger, string file, string reason);

    [LoggerMessage(EventId = 3111, Level = LogLevel.Error, Message = "http audit sink: unexpected error in the sender; retrying with backoff")]
    public static partial void SenderFailed(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 3112, Level = LogLevel.Information,
        Message = "http audit sink: stopped with {Files} undelivered batches ({Bytes} bytes) in {SpoolDirectory}; the next start sends them")]
    public static partial void StoppedWithSpool(ILogger logger, int files, long bytes, string spoolDirectory);

    [LoggerMessage(EventId = 3113, Level = LogLevel.Error, Message = "http audit sink: {Reason}")]
    public static partial void LostOnShutdown(ILogger logger, string reason);

    [LoggerMessage(EventId = 3114, Level = LogLevel.Warning,
        Message = "http audit sink: ignoring {Count} files in {SpoolDirectory} that are not spooled batches (first: {Name})")]
    public static partial void StrayFiles(ILogger logger, int count, string spoolDirectory, string name);
}
