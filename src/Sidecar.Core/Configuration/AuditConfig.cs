namespace Sidecar.Configuration;

/// <summary>The <c>audit</c> section of <c>sidecar.json</c>: what is recorded and where it goes.</summary>
public sealed record AuditConfig(
    bool Enabled,
    AuditFileConfig? File,
    bool Stdout,
    AuditHttpConfig? Http,
    int BufferEvents,
    int BatchEvents,
    TimeSpan FlushInterval,
    int MaxArgumentBytes,
    int MaxStringLength,
    IReadOnlyList<string> RedactKeys,
    string? HmacKey)
{
    /// <summary>Without an <c>audit</c> section: a JSONL file in the working directory.</summary>
    public const string DefaultFilePath = "sidecar-audit/audit.jsonl";

    public static AuditConfig Default { get; } = new(
        Enabled: true,
        File: new AuditFileConfig(Path.GetFullPath(DefaultFilePath), AuditFileConfig.DefaultMaxBytes, AuditFileConfig.DefaultMaxFiles),
        Stdout: false,
        Http: null,
        BufferEvents: 8192,
        BatchEvents: 512,
        FlushInterval: TimeSpan.FromMilliseconds(200),
        MaxArgumentBytes: 2048,
        MaxStringLength: 256,
        RedactKeys: [],
        HmacKey: null);

    public static AuditConfig Disabled { get; } = Default with { Enabled = false, File = null };

    /// <summary>What happens to a call whose record cannot be queued (<c>onFull</c>): refused (default) or forwarded unrecorded.</summary>
    public AuditOverflow OnFull { get; init; } = AuditOverflow.Shed;

    /// <summary>When an answer may reach the agent relative to its record (<c>durability</c>).</summary>
    public AuditDurability Durability { get; init; } = AuditDurability.Batched;

    /// <summary>Never prints the HMAC key or HTTP headers.</summary>
    public override string ToString()
        => Enabled ? $"audit: file={File?.Path ?? "-"} stdout={Stdout} http={Http?.Url.GetLeftPart(UriPartial.Path) ?? "-"}" : "audit: off";
}

/// <summary><c>audit.onFull</c>: what a call gets when the audit queue has no room for its record.</summary>
public enum AuditOverflow : byte
{
    /// <summary><c>"shed"</c>: the call is refused with -32015 (<c>audit_backlog</c>) before anything is forwarded.</summary>
    Shed,

    /// <summary><c>"drop"</c>: the call goes on unrecorded; the loss is counted and written as an <c>audit_gap</c> event.</summary>
    Drop,
}

/// <summary><c>audit.durability</c>: whether an answer waits for its record to be written.</summary>
public enum AuditDurability : byte
{
    /// <summary><c>"batched"</c>: records are written in batches, at most <c>flushInterval</c> behind the answers.</summary>
    Batched,

    /// <summary>
    /// <c>"before_answer"</c>: group commit. A call's answer (or a blocked call's error) is released to the agent only
    /// once the batch holding its record has been written to the OS by every sink.
    /// </summary>
    BeforeAnswer,
}

/// <summary>A JSONL file, rotated at <see cref="MaxBytes"/>, keeping <see cref="MaxFiles"/> rotated files.</summary>
public sealed record AuditFileConfig(string Path, long MaxBytes, int MaxFiles)
{
    public const long DefaultMaxBytes = 100L * 1024 * 1024;
    public const int DefaultMaxFiles = 10;
}

/// <summary>
/// Batches POSTed as JSONL (<c>application/x-ndjson</c>) to <see cref="Url"/>. While the collector is down, batches
/// are spooled to <see cref="SpoolDirectory"/> (at most <see cref="MaxSpoolBytes"/>) and sent in order when it is back.
/// </summary>
/// <remarks><see cref="Headers"/> may hold credentials: <see cref="ToString"/> never prints them.</remarks>
public sealed record AuditHttpConfig(
    Uri Url,
    IReadOnlyDictionary<string, string> Headers,
    string SpoolDirectory,
    long MaxSpoolBytes,
    TimeSpan Timeout)
{
    public const long DefaultMaxSpoolBytes = 1024L * 1024 * 1024;

    public override string ToString() => $"http audit sink {Url.GetLeftPart(UriPartial.Path)} (spool {SpoolDirectory})";
}
